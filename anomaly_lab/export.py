"""`python -m anomaly_lab.export ckpt_path=... format=onnx`: the trained net with its full-coverage scoring as ONNX.

The graph takes "images" (B,3,H,W) float32 prepared as in training (anomaly_lab.preprocessing) and returns
"anomaly_map" (B,1,H,W) and "score" (B,): every masked pass, the stitching and the anomaly map are in it, so a
runtime needs nothing else. The checkpoint spec, the preprocessing, the threshold and the SHA-256 of the checkpoint
file (`checkpoint_sha256`: predict's onnxruntime backend refuses a graph exported from another checkpoint) go into
the model's metadata.

That digest is a string in the file: anyone who can edit the graph can keep it. So predict also checks the graph
against the checkpoint it already trusts: every weight of the model must be in the graph under its own name, bit for
bit (weight_mismatch: a halved or foreign weight is refused), and the graph must give the model's maps and scores on
random images drawn afresh at each load (probe_mismatch: an edited node is refused). Not covered: a graph crafted
to act as the model on random images and otherwise on real ones (docs/predict.md, "Which graph runs").

format=openvino: this graph as an OpenVINO IR (.xml + .bin) under the same checks (anomaly_lab.openvino_backend).

Exporter: torch's torch.export-based one (dynamo=True, which needs onnxscript, part of the `onnx` extra).
The older TorchScript exporter (dynamo=False) cannot export the computed Gaussian windows of the MSGMS
blur and SSIM maps ("convolution for kernel of unknown shape").
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from anomaly_lab.checkpoint_loading import load_model, read_checkpoint
from anomaly_lab.cli import run_cli, user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import UserError
from anomaly_lab.model import InpaintingModel

log = logging.getLogger(__name__)
FORMATS = ("onnx", "openvino")  # openvino: the IR (.xml + .bin) of the ONNX graph, anomaly_lab.openvino_backend
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}  # output=null: beside the checkpoint with this suffix
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["anomaly_map", "score"]
DIGEST_KEY = "checkpoint_sha256"  # metadata: the SHA-256 of the checkpoint file the graph was exported from
# check_graph's probe: largest deviation from torch, relative to torch's largest output (float32 kernels of two
# runtimes differ by ~1e-6; any edit of the computation that matters to a score moves it far more)
PROBE_TOLERANCE = 1e-3


class GraphMismatchError(UserError):
    """An exported graph that is not the checkpoint's model: other weights, or other outputs on random images."""


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

    With dynamic_batch the exporter is asked for a free batch dimension; where the traced code fixes it (a map
    that splits a batch by its size), it falls back to the example's batch of 1.
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
        "pixel_threshold": repr(float(model.pixel_threshold)),
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


def session_outputs(session: Any, model: InpaintingModel, images: torch.Tensor) -> dict[str, tuple[np.ndarray, ...]]:
    """Each output's (onnxruntime, torch) arrays on images (B,3,H,W): anomaly_map (B,1,H,W), score (B,)."""
    onnx_maps, onnx_scores = session.run(OUTPUT_NAMES, {INPUT_NAMES[0]: images.numpy()})
    with torch.no_grad():
        maps, scores = model.cpu().eval()(images)  # (B,1,H,W), (B,)
    return {"anomaly_map": (onnx_maps, maps.numpy()), "score": (onnx_scores, scores.numpy())}


