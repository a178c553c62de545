"""OpenVINO: `python -m anomaly_lab.export format=openvino` writes the IR, `predict backend=openvino` runs it.

The IR (<ckpt stem>.xml + .bin beside the checkpoint) is the exported ONNX graph (anomaly_lab.export) read by
OpenVINO's own ONNX frontend (`ov.Core.read_model`) and saved with `ov.save_model(compress_to_fp16=False)`: the
same inputs and outputs ("images" (B,3,H,W) -> "anomaly_map" (B,1,H,W), "score" (B,)), float32 weights, a free
batch dimension. Not `ov.convert_model`: its offline passes fold each BatchNorm into its convolution, so the IR's
weights would no longer be the checkpoint's, bit for bit and by name, and the weight check below could not be
made; both give torch's maps within 3e-7 on the 128 px bottle model, and OpenVINO's CPU plugin does that folding
itself when it compiles.

The same integrity rule as the ONNX graph: the IR's rt_info records the checkpoint file's SHA-256 (with its spec,
preprocessing and threshold, under "anomaly_lab"), and predict refuses an IR that records another digest or none,
that lacks a weight of the checkpoint's model or holds one that differs (by Constant name, every bit), or whose
outputs on random images drawn afresh at each load are not the model's (export.probe_mismatch). The .xml and .bin
are read once into memory: the bytes checked are the bytes compiled.

OpenVINO is the optional `openvino` extra (pip install -e '.[openvino]'); it runs on the CPU here, in float32
(INFERENCE_PRECISION_HINT: a CPU with bf16 units would otherwise round), with threads= as INFERENCE_NUM_THREADS,
a batch split across OpenVINO's streams (OpenVinoSession).
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_lab.checkpoint_loading import first_line, read_checkpoint
from anomaly_lab.errors import ConfigError, UserError, as_typed
from anomaly_lab.export import (
    DIGEST_KEY,
    GraphMismatchError,
    export_onnx,
    file_sha256,
    probe_mismatch,
    session_outputs,
)
from anomaly_lab.model import InpaintingModel

log = logging.getLogger(__name__)
IR_SUFFIX = ".xml"  # the IR's graph; its weights are the .bin of the same stem
RT_SECTION = "anomaly_lab"  # the rt_info section of the IR that holds the export's metadata
INSTALL = "pip install -e '.[openvino]'"


def openvino_module() -> Any:
    """openvino, or a ConfigError saying how to install it."""
    try:
        import openvino
    except ImportError as error:
        raise ConfigError(
            f"backend=openvino and format=openvino need openvino (the openvino extra): {INSTALL}"
        ) from error
    return openvino


def openvino_device(name: str) -> torch.device:
    """predict's device for backend=openvino: the CPU (auto or cpu); cuda is refused."""
    if name in ("auto", "cpu"):
        return torch.device("cpu")
    raise ConfigError(f"device={as_typed(name)} is not valid with backend=openvino: it runs on the CPU (device=cpu)")


def weights_path(xml: Path) -> Path:
    """The .bin that holds the weights of the IR xml."""
    return xml.with_suffix(".bin")


def export_openvino(
    model: InpaintingModel, path: Path, spec: dict[str, Any], checkpoint_sha256: str | None = None
) -> int | str:
    """Write model (net and full-coverage scoring) as an OpenVINO IR: path (.xml) and its .bin; the ONNX export's
    metadata (checkpoint spec, preprocessing, threshold, the checkpoint's SHA-256 when given) in its rt_info.
    Returns the IR's batch dimension ("batch" when free)."""
    import onnx

    ov = openvino_module()
    with tempfile.TemporaryDirectory(prefix="anomaly_lab_openvino_") as folder:
        graph = Path(folder) / "model.onnx"
        export_onnx(model, graph, spec, checkpoint_sha256=checkpoint_sha256)
        metadata = {prop.key: prop.value for prop in onnx.load(str(graph), load_external_data=False).metadata_props}
        ir = ov.Core().read_model(str(graph))  # OpenVINO's ONNX frontend: weights kept under their names
        for key, value in metadata.items():
            ir.set_rt_info(value, [RT_SECTION, key])
        ov.save_model(ir, str(path), compress_to_fp16=False)  # float32 as exported: the fp16 default would round
    batch = ir.input(0).get_partial_shape()[0]
    return batch.get_length() if batch.is_static else "batch"


def ir_metadata(ir: Any) -> dict[str, str]:
    """The export's metadata in an IR's rt_info (RT_SECTION); empty when there is none."""
    if not ir.has_rt_info([RT_SECTION]):
        return {}
    section = ir.get_rt_info([RT_SECTION]).astype(dict)  # {key: OVAny}
    return {str(key): str(value.astype(str)) for key, value in section.items()}


