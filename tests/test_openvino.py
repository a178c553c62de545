"""OpenVINO (the `openvino` extra): export format=openvino writes the IR, predict backend=openvino scores as torch
(maps and scores within 1e-4) and refuses a stale or tampered IR, naming the file; bench-predict's three backends.
Without openvino the module skips in one line (`make test-all` installs the extra); the settings that need no
openvino are tested in tests/test_openvino_settings.py."""

from __future__ import annotations

import csv
import os
import re
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

from anomaly_lab.checkpoint_loading import load_model
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import UserError
from anomaly_lab.export import DIGEST_KEY, GraphMismatchError, file_sha256
from anomaly_lab.export import run as export_run
from anomaly_lab.openvino_backend import RT_SECTION, ir_metadata, openvino_session
from anomaly_lab.predict import run as predict_run

OPENVINO = pytest.importorskip(
    "openvino", reason="openvino is not installed (the openvino extra: pip install -e '.[openvino]')"
)
pytest.importorskip("onnxscript")  # the IR is converted from torch's ONNX export, which needs it

TOLERANCE = 1e-4  # float32 kernels of two runtimes; seen: below 1e-6
REPO = Path(__file__).resolve().parents[1]


def config(name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        extra = ["progress=false", "device=cpu"] if name == "predict" else []
        return compose(config_name=name, overrides=[*extra, *overrides])


def scores_of(output: Path) -> dict[str, float]:
    with (output / "scores.csv").open() as file:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(file)}


@pytest.fixture(scope="session")
def ov() -> Any:
    """The openvino module (the module's import has skipped every test where it is not installed)."""
    return OPENVINO


@pytest.fixture
def checkpoint(ov: Any, tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run's checkpoint in a folder of its own (the IR goes beside it)."""
    path = tmp_path / "run" / "model.ckpt"
    path.parent.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "best.ckpt", path)
    return path


@pytest.mark.slow
def test_export_writes_the_ir_beside_the_checkpoint_with_its_digest(ov: Any, checkpoint: Path) -> None:
    result = export_run(config("export", [f"ckpt_path={checkpoint}", "format=openvino"]))
    xml, weights = checkpoint.with_suffix(".xml"), checkpoint.with_suffix(".bin")
    assert result["output"] == str(xml) and result["weights"] == str(weights) and result["batch"] == "batch"
    assert max(result["max_abs_error"].values()) < TOLERANCE
    ir = read_ir(xml)
    metadata = ir_metadata(ir)
    assert metadata[DIGEST_KEY] == file_sha256(checkpoint)
    assert float(metadata["threshold"]) == float(load_model(checkpoint).threshold)
    assert ir.input(0).any_name == "images" and [out.any_name for out in ir.outputs] == ["anomaly_map", "score"]
    assert {ir.output(0).get_element_type().get_type_name()} == {"f32"}  # not compressed to fp16
    with pytest.raises(FileExistsError, match=r"model\.xml exists.*overwrite=true"):
        export_run(config("export", [f"ckpt_path={checkpoint}", "format=openvino"]))
    weights.unlink()  # the .bin alone left behind is protected too
    xml.unlink()
    weights.write_text("mine")
    with pytest.raises(FileExistsError, match=r"model\.bin exists"):
        export_run(config("export", [f"ckpt_path={checkpoint}", "format=openvino", "check=false"]))
    assert weights.read_text() == "mine"