def onnx_deviation(path: Path, model: InpaintingModel, batch: int = 2) -> dict[str, float]:
    """Largest absolute difference between onnxruntime's and torch's outputs on seeded random images."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(batch, 3, *model.input_shape, generator=torch.Generator().manual_seed(1))
    outputs = session_outputs(session, model, images)
    return {name: float(np.abs(ours - torchs).max()) for name, (ours, torchs) in outputs.items()}


def weight_mismatch(graph: Any, model: InpaintingModel) -> str | None:
    """Why graph (an onnx ModelProto) does not hold model's weights, or None when it does.

    The exporter stores each parameter and buffer it uses as an initializer under its own name (net.stem.0.weight,
    coverage_masks): every parameter must be there, and every initializer of such a name must equal the model's
    tensor in shape, dtype and every bit. An initializer stored in an external file is refused unread.
    """
    from onnx import TensorProto, numpy_helper

    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    expected = {name: tensor.detach().cpu() for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    for name, _ in model.named_parameters():
        if name not in initializers:
            return f"it lacks the weight {name}"
    for name, tensor in initializers.items():
        if tensor.data_location == TensorProto.EXTERNAL:  # any initializer: the exporter writes none (a file read)
            return f"it keeps {name} in an external file"
        if name not in expected:
            continue  # a constant of the trace (shapes, Gaussian windows): the probe covers it
        ours, theirs = numpy_helper.to_array(tensor), expected[name].numpy()
        if ours.shape != theirs.shape or ours.dtype != theirs.dtype or not np.array_equal(ours, theirs):
            return f"its {name} {tuple(ours.shape)} {ours.dtype} differs from the checkpoint's"
    return None


def probe_mismatch(session: Any, model: InpaintingModel) -> str | None:
    """Why session's graph does not compute model's maps and scores, or None: both run on random images drawn
    with a fresh seed (so a graph cannot single out the probe), and every output must agree with torch's to
    PROBE_TOLERANCE of torch's largest output."""
    batch = session.get_inputs()[0].shape[0]
    batch = batch if isinstance(batch, int) and batch > 0 else 1  # a fixed batch is fed as exported
    generator = torch.Generator().manual_seed(secrets.randbits(63))
    images = torch.rand(batch, 3, *model.input_shape, generator=generator)  # (B,3,H,W)
    try:
        outputs = session_outputs(session, model, images)
    except Exception as error:  # onnxruntime's own errors (Fail, InvalidArgument, ...) share no base class
        return f"it does not run on images {tuple(images.shape)} ({str(error).strip().splitlines()[0]})"
    for name, (ours, torchs) in outputs.items():
        if ours.shape != torchs.shape:
            return f"its {name} has the shape {ours.shape}, the model's {torchs.shape}"
        scale = float(np.abs(torchs).max())
        deviation = float(np.abs(ours.astype(np.float64) - torchs).max())
        if not deviation <= PROBE_TOLERANCE * scale + 1e-12:  # not <=: a NaN output is refused too
            return f"its {name} on random images is {deviation:.3g} off the model's (largest value {scale:.3g})"
    return None


def graph_mismatch_message(path: Path, ckpt: Path, reason: str) -> str:
    """GraphMismatchError's line: the graph at path is not ckpt's model, why (weight_mismatch or probe_mismatch's
    reason), and how to get one that is."""
    return (
        f"onnx {path} is not {ckpt}'s model, whatever its metadata says: {reason} (a tampered or foreign graph); "
        f"delete it and export again (python -m anomaly_lab.export ckpt_path={ckpt} output={path} overwrite=true)"
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Export cfg.ckpt_path's model in cfg.format; returns what was written and, with cfg.check, the deviation."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r} is not supported; choose one of {', '.join(FORMATS)}")
    ckpt_path = Path(str(cfg.ckpt_path))
    output = Path(str(cfg.output)) if cfg.output is not None else ckpt_path.with_suffix(SUFFIXES[cfg.format])
    written = [output, output.with_suffix(".bin")] if cfg.format == "openvino" else [output]
    for path in written:
        if path.exists() and not cfg.overwrite:
            raise FileExistsError(f"output {path} exists; choose another output=... or pass overwrite=true")
    model = load_model(ckpt_path, "cpu")
    if cfg.format == "openvino":
        from anomaly_lab.openvino_backend import run_export  # it imports this module

        output.parent.mkdir(parents=True, exist_ok=True)
        return run_export(model, output, ckpt_path, bool(cfg.check))
    spec, _ = read_checkpoint(ckpt_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    batch = export_onnx(model, output, spec, int(cfg.opset), bool(cfg.dynamic_batch), file_sha256(ckpt_path))
    result: dict[str, Any] = {"output": str(output), "batch": batch, "image_size": model.image_size}
    log.info("wrote %s: images (%s,3,%d,%d) -> anomaly_map, score", output, batch, *model.input_shape)
    if cfg.dynamic_batch and batch != "batch":
        log.warning("the exported graph fixes the batch size to %s (the anomaly map's code); feed that many", batch)
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
