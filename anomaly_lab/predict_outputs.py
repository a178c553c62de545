"""What predict writes: the staging folder moved into place at the end, per-image heatmap and mask PNGs
(and a tiled model's page figure), scores.csv, tiles.csv and the summary's counts."""

from __future__ import annotations

import csv
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from anomaly_lab.data.tiles import TileGrid, stitch_scores
from anomaly_lab.figures import tile_classification_figure


@dataclass
class Scored:
    """One input image: its score and, for a tiled model, its tiles' grid and scores."""

    path: Path
    score: float
    anomaly_map: np.ndarray  # (H,W) float32, at the input's own size
    grid: TileGrid | None = None
    tile_scores: np.ndarray | None = None  # (N,) in grid.positions() order
    tiled_page: np.ndarray | None = None  # (h,w,3) uint8: the page area the tiles cover, as the model saw it


def output_name(path: Path, root: Path) -> Path:
    """The PNG name of an input's outputs, its path below the input root (x.png -> x.png, x.jpg -> x.jpg.png)."""
    relative = Path(os.path.relpath(path.absolute(), root.absolute()))
    return relative if relative.suffix.lower() == ".png" else relative.with_name(relative.name + ".png")


def prepare_output(output: Path, overwrite: bool) -> Path:
    """Check the output folder and make the staging folder beside it, where this run writes until it is done."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"output {output} is a file; choose a folder with output=...")
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"output {output} exists; choose another output=... or pass overwrite=true "
            f"(files of the same names are then replaced, others left as they are)"
        )
    absolute = Path(os.path.abspath(output))
    staging = absolute.parent / f"{absolute.name}.partial-{os.getpid()}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.mkdir()
    except FileExistsError as error:
        raise FileExistsError(f"staging folder {staging} exists (left by a killed predict?); remove it") from error
    return staging


def publish(staging: Path, output: Path, overwrite: bool) -> None:
    """Move the staged outputs into place: by one rename into a new output folder, or (overwrite=true) file by
    file into the existing one, replacing files of the same names and keeping the others."""
    if not output.exists():
        staging.rename(output)
        return
    if not overwrite:
        raise FileExistsError(f"output {output} was created while predict ran; rerun with another output=...")
    targets = {path: output / path.relative_to(staging) for path in sorted(staging.rglob("*")) if path.is_file()}
    for target in targets.values():
        if target.is_dir() or any(parent.is_file() for parent in target.parents):
            raise FileExistsError(f"output {output}: {target} cannot be written, a folder or file is in its way")
    for path, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(staging)


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, vmax: float, alpha: float) -> np.ndarray:
    """The jet-coloured map, 0 to vmax, over the image (H,W,3) uint8.  # (H,W,3) uint8"""
    colours = colormaps["jet"](np.clip(anomaly_map / vmax, 0.0, 1.0))[..., :3]  # (H,W,3) in [0, 1]
    blended = (1 - alpha) * image.astype(np.float64) / 255.0 + alpha * colours
    return np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)


@dataclass
class Drawing:
    """How outputs are drawn: thresholds, the heatmap's colour scale and opacity."""

    threshold: float
    pixel_threshold: float
    heatmap_max: float
    heatmap_alpha: float


def write_image_outputs(
    scored: Scored, image: np.ndarray, name: Path, output: Path, drawing: Drawing
) -> dict[str, str]:
    """Heatmap and mask PNGs (and a tiled model's page figure); their paths relative to output."""
    written = {"heatmap": Path("heatmaps") / name, "mask": Path("masks") / name}
    if scored.tiled_page is not None:
        written["page"] = Path("pages") / name
    for path in written.values():
        (output / path).parent.mkdir(parents=True, exist_ok=True)
    overlay = heatmap_overlay(image, scored.anomaly_map, drawing.heatmap_max, drawing.heatmap_alpha)
    Image.fromarray(overlay).save(output / written["heatmap"])
    mask = (scored.anomaly_map >= drawing.pixel_threshold).astype(np.uint8) * 255  # (H,W) 0 / 255
    Image.fromarray(mask).save(output / written["mask"])
    if scored.grid is not None and scored.tile_scores is not None and scored.tiled_page is not None:
        rows, cols = scored.grid.positions()
        grid_scores = stitch_scores(scored.tile_scores, rows, cols, scored.grid.shape)  # (R,C)
        figure = tile_classification_figure(scored.tiled_page, grid_scores, drawing.threshold, title=str(name))
        figure.savefig(output / written["page"], dpi=80)
    return {key: str(path) for key, path in written.items()}


def write_tables(
    rows: list[dict[str, Any]], tile_rows: list[list[Any]], skipped: list[dict[str, str]], output: Path
) -> dict[str, Any]:
    """scores.csv (one row per image) and, for a tiled model, tiles.csv; returns the summary's counts."""
    columns = ["path", "score", "prediction", "heatmap", "mask"] + (["page"] if tile_rows else [])
    with (output / "scores.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "score": repr(row["score"])} for row in rows)
    if tile_rows:
        with (output / "tiles.csv").open("w", newline="") as file:
            writer_tiles = csv.writer(file, lineterminator="\n")
            writer_tiles.writerow(["path", "row", "col", "score", "prediction"])
            writer_tiles.writerows(tile_rows)
    scores = [row["score"] for row in rows]
    anomalous = sum(row["prediction"] for row in rows)
    return {
        "images": len(rows),
        "anomalous": anomalous,
        "normal": len(rows) - anomalous,
        "skipped": skipped,
        "score_min": min(scores, default=math.nan),
        "score_max": max(scores, default=math.nan),
        "score_mean": float(np.mean(scores)) if scores else math.nan,
    }
