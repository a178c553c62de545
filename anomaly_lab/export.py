"""`python -m anomaly_lab.export ckpt_path=... format=onnx`: the trained net with its full-coverage scoring as ONNX.

The graph takes "images" (B,3,H,W) float32 prepared as in training (anomaly_lab.preprocessing) and returns
"anomaly_map" (B,1,H,W) and "score" (B,): every masked pass, the stitching and the anomaly map are in it, so a
runtime needs nothing else. The checkpoint spec, the preprocessing, the threshold and the SHA-256 of the checkpoint
file (`checkpoint_sha256`: predict's onnxruntime backend refuses a graph exported from another checkpoint) go into
the model's metadata.

Exporter: torch's torch.export-based one (dynamo=True, which needs onnxscript, part of the `onnx` extra).
The older TorchScript exporter (dynamo=False) cannot export the computed Gaussian windows of the MSGMS
blur and SSIM maps ("convolution for kernel of unknown shape").
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from anomaly_lab.cli import run_cli, user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.inference import load_model, read_checkpoint
from anomaly_lab.model import InpaintingModel

log = logging.getLogger(__name__)
FORMATS = ("onnx",)
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["anomaly_map", "score"]
DIGEST_KEY = "checkpoint_sha256"  # metadata: the SHA-256 of the checkpoint file the graph was exported from


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_onnx(
    model: InpaintingModel,
    path: Path,
    spec: dict[str, Any],
    opset: int = 18,
    dynamic_batch: bool = True,
    checkpoint_sha256: str | None = None,
) -> int | str:
    """Write the model (net and full-coverage scoring) as ONNX to path, with its checkpoint spec and preprocessing
    (and the checkpoint file's SHA-256, when given) in the metadata; returns the graph's batch dimension ("batch"
    when free).

    With dynamic_batch the exporter is asked for a free batch dimension; where the traced code fixes it
    (torchmetrics' SSIM splits a batch by its size), it falls back to the example's batch of 1.
    """
    try:
        import onnx
    except ImportError as error:
        raise ImportError("ONNX export needs the onnx extra: pip install -e '.[onnx]'") from error
    # the graph optimiser logs every folded constant (and each op it cannot fold); torch's exporter lists the
    # torchvision ops it skips (torchvision is not a dependency): none of it concerns this graph
    for name in ("onnxscript", "onnx_ir", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    scorer = model.cpu().eval()
    example = torch.rand(1, 3, *model.input_shape, generator=torch.Generator().manual_seed(0))
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    torch.onnx.export(
        scorer,
        (example,),
        str(path),
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        dynamo=True,
        external_data=False,  # one self-contained file (the 512px U-Net is ~120 MB, far below protobuf's 2 GB)
        verbose=False,
    )
    proto = onnx.load(str(path))
    metadata = {
        "anomaly_lab_spec": json.dumps(spec),
        "preprocessing": json.dumps(asdict(model.preprocessing)),
        "threshold": repr(float(model.threshold)),
        "image_size": str(model.image_size),
        "input_shape": "x".join(map(str, model.input_shape)),  # H x W: image_size x image_size, or the crop_height band
        "input": "images (B,3,H,W) float32: prepared as `preprocessing` says (anomaly_lab.preprocessing)",
    }
    if checkpoint_sha256 is not None:
        metadata[DIGEST_KEY] = checkpoint_sha256
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return batch.dim_param or int(batch.dim_value)


def onnx_deviation(path: Path, model: InpaintingModel, batch: int = 2) -> dict[str, float]:
    """Largest absolute difference between onnxruntime's and torch's outputs on seeded random images."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(batch, 3, *model.input_shape, generator=torch.Generator().manual_seed(1))
    onnx_maps, onnx_scores = session.run(OUTPUT_NAMES, {INPUT_NAMES[0]: images.numpy()})
    with torch.no_grad():
        maps, scores = model.cpu().eval()(images)  # (B,1,H,W), (B,)
    return {
        "anomaly_map": float(np.abs(onnx_maps - maps.numpy()).max()),
        "score": float(np.abs(onnx_scores - scores.numpy()).max()),
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Export cfg.ckpt_path's model in cfg.format; returns what was written and, with cfg.check, the deviation."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r} is not supported; choose one of {', '.join(FORMATS)}")
    ckpt_path = Path(str(cfg.ckpt_path))
    output = Path(str(cfg.output)) if cfg.output is not None else ckpt_path.with_suffix(f".{cfg.format}")
    if output.exists() and not cfg.overwrite:
        raise FileExistsError(f"output {output} exists; choose another output=... or pass overwrite=true")
    model = load_model(ckpt_path, "cpu")
    spec, _ = read_checkpoint(ckpt_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    batch = export_onnx(model, output, spec, int(cfg.opset), bool(cfg.dynamic_batch), file_sha256(ckpt_path))
    result: dict[str, Any] = {"output": str(output), "batch": batch, "image_size": model.image_size}
    log.info("wrote %s: images (%s,3,%d,%d) -> anomaly_map, score", output, batch, *model.input_shape)
    if cfg.dynamic_batch and batch != "batch":
        log.warning("the exported graph fixes the batch size to %s (SSIM in the anomaly map); feed that many", batch)
    if cfg.check:
        try:
            deviation = onnx_deviation(output, model, batch if isinstance(batch, int) else 2)
        except ImportError:
            log.warning("onnxruntime is not installed: skipped the check (pip install -e '.[onnx]')")
        else:
            result["max_abs_error"] = deviation
            log.info("onnxruntime vs torch, max abs error: %s", deviation)
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors_exit():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