def ir_weight_mismatch(ir: Any, model: InpaintingModel) -> str | None:
    """Why ir (an openvino Model) does not hold model's weights, or None when it does.

    Each parameter and buffer the exporter kept is a Constant named as in the model (net.stem.0.weight,
    coverage_masks): every parameter must be there, and every Constant of such a name must equal the model's
    tensor in shape, dtype and every bit. Other Constants (shapes, Gaussian windows) are the probe's to cover.
    """
    expected = {name: tensor.detach().cpu() for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    found: set[str] = set()
    for op in ir.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        for name in {op.get_friendly_name(), *op.output(0).get_names()} & expected.keys():
            ours, theirs = np.asarray(op.get_data()), expected[name].numpy()
            if ours.shape != theirs.shape or ours.dtype != theirs.dtype or not np.array_equal(ours, theirs):
                return f"its {name} {tuple(ours.shape)} {ours.dtype} differs from the checkpoint's"
            found.add(name)
    for name, _ in model.named_parameters():
        if name not in found:
            return f"it lacks the weight {name}"
    return None


class OpenVinoSession:
    """A compiled IR behind onnxruntime's session calls (get_inputs, run), so predict's OnnxScorer and export's
    probe run it as they run a graph.

    The IR is compiled for throughput (compile_ir): OpenVINO splits the threads into streams (2 cores: 2 streams of
    1 thread), and run() splits each batch into as many chunks, one per stream, run at once. The U-Net's narrow
    convolutions (8 to 64 channels) keep 2 threads of one stream half idle: on 2 busy cores, 2 streams scored
    ~1.3x the images of one. Each image's outputs are computed alone, whatever its chunk: the same values.
    Calls from several threads (predict's workers) take turns: the streams already run on every core.
    """

    class Input:
        def __init__(self, name: str, shape: list[int | str]) -> None:
            self.name = name
            self.shape = shape

    def __init__(self, compiled: Any) -> None:
        from openvino import AsyncInferQueue

        self.compiled = compiled
        self.streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = AsyncInferQueue(compiled, self.streams)
        self.queue.set_callback(self.collect)
        self.outputs: dict[int, list[np.ndarray]] = {}
        shape = compiled.input(0).get_partial_shape()
        dims: list[int | str] = [dim.get_length() if dim.is_static else "batch" for dim in shape]
        self.inputs = [self.Input(compiled.input(0).any_name, dims)]
        self.names: list[str] = []
        self.turn = threading.Lock()

    def get_inputs(self) -> list[Input]:
        return self.inputs

    def collect(self, request: Any, chunk: int) -> None:
        """A finished request's outputs (copies: its buffers are reused), in the order of self.names."""
        self.outputs[chunk] = [request.get_tensor(self.compiled.output(name)).data.copy() for name in self.names]

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        (name, images), *others = feed.items()
        if others:
            raise ValueError(f"the IR takes one input, got {sorted(feed)}")
        fixed = self.inputs[0].shape[0]
        chunks = [images] if isinstance(fixed, int) else np.array_split(images, max(1, min(self.streams, len(images))))
        with self.turn:
            self.names, self.outputs = list(names), {}
            for index, chunk in enumerate(chunks):
                self.queue.start_async({name: np.ascontiguousarray(chunk)}, index)
            self.queue.wait_all()
            outputs = self.outputs
        return [np.concatenate([outputs[index][k] for index in range(len(chunks))]) for k in range(len(names))]


def compile_ir(ov: Any, ir: Any, threads: int | None) -> Any:
    """ir compiled for the CPU in float32 for throughput (streams: OpenVinoSession), threads intra-op threads in
    all (None: OpenVINO's default, every core)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(ir, "CPU", config)


def ir_mismatch_message(path: Path, ckpt: Path, reason: str) -> str:
    """GraphMismatchError's line for an IR: it is not ckpt's model, why, and how to get one that is."""
    return (
        f"openvino {path} is not {ckpt}'s model, whatever its rt_info says: {reason} (a tampered or foreign IR); "
        f"delete it and export again (python -m anomaly_lab.export ckpt_path={ckpt} format=openvino "
        f"output={path} overwrite=true)"
    )


def read_checked_ir(ov: Any, path: Path, ckpt: Path, digest: str, model: InpaintingModel) -> Any:
    """The IR at path (.xml and its .bin) as an openvino Model, refused (UserError, GraphMismatchError) unless it
    records digest and holds model's weights."""
    reexport = (
        f"re-export it (python -m anomaly_lab.export ckpt_path={ckpt} format=openvino output={path} overwrite=true)"
    )
    bin_path = weights_path(path)
    if not bin_path.is_file():
        raise UserError(f"openvino {path}: its weights {bin_path.name} are not beside it; {reexport}")
    xml_text, weights = path.read_bytes(), bin_path.read_bytes()
    try:
        ir = ov.Core().read_model(xml_text.decode(), ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
    except Exception as error:  # openvino's errors (RuntimeError, GeneralFailure) and a bad encoding alike
        raise UserError(f"openvino {path}: not an OpenVINO IR ({first_line(error)}); {reexport}") from error
    recorded = ir_metadata(ir).get(DIGEST_KEY)
    if recorded is None:
        raise UserError(
            f"openvino {path}: records no checkpoint digest ({RT_SECTION}/{DIGEST_KEY} in its rt_info; exported by "
            f"another tool), so it cannot be told to be {ckpt}'s model; {reexport}"
        )
    if recorded != digest:
        raise UserError(
            f"openvino {path} was exported from another checkpoint than {ckpt} ({DIGEST_KEY} {recorded[:12]}... "
            f"recorded, {digest[:12]}... now): a stale export; {reexport}"
        )
    reason = ir_weight_mismatch(ir, model)
    if reason is not None:
        raise GraphMismatchError(ir_mismatch_message(path, ckpt, reason))
    return ir


def openvino_session(ckpt: Path, model: InpaintingModel, threads: int | None) -> tuple[OpenVinoSession, str]:
    """The checkpoint's IR compiled for the CPU, and where it came from.

    <ckpt stem>.xml beside the checkpoint when there is one, refused unless it is this checkpoint's model
    (read_checked_ir; then its outputs on fresh random images, export.probe_mismatch); else the model is exported
    to a temporary folder first (export's IR, the same as `python -m anomaly_lab.export format=openvino`).
    """
    ov = openvino_module()
    digest = file_sha256(ckpt)
    path = ckpt.with_suffix(IR_SUFFIX)
    if path.is_file():
        ir = read_checked_ir(ov, path, ckpt, digest, model)
        try:
            session = OpenVinoSession(compile_ir(ov, ir, threads))
        except Exception as error:  # openvino's own errors share no base class with ours
            raise UserError(f"openvino {path}: OpenVINO cannot compile it ({first_line(error)})") from error
        reason = probe_mismatch(session, model)
        if reason is not None:
            raise GraphMismatchError(ir_mismatch_message(path, ckpt, reason))
        return session, str(path)
    log.info(
        "no %s beside the checkpoint: exporting the model to a temporary folder first "
        "(python -m anomaly_lab.export ckpt_path=%s format=openvino keeps one there)",
        path.name,
        ckpt,
    )
    spec, _ = read_checkpoint(ckpt)
    with tempfile.TemporaryDirectory(prefix="anomaly_lab_openvino_") as folder:
        temporary = Path(folder) / path.name
        export_openvino(model, temporary, spec, checkpoint_sha256=digest)
        ir = ov.Core().read_model(str(temporary))
        session = OpenVinoSession(compile_ir(ov, ir, threads))
    return session, "exported to a temporary folder"


def openvino_deviation(path: Path, model: InpaintingModel, batch: int = 2) -> dict[str, float]:
    """Largest absolute difference between the IR's outputs in OpenVINO and torch's, on seeded random images."""
    ov = openvino_module()
    session = OpenVinoSession(compile_ir(ov, ov.Core().read_model(str(path)), None))
    images = torch.rand(batch, 3, *model.input_shape, generator=torch.Generator().manual_seed(1))
    outputs = session_outputs(session, model, images)
    return {name: float(np.abs(ours - torchs).max()) for name, (ours, torchs) in outputs.items()}


def run_export(model: InpaintingModel, output: Path, ckpt: Path, check: bool) -> dict[str, Any]:
    """export's format=openvino: the IR at output (and its .bin), with OpenVINO's deviation from torch if check."""
    spec, _ = read_checkpoint(ckpt)
    batch = export_openvino(model, output, spec, file_sha256(ckpt))
    log.info(
        "wrote %s and %s: images (%s,3,%d,%d) -> anomaly_map, score",
        output,
        weights_path(output).name,
        batch,
        *model.input_shape,
    )
    result: dict[str, Any] = {
        "output": str(output),
        "weights": str(weights_path(output)),
        "batch": batch,
        "image_size": model.image_size,
    }
    if check:
        result["max_abs_error"] = openvino_deviation(output, model, batch if isinstance(batch, int) else 2)
        log.info("openvino vs torch, max abs error: %s", result["max_abs_error"])
    return result
