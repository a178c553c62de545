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
from scipy import ndimage

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


def heatmap_overlay(image: np.ndarray, anomaly_map: np.ndarray, drawing: Drawing) -> np.ndarray:
    """The map in turbo colours over the image (H,W,3) uint8, on one scale for every image: 0 to heatmap_max, so the
    pixel threshold (half of heatmap_max by default) is the same colour everywhere. Opacity rises from 0 at half the
    pixel threshold to heatmap_alpha at it, so the image stays readable where nothing is anomalous.  # (H,W,3)"""
    colours = colormaps["turbo"](np.clip(anomaly_map / drawing.heatmap_max, 0.0, 1.0))[..., :3]  # (H,W,3) in [0, 1]
    ratio = anomaly_map / drawing.pixel_threshold if drawing.pixel_threshold > 0 else np.ones_like(anomaly_map)
    weight = drawing.heatmap_alpha * np.clip(2.0 * ratio - 1.0, 0.0, 1.0)[..., None]  # (H,W,1)
    blended = (1 - weight) * image.astype(np.float64) / 255.0 + weight * colours
    return np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8)


CONTOUR_COLOUR = np.array([255, 255, 255], dtype=np.uint8)  # white, with a dark edge outside it


def draw_contour(picture: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask's outline on a picture (H,W,3) uint8: white inside the edge, black just outside, about 1 px per
    256 px of the shorter side, so it shows on any colour.  # (H,W,3) uint8"""
    if not mask.any():
        return picture
    width = max(1, round(min(mask.shape) / 256))
    inner = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=1)
    outer = ndimage.binary_dilation(mask, iterations=width) & ~mask
    drawn = picture.copy()
    drawn[outer] = 0
    drawn[inner] = CONTOUR_COLOUR
    return drawn


@dataclass
class Drawing:
    """How outputs are drawn: thresholds, the heatmap's colour scale and opacity, the masks' fallback, panels."""

    threshold: float
    pixel_threshold: float
    heatmap_max: float
    heatmap_alpha: float
    # an image called anomalous whose map stays below pixel_threshold: its mask marks where the map is at least
    # this share of its own peak (None: left empty)
    mask_peak_share: float | None = None
    panel: bool = False


def image_mask(scored: Scored, drawing: Drawing) -> tuple[np.ndarray, bool]:
    """The mask (H,W) bool of an image and whether it came from its own peak (called anomalous, nothing reaching
    the pixel threshold)."""
    mask = scored.anomaly_map >= drawing.pixel_threshold  # (H,W)
    called = scored.score >= drawing.threshold
    if mask.any() or not called or drawing.mask_peak_share is None:
        return mask, False
    return scored.anomaly_map >= drawing.mask_peak_share * float(scored.anomaly_map.max()), True


def ground_truth(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """An MVTec-layout input's true mask (H,W) bool at its size: empty under test/good, ground_truth/<defect>/
    <stem>_mask.png under test/<defect>; None where the layout does not say."""
    defect, split = path.parent.name, path.parent.parent
    if split.name != "test":
        return None
    if defect == "good":
        return np.zeros(shape, dtype=bool)
    mask_path = split.parent / "ground_truth" / defect / f"{path.stem}_mask.png"
    if not mask_path.is_file():
        return None
    with Image.open(mask_path) as file:
        truth = np.asarray(file.convert("L").resize(shape[::-1], Image.Resampling.NEAREST)) > 127  # (H,W)
    return truth


def panel_image(image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """image | heatmap with the mask's outline | mask [| ground truth], side by side with a 4 px white gap."""

    def grey(binary: np.ndarray) -> np.ndarray:
        return np.repeat((binary.astype(np.uint8) * 255)[..., None], 3, axis=2)

    parts = [image, heatmap, grey(mask), *([grey(truth)] if truth is not None else [])]
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for part in parts:
        row += [part, gap]
    return np.concatenate(row[:-1], axis=1)


def write_image_outputs(
    scored: Scored, image: np.ndarray, name: Path, output: Path, drawing: Drawing
) -> dict[str, Any]:
    """Heatmap and mask PNGs (and a tiled model's page figure, a panel); their paths relative to output, and
    mask_from ("threshold", or "peak" where the fallback drew it)."""
    written = {"heatmap": Path("heatmaps") / name, "mask": Path("masks") / name}
    if scored.tiled_page is not None:
        written["page"] = Path("pages") / name
    if drawing.panel:
        written["panel"] = Path("panels") / name
    for path in written.values():
        (output / path).parent.mkdir(parents=True, exist_ok=True)
    mask, from_peak = image_mask(scored, drawing)
    heatmap = draw_contour(heatmap_overlay(image, scored.anomaly_map, drawing), mask)
    Image.fromarray(heatmap).save(output / written["heatmap"])
    Image.fromarray(mask.astype(np.uint8) * 255).save(output / written["mask"])  # (H,W) 0 / 255
    if drawing.panel:
        truth = ground_truth(scored.path, mask.shape)
        Image.fromarray(panel_image(image, heatmap, mask, truth)).save(output / written["panel"])
    if scored.grid is not None and scored.tile_scores is not None and scored.tiled_page is not None:
        rows, cols = scored.grid.positions()
        grid_scores = stitch_scores(scored.tile_scores, rows, cols, scored.grid.shape)  # (R,C)
        figure = tile_classification_figure(scored.tiled_page, grid_scores, drawing.threshold, title=str(name))
        figure.savefig(output / written["page"], dpi=80)
    return {**{key: str(path) for key, path in written.items()}, "mask_from": "peak" if from_peak else "threshold"}


def write_tables(
    rows: list[dict[str, Any]], tile_rows: list[list[Any]], skipped: list[dict[str, str]], output: Path
) -> dict[str, Any]:
    """scores.csv (one row per image) and, for a tiled model, tiles.csv; returns the summary's counts."""
    columns = ["path", "score", "prediction", "heatmap", "mask", "mask_from"] + (["page"] if tile_rows else [])
    columns += ["panel"] if any("panel" in row for row in rows) else []
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
        "masks_from_peak": sum(row.get("mask_from") == "peak" for row in rows),
    }
