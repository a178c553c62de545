"""Bottle bottoms seen from above, a look-alike of MVTec AD `bottle`, with broken rims, contamination
and scratches, and the MVTec-layout folder the bottle datamodule trains on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from anomaly_lab.data.synthetic.drawing import (
    child_rng,
    distance_to_points,
    hard_mask_nonempty,
    quadratic_bezier,
    smooth_noise,
    to_uint8,
)
from anomaly_lab.data.synthetic.folder_writer import write_atomically

BOTTLE_DEFECTS = ("broken_rim", "contamination", "scratch")

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
        return hard_mask_nonempty(mask, middle_y, middle_x)
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
            mask[box] |= hard_mask_nonempty(blob, blob_y - top, blob_x - left)
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
            curve = quadratic_bezier(start, bend, end)
            line = distance_to_points((size, size), curve, half_thickness) <= half_thickness
            mask |= line
        mask &= rho < 0.9
        return hard_mask_nonempty(mask, centre_y, centre_x)
    raise ValueError(f"unknown bottle defect {defect!r}; choose one of {BOTTLE_DEFECTS}")


def _paint_bottle_defect(
    rng: np.random.Generator, defect: str, image: np.ndarray, mask: np.ndarray, background_level: float
) -> None:
    """Paint the defect into `image` (H,W,3 float32), only where `mask` is set."""
    height, width = mask.shape
    n = int(mask.sum())
    if defect == "broken_rim":
        # Broken glass: background seen through, bright shards and faint crack lines, never as dark as the rim.
        shards = smooth_noise(rng, height, width, max(2.0, 0.025 * height))[mask]  # (n,)
        cracks = np.abs(smooth_noise(rng, height, width, max(2.0, 0.04 * height))[mask]) < 0.25
        level = background_level * np.clip(0.88 + 0.08 * shards, 0.78, 1.02) - 25 * cracks
        image[mask] = level[:, None] * np.array([0.99, 1.0, 1.0], np.float32)
    elif defect == "contamination":
        palettes = np.array([[14, 11, 9], [120, 84, 50], [112, 118, 70], [150, 142, 128]], np.float32)  # (4,3)
        colour = palettes[rng.integers(len(palettes))] * rng.uniform(0.9, 1.1)
        grain = 1 + 0.12 * smooth_noise(rng, height, width, 1.5)[mask][:, None]  # (n,1)
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
    defect_rng = child_rng(rng)
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
    return to_uint8(image * lighting[..., None] + noise), mask


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
