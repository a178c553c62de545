"""Generated images with known anomaly masks, so that training and tests need no downloaded data.

Three scenes: bottle bottoms seen from above (a look-alike of MVTec AD `bottle`) with broken rims,
contamination and scratches; photographed handwritten-notes pages with highlighter strokes; aerial
sea photographs with sharks. Real masks are hand-drawn and approximate; these are exact.

Every scene draws its anomaly last, from a generator of its own seeded by one number that the scene
always takes from the caller's generator. So the same generator state renders the same scene with
and without the anomaly, and the mask is exactly the set of pixels the anomaly changed: the mask is
computed first and paint goes only inside it. Same seed, same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

BOTTLE_DEFECTS = ("broken_rim", "contamination", "scratch")


# ----------------------------------------------------------------------------------------------------------------------
# Shared drawing helpers
# ----------------------------------------------------------------------------------------------------------------------


def _child_rng(rng: np.random.Generator) -> np.random.Generator:
    """A generator for the anomaly, seeded from `rng` whether or not an anomaly is drawn."""
    return np.random.default_rng(int(rng.integers(2**63)))


def _bspline_taps(n_out: int, cell: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each output pixel, the four coarse-grid knots of a cubic B-spline and their weights."""
    position = np.arange(n_out) / cell + 1.0  # in grid units; the grid has a margin of one knot
    knot = np.floor(position).astype(int)
    taps = []
    for offset in (-1, 0, 1, 2):
        distance = np.abs(position - (knot + offset))
        weight = np.where(distance < 1, 2 / 3 - distance**2 + distance**3 / 2, (2 - distance) ** 3 / 6)
        taps.append((knot + offset, (weight / np.sqrt(151 / 315)).astype(np.float32)))  # output std about 1
    return taps


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Zero-mean noise with features about `cell` pixels wide, std about 1.  # (H,W) float32"""
    cell = max(float(cell), 1.0)
    if cell < 4:  # fine grain: blurred white noise is cheaper than a spline over a near pixel-sized grid
        sigma = cell / 2
        white = rng.standard_normal((height, width)).astype(np.float32)
        return ndimage.gaussian_filter(white, sigma) * np.float32(2 * np.sqrt(np.pi) * sigma)
    grid = rng.standard_normal((int(height / cell) + 4, int(width / cell) + 4)).astype(np.float32)  # (h,w)
    rows = sum(weight[:, None] * grid[knot] for knot, weight in _bspline_taps(height, cell))  # (H,w)
    return sum(rows[:, knot] * weight[None, :] for knot, weight in _bspline_taps(width, cell))  # (H,W)


def _quadratic_bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, step_px: float = 0.35) -> np.ndarray:
    """Points along a quadratic Bezier curve, at most `step_px` apart.  # (N,2) float (y,x)"""
    length = np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)
    t = np.linspace(0.0, 1.0, int(length / step_px) + 2)[:, None]  # (N,1)
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _distance_to_points(shape: tuple[int, int], points: np.ndarray, reach: float) -> np.ndarray:
    """Distance from each pixel to the nearest rasterised point, inf beyond `reach`.  # (H,W) float32

    Points are (y,x) pixel coordinates and should be dense (under one pixel apart); only the
    bounding box of the points (plus `reach`) is searched.
    """
    height, width = shape
    distance = np.full(shape, np.inf, np.float32)
    rows, cols = np.rint(points[:, 0]).astype(int), np.rint(points[:, 1]).astype(int)
    keep = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    if not keep.any():
        return distance
    rows, cols = rows[keep], cols[keep]
    pad = int(np.ceil(reach)) + 1
    top, bottom = max(rows.min() - pad, 0), min(rows.max() + pad + 1, height)
    left, right = max(cols.min() - pad, 0), min(cols.max() + pad + 1, width)
    seeds = np.ones((bottom - top, right - left), bool)
    seeds[rows - top, cols - left] = False
    crop = ndimage.distance_transform_edt(seeds).astype(np.float32)
    crop[crop > reach] = np.inf
    distance[top:bottom, left:right] = crop
    return distance


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _hard_mask_nonempty(mask: np.ndarray, row: float, col: float) -> np.ndarray:
    """At tiny sizes a thin shape can miss every pixel centre; keep at least its nearest pixel."""
    if not mask.any():
        height, width = mask.shape
        mask = mask.copy()
        mask[int(np.clip(round(row), 0, height - 1)), int(np.clip(round(col), 0, width - 1))] = True
    return mask


# ----------------------------------------------------------------------------------------------------------------------
# Bottles
# ----------------------------------------------------------------------------------------------------------------------

