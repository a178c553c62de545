"""`python -m anomaly_lab.predict ckpt_path=... input=<file|folder|glob> output=...`: score new images.

Per image: its score, a prediction at the checkpoint's threshold (or `score_threshold=`), a heatmap overlay and a
binary mask, both PNGs the size of the input; scores.csv and summary.json for the lot. A model trained on
tiles of pages scores every tile of each page and also draws the page with its tile grid (pages/, tiles.csv).
Images are prepared by the training rule; a file that cannot be read (or is larger than max_image_pixels) is
named in the log and in summary.json and skipped, so one bad file never stops the batch; scoring nothing at all
is an error. Outputs are written into a staging folder beside the output and moved into place at the end, so a
run that fails leaves no output behind.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from anomaly_lab.cli import run_cli, user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.data.images import IMAGE_SUFFIXES, BadImageError, check_max_image_pixels, read_image
from anomaly_lab.data.tiles import TileSizeError, cut_tiles, stitch_tiles
from anomaly_lab.errors import ConfigError, UserError
from anomaly_lab.inference import load_model
from anomaly_lab.model import InpaintingModel
from anomaly_lab.predict_outputs import (
    Drawing,
    Scored,
    output_name,
    prepare_output,
    publish,
    write_image_outputs,
    write_tables,
)

log = logging.getLogger(__name__)


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


@torch.no_grad()
def score_units(model: InpaintingModel, units: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps (N,S,S) and scores (N,) of images or tiles units (N,S,S,3) uint8."""
    device = model.threshold.device
    maps, scores = [], []
    for start in range(0, len(units), batch_size):
        images = model.preprocessing.to_tensor(units[start : start + batch_size]).to(device)  # (b,3,S,S)
        chunk_maps, chunk_scores = model(images)  # (b,1,S,S), (b,)
        maps.append(chunk_maps[:, 0].float().cpu().numpy())
        scores.append(chunk_scores.float().cpu().numpy())
    return np.concatenate(maps), np.concatenate(scores)


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map (h,w) resized bilinearly to (height,width).  # (H,W) float32"""
    if anomaly_map.shape == (height, width):
        return anomaly_map.astype(np.float32)
    resized = F.interpolate(torch.from_numpy(anomaly_map)[None, None].float(), size=(height, width), mode="bilinear")
    return resized[0, 0].numpy()


def score_image(
    path: Path, model: InpaintingModel, batch_size: int, max_pixels: int | None
) -> tuple[Scored, np.ndarray]:
    """Score one file, prepared as in training (model.preprocessing); returns the result and the decoded image
    (H,W,3) uint8. BadImageError if unusable."""
    image = read_image(path, None, max_pixels=max_pixels)  # (H,W,3) uint8
    prepared, _ = model.preprocessing.prepare(image)  # (S,S,3), or a page (h,w,3) to tile
    if not model.preprocessing.tiled:
        maps, scores = score_units(model, prepared[None], batch_size)
        return Scored(path, float(scores[0]), resize_map(maps[0], *image.shape[:2])), image
    try:
        grid = model.preprocessing.tile_grid(*prepared.shape[:2])
    except TileSizeError as error:
        raise BadImageError(f"{path}: {error}") from error
    units = cut_tiles(prepared, grid)  # (N,t,t,3)
    maps, scores = score_units(model, units, batch_size)
    page_map = stitch_tiles(maps, grid, prepared.shape[:2])  # (h,w); 0 where no tile lies (border=drop)
    tiled_page = stitch_tiles(units, grid, grid.covered)  # (h',w',3)
    # a page is as anomalous as its worst tile
    return Scored(path, float(scores.max()), resize_map(page_map, *image.shape[:2]), grid, scores, tiled_page), image


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:<index>") from error


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


def number_setting(cfg: DictConfig, key: str, allowed: str, valid: Callable[[float], bool] = math.isfinite) -> float:
    """cfg[key] as a float; ConfigError naming the key and the allowed values when it is not a valid number."""
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not valid(float(value)):
        raise ConfigError(f"{key}={value!r} is not valid: use {allowed}")
    return float(value)


def optional_number_setting(
    cfg: DictConfig, key: str, allowed: str, valid: Callable[[float], bool] = math.isfinite
) -> float | None:
    """None for null, else `number_setting`."""
    return None if cfg[key] is None else number_setting(cfg, key, allowed, valid)