@pytest.mark.slow
def test_predict_with_openvino_gives_torchs_maps_and_scores(
    ov: Any, tiny_run: Path, checkpoint: Path, tmp_path: Path
) -> None:
    images = Path(next(iter(scores_of(tiny_run)))).parent.parent  # the tiny run's test folder
    args = [f"ckpt_path={checkpoint}", f"input={images}", "batch_size=3"]
    torch_summary = predict_run(config("predict", [*args, f"output={tmp_path / 'torch'}"]))
    expected = scores_of(tmp_path / "torch")

    # no IR beside the checkpoint: exported to a temporary folder, nothing written beside it
    summary = predict_run(config("predict", [*args, f"output={tmp_path / 'temporary'}", "backend=openvino"]))
    assert summary["backend"] == "openvino" and summary["openvino"] == "exported to a temporary folder"
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == ["model.ckpt"]
    assert summary["anomalous"] == torch_summary["anomalous"]
    for path, score in scores_of(tmp_path / "temporary").items():
        assert score == pytest.approx(expected[path], abs=TOLERANCE), path

    # the IR beside it (export format=openvino) is used, with the threads asked for
    export_run(config("export", [f"ckpt_path={checkpoint}", "format=openvino", "check=false"]))
    summary = predict_run(
        config("predict", [*args, f"output={tmp_path / 'beside'}", "backend=openvino", "threads=1", "batch_size=2"])
    )
    assert summary["openvino"] == str(checkpoint.with_suffix(".xml")) and summary["threads"] == 1
    for path, score in scores_of(tmp_path / "beside").items():
        assert score == pytest.approx(expected[path], abs=TOLERANCE), path

    # maps: the compiled IR on real test images against the model, pixel for pixel
    model = load_model(checkpoint)
    session, source = openvino_session(checkpoint, model, threads=1)
    assert source == str(checkpoint.with_suffix(".xml"))
    assert session.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    files = sorted(map(Path, expected))[:3]
    batch = torch.from_numpy(np.stack([model.preprocessing.load(path).image for path in files]))
    batch = batch.permute(0, 3, 1, 2).float() / 255.0  # (3,3,S,S)
    ov_maps, ov_scores = session.run(["anomaly_map", "score"], {"images": batch.numpy()})
    with torch.no_grad():
        maps, scores = model(batch)  # (3,1,S,S), (3,)
    assert ov_maps.shape == (3, 1, model.image_size, model.image_size)
    np.testing.assert_allclose(ov_maps, maps.numpy(), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(ov_scores, scores.numpy(), rtol=0, atol=TOLERANCE)


def read_ir(xml: Path) -> Any:
    """The IR at xml read into memory: OpenVINO maps a .bin read by its path, and rewriting a mapped file while
    the model lives is a bus error."""
    import openvino as ov

    weights = np.frombuffer(xml.with_suffix(".bin").read_bytes(), np.uint8).copy()
    return ov.Core().read_model(xml.read_text(), ov.Tensor(weights))


def halve_constant(xml: Path, name: str) -> None:
    """An attacker's edit of the .bin: the Constant `name` halved in place, the .xml (and its rt_info) kept."""
    layer = re.search(
        rf'<layer id="\d+" name="{re.escape(name)}" type="Const"[^>]*>\s*<data ([^/]*)/>', xml.read_text()
    )
    assert layer is not None, name
    fields = dict(re.findall(r'(\w+)="([^"]*)"', layer.group(1)))
    assert fields["element_type"] == "f32"
    start, size = int(fields["offset"]), int(fields["size"])
    weights = bytearray(xml.with_suffix(".bin").read_bytes())
    values = np.frombuffer(bytes(weights[start : start + size]), np.float32) / 2
    weights[start : start + size] = values.astype(np.float32).tobytes()
    xml.with_suffix(".bin").write_bytes(bytes(weights))


def halve_the_score(xml: Path) -> None:
    """An attacker's edit of the computation, every weight and the rt_info kept: the score multiplied by 0.5."""
    import openvino as ov

    ir = read_ir(xml)
    result = ir.output("score").get_node()  # the Result of the score
    source = result.input_value(0)
    halved = ov.opset13.multiply(source, ov.opset13.constant(np.float32(0.5)))
    source.get_tensor().set_names(set())
    halved.output(0).get_tensor().set_names({"score"})
    result.input(0).replace_source_output(halved.output(0))
    ov.save_model(ir, str(xml), compress_to_fp16=False)


def predict_process(checkpoint: Path, images: Path, output: Path) -> subprocess.CompletedProcess[str]:
    """`python -m anomaly_lab.predict ... backend=openvino` as a user runs it (the IR beside the checkpoint)."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "anomaly_lab.predict", f"ckpt_path={checkpoint}", f"input={images}"]
    command += [f"output={output}", "backend=openvino", "progress=false"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_a_stale_or_tampered_ir_is_refused_naming_the_file(
    ov: Any, tiny_run: Path, checkpoint: Path, tmp_path: Path
) -> None:
    images = Path(next(iter(scores_of(tiny_run)))).parent.parent
    export_run(config("export", [f"ckpt_path={checkpoint}", "format=openvino", "check=false"]))
    xml, weights = checkpoint.with_suffix(".xml"), checkpoint.with_suffix(".bin")
    exported = xml.read_bytes(), weights.read_bytes()
    args = [f"ckpt_path={checkpoint}", f"input={images}", "backend=openvino"]

    def restore() -> None:
        xml.write_bytes(exported[0])
        weights.write_bytes(exported[1])

    # a weight halved in the .bin, the rt_info (the checkpoint's digest too) kept: one line, exit 2, nothing written
    halve_constant(xml, "net.stem.0.weight")
    result = predict_process(checkpoint, images, tmp_path / "halved")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and not result.stdout.strip(), result.stderr
    assert lines[0].startswith(f"GraphMismatchError: openvino {xml} is not {checkpoint}'s model")
    assert "net.stem.0.weight" in lines[0] and "format=openvino" in lines[0] and "overwrite=true" in lines[0]
    assert not (tmp_path / "halved").exists()

    # the computation edited, every weight and the rt_info kept: refused by the outputs on random images
    restore()
    halve_the_score(xml)
    assert ir_metadata(read_ir(xml))[DIGEST_KEY] == file_sha256(checkpoint)
    with pytest.raises(GraphMismatchError, match=r"openvino .*model\.xml is not .*its score on random images is"):
        predict_run(config("predict", [*args, f"output={tmp_path / 'edited'}"]))
    assert not (tmp_path / "edited").exists()

    # no digest in the rt_info (another tool's IR), the .bin missing, a file that is no IR
    restore()
    text = xml.read_text()
    section = re.search(rf"<{RT_SECTION}>.*?</{RT_SECTION}>", text, re.DOTALL)
    assert section is not None
    xml.write_text(text.replace(section.group(0), re.sub(rf'<{DIGEST_KEY} value="[0-9a-f]+" />', "", section.group(0))))
    with pytest.raises(UserError, match=r"model\.xml: records no checkpoint digest"):
        predict_run(config("predict", [*args, f"output={tmp_path / 'nodigest'}"]))
    restore()
    weights.unlink()
    with pytest.raises(UserError, match=r"model\.xml: its weights model\.bin are not beside it"):
        predict_run(config("predict", [*args, f"output={tmp_path / 'nobin'}"]))
    restore()
    xml.write_text("<net>not an IR")
    with pytest.raises(UserError, match=r"model\.xml: not an OpenVINO IR"):
        predict_run(config("predict", [*args, f"output={tmp_path / 'broken'}"]))

    # a stale IR: the checkpoint changed after the export (here its threshold), nothing written
    restore()
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"]["model.threshold"] = torch.tensor(0.5)
    torch.save(saved, checkpoint)
    with pytest.raises(UserError, match=r"model\.xml was exported from another checkpoint.*stale.*overwrite=true"):
        predict_run(config("predict", [*args, f"output={tmp_path / 'stale'}"]))
    assert not (tmp_path / "stale").exists()


@pytest.mark.slow
def test_bench_predict_prints_the_three_backends_in_one_table(
    ov: Any, tiny_run: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from anomaly_lab.tools.bench_predict import COLUMNS, main

    pytest.importorskip("onnxruntime")
    images = Path(next(iter(scores_of(tiny_run)))).parent.parent  # the tiny run's test folder: good/ and defects
    export_run(config("export", [f"ckpt_path={checkpoint}", "format=openvino", "check=false"]))  # the IR beside it
    args = [f"ckpt_path={checkpoint}", f"input={images}", "batch_size=4", "threads=1", "repeats=1", "warmup=0"]
    results = main([*args, "backends=all"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5  # header, separator, torch, onnxruntime, openvino
    rows = [
        dict(zip(COLUMNS, [c.strip() for c in line.strip().strip("|").split("|")], strict=True)) for line in lines[2:]
    ]
    assert [row["backend"].split()[0] for row in rows] == ["torch", "onnxruntime", "openvino"]
    assert rows[2]["backend"] == f"openvino {ov.__version__.split('-')[0]}"
    assert {row["images"] for row in rows} == {str(len(list(images.rglob("*.png"))))}
    assert all(row["threads"] == "1" and float(row["img/s"]) > 0 for row in rows)
    aurocs = [result["image AUROC"] for result in results]
    assert isinstance(aurocs[0], float) and 0 <= aurocs[0] <= 1  # the folders give the truth
    assert aurocs == pytest.approx([aurocs[0]] * 3, abs=0.02)  # the same scores within 1e-4: ties aside, one AUROC