# Radial profile of an MVTec `bottle` bottom, measured on the real images: radius as a fraction of
# the bottle's outer radius -> RGB, linearly interpolated in between.
_BOTTLE_PROFILE = np.array(
    [
        [0.0, 42, 42, 53],  # dark navy centre
        [0.22, 38, 37, 49],
        [0.4, 33, 33, 46],
        [0.45, 38, 36, 47],  # centre edge
        [0.49, 60, 59, 67],  # thin light ring
        [0.54, 42, 44, 55],
        [0.58, 52, 55, 63],
        [0.63, 74, 79, 86],  # teal-grey annulus
        [0.68, 66, 67, 77],
        [0.72, 70, 67, 74],
        [0.76, 128, 100, 88],  # thin brown ring
        [0.8, 64, 64, 73],  # dark rim
        [0.85, 88, 87, 94],  # lighter band
        [0.9, 78, 77, 84],
        [0.94, 60, 62, 71],  # dark outer rim
        [0.975, 70, 71, 78],  # outline
    ],
    np.float32,
)  # (K,4) radius / outer radius, R, G, B
_BOTTLE_EDGE = (0.975, 1.03)  # the outline fades from the last profile colour into the background over this range


def _bottle_geometry(rng: np.random.Generator, size: int) -> tuple[float, float, float]:
    centre_y, centre_x = size / 2 + rng.uniform(-0.012, 0.012, 2) * size
    radius = 0.445 * size * (1 + rng.uniform(-0.02, 0.02))
    return float(centre_y), float(centre_x), float(radius)


def _render_bottle(rng: np.random.Generator, size: int, centre_y: float, centre_x: float, radius: float) -> np.ndarray:
    """The normal bottle before lighting and sensor noise.  # (size,size,3) float32"""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rho = np.hypot(yy - centre_y, xx - centre_x) / radius  # (H,W) radius / outer radius
    theta = np.arctan2(yy - centre_y, xx - centre_x)  # (H,W)

    radii, colours = _BOTTLE_PROFILE[:, 0], _BOTTLE_PROFILE[:, 1:]  # (K,), (K,3)
    colours = colours * rng.uniform(0.93, 1.07, (1, 3)).astype(np.float32)  # glass tint varies a little
    body = np.stack([np.interp(rho, radii, colours[:, c]) for c in range(3)], -1)  # (H,W,3)

    # Concentric texture: a random value per pixel of radius; radial texture: one per pixel of circumference.
    n_rings = max(int(radius), 8)
    rings = ndimage.gaussian_filter1d(rng.standard_normal(n_rings + 1), 0.8)
    ring_noise = np.interp(rho * n_rings, np.arange(n_rings + 1), rings)
    n_spokes = max(int(2 * np.pi * radius), 16)
    spokes = ndimage.gaussian_filter1d(rng.standard_normal(n_spokes), 1.0, mode="wrap")
    spoke_noise = np.interp((theta + np.pi) / (2 * np.pi) * n_spokes, np.arange(n_spokes + 1), np.r_[spokes, spokes[0]])
    annulus = np.exp(-(((rho - 0.66) / 0.09) ** 2))  # where the radial texture lives
    rim = np.exp(-(((rho - 0.87) / 0.08) ** 2))
    texture = 9 * annulus * spoke_noise + 5 * (annulus + rim) * ring_noise + 3 * (rho < 0.45) * ring_noise
    # Light from one side: the rim's lit half is brighter, as in the real images.
    light_angle = rng.uniform(-np.pi, np.pi)
    lit = 1 + rng.uniform(0.08, 0.2) * np.cos(theta - light_angle) * np.clip((rho - 0.5) * 2, 0, 1)
    body = (body + texture[..., None]) * lit[..., None]

    background_level = rng.uniform(228, 250)
    background = np.array([1.0, 1.0, 0.985], np.float32) * background_level  # (3,) light grey, slightly warm
    edge = np.clip((rho - _BOTTLE_EDGE[0]) / (_BOTTLE_EDGE[1] - _BOTTLE_EDGE[0]), 0, 1)
    edge = (edge * edge * (3 - 2 * edge))[..., None]  # (H,W,1) 0 inside the bottle, 1 on the background
    return (body * (1 - edge) + background * edge).astype(np.float32)


