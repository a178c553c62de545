"""`python -m anomaly_lab.predict ckpt_path=... input=<file|folder|glob> output=...`: score new images.

Per image: its score, a prediction at the checkpoint's threshold (or `score_threshold=`), a heatmap overlay and a
binary mask, both PNGs the size of the input (of a file of more than 4 megapixels decoded at reduced size, as the
model's preprocessing allows: that size, logged); scores.csv and summary.json for the lot. A model trained on
tiles of pages scores every tile of each page and also draws the page with its tile grid (pages/, tiles.csv).
Images are prepared by the training rule; a file that cannot be read (or is larger than max_image_pixels) is
named in the log and in summary.json and skipped, so one bad file never stops the batch; scoring nothing at all
is an error. Outputs are written into a staging folder beside the output and moved into place at the end, so a
run that fails leaves no output behind.

Files are scored in batches across files, in input order: batch_size images (or tiles) per forward pass, a batch
also closing once its decoded images hold max_image_pixels (memory stays bounded). backend=torch runs the
checkpoint's model (stack_passes=true: every masked pass of a batch in one net call); backend=onnxruntime runs
its exported graph (anomaly_lab.export): `onnx=`, else <ckpt stem>.onnx beside the checkpoint, refused unless it
records this checkpoint's SHA-256 and holds its weights and computes its outputs, else a fresh export to a
temporary file; backend=openvino runs the IR <ckpt stem>.xml beside the checkpoint under the same rule
(anomaly_lab.openvino_backend). threads= sets the backend's intra-op threads.
`python -m anomaly_lab.tools.bench_predict` measures the throughput.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from anomaly_lab.checkpoint_loading import first_line, load_model, read_checkpoint
from anomaly_lab.cli import run_cli, user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.data.images import (
    FAINT_ADVICE,
    IMAGE_SUFFIXES,
    BadImageError,
    check_max_image_pixels,
    faint_content,
)
from anomaly_lab.data.tiles import TileGrid, TileSizeError, cut_tiles, stitch_tiles
from anomaly_lab.errors import ConfigError, UserError, as_typed
from anomaly_lab.export import (
    DIGEST_KEY,
    INPUT_NAMES,
    OUTPUT_NAMES,
    GraphMismatchError,
    export_onnx,
    file_sha256,
    graph_mismatch_message,
    probe_mismatch,
    weight_mismatch,
)
from anomaly_lab.model import InpaintingModel
from anomaly_lab.openvino_backend import openvino_device, openvino_session
from anomaly_lab.predict_outputs import (
    Drawing,
    Scored,
    output_name,
    prepare_output,
    publish,
    write_image_outputs,
    write_tables,
)
from anomaly_lab.preprocessing import PreparedImage, Preprocessing, resize_map
from anomaly_lab.report_page import write_report
from anomaly_lab.scoring import full_coverage_scores

log = logging.getLogger(__name__)
GRAPH_KEYS = {"onnxruntime": "onnx", "openvino": "openvino"}  # summary.json's key for where the graph came from
BACKENDS = ("torch", "onnxruntime", "openvino")  # openvino: anomaly_lab.openvino_backend (the openvino extra)


def find_inputs(pattern: str) -> tuple[list[Path], Path]:
    """The images to score and the folder their output names are relative to.

    A folder is searched with its subfolders for files with an image suffix; a glob keeps the matches
    with an image suffix (and searches matched folders); a single file is taken whatever its suffix.
    """
    path = Path(pattern)
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise BadImageError(f"input {path}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images in it or below)")
        return files, path
    if not glob.has_magic(pattern):
        raise FileNotFoundError(f"input {pattern}: no such file or folder")
    found: set[Path] = set()
    for match in map(Path, glob.glob(pattern, recursive=True)):
        candidates = match.rglob("*") if match.is_dir() else [match]
        found.update(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise BadImageError(f"input {pattern}: matches no {'/'.join(IMAGE_SUFFIXES)} image")
    files = sorted(found)
    return files, Path(os.path.commonpath([p.parent.absolute() for p in files]))


# A backend's forward: units (b,S,S,3) uint8 -> anomaly maps (b,S,S) float32 and scores (b,) float32.
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def stacked_passes_forward(model: InpaintingModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """model(images) with all its masked passes in one net call over (passes x B) images.  # (B,1,S,S), (B,)

    model.forward calls the net once per mask, each time on the B images. Here the P masked copies of the batch
    go through the net together, and the net's outputs are handed back one per mask to the model's own
    full-coverage scoring (full_coverage_scores, which calls its net once per mask in the order of
    model.coverage_masks), so the stitching, maps and scores are the model's: only the net's batches differ.
    Fewer, larger net calls: what a GPU is fed best (not measured yet); on a 2-core CPU it ran slower
    (anomaly_lab.tools.bench_predict measures it: stack_passes=true).
    """
    if tuple(images.shape[-2:]) != model.input_shape:
        raise ValueError(f"expected {'x'.join(map(str, model.input_shape))} images, got {tuple(images.shape)}")
    images = images.contiguous(memory_format=model.memory_format)
    masks = model.coverage_masks  # (P,1,S,S): every set's masks, sets in order
    masked = model.masking.apply(images[None], masks[:, None]).flatten(0, 1)  # (P*B,3,S,S)
    recons = model.net(masked.contiguous(memory_format=model.memory_format))  # (P*B,3,S,S)
    outputs = iter(recons.unflatten(0, (len(masks), len(images))))  # P of (B,3,S,S)

    def replay(_: torch.Tensor) -> torch.Tensor:
        return next(outputs)

    mask_sets = masks.split(model.set_sizes)
    result = full_coverage_scores(
        replay, images, model.masking, model.anomaly_map, model.reduce, model.topk_fraction, mask_sets
    )
    if next(outputs, None) is not None:  # full_coverage_scores took fewer passes than there are masks
        raise RuntimeError("stacked passes: full-coverage scoring did not use every masked pass")
    return result


class TorchScorer:
    """backend=torch: the checkpoint's model (model.forward, or every masked pass in one call: stack_passes)."""

    def __init__(self, model: InpaintingModel, stack_passes: bool = False) -> None:
        self.model = model
        self.stack_passes = stack_passes

    @torch.no_grad()
    def __call__(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = self.model.preprocessing.to_tensor(units).to(self.model.threshold.device)  # (b,3,S,S)
        maps, scores = stacked_passes_forward(self.model, images) if self.stack_passes else self.model(images)
        return maps[:, 0].float().cpu().numpy(), scores.float().cpu().numpy()  # (b,S,S), (b,)


class OnnxScorer:
    """backend=onnxruntime: the exported graph (anomaly_lab.export) in an onnxruntime session.

    A graph whose batch dimension is fixed (dynamic_batch=false) is fed that many images at a time, the last
    chunk padded with blank images whose results are dropped.
    """

    def __init__(self, session: Any, preprocessing: Preprocessing) -> None:
        self.session = session
        self.preprocessing = preprocessing
        batch = session.get_inputs()[0].shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def __call__(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.ascontiguousarray(self.preprocessing.to_tensor(units).numpy(), dtype=np.float32)  # (b,3,S,S)
        step = self.fixed_batch or len(images)
        maps, scores = [], []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            count = len(chunk)
            if count < step:
                chunk = np.concatenate([chunk, np.zeros((step - count, *chunk.shape[1:]), np.float32)])
            chunk_maps, chunk_scores = self.session.run(OUTPUT_NAMES, {INPUT_NAMES[0]: chunk})
            maps.append(chunk_maps[:count, 0])
            scores.append(chunk_scores[:count])
        return np.concatenate(maps).astype(np.float32), np.concatenate(scores).astype(np.float32)


def score_units(scorer: Scorer, units: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps (N,S,S) and scores (N,) of images or tiles units (N,S,S,3) uint8, batch_size per forward."""
    maps, scores = [], []
    for start in range(0, len(units), batch_size):
        chunk_maps, chunk_scores = scorer(units[start : start + batch_size])
        maps.append(chunk_maps)
        scores.append(chunk_scores)
    return np.concatenate(maps), np.concatenate(scores)


@dataclass
class Prepared:
    """One readable input, ready to score: the decoded file and the model-size units cut from it."""

    path: Path
    image: np.ndarray  # (H,W,3) uint8 as decoded: outputs are drawn on it at its size
    units: np.ndarray  # (N,S,S,3) uint8: the resized image (N=1) or a tiled page's tiles
    grid: TileGrid | None = None  # tiled models: the page's tile grid
    page_shape: tuple[int, int] | None = None  # tiled models: (h,w) of the prepared page
    pose: np.ndarray | None = None  # orient: the (2,3) map that turned the image before it was scored

    @property
    def pixels(self) -> int:
        return int(self.image.shape[0] * self.image.shape[1])


@dataclass
class Skipped:
    """An input that could not be scored (unreadable, larger than max_image_pixels, a page smaller than a tile)."""

    path: Path
    error: BadImageError


def prepare_file(path: Path, preprocessing: Preprocessing, max_pixels: int | None) -> Prepared:
    """Decode one file and prepare it as in training (model.preprocessing). BadImageError if unusable.

    A large file is decoded at reduced size as in training (Preprocessing.decode_factors); its outputs (map,
    heatmap, mask) are then at that size, which is logged.
    """
    prepared = preprocessing.load(path, max_pixels=max_pixels)
    height, width = prepared.decoded.shape[:2]
    if (width, height) != prepared.file_size:
        log.info(
            "%s: a %dx%d file, decoded at %dx%d (the model sees %d px): its heatmap and mask are that size",
            path,
            *prepared.file_size,
            width,
            height,
            preprocessing.image_size,
        )
    return units_of(prepared, path, preprocessing)


def prepare_image(image: np.ndarray, path: Path, preprocessing: Preprocessing) -> Prepared:
    """A decoded image (H,W,3) uint8 prepared as in training (path names it in messages). BadImageError if unusable."""
    return units_of(preprocessing.prepare(image, source=str(path)), path, preprocessing)


def units_of(prepared: PreparedImage, path: Path, preprocessing: Preprocessing) -> Prepared:
    """What predict scores of a prepared image: the model input, or the tiles of a page (a page smaller than a tile:
    BadImageError). Outputs go back on the decoded image as it is (prepared.pose: orient's turn)."""
    faint = faint_content(prepared.image)  # as training's check (data.images.warn_faint_files) sees it
    if faint is not None:  # scored all the same, but its score says nothing about defects
        log.warning("%s: %s image: its score says little; %s", path, faint, FAINT_ADVICE)
    if not preprocessing.tiled:
        return Prepared(path, prepared.decoded, prepared.image[None], pose=prepared.pose)
    page = prepared.image  # (h,w,3)
    try:
        grid = preprocessing.tile_grid(*page.shape[:2])
    except TileSizeError as error:
        raise BadImageError(f"{path}: {error}") from error
    return Prepared(path, prepared.decoded, cut_tiles(page, grid), grid, (page.shape[0], page.shape[1]))


def scored_result(item: Prepared, maps: np.ndarray, scores: np.ndarray, preprocessing: Preprocessing) -> Scored:
    """An input's result from its units' maps (N,H,W) and scores (N,): the map on the file, at its size."""
    height, width = item.image.shape[:2]
    if item.grid is None or item.page_shape is None:
        anomaly_map = preprocessing.map_on_file(maps[0], item.pose, height, width, str(item.path))
        return Scored(item.path, float(scores[0]), anomaly_map)
    page_map = stitch_tiles(maps, item.grid, item.page_shape)  # (h,w); 0 where no tile lies (border=drop)
    tiled_page = stitch_tiles(item.units, item.grid, item.grid.covered)  # (h',w',3)
    # a page is as anomalous as its worst tile
    return Scored(item.path, float(scores.max()), resize_map(page_map, height, width), item.grid, scores, tiled_page)


def score_pending(
    pending: list[Prepared | Skipped], scorer: Scorer, batch_size: int, preprocessing: Preprocessing
) -> Iterator[tuple[Scored, np.ndarray] | Skipped]:
    """Score the prepared inputs of pending together, batch_size units per forward; yield each entry in order."""
    items = [entry for entry in pending if isinstance(entry, Prepared)]
    results: Iterator[tuple[Prepared, np.ndarray, np.ndarray]] = iter(())
    if items:
        maps, scores = score_units(scorer, np.concatenate([item.units for item in items]), batch_size)
        bounds = np.cumsum([len(item.units) for item in items])[:-1]
        results = zip(items, np.split(maps, bounds), np.split(scores, bounds), strict=True)
    for entry in pending:
        if isinstance(entry, Skipped):
            yield entry
        else:
            item, item_maps, item_scores = next(results)
            yield scored_result(item, item_maps, item_scores, preprocessing), item.image


def score_stream(
    files: list[Path],
    preprocessing: Preprocessing,
    scorer: Scorer,
    batch_size: int,
    max_pixels: int | None,
    workers: int = 1,
) -> Generator[tuple[Scored, np.ndarray] | Skipped, None, None]:
    """Each file's result, in the order of files: (Scored, the decoded image (H,W,3) uint8), or Skipped.

    Files are read and prepared one by one and scored in batches across files: a batch closes once it holds
    batch_size units (images, or tiles: a page's tiles may fill several forwards) or once its decoded images
    hold max_pixels pixels (memory stays bounded as when files were scored one at a time: at most max_pixels
    plus the last image). A file that cannot be used is a Skipped, and the others score on.
    With workers > 1 see `score_in_parallel`.
    """
    if workers > 1:
        yield from score_in_parallel(files, preprocessing, scorer, batch_size, max_pixels, workers)
        return
    pending: list[Prepared | Skipped] = []
    units = pixels = 0
    for path in files:
        try:
            item = prepare_file(path, preprocessing, max_pixels)
        except BadImageError as error:
            if units == 0:  # nothing waits to be scored before it: report it now
                yield Skipped(path, error)
            else:
                pending.append(Skipped(path, error))
            continue
        pending.append(item)
        units += len(item.units)
        pixels += item.pixels
        if units >= batch_size or (max_pixels is not None and pixels >= max_pixels):
            yield from score_pending(pending, scorer, batch_size, preprocessing)
            pending, units, pixels = [], 0, 0
    yield from score_pending(pending, scorer, batch_size, preprocessing)


def score_in_parallel(
    files: list[Path],
    preprocessing: Preprocessing,
    scorer: Scorer,
    batch_size: int,
    max_pixels: int | None,
    workers: int,
) -> Iterator[tuple[Scored, np.ndarray] | Skipped]:
    """score_stream's results, in the order of files, from workers threads that each score a run of batch_size
    files at a time (decoding, preparing, the forward, maps at the file's size) with the one shared scorer.

    Decoding and the forward release the GIL, so on 2 cores two workers with a 1-thread forward each keep both
    cores busy where one worker leaves them idle while it decodes (docs/lab/2026-12-06-predict-speed.md). The
    batches are score_stream's, each image's outputs are computed alone: the results are the same as one
    worker's. Memory: up to workers + 1 runs of batch_size decoded images (and max_pixels each) at once.
    """

    def score_run(run: list[Path]) -> list[tuple[Scored, np.ndarray] | Skipped]:
        return list(score_stream(run, preprocessing, scorer, batch_size, max_pixels))

    pool = ThreadPoolExecutor(workers, thread_name_prefix="predict")
    waiting: deque[Future[list[tuple[Scored, np.ndarray] | Skipped]]] = deque()
    try:
        for start in range(0, len(files), batch_size):
            waiting.append(pool.submit(score_run, files[start : start + batch_size]))
            if len(waiting) > workers:
                yield from waiting.popleft().result()
        while waiting:
            yield from waiting.popleft().result()
    finally:  # stopped early (an error, Ctrl-C): the runs not started are dropped, the running ones finish
        pool.shutdown(wait=True, cancel_futures=True)


def onnx_module() -> Any:
    """onnx (to read an exported graph's weights), or a ConfigError saying how to install it."""
    try:
        import onnx
    except ImportError as error:
        raise ConfigError(
            "backend=onnxruntime needs onnx to check the graph (the onnx extra): pip install -e '.[onnx]'"
        ) from error
    return onnx


def onnxruntime_module() -> Any:
    """onnxruntime, or a ConfigError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ConfigError("backend=onnxruntime needs onnxruntime (the onnx extra): pip install -e '.[onnx]'") from error
    return onnxruntime


def resolve_device(name: str, backend: str = "torch") -> torch.device:
    """The device of device=name; for backend=onnxruntime, cuda only where onnxruntime has its CUDA provider;
    backend=openvino runs on the CPU."""
    if backend == "openvino":
        return openvino_device(name)
    if backend == "onnxruntime":
        has_cuda = "CUDAExecutionProvider" in onnxruntime_module().get_available_providers()
        if name == "auto":
            return torch.device("cuda" if has_cuda else "cpu")
        if name.startswith("cuda") and not has_cuda:
            raise ConfigError(
                f"device={as_typed(name)}: this onnxruntime has no CUDA provider (install onnxruntime-gpu); "
                "use device=cpu"
            )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device={as_typed(name)} is not a device: use auto, cpu, cuda or cuda:<index>") from error


@dataclass
class Settings:
    """predict's config values, checked before any file is read or written."""

    ckpt_path: str
    input: str | None  # None: not given (an error once the checkpoint has loaded)
    output: Path
    overwrite: bool
    score_threshold: float | None
    pixel_threshold: float | None
    heatmap_max: float | None
    heatmap_alpha: float
    batch_size: int
    max_image_pixels: int | None
    device: torch.device
    progress: bool
    backend: str = "torch"
    onnx: Path | None = None  # backend=onnxruntime: the graph to run; None: <ckpt stem>.onnx beside the checkpoint
    threads: int | None = None  # intra-op threads; None: the library's default
    workers: int = 1  # runs of files scored at once (score_in_parallel)
    stack_passes: bool = False
    mask_peak_share: float | None = None  # see conf/predict.yaml
    panel: bool = False

    @property
    def backend_threads(self) -> int | None:
        """Intra-op threads of each torch or onnxruntime forward: threads=, else with several workers this
        machine's cores shared out among them, else None (the library's default: every core)."""
        if self.threads is not None or self.workers == 1:
            return self.threads
        # the cores this process may run on (Linux), else the machine's
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // self.workers)


def number_setting(cfg: DictConfig, key: str, allowed: str, valid: Callable[[float], bool] = math.isfinite) -> float:
    """cfg[key] as a float; ConfigError naming the key and the allowed values when it is not a valid number."""
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not valid(float(value)):
        raise ConfigError(f"{key}={as_typed(value)} is not valid: use {allowed}")
    return float(value)


def optional_number_setting(
    cfg: DictConfig, key: str, allowed: str, valid: Callable[[float], bool] = math.isfinite
) -> float | None:
    """None for null, else `number_setting`."""
    return None if cfg[key] is None else number_setting(cfg, key, allowed, valid)


def bool_setting(cfg: DictConfig, key: str) -> bool:
    value = cfg[key]
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={as_typed(value)} is not valid: use true or false")
    return value


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def checked_settings(cfg: DictConfig) -> Settings:
    """predict's settings from its config; a value that cannot work is a ConfigError naming its key."""
    for key in ("ckpt_path", "output"):  # input is checked after the checkpoint (run)
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
            raise ConfigError(f"{key} is not set: pass {key}=...")
    for key in ("overwrite", "progress", "stack_passes"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={as_typed(cfg[key])} is not valid: use true or false")
    if not positive_int(cfg.batch_size):
        raise ConfigError(f"batch_size={as_typed(cfg.batch_size)} is not valid: use a positive whole number")
    if not positive_int(cfg.workers):
        raise ConfigError(f"workers={as_typed(cfg.workers)} is not valid: use a positive whole number")
    if cfg.threads is not None and not positive_int(cfg.threads):
        raise ConfigError(
            f"threads={as_typed(cfg.threads)} is not valid: use a positive whole number, or null (the default)"
        )
    backend = cfg.backend
    if backend not in BACKENDS:
        raise ConfigError(f"backend={as_typed(backend)} is not valid: use {' or '.join(BACKENDS)}")
    if backend != "torch" and cfg.stack_passes:
        raise ConfigError(
            f"stack_passes=true is not valid with backend={backend}: the graph runs its passes as exported"
        )
    if backend != "onnxruntime" and cfg.onnx not in (None, ""):
        raise ConfigError(
            f"onnx={as_typed(cfg.onnx)} is not valid with backend={backend}: it names the graph onnxruntime runs"
        )
    return Settings(
        ckpt_path=str(cfg.ckpt_path),
        input=None if OmegaConf.is_missing(cfg, "input") or cfg.input in (None, "") else str(cfg.input),
        output=Path(str(cfg.output)),
        overwrite=cfg.overwrite,
        score_threshold=optional_number_setting(
            cfg, "score_threshold", "a number, or null for the checkpoint's threshold"
        ),
        pixel_threshold=optional_number_setting(
            cfg, "pixel_threshold", "a number, or null for the checkpoint's pixel threshold"
        ),
        mask_peak_share=optional_number_setting(
            cfg, "mask_peak_share", "a number in (0, 1], or null for none", lambda value: 0 < value <= 1
        ),
        panel=bool_setting(cfg, "panel"),
        heatmap_max=optional_number_setting(
            cfg, "heatmap_max", "a positive number, or null for 2 x pixel_threshold", lambda value: 0 < value < math.inf
        ),
        heatmap_alpha=number_setting(cfg, "heatmap_alpha", "a number from 0 to 1", lambda value: 0 <= value <= 1),
        batch_size=cfg.batch_size,
        max_image_pixels=check_max_image_pixels(cfg.max_image_pixels, "max_image_pixels"),
        device=resolve_device(str(cfg.device), backend),
        progress=cfg.progress,
        backend=backend,
        onnx=None if cfg.onnx in (None, "") else Path(str(cfg.onnx)),
        threads=cfg.threads,
        workers=cfg.workers,
        stack_passes=cfg.stack_passes,
    )


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to threads (None: left as they are) for the duration."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def onnx_session(settings: Settings, model: InpaintingModel) -> tuple[Any, str]:
    """An onnxruntime session of the checkpoint's exported graph, and where the graph came from.

    settings.onnx, else <ckpt stem>.onnx beside the checkpoint when there is one: refused unless its metadata
    records this checkpoint file's SHA-256 (a stale export, or one made before the digest was recorded) and the
    graph itself is the checkpoint's model (export.weight_mismatch, export.probe_mismatch: its weights bit for bit,
    its outputs on fresh random images). The file is read once: the bytes checked are the bytes run. With neither,
    the model is exported to a temporary file first (export's graph, the same as `make export`).
    """
    onnxruntime = onnxruntime_module()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: a graph's own warnings (e.g. 100 unused initializers) are not ours
    if settings.backend_threads is not None:
        options.intra_op_num_threads = settings.backend_threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if settings.device.type == "cuda" else []
    providers = providers or ["CPUExecutionProvider"]
    ckpt = Path(settings.ckpt_path)
    digest = file_sha256(ckpt)
    path = settings.onnx if settings.onnx is not None else ckpt.with_suffix(".onnx")
    reexport = f"re-export it (python -m anomaly_lab.export ckpt_path={ckpt} output={path} overwrite=true)"
    if path.is_file():
        onnx = onnx_module()
        graph_bytes = path.read_bytes()
        try:
            graph = onnx.load_model_from_string(graph_bytes)
        except Exception as error:  # protobuf's DecodeError and onnx's own errors share no base class
            raise UserError(f"onnx {path}: not an ONNX model ({first_line(error)}); {reexport}") from error
        recorded = {prop.key: prop.value for prop in graph.metadata_props}.get(DIGEST_KEY)
        if recorded is None:
            raise UserError(
                f"onnx {path}: records no checkpoint digest ({DIGEST_KEY}; exported by an older anomaly_lab or "
                f"another tool), so it cannot be told to be {ckpt}'s graph; {reexport}"
            )
        if recorded != digest:
            raise UserError(
                f"onnx {path} was exported from another checkpoint than {ckpt} ({DIGEST_KEY} {recorded[:12]}... "
                f"recorded, {digest[:12]}... now): a stale export; {reexport}"
            )
        reason = weight_mismatch(graph, model)  # before onnxruntime reads the graph: a foreign one is not run
        if reason is not None:
            raise GraphMismatchError(graph_mismatch_message(path, ckpt, reason))
        try:
            session = onnxruntime.InferenceSession(graph_bytes, options, providers=providers)
        except Exception as error:  # onnxruntime's own errors (InvalidProtobuf, Fail, ...) share no base class
            raise UserError(f"onnx {path}: onnxruntime cannot load it ({first_line(error)}); {reexport}") from error
        probe = session  # compared with torch on the CPU: kernel for kernel, not CUDA's (TF32) rounding
        if providers[0] != "CPUExecutionProvider":
            probe = onnxruntime.InferenceSession(graph_bytes, options, providers=["CPUExecutionProvider"])
        reason = probe_mismatch(probe, model)
        if reason is not None:
            raise GraphMismatchError(graph_mismatch_message(path, ckpt, reason))
        return session, str(path)
    if settings.onnx is not None:
        raise FileNotFoundError(
            f"onnx {path}: no such file; export it (python -m anomaly_lab.export "
            f"ckpt_path={ckpt} output={path}) or pass onnx=null"
        )
    log.info(
        "no %s beside the checkpoint: exporting the model to a temporary file first "
        "(python -m anomaly_lab.export ckpt_path=%s keeps one there)",
        path.name,
        ckpt,
    )
    spec, _ = read_checkpoint(ckpt)
    with tempfile.TemporaryDirectory(prefix="anomaly_lab_onnx_") as folder:
        temporary = Path(folder) / path.name
        export_onnx(model, temporary, spec, checkpoint_sha256=digest)
        session = onnxruntime.InferenceSession(str(temporary), options, providers=providers)  # read into memory
    return session, "exported to a temporary file"


def make_scorer(settings: Settings, model: InpaintingModel) -> tuple[Scorer, str | None]:
    """The forward of settings.backend, and (onnxruntime, openvino) where its graph came from."""
    if settings.backend == "openvino":  # the IR in OpenVINO, behind onnxruntime's session calls
        ir_session, source = openvino_session(Path(settings.ckpt_path), model, settings.threads)
        return OnnxScorer(ir_session, model.preprocessing), source
    if settings.backend == "onnxruntime":
        session, source = onnx_session(settings, model)
        return OnnxScorer(session, model.preprocessing), source
    return TorchScorer(model, settings.stack_passes), None


def load_predict_model(settings: Settings) -> InpaintingModel:
    """The checkpoint's model: on settings.device for torch; on the CPU for onnxruntime (its threshold,
    preprocessing and, if no graph is exported yet, the export)."""
    return load_model(settings.ckpt_path, settings.device if settings.backend == "torch" else torch.device("cpu"))


def score_files(
    files: list[Path],
    root: Path,
    preprocessing: Preprocessing,
    scorer: Scorer,
    drawing: Drawing,
    settings: Settings,
    staging: Path,
) -> tuple[list[dict[str, Any]], list[list[Any]], list[dict[str, str]]]:
    """Score the files in batches and draw their outputs into staging: (image rows, tile rows, skipped files with
    their errors), in the order of files."""
    rows: list[dict[str, Any]] = []
    tile_rows: list[list[Any]] = []
    skipped: list[dict[str, str]] = []
    stream = score_stream(
        files, preprocessing, scorer, settings.batch_size, settings.max_image_pixels, settings.workers
    )
    with logging_redirect_tqdm():
        for result in tqdm(stream, total=len(files), desc="predict", unit="image", disable=not settings.progress):
            if isinstance(result, Skipped):
                log.warning("skipped %s", result.error)
                skipped.append({"path": str(result.path), "error": str(result.error)})
                continue
            scored, image = result
            path = scored.path
            written = write_image_outputs(scored, image, output_name(path, root), staging, drawing)
            prediction = int(scored.score >= drawing.threshold)
            rows.append({"path": str(path), "score": scored.score, "prediction": prediction, **written})
            if scored.grid is not None and scored.tile_scores is not None:
                for row, col, tile_score in zip(*scored.grid.positions(), scored.tile_scores, strict=True):
                    tile_rows.append(
                        [str(path), int(row), int(col), float(tile_score), int(tile_score >= drawing.threshold)]
                    )
    if not rows:
        raise UserError(
            f"input {settings.input}: nothing scored: {len(files)} inputs, all skipped; first reason: "
            f"{skipped[0]['error']}"
        )
    return rows, tile_rows, skipped


def pixel_threshold_of(
    override: float | None, model: InpaintingModel, threshold: float, source: str
) -> tuple[float, str]:
    """The masks' anomaly-map threshold and where it came from: the override (pixel_threshold=...), else the
    model's (chosen on validation), else (a checkpoint from before pixel thresholds, named by `source`) the
    image-score threshold, with a warning."""
    if override is not None:
        return float(override), "override"
    chosen = float(model.pixel_threshold)
    if math.isfinite(chosen):
        return chosen, "checkpoint"
    log.warning(
        "%s holds no pixel threshold (trained before they were chosen on validation): masks use the image-score "
        "threshold %.6g, which the map rarely reaches; pass pixel_threshold=... or retrain",
        source,
        threshold,
    )
    return threshold, "score_threshold"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Score cfg.input with cfg.ckpt_path's model into cfg.output; returns the summary (also summary.json)."""
    started = time.perf_counter()
    settings = checked_settings(cfg)
    model = load_predict_model(settings)  # a bad checkpoint is named before anything else
    if settings.input is None:
        raise ConfigError("input is not set: pass input=<an image, a folder or a quoted glob>")
    files, root = find_inputs(settings.input)
    threshold = settings.score_threshold if settings.score_threshold is not None else float(model.threshold)
    if not math.isfinite(threshold):
        raise ConfigError(
            f"{settings.ckpt_path}: the checkpoint holds no threshold (its training set none: no validation pass or "
            f"no threshold rule); pass score_threshold=<image score>"
        )
    pixel_threshold, pixel_threshold_from = pixel_threshold_of(
        settings.pixel_threshold, model, threshold, settings.ckpt_path
    )
    heatmap_max = settings.heatmap_max if settings.heatmap_max is not None else 2.0 * pixel_threshold
    if heatmap_max <= 0:
        raise ConfigError(f"heatmap_max (2 x pixel_threshold) is {heatmap_max}, not positive: set heatmap_max=...")
    drawing = Drawing(
        threshold, pixel_threshold, heatmap_max, settings.heatmap_alpha, settings.mask_peak_share, settings.panel
    )
    with torch_threads(settings.backend_threads):
        scorer, onnx_source = make_scorer(settings, model)  # a stale exported graph is refused before any writing
        staging = prepare_output(settings.output, settings.overwrite)
        try:
            rows, tile_rows, skipped = score_files(files, root, model.preprocessing, scorer, drawing, settings, staging)
            summary = write_tables(rows, tile_rows, skipped, staging)
            summary.update(
                checkpoint=settings.ckpt_path,
                input=settings.input,
                output=str(settings.output),
                threshold=threshold,
                threshold_from="override" if settings.score_threshold is not None else "checkpoint",
                pixel_threshold=pixel_threshold,
                pixel_threshold_from=pixel_threshold_from,
                heatmap_max=heatmap_max,
                image_size=model.image_size,
                preprocessing=asdict(model.preprocessing),
                device=str(settings.device),
                backend=settings.backend,
                **({GRAPH_KEYS[settings.backend]: onnx_source} if onnx_source is not None else {}),
                batch_size=settings.batch_size,
                threads=settings.threads,
                workers=settings.workers,
                seconds=round(time.perf_counter() - started, 3),
            )
            (staging / "summary.json").write_text(json.dumps(summary, indent=2))
            write_report(staging, rows, summary, root)  # report.html and its thumbnails/
            publish(staging, settings.output, settings.overwrite)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info(
        "scored %d images (%d anomalous, %d skipped) into %s",
        summary["images"],
        summary["anomalous"],
        len(skipped),
        settings.output,
    )
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors_exit():
        run(cfg)


if __name__ == "__main__":
    run_cli(main)
