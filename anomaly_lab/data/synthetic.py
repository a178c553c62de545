"""Generated images with known anomaly masks, so that training and tests need no downloaded data.

Bottle bottoms seen from above (as in MVTec AD `bottle`) with broken rims, contamination and
scratches. Every image is drawn from its own seeded generator: same seed, same bytes. The
defect is drawn from a separate stream, so an image with a defect equals its normal twin
outside the mask, and the mask is exactly the set of pixels the defect changed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

BOTTLE_DEFECTS = ("broken_rim", "contamination", "scratch")


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _blob(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    """An irregular blob: union of a few jittered discs.  # (H,W) bool"""
    mask = np.zeros(yy.shape, bool)
    for _ in range(int(rng.integers(2, 6))):
        oy, ox = rng.normal(0, radius * 0.5, 2)
        r = radius * rng.uniform(0.4, 0.9)
        mask |= (yy - cy - oy) ** 2 + (xx - cx - ox) ** 2 <= r * r
    return mask


def _defect_mask(
    rng: np.random.Generator, defect: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float
) -> np.ndarray:
    size = yy.shape[0]
    dist = np.hypot(yy - cy, xx - cx) / radius
    if defect == "contamination":
        angle, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.7) * radius
        blob_radius = rng.uniform(0.025, 0.06) * size
        mask = _blob(rng, yy, xx, cy + rad * np.sin(angle), cx + rad * np.cos(angle), blob_radius)
        return mask & (dist < 0.95)
    if defect == "scratch":
        points = [
            (cy + r * radius * np.sin(a), cx + r * radius * np.cos(a))
            for a, r in zip(rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.1, 0.75, 3), strict=True)
        ]
        t = np.linspace(0, 1, 4 * size)[:, None]
        (y0, x0), (y1, x1), (y2, x2) = points
        curve = np.hstack(
            [(1 - t) ** 2 * y0 + 2 * (1 - t) * t * y1 + t**2 * y2, (1 - t) ** 2 * x0 + 2 * (1 - t) * t * x1 + t**2 * x2]
        )  # (N,2) quadratic Bezier
        mask = np.zeros(yy.shape, bool)
        width = max(1.0, size / 128)
        rows = np.clip(np.round(curve[:, 0]).astype(int), 0, size - 1)
        cols = np.clip(np.round(curve[:, 1]).astype(int), 0, size - 1)
        mask[rows, cols] = True
        if width > 1:
            from scipy.ndimage import binary_dilation

            mask = binary_dilation(mask, iterations=int(width) - 1)
        return mask & (dist < 0.95)
    if defect == "broken_rim":
        angle = rng.uniform(-np.pi, np.pi)
        span = rng.uniform(0.15, 0.4)
        theta = np.arctan2(yy - cy, xx - cx)
        delta = np.angle(np.exp(1j * (theta - angle)))
        depth = 0.72 + 0.08 * np.cos(delta * 9 + rng.uniform(0, 6))  # jagged inner edge
        return (np.abs(delta) < span * (1 - 0.5 * (dist - 0.85))) & (dist > depth) & (dist < 1.0)
    raise ValueError(f"unknown bottle defect {defect!r}; choose one of {BOTTLE_DEFECTS}")


def make_bottle(rng: np.random.Generator, size: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Bottle bottom seen from above: (size,size,3) uint8 image, (size,size) bool defect mask."""
    defect_rng = np.random.default_rng(rng.integers(2**63))  # drawn always: normal twin is identical
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.normal(0, 0.01 * size, 2)
    radius = 0.42 * size * (1 + rng.normal(0, 0.015))
    brightness = 1 + rng.normal(0, 0.04)
    dist = np.hypot(yy - cy, xx - cx) / radius
    theta = np.arctan2(yy - cy, xx - cx)

    background = 205 + 12 * (yy / size - 0.5) + 6 * (xx / size - 0.5)
    glass = np.stack([background * 1.0, background * 0.99, background * 0.97], -1)
    annulus = 120 + 18 * np.sin(dist * 38 + rng.uniform(0, 6)) + 6 * np.sin(theta * 24)
    centre = 70 + 40 * np.exp(-(((dist - 0.3) / 0.04) ** 2))
    body = np.where(dist < 0.35, centre, annulus)
    body = np.where(dist > 0.85, 45 + 15 * np.sin(theta * 3 + rng.uniform(0, 6)), body)
    body_rgb = np.stack([body * 1.05, body * 0.92, body * 0.72], -1)  # brown glass
    inside = 1 - _smoothstep(0.99, 1.01, dist)[..., None]
    image = inside * body_rgb + (1 - inside) * glass
    image = image * brightness + rng.normal(0, 3.0, image.shape)

    mask = np.zeros((size, size), bool)
    if defect is not None:
        mask = _defect_mask(defect_rng, defect, yy, xx, cy, cx, radius)
        n = int(mask.sum())
        if defect == "contamination":
            colour = defect_rng.choice([np.array([30.0, 25, 20]), np.array([150.0, 60, 40]), np.array([60.0, 90, 50])])
            image[mask] = colour + defect_rng.normal(0, 6, (n, 3))
        elif defect == "scratch":
            image[mask] = 225 + defect_rng.normal(0, 8, (n, 1))
        else:
            image[mask] = background[mask][:, None] * np.array([1.0, 0.99, 0.97]) + defect_rng.normal(0, 10, (n, 1))
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def _save(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, optimize=False)


def write_synthetic_bottles(
    root: Path,
    *,
    size: int = 128,
    n_train: int = 60,
    n_test_good: int = 10,
    n_test_per_defect: int = 6,
    seed: int = 0,
) -> Path:
    """Write generated bottles in MVTec AD layout at `root` (atomically; reused when complete)."""
    root = Path(root)
    if (root / ".complete").is_file():
        return root
    staging = root.with_name(f".{root.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    jobs: list[tuple[Path, str | None, int]] = [(staging / "train" / "good", None, n_train)]
    jobs += [(staging / "test" / "good", None, n_test_good)]
    jobs += [(staging / "test" / d, d, n_test_per_defect) for d in BOTTLE_DEFECTS]
    for split_id, (folder, defect, count) in enumerate(jobs):
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, mask = make_bottle(np.random.default_rng([seed, split_id, index]), size, defect)
            _save(folder / f"{index:03d}.png", image)
            if defect is not None:
                truth = staging / "ground_truth" / defect
                truth.mkdir(parents=True, exist_ok=True)
                _save(truth / f"{index:03d}_mask.png", mask.astype(np.uint8) * 255)
    (staging / ".complete").write_text("generated by anomaly_lab.data.synthetic\n")
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root