def _bottle_defect_mask(
    rng: np.random.Generator, defect: str, size: int, centre_y: float, centre_x: float, radius: float
) -> np.ndarray:
    """Where the defect goes, drawn before anything is painted.  # (size,size) bool"""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rho = np.hypot(yy - centre_y, xx - centre_x) / radius
    theta = np.arctan2(yy - centre_y, xx - centre_x)
    if defect == "broken_rim":
        # A chunk bitten out of the rim: an angular window whose inner edge is jagged.
        angle = rng.uniform(-np.pi, np.pi)
        half_width = rng.uniform(0.12, 0.32)
        depth = rng.uniform(0.12, 0.28)
        delta = (theta - angle + np.pi) % (2 * np.pi) - np.pi  # (H,W) angle from the chunk's middle
        jag = np.zeros_like(theta)
        for k, amplitude in ((3, 0.25), (6, 0.14), (11, 0.07)):
            jag += rng.uniform(0.4, 1.0) * amplitude * np.sin(k * np.pi * delta / half_width + rng.uniform(0, 6))
        window = np.clip(1 - (delta / half_width) ** 2, 0, None)  # 1 in the middle, 0 at the ends
        inner = 0.96 - depth * np.sqrt(window) * (1 + jag)
        mask = (np.abs(delta) < half_width) & (rho > inner) & (rho < 0.96)
        middle_y, middle_x = centre_y + 0.9 * radius * np.sin(angle), centre_x + 0.9 * radius * np.cos(angle)
        return _hard_mask_nonempty(mask, middle_y, middle_x)
    if defect == "contamination":
        # One to three irregular star-shaped blobs inside the bottle, mostly over the dark centre.
        mask = np.zeros((size, size), bool)
        for _ in range(int(rng.integers(1, 4))):
            where, distance = rng.uniform(-np.pi, np.pi), radius * np.sqrt(rng.uniform(0, 0.6**2))
            blob_y, blob_x = centre_y + distance * np.sin(where), centre_x + distance * np.cos(where)
            blob_radius = max(rng.uniform(0.03, 0.07) * size, 1.0)
            harmonics = [(k, rng.uniform(0, 0.35) / (k - 1), rng.uniform(0, 2 * np.pi)) for k in range(2, 7)]
            reach = int(np.ceil(blob_radius * 2.5)) + 1  # the outline never exceeds 1 + sum(0.35/(k-1)) < 2.6 radii
            top, left = max(int(blob_y) - reach, 0), max(int(blob_x) - reach, 0)
            box = (slice(top, min(int(blob_y) + reach + 1, size)), slice(left, min(int(blob_x) + reach + 1, size)))
            local_y, local_x = yy[box] - blob_y, xx[box] - blob_x
            local = np.arctan2(local_y, local_x)
            outline = np.ones_like(local)
            for k, amplitude, phase in harmonics:
                outline += amplitude * np.cos(k * local + phase)
            blob = np.hypot(local_y, local_x) <= blob_radius * np.clip(outline, 0.35, None)
            mask[box] |= _hard_mask_nonempty(blob, blob_y - top, blob_x - left)
        return mask & (rho < 0.9)
    if defect == "scratch":
        # One to three thin curved lines (quadratic Bezier) inside the bottle.
        mask = np.zeros((size, size), bool)
        half_thickness = max(0.5, 0.005 * size)
        for _ in range(int(rng.integers(1, 4))):
            start = np.array([centre_y, centre_x]) + radius * rng.uniform(-0.55, 0.55, 2)
            length = rng.uniform(0.25, 0.45) * size
            heading = rng.uniform(-np.pi, np.pi)
            end = start + length * np.array([np.sin(heading), np.cos(heading)])
            bend = (start + end) / 2 + rng.normal(0, 0.2) * length * np.array([np.cos(heading), -np.sin(heading)])
            curve = _quadratic_bezier(start, bend, end)
            line = _distance_to_points((size, size), curve, half_thickness) <= half_thickness
            mask |= line
        mask &= rho < 0.9
        return _hard_mask_nonempty(mask, centre_y, centre_x)
    raise ValueError(f"unknown bottle defect {defect!r}; choose one of {BOTTLE_DEFECTS}")


def _paint_bottle_defect(
    rng: np.random.Generator, defect: str, image: np.ndarray, mask: np.ndarray, background_level: float
) -> None:
    """Paint the defect into `image` (H,W,3 float32), only where `mask` is set."""
    height, width = mask.shape
    n = int(mask.sum())
    if defect == "broken_rim":
        # Broken glass: background seen through, bright shards and faint crack lines, never as dark as the rim.
        shards = _smooth_noise(rng, height, width, max(2.0, 0.025 * height))[mask]  # (n,)
        cracks = np.abs(_smooth_noise(rng, height, width, max(2.0, 0.04 * height))[mask]) < 0.25
        level = background_level * np.clip(0.88 + 0.08 * shards, 0.78, 1.02) - 25 * cracks
        image[mask] = level[:, None] * np.array([0.99, 1.0, 1.0], np.float32)
    elif defect == "contamination":
        palettes = np.array([[14, 11, 9], [120, 84, 50], [112, 118, 70], [150, 142, 128]], np.float32)  # (4,3)
        colour = palettes[rng.integers(len(palettes))] * rng.uniform(0.9, 1.1)
        grain = 1 + 0.12 * _smooth_noise(rng, height, width, 1.5)[mask][:, None]  # (n,1)
        opacity = rng.uniform(0.8, 0.95)
        image[mask] = (1 - opacity) * image[mask] + opacity * colour * grain
    elif defect == "scratch":
        brightness = rng.uniform(185, 235) + rng.normal(0, 8, (n, 1))  # (n,1)
        image[mask] = 0.2 * image[mask] + 0.8 * brightness * np.array([0.97, 1.0, 1.03], np.float32)