def checked_settings(cfg: DictConfig) -> Settings:
    """predict's settings from its config; a value that cannot work is a ConfigError naming its key."""
    for key in ("ckpt_path", "output"):  # input is checked after the checkpoint (run)
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
            raise ConfigError(f"{key} is not set: pass {key}=...")
    for key in ("overwrite", "progress"):
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r} is not valid: use true or false")
    batch_size = cfg.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is not valid: use a positive whole number")
    return Settings(
        ckpt_path=str(cfg.ckpt_path),
        input=None if OmegaConf.is_missing(cfg, "input") or cfg.input in (None, "") else str(cfg.input),
        output=Path(str(cfg.output)),
        overwrite=cfg.overwrite,
        score_threshold=optional_number_setting(
            cfg, "score_threshold", "a number, or null for the checkpoint's threshold"
        ),
        pixel_threshold=optional_number_setting(cfg, "pixel_threshold", "a number, or null for score_threshold"),
        heatmap_max=optional_number_setting(
            cfg, "heatmap_max", "a positive number, or null for 2 x pixel_threshold", lambda value: 0 < value < math.inf
        ),
        heatmap_alpha=number_setting(cfg, "heatmap_alpha", "a number from 0 to 1", lambda value: 0 <= value <= 1),
        batch_size=batch_size,
        max_image_pixels=check_max_image_pixels(cfg.max_image_pixels, "max_image_pixels"),
        device=resolve_device(str(cfg.device)),
        progress=cfg.progress,
    )


def score_files(
    files: list[Path], root: Path, model: InpaintingModel, drawing: Drawing, settings: Settings, staging: Path
) -> tuple[list[dict[str, Any]], list[list[Any]], list[dict[str, str]]]:
    """Score each file and draw its outputs into staging: (image rows, tile rows, skipped files with their errors)."""
    rows: list[dict[str, Any]] = []
    tile_rows: list[list[Any]] = []
    skipped: list[dict[str, str]] = []
    with logging_redirect_tqdm():
        for path in tqdm(files, desc="predict", unit="image", disable=not settings.progress):
            try:
                scored, image = score_image(path, model, settings.batch_size, settings.max_image_pixels)
            except BadImageError as error:
                log.warning("skipped %s", error)
                skipped.append({"path": str(path), "error": str(error)})
                continue
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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Score cfg.input with cfg.ckpt_path's model into cfg.output; returns the summary (also summary.json)."""
    started = time.perf_counter()
    settings = checked_settings(cfg)
    model = load_model(settings.ckpt_path, settings.device)  # a bad checkpoint is named before anything else
    if settings.input is None:
        raise ConfigError("input is not set: pass input=<an image, a folder or a quoted glob>")
    files, root = find_inputs(settings.input)
    threshold = settings.score_threshold if settings.score_threshold is not None else float(model.threshold)
    if not math.isfinite(threshold):
        raise ConfigError(
            f"{settings.ckpt_path}: the checkpoint holds no threshold (its training set none: no validation pass or "
            f"no threshold rule); pass score_threshold=<image score>"
        )
    pixel_threshold = settings.pixel_threshold if settings.pixel_threshold is not None else threshold
    heatmap_max = settings.heatmap_max if settings.heatmap_max is not None else 2.0 * pixel_threshold
    if heatmap_max <= 0:
        raise ConfigError(f"heatmap_max (2 x pixel_threshold) is {heatmap_max}, not positive: set heatmap_max=...")
    drawing = Drawing(threshold, pixel_threshold, heatmap_max, settings.heatmap_alpha)
    staging = prepare_output(settings.output, settings.overwrite)
    try:
        rows, tile_rows, skipped = score_files(files, root, model, drawing, settings, staging)
        summary = write_tables(rows, tile_rows, skipped, staging)
        summary.update(
            checkpoint=settings.ckpt_path,
            input=settings.input,
            output=str(settings.output),
            threshold=threshold,
            threshold_from="override" if settings.score_threshold is not None else "checkpoint",
            pixel_threshold=pixel_threshold,
            heatmap_max=heatmap_max,
            image_size=model.image_size,
            preprocessing=asdict(model.preprocessing),
            device=str(settings.device),
            seconds=round(time.perf_counter() - started, 3),
        )
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))
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
