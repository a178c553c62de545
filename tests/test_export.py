"""ONNX export of a trained checkpoint: onnxruntime's maps and scores match torch's (the `onnx` extra)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from anomaly_lab.checkpoint_loading import SPEC_KEY, load_model
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.export import run
from anomaly_lab.predict import run as predict_run
from tests.conftest import predict_config

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch's torch.export-based ONNX exporter needs it

TOLERANCE = 1e-4  # float32 kernels of two runtimes; seen: below 1e-6
REPO = Path(__file__).resolve().parents[1]


def export_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="export", overrides=overrides)


@pytest.mark.slow
def test_onnx_scores_match_torch(tiny_run: Path, tmp_path: Path) -> None:
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"
    output = tmp_path / "model.onnx"
    result = run(export_config([f"ckpt_path={checkpoint}", f"output={output}"]))
    assert result["batch"] == "batch"  # a free batch dimension: riad's MSGMS map exports without fixing it
    assert max(result["max_abs_error"].values()) < TOLERANCE

    model = load_model(checkpoint)
    paths = sorted(Path(line.split(",")[0]) for line in (tiny_run / "scores.csv").read_text().splitlines()[1:])
    images = np.stack([model.preprocessing.load(path).image for path in paths[:3]])  # (3,S,S,3) uint8 test images
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (3,3,S,S)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    onnx_maps, onnx_scores = session.run(["anomaly_map", "score"], {"images": batch.numpy()})
    with torch.no_grad():
        maps, scores = model(batch)
    assert onnx_maps.shape == (3, 1, model.image_size, model.image_size)
    np.testing.assert_allclose(onnx_maps, maps.numpy(), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(onnx_scores, scores.numpy(), rtol=0, atol=TOLERANCE)

    metadata = {prop.key: prop.value for prop in onnx.load(str(output)).metadata_props}
    assert float(metadata["threshold"]) == float(model.threshold)
    assert json.loads(metadata["anomaly_lab_spec"]) == torch.load(checkpoint, weights_only=True)[SPEC_KEY]
    assert json.loads(metadata["anomaly_lab_spec"])["model"]["image_size"] == model.image_size
    assert json.loads(metadata["preprocessing"]) == {
        "image_size": model.image_size,
        "grayscale": False,
        "tiled": False,
        "stride": None,
        "border": "drop",
        "page_width": None,
        "divide_by": 255.0,
        "orient": "none",
        "crop_height": None,
        "mean": None,  # a pretrained encoder's normalisation: none for this net
        "std": None,
    }
    assert metadata["image_size"] == str(model.image_size)


def test_export_refuses_to_overwrite_and_unknown_formats(tiny_run: Path, tmp_path: Path) -> None:
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"
    (tmp_path / "taken.onnx").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        run(export_config([f"ckpt_path={checkpoint}", f"output={tmp_path / 'taken.onnx'}"]))
    assert (tmp_path / "taken.onnx").read_text() == "mine"
    with pytest.raises(ValueError, match="format='tflite' is not supported"):
        run(export_config([f"ckpt_path={checkpoint}", "format=tflite"]))


@pytest.mark.slow
def test_the_export_records_the_checkpoints_digest(tiny_run: Path, tmp_path: Path) -> None:
    from anomaly_lab.export import DIGEST_KEY, file_sha256

    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", checkpoint)
    run(export_config([f"ckpt_path={checkpoint}", "check=false"]))
    metadata = {prop.key: prop.value for prop in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert metadata[DIGEST_KEY] == file_sha256(checkpoint) == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def scores_of(output: Path) -> dict[str, float]:
    with (output / "scores.csv").open() as file:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(file)}


@pytest.mark.slow
def test_predict_with_onnxruntime_scores_as_torch_and_refuses_stale_graphs(tiny_run: Path, tmp_path: Path) -> None:
    from anomaly_lab.errors import UserError

    checkpoint = tmp_path / "run" / "model.ckpt"
    checkpoint.parent.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", checkpoint)
    images = Path(next(iter(scores_of(tiny_run)))).parent.parent  # the tiny run's test folder
    args = [f"ckpt_path={checkpoint}", f"input={images}"]
    torch_summary = predict_run(predict_config([*args, f"output={tmp_path / 'torch'}", "batch_size=3"]))
    expected = scores_of(tmp_path / "torch")

    # no graph beside the checkpoint: exported to a temporary file, nothing written beside it
    summary = predict_run(
        predict_config([*args, f"output={tmp_path / 'temporary'}", "backend=onnxruntime", "batch_size=3"])
    )
    assert summary["backend"] == "onnxruntime" and summary["onnx"] == "exported to a temporary file"
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.ckpt"]
    assert summary["anomalous"] == torch_summary["anomalous"]
    for path, score in scores_of(tmp_path / "temporary").items():
        assert score == pytest.approx(expected[path], abs=TOLERANCE), path

    # the graph beside it (make export) is used, with the threads asked for
    run(export_config([f"ckpt_path={checkpoint}", "check=false"]))
    onnx_path = checkpoint.with_suffix(".onnx")
    summary = predict_run(
        predict_config([*args, f"output={tmp_path / 'beside'}", "backend=onnxruntime", "threads=1", "batch_size=2"])
    )
    assert summary["onnx"] == str(onnx_path) and summary["threads"] == 1
    for path, score in scores_of(tmp_path / "beside").items():
        assert score == pytest.approx(expected[path], abs=TOLERANCE), path

    # a graph of another checkpoint (here: the same weights, another threshold) is refused, nothing written
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"]["model.threshold"] = torch.tensor(0.5)
    torch.save(saved, checkpoint)
    with pytest.raises(UserError, match=r"model\.onnx was exported from another checkpoint.*stale.*overwrite=true"):
        predict_run(predict_config([*args, f"output={tmp_path / 'stale'}", "backend=onnxruntime"]))
    assert not (tmp_path / "stale").exists()
    # so is one that records no digest (exported before it was recorded)
    proto = onnx.load(str(onnx_path))
    kept = [prop for prop in proto.metadata_props if prop.key != "checkpoint_sha256"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(onnx_path))
    with pytest.raises(UserError, match="records no checkpoint digest"):
        predict_run(predict_config([*args, f"output={tmp_path / 'old'}", "backend=onnxruntime"]))
    with pytest.raises(FileNotFoundError, match="no such file"):
        predict_run(predict_config([*args, f"output={tmp_path / 'x'}", "backend=onnxruntime", "onnx=nowhere.onnx"]))


class FixedBatchSession:
    """A stand-in onnxruntime session whose graph takes exactly 2 images: score = mean of each image."""

    class Input:
        shape = (2, 3, 4, 4)

    def __init__(self) -> None:
        self.fed: list[int] = []

    def get_inputs(self) -> list[Any]:
        return [self.Input()]

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        images = feed["images"]
        assert images.shape == (2, 3, 4, 4) and images.dtype == np.float32 and images.flags.c_contiguous
        self.fed.append(len(images))
        scores = images.reshape(2, -1).mean(axis=1)
        return [np.broadcast_to(scores[:, None, None, None], (2, 1, 4, 4)), scores]


def test_a_fixed_batch_graph_is_fed_padded_chunks() -> None:
    from anomaly_lab.predict import OnnxScorer
    from anomaly_lab.preprocessing import Preprocessing

    session = FixedBatchSession()
    scorer = OnnxScorer(session, Preprocessing(image_size=4))
    units = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    maps, scores = scorer(units)
    assert session.fed == [2, 2, 2] and maps.shape == (5, 4, 4) and scores.shape == (5,)
    np.testing.assert_allclose(scores, units.reshape(5, -1).mean(axis=1) / 255.0, rtol=1e-6)


def predict_process(checkpoint: Path, images: Path, output: Path) -> subprocess.CompletedProcess[str]:
    """`python -m anomaly_lab.predict ... backend=onnxruntime` as a user runs it (the graph beside the checkpoint)."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "anomaly_lab.predict", f"ckpt_path={checkpoint}", f"input={images}"]
    command += [f"output={output}", "backend=onnxruntime", "device=cpu", "progress=false"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)