def make_bottle(rng: np.random.Generator, size: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Bottle bottom seen from above, (size,size,3) uint8 image and (size,size) bool mask.

    The mask is all False when defect is None; otherwise one of BOTTLE_DEFECTS is drawn.
    """
    if defect is not None and defect not in BOTTLE_DEFECTS:
        raise ValueError(f"unknown bottle defect {defect!r}; choose one of {BOTTLE_DEFECTS}")
    defect_rng = _child_rng(rng)
    centre_y, centre_x, radius = _bottle_geometry(rng, size)
    image = _render_bottle(rng, size, centre_y, centre_x, radius)  # (H,W,3) float32
    background_level = float(image[0, 0].max())  # corners are always background
    exposure = rng.uniform(0.94, 1.06)
    gradient_angle = rng.uniform(-np.pi, np.pi)
    gradient = rng.uniform(0.0, 0.05)
    noise = rng.normal(0, 2.0, (size, size, 3)).astype(np.float32)

    mask = np.zeros((size, size), bool)
    if defect is not None:
        mask = _bottle_defect_mask(defect_rng, defect, size, centre_y, centre_x, radius)
        _paint_bottle_defect(defect_rng, defect, image, mask, background_level)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    lighting = exposure * (1 + gradient * (np.cos(gradient_angle) * xx + np.sin(gradient_angle) * yy))  # (H,W)
    return _to_uint8(image * lighting[..., None] + noise), mask


def write_synthetic_bottles(
    root: Path,
    *,
    size: int = 128,
    n_train: int = 60,
    n_test_good: int = 10,
    n_test_per_defect: int = 6,
    seed: int = 0,
) -> Path:
    """Write an MVTec-AD-layout folder and return root.

    root/train/good/000.png..., root/test/good/*.png, root/test/<defect>/*.png,
    root/ground_truth/<defect>/<name>_mask.png (uint8 0/255, same name stem + '_mask.png').

    Deterministic per seed (byte-identical files). Written into a temporary sibling folder that is
    renamed to `root` at the end, so a half-written folder never appears there; a `root` holding a
    `.complete` file is returned as it is. A non-empty `root` without `.complete` is not ours to
    overwrite: FileExistsError.
    """

    def write(staging: Path) -> None:
        groups: list[tuple[str, str | None, int]] = [("train/good", None, n_train), ("test/good", None, n_test_good)]
        groups += [(f"test/{defect}", defect, n_test_per_defect) for defect in BOTTLE_DEFECTS]
        for group_id, (folder, defect, count) in enumerate(groups):
            (staging / folder).mkdir(parents=True)
            if defect is not None:
                (staging / "ground_truth" / defect).mkdir(parents=True)
            for index in range(count):
                image, mask = make_bottle(np.random.default_rng([seed, group_id, index]), size, defect)
                Image.fromarray(image).save(staging / folder / f"{index:03d}.png")
                if defect is not None:
                    mask_path = staging / "ground_truth" / defect / f"{index:03d}_mask.png"
                    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)

    settings = {"size": size, "n_train": n_train, "n_test_good": n_test_good, "seed": seed}
    settings["n_test_per_defect"] = n_test_per_defect
    return write_atomically(Path(root), settings, write)


def write_atomically(root: Path, settings: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Run `write(staging)` into a temporary sibling folder, then rename it to `root`; return root.

    A half-written folder never appears at `root`; a `root` holding a `.complete` file (which
    records `settings`) is returned as it is. A non-empty `root` without `.complete` is not ours to
    overwrite: FileExistsError.
    """
    if (root / ".complete").is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists, is not empty and has no .complete marker; delete it to regenerate")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        write(staging)
        (staging / ".complete").write_text(json.dumps(settings, sort_keys=True) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        try:
            os.rename(staging, root)  # atomic; replaces an empty folder at root
        except OSError:
            if not (root / ".complete").is_file():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


# ----------------------------------------------------------------------------------------------------------------------
# Handwritten notes
# ----------------------------------------------------------------------------------------------------------------------

_INKS = {"blue": (28, 48, 140), "black": (28, 28, 34)}  # RGB; no channel near 0, so highlighter always changes it
_HIGHLIGHTERS = {"yellow": (255, 238, 60), "green": (135, 245, 95), "pink": (255, 115, 195)}


def _word_stroke(rng: np.random.Generator, x0: float, baseline: float, spacing: float, n_letters: int) -> np.ndarray:
    """One cursive word as a smooth curve of coupled oscillations (loops, ascenders, descenders).  # (N,2) (y,x)

    One up-down oscillation per letter; each letter has its own width, height, loop size and
    vertical offset (ascenders, descenders), interpolated between letters so the pen moves smoothly.
    """
    letter_width = spacing * rng.uniform(0.3, 0.4)
    x_height = spacing * rng.uniform(0.26, 0.34)
    knots = np.arange(n_letters + 1, dtype=np.float64)  # one knot per letter
    advance = np.r_[0.0, np.cumsum(letter_width * rng.uniform(0.6, 1.5, n_letters))]  # x at each knot
    height = x_height * rng.uniform(0.6, 1.1, n_letters + 1)
    offset = np.zeros(n_letters + 1)
    kind = rng.random(n_letters + 1)
    height[kind < 0.18] *= 2.2  # ascenders (l, h, k, ...)
    offset[kind < 0.18] = -0.6 * x_height
    height[kind > 0.88] *= 2.0  # descenders (g, p, y, ...)
    offset[kind > 0.88] = 0.6 * x_height
    loop = letter_width * rng.uniform(0.05, 0.5, n_letters + 1)  # e/l-like loops vs n/m-like arches
    speed = 2 * np.pi * (letter_width * 2 + 2.2 * x_height) + 1.5 * letter_width  # bound on |d(point)/dt|
    t = np.linspace(0, n_letters, int(n_letters * speed / 0.4) + 2)
    phase = 2 * np.pi * t + rng.uniform(0, 2 * np.pi)
    x = x0 + np.interp(t, knots, advance) + np.interp(t, knots, loop) * np.cos(phase + rng.uniform(1.2, 1.9))
    y = baseline - 0.5 * x_height + np.interp(t, knots, offset) - 0.5 * np.interp(t, knots, height) * np.sin(phase)
    y = y + rng.normal(0, 0.04) * spacing * t / n_letters  # the word drifts off the line a little
    x = x + rng.uniform(0.1, 0.35) * (baseline - y)  # slant
    return np.stack([y, x], -1)


def make_notes_page(
    rng: np.random.Generator, height: int, width: int, highlighter: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Photographed handwritten-notes page, (H,W,3) uint8 image and (H,W) bool mask.

    Paper texture + slight illumination gradient, ruled lines, handwriting-like ink strokes in blue
    or black (smooth random curves in word-like clusters along lines). When highlighter=True add 1-4
    translucent highlighter strokes (yellow, green or pink; multiply-blended wide strokes over text
    lines); the mask marks exactly the highlighted pixels.
    """
    highlighter_rng = _child_rng(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # Paper: off-white, blotchy at a large scale, grainy at a small one.
    paper_rgb = np.array([245, 242, 232], np.float32) + rng.uniform(-6, 6, 3).astype(np.float32)
    blotches = 1 + 0.012 * _smooth_noise(rng, height, width, max(height, width) / 6)
    grain = 1 + 0.012 * ndimage.gaussian_filter(rng.standard_normal((height, width)).astype(np.float32), 0.7)
    page = paper_rgb * (blotches * grain)[..., None]  # (H,W,3)

    # Ruled lines (light blue) and sometimes a pink margin line, multiplied into the paper.
    spacing = max(8.0, height / rng.uniform(22, 30))
    first = spacing * rng.uniform(1.5, 3.0)
    baselines = np.arange(first, height - 0.4 * spacing, spacing)  # (L,)
    rule = np.zeros((height, width), np.float32)
    rows = np.rint(baselines).astype(int)
    rule[rows[rows < height]] = rng.uniform(0.25, 0.4)
    rule_rgb = np.array([150, 180, 230], np.float32) / 255
    page *= 1 - rule[..., None] * (1 - rule_rgb)
    margin = width * rng.uniform(0.08, 0.14)
    if rng.random() < 0.7:
        margin_line = (np.abs(xx - margin) < 0.6).astype(np.float32) * 0.35
        page *= 1 - margin_line[..., None] * (1 - np.array([235, 120, 130], np.float32) / 255)

    # Handwriting: words along the lines, some lines short or empty.
    ink_rgb = np.array(_INKS["blue" if rng.random() < 0.6 else "black"], np.float32) + rng.uniform(-6, 6, 3).astype(
        np.float32
    )
    pen_radius = max(0.6, spacing * rng.uniform(0.035, 0.06))
    strokes: list[np.ndarray] = []
    written_lines: list[tuple[float, float, float]] = []  # (baseline, first x, last x)
    left = margin + spacing * rng.uniform(0.2, 0.5)
    for baseline in baselines:
        if rng.random() < 0.15:
            continue
        line_end = width - spacing * rng.uniform(0.5, 1.5) if rng.random() < 0.7 else rng.uniform(0.35, 0.9) * width
        x = left + (spacing * rng.uniform(0.5, 2.0) if rng.random() < 0.15 else 0.0)  # indented paragraph start
        start = x
        while True:
            n_letters = int(rng.integers(2, 9))
            word_width = n_letters * spacing * 0.42
            if x + word_width > line_end:
                break
            strokes.append(_word_stroke(rng, x, baseline + rng.normal(0, 0.03 * spacing), spacing, n_letters))
            x = float(strokes[-1][:, 1].max()) + spacing * rng.uniform(0.35, 0.7)
        if x > start:
            written_lines.append((float(baseline), start, x))
    if strokes:
        distance = _distance_to_points((height, width), np.concatenate(strokes), pen_radius + 1)
        pressure = 0.85 + 0.1 * _smooth_noise(rng, height, width, spacing)
        ink = np.clip(pen_radius + 0.5 - distance, 0, 1) * np.clip(pressure, 0.6, 0.98)  # (H,W) coverage
        page = page * (1 - ink[..., None]) + ink_rgb * ink[..., None]

    # Camera: a gentle illumination gradient and vignette, then sensor noise (applied after the highlighter).
    direction = rng.uniform(-np.pi, np.pi)
    ramp = (np.cos(direction) * (xx / width - 0.5) + np.sin(direction) * (yy / height - 0.5)) * rng.uniform(0.06, 0.14)
    vignette = ((xx / width - 0.5) ** 2 + (yy / height - 0.5) ** 2) * rng.uniform(0.05, 0.15)
    lighting = (rng.uniform(0.9, 1.02) * (1 + ramp - vignette))[..., None]  # (H,W,1)
    noise = rng.normal(0, 2.0, (height, width, 3)).astype(np.float32)

    mask = np.zeros((height, width), bool)
    if highlighter:
        mask = _paint_highlighter(highlighter_rng, page, written_lines, baselines, spacing, width)
    return _to_uint8(page * lighting + noise), mask


def _paint_highlighter(
    rng: np.random.Generator,
    page: np.ndarray,
    written_lines: list[tuple[float, float, float]],
    baselines: np.ndarray,
    spacing: float,
    width: int,
) -> np.ndarray:
    """Multiply 1-4 wide translucent strokes over text lines into `page` (H,W,3 float); return their mask (H,W) bool."""
    height = page.shape[0]
    lines = written_lines or [(float(b), 0.1 * width, 0.9 * width) for b in baselines]
    lines = lines or [(height / 2, 0.1 * width, 0.9 * width)]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = np.zeros((height, width), bool)
    n_strokes = int(rng.integers(1, 5))
    for line_index in rng.choice(len(lines), size=min(n_strokes, len(lines)), replace=False):
        baseline, first, last = lines[line_index]
        span = last - first
        start = first + span * rng.uniform(-0.03, 0.5)
        end = min(start + span * rng.uniform(0.2, 0.8) + spacing, last + 0.3 * spacing)
        centre = baseline - spacing * rng.uniform(0.1, 0.22)  # over the letters' x-height
        half_height = spacing * rng.uniform(0.3, 0.48)
        tilt = rng.uniform(-0.015, 0.015)
        wobble = 0.08 * spacing * np.sin(xx / (spacing * rng.uniform(3, 8)) + rng.uniform(0, 6))
        middle = centre + tilt * (xx - start) + wobble  # (H,W) stroke centre line per column
        tip = rng.uniform(0.2, 0.6) * (yy - middle)  # chisel tip: the ends are slanted cuts
        stroke = (np.abs(yy - middle) <= half_height) & (xx >= start + tip) & (xx <= end + tip)
        if not stroke.any():
            continue
        colour = np.array(list(_HIGHLIGHTERS.values())[int(rng.integers(len(_HIGHLIGHTERS)))], np.float32) / 255
        streaks = ndimage.gaussian_filter1d(rng.standard_normal(height), 1.0).astype(np.float32)[:, None]  # (H,1)
        opacity = np.clip(rng.uniform(0.75, 0.92) + 0.04 * streaks, 0.6, 0.98)  # (H,1) streaky along the stroke
        factor = 1 - opacity[..., None] * (1 - colour)  # (H,1,3)
        page[stroke] *= np.broadcast_to(factor, (height, width, 3))[stroke]
        mask |= stroke
    if not mask.any():  # every stroke fell outside the page: highlight the first text line's start
        baseline, first, _ = lines[0]
        row = int(np.clip(round(baseline - 0.3 * spacing), 0, height - 1))
        col = slice(int(np.clip(first, 0, width - 1)), int(np.clip(first + spacing, 1, width)))
        mask[row, col] = True
        page[mask] *= np.array(_HIGHLIGHTERS["yellow"], np.float32) / 255 * 0.85 + 0.15
    return mask


# ----------------------------------------------------------------------------------------------------------------------
# Sea with sharks
# ----------------------------------------------------------------------------------------------------------------------

_SEA_COLOURS = np.array(
    [[18, 58, 105], [14, 78, 102], [38, 140, 150], [36, 105, 88], [62, 160, 165], [22, 92, 130]], np.float32
)  # (6,3) deep blue, blue-teal, turquoise, green, light turquoise, mid blue

# Shark seen from above in body coordinates: s along the body (tail -0.5 .. nose +0.5, in body lengths),
# half-width of the body at s, also in body lengths.
_SHARK_S = np.array([-0.44, -0.40, -0.30, -0.15, 0.0, 0.15, 0.28, 0.38, 0.45, 0.5])
_SHARK_HALF_WIDTH = np.array([0.010, 0.016, 0.032, 0.058, 0.075, 0.078, 0.068, 0.05, 0.03, 0.0])


def _in_triangle(s: np.ndarray, v: np.ndarray, corners: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Points (s,v) inside the triangle with these corners.  # bool, shape of s"""
    (s0, v0), (s1, v1), (s2, v2) = corners
    d0 = (s - s1) * (v0 - v1) - (s0 - s1) * (v - v1)
    d1 = (s - s2) * (v1 - v2) - (s1 - s2) * (v - v2)
    d2 = (s - s0) * (v2 - v0) - (s2 - s0) * (v - v0)
    negative = (d0 < 0) | (d1 < 0) | (d2 < 0)
    positive = (d0 > 0) | (d1 > 0) | (d2 > 0)
    return ~(negative & positive)


def _shark(rng: np.random.Generator, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """One shark at a random place, angle and scale.

    Returns its bounding box, its silhouette (h,w) bool and how dark it makes the water, (h,w) in 0..1.
    """
    short_side = min(height, width)
    length = float(np.clip(rng.uniform(0.12, 0.3) * short_side, min(16.0, 0.9 * short_side), 0.9 * short_side))
    centre_y, centre_x = rng.uniform(0.05, 0.95) * height, rng.uniform(0.05, 0.95) * width
    heading = rng.uniform(-np.pi, np.pi)
    reach = 0.6 * length
    top, bottom = max(int(centre_y - reach), 0), min(int(centre_y + reach) + 2, height)
    left, right = max(int(centre_x - reach), 0), min(int(centre_x + reach) + 2, width)
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    dy, dx = yy - centre_y, xx - centre_x
    s = (dx * np.cos(heading) + dy * np.sin(heading)) / length  # along the body, nose at +0.5
    v = (-dx * np.sin(heading) + dy * np.cos(heading)) / length  # across the body
    bend = rng.uniform(-0.06, 0.06)  # a swimming curve: the tail swings sideways
    v = v - bend * np.clip(-s, 0, None) ** 2 * 4

    half_width = np.interp(s, _SHARK_S, _SHARK_HALF_WIDTH * rng.uniform(0.85, 1.15))
    body = (np.abs(v) <= half_width) & (s >= _SHARK_S[0]) & (s <= 0.5)
    fin_span, fin_sweep = rng.uniform(0.15, 0.22), rng.uniform(0.08, 0.16)
    pectorals = np.zeros_like(body)
    for side in (-1.0, 1.0):  # swept-back pectoral fins
        pectorals |= _in_triangle(s, v, ((0.17, 0.0), (0.04, 0.0), (0.04 - fin_sweep, side * fin_span)))
    tail_span = rng.uniform(0.06, 0.1)
    tail = _in_triangle(s, v, ((-0.40, 0.0), (-0.56, tail_span), (-0.47, 0.0)))  # forked caudal fin, the upper
    tail |= _in_triangle(s, v, ((-0.40, 0.0), (-0.52, -0.7 * tail_span), (-0.46, 0.0)))  # lobe longer
    tail |= (np.abs(v) <= 0.008) & (s >= -0.47) & (s <= -0.40)
    dorsal = _in_triangle(s, v, ((0.06, 0.0), (-0.1, 0.013), (-0.1, -0.013)))  # seen edge-on from above: a dark ridge
    silhouette = body | pectorals | tail
    silhouette = _hard_mask_nonempty(silhouette, centre_y - top, centre_x - left)

    # Darker along the spine and over the dorsal fin, a little lighter at the edges.
    edge = np.clip(np.abs(v) / np.maximum(half_width, 1e-3), 0, 1)
    darkness = rng.uniform(0.6, 0.8) * (1 - 0.2 * edge * body) + 0.12 * dorsal
    return (slice(top, bottom), slice(left, right)), silhouette, np.clip(darkness, 0.45, 0.9)


def make_sea_image(rng: np.random.Generator, height: int, width: int, n_sharks: int) -> tuple[np.ndarray, np.ndarray]:
    """Aerial sea photograph, (H,W,3) uint8 image and (H,W) bool mask.

    Colour gradient (blue/green/turquoise varying per image), waves (oriented sinusoids + noise),
    sun glint (sparse bright specks), foam patches. n_sharks sharks: dark elongated bodies with
    pectoral fins, dorsal fin and tail, any angle and scale. The mask marks exactly the shark pixels.
    """
    shark_rng = _child_rng(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    short_side = min(height, width)

    # Water colour: a gradient between two palette colours, bent by depth-like low-frequency noise.
    near, far = _SEA_COLOURS[rng.choice(len(_SEA_COLOURS), 2, replace=False)] + rng.uniform(-12, 12, (2, 3))
    direction = rng.uniform(-np.pi, np.pi)
    along = np.cos(direction) * (xx / width - 0.5) + np.sin(direction) * (yy / height - 0.5)  # (H,W) in -0.7..0.7
    depth = np.clip(along / 1.4 + 0.5 + 0.12 * _smooth_noise(rng, height, width, short_side / 3), 0, 1)[..., None]
    sea = near * (1 - depth) + far * depth  # (H,W,3)

    # Waves: two oriented sinusoids whose phase and amplitude wander, plus fine ripples.
    waves = np.zeros((height, width), np.float32)
    wavelength = max(4.0, short_side * rng.uniform(0.025, 0.07))
    wave_angle = rng.uniform(0, np.pi)
    for amplitude, scale, turn in ((1.0, 1.0, 0.0), (0.5, rng.uniform(0.45, 0.7), rng.uniform(0.3, 0.9))):
        angle = wave_angle + turn
        phase = 2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / (wavelength * scale)
        warp = 2.0 * _smooth_noise(rng, height, width, wavelength * 4)
        swell = np.clip(0.6 + 0.4 * _smooth_noise(rng, height, width, wavelength * 6), 0.1, None)
        waves += amplitude * swell * np.sin(phase + warp)
    waves += 0.35 * _smooth_noise(rng, height, width, 1.5)
    sea *= (1 + rng.uniform(0.05, 0.1) * waves)[..., None]

    # Sun glint: sparse bright specks on wave crests, densest around the sun's reflection.
    sun_y, sun_x = rng.uniform(0, height), rng.uniform(0, width)
    glare = np.exp(-((yy - sun_y) ** 2 + (xx - sun_x) ** 2) / (2 * (rng.uniform(0.2, 0.4) * short_side) ** 2))
    specks = (rng.random((height, width)) < rng.uniform(0.01, 0.04) * glare) & (waves > 0.3)
    sparkle = ndimage.gaussian_filter(specks.astype(np.float32) * rng.uniform(0.8, 1.0, (height, width)), 0.6) * 3
    sea = sea + (255 - sea) * np.clip(sparkle + 0.08 * glare, 0, 1)[..., None]

    # Foam: a few whitish, streaky patches.
    for _ in range(int(rng.integers(0, 4))):
        foam_y, foam_x = rng.uniform(0, height), rng.uniform(0, width)
        patch = np.exp(-((yy - foam_y) ** 2 + (xx - foam_x) ** 2) / (2 * (rng.uniform(0.04, 0.1) * short_side) ** 2))
        froth = 0.5 * _smooth_noise(rng, height, width, max(2.0, wavelength / 2)) + 0.3 * waves  # streaky
        foam = np.clip((patch * (1 + 1.5 * froth) - 0.45) * 1.6, 0, 0.75)[..., None]  # (H,W,1), zero far from it
        sea = sea * (1 - foam) + np.array([225, 235, 235], np.float32) * foam

    exposure = rng.uniform(0.92, 1.08)
    noise = rng.normal(0, 2.5, (height, width, 3)).astype(np.float32)

    # Sharks: the water over them darkened towards a grey-brown, only inside their silhouettes.
    mask = np.zeros((height, width), bool)
    shark_rgb = np.array([20, 23, 25], np.float32) + shark_rng.uniform(-5, 5, 3).astype(np.float32)
    for _ in range(n_sharks):
        box, silhouette, darkness = _shark(shark_rng, height, width)
        region = sea[box]  # (h,w,3) view
        alpha = darkness[silhouette][:, None]
        region[silhouette] = region[silhouette] * (1 - alpha) + shark_rgb * alpha
        mask[box] |= silhouette
    return _to_uint8(sea * exposure + noise), mask


# ----------------------------------------------------------------------------------------------------------------------
# Page folders: normal/, anomalous/, masks/ (the layout FolderDataModule reads)
# ----------------------------------------------------------------------------------------------------------------------

SceneMaker = Callable[[np.random.Generator, bool], tuple[np.ndarray, np.ndarray]]


def write_pages(
    root: Path, make: SceneMaker, n_normal: int, n_anomalous: int, seed: int, settings: dict[str, Any]
) -> Path:
    """Write root/normal/NNN.png, root/anomalous/NNN.png and root/masks/NNN_mask.png (0/255); return root.

    `make(rng, anomalous)` renders one scene. Page i of each folder is rendered from the generator
    seeded [seed, folder, i], so the same seed gives the same bytes; written atomically.
    """

    def write(staging: Path) -> None:
        for folder in ("normal", "anomalous", "masks"):
            (staging / folder).mkdir()
        for folder_id, (folder, count) in enumerate((("normal", n_normal), ("anomalous", n_anomalous))):
            for index in range(count):
                image, mask = make(np.random.default_rng([seed, folder_id, index]), folder == "anomalous")
                Image.fromarray(image).save(staging / folder / f"{index:03d}.png")
                if folder == "anomalous":
                    Image.fromarray(mask.astype(np.uint8) * 255).save(staging / "masks" / f"{index:03d}_mask.png")

    return write_atomically(
        Path(root), {**settings, "n_normal": n_normal, "n_anomalous": n_anomalous, "seed": seed}, write
    )


def write_notes_pages(
    root: Path, *, n_normal: int = 6, n_anomalous: int = 4, height: int = 512, width: int = 384, seed: int = 0
) -> Path:
    """Notes pages: normal/ without marks, anomalous/ with highlighter strokes, masks/ where they are."""

    def make(rng: np.random.Generator, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
        return make_notes_page(rng, height, width, highlighter=anomalous)

    return write_pages(root, make, n_normal, n_anomalous, seed, {"scene": "notes", "height": height, "width": width})


def write_sea_pages(
    root: Path,
    *,
    n_normal: int = 8,
    n_anomalous: int = 4,
    height: int = 384,
    width: int = 512,
    max_sharks: int = 3,
    seed: int = 0,
) -> Path:
    """Aerial sea images: normal/ open sea, anomalous/ with 1..max_sharks sharks, masks/ where they are."""

    def make(rng: np.random.Generator, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
        n_sharks = int(rng.integers(1, max_sharks + 1)) if anomalous else 0
        return make_sea_image(rng, height, width, n_sharks)

    settings = {"scene": "sea", "height": height, "width": width, "max_sharks": max_sharks}
    return write_pages(root, make, n_normal, n_anomalous, seed, settings)
