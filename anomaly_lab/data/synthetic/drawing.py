"""Drawing helpers the generated scenes share: smooth noise, curves, distances to them, clipping.

`child_rng` is what keeps anomaly masks exact: each scene takes the seed of its anomaly's generator
from the caller's generator first, whether or not it draws the anomaly, so the normal content is
the same with and without it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def child_rng(rng: np.random.Generator) -> np.random.Generator:
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


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Zero-mean noise with features about `cell` pixels wide, std about 1.  # (H,W) float32"""
    cell = max(float(cell), 1.0)
    if cell < 4:  # fine grain: blurred white noise is cheaper than a spline over a near pixel-sized grid
        sigma = cell / 2
        white = rng.standard_normal((height, width)).astype(np.float32)
        return ndimage.gaussian_filter(white, sigma) * np.float32(2 * np.sqrt(np.pi) * sigma)
    grid = rng.standard_normal((int(height / cell) + 4, int(width / cell) + 4)).astype(np.float32)  # (h,w)
    rows = sum(weight[:, None] * grid[knot] for knot, weight in _bspline_taps(height, cell))  # (H,w)
    return sum(rows[:, knot] * weight[None, :] for knot, weight in _bspline_taps(width, cell))  # (H,W)


def quadratic_bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, step_px: float = 0.35) -> np.ndarray:
    """Points along a quadratic Bezier curve, at most `step_px` apart.  # (N,2) float (y,x)"""
    length = np.linalg.norm(p1 - p0) + np.linalg.norm(p2 - p1)
    t = np.linspace(0.0, 1.0, int(length / step_px) + 2)[:, None]  # (N,1)
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def distance_to_points(shape: tuple[int, int], points: np.ndarray, reach: float) -> np.ndarray:
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


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def hard_mask_nonempty(mask: np.ndarray, row: float, col: float) -> np.ndarray:
    """At tiny sizes a thin shape can miss every pixel centre; keep at least its nearest pixel."""
    if not mask.any():
        height, width = mask.shape
        mask = mask.copy()
        mask[int(np.clip(round(row), 0, height - 1)), int(np.clip(round(col), 0, width - 1))] = True
    return mask
