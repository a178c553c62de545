"""ONNX export of a trained checkpoint: onnxruntime's maps and scores match torch's (the `onnx` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.data.images import read_image
from anomaly_lab.export import run
from anomaly_lab.inference import SPEC_KEY, load_model

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # torch's torch.export-based ONNX exporter needs it

TOLERANCE = 1e-4  # float32 kernels of two runtimes; seen: below 1e-6


def export_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="export", overrides=overrides)


def test_onnx_scores_match_torch(tiny_run: Path, tmp_path: Path) -> None:
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"
    output = tmp_path / "model.onnx"
    result = run(export_config([f"ckpt_path={checkpoint}", f"output={output}"]))
    assert result["batch"] == "batch"  # a free batch dimension: riad's MSGMS map exports without fixing it
    assert max(result["max_abs_error"].values()) < TOLERANCE

    model = load_model(checkpoint)
    paths = sorted(Path(line.split(",")[0]) for line in (tiny_run / "scores.csv").read_text().splitlines()[1:])
    images = np.stack([read_image(path, model.image_size) for path in paths[:3]])  # (3,S,S,3) uint8 test images
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