def halve_weights(graph: Any) -> int:
    """An attacker's edit: every `.weight` initializer halved in place, names and metadata kept; returns how many."""
    halved = 0
    for tensor in graph.graph.initializer:
        if tensor.name.endswith(".weight"):
            tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) / 2, tensor.name))
            halved += 1
    return halved


def halve_the_score(graph: Any) -> None:
    """An attacker's edit of the computation, every weight kept: the score output multiplied by 0.5."""
    score = graph.graph.output[1].name
    for node in graph.graph.node:
        node.output[:] = ["unscaled_score" if name == score else name for name in node.output]
    graph.graph.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "one_half"))
    graph.graph.node.append(onnx.helper.make_node("Mul", ["unscaled_score", "one_half"], [score]))


@pytest.mark.slow
def test_a_tampered_or_foreign_graph_is_refused_whatever_its_metadata(tiny_run: Path, tmp_path: Path) -> None:
    from anomaly_lab.export import DIGEST_KEY, GraphMismatchError, file_sha256

    checkpoint = tmp_path / "run" / "model.ckpt"
    checkpoint.parent.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", checkpoint)
    images = Path(next(iter(scores_of(tiny_run)))).parent.parent  # the tiny run's test folder
    run(export_config([f"ckpt_path={checkpoint}", "check=false"]))
    graph_path = checkpoint.with_suffix(".onnx")
    exported = graph_path.read_bytes()
    metadata = {prop.key: prop.value for prop in onnx.load(str(graph_path)).metadata_props}

    # the export as written scores
    result = predict_process(checkpoint, images, tmp_path / "untampered")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "untampered" / "scores.csv").is_file()

    # weights halved, every metadata entry (the checkpoint's digest too) kept: refused in one line, nothing written
    graph = onnx.load_model_from_string(exported)
    assert halve_weights(graph) > 20
    onnx.save(graph, str(graph_path))
    assert {prop.key: prop.value for prop in onnx.load(str(graph_path)).metadata_props} == metadata
    result = predict_process(checkpoint, images, tmp_path / "halved")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and not result.stdout.strip(), result.stderr
    assert lines[0].startswith(f"GraphMismatchError: onnx {graph_path} is not {checkpoint}'s model")
    assert "net.stem.0.weight" in lines[0] and "overwrite=true" in lines[0]
    assert not (tmp_path / "halved").exists()

    # the computation edited, every weight and metadata entry kept: refused by the outputs on random images
    graph = onnx.load_model_from_string(exported)
    halve_the_score(graph)
    onnx.save(graph, str(graph_path))
    args = [f"ckpt_path={checkpoint}", f"input={images}", "backend=onnxruntime"]
    with pytest.raises(GraphMismatchError, match=r"its score on random images is [0-9.e-]+ off the model's"):
        predict_run(predict_config([*args, f"output={tmp_path / 'edited'}"]))
    assert not (tmp_path / "edited").exists()

    # another model's graph copied beside this checkpoint, its digest rewritten to this checkpoint's
    foreign_checkpoint = tmp_path / "run" / "other.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"]["model.net.head.bias"] += 0.01  # another model of the same net
    torch.save(saved, foreign_checkpoint)
    graph = onnx.load_model_from_string(exported)
    onnx.helper.set_model_props(graph, {**metadata, DIGEST_KEY: file_sha256(foreign_checkpoint)})
    onnx.save(graph, str(foreign_checkpoint.with_suffix(".onnx")))
    foreign_args = [f"ckpt_path={foreign_checkpoint}", f"input={images}", "backend=onnxruntime"]
    with pytest.raises(GraphMismatchError, match=r"is not .*other\.ckpt's model.*its net\.head\.bias \(3,\) float32"):
        predict_run(predict_config([*foreign_args, f"output={tmp_path / 'foreign'}"]))
    assert not (tmp_path / "foreign").exists()
