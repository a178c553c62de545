"""Aerial sea photographs, with sharks as the anomaly, and their page folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from anomaly_lab.data.synthetic.drawing import child_rng, hard_mask_nonempty, smooth_noise, to_uint8
from anomaly_lab.data.synthetic.folder_writer import write_pages

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
    silhouette = hard_mask_nonempty(silhouette, centre_y - top, centre_x - left)

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
    shark_rng = child_rng(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    short_side = min(height, width)

    # Water colour: a gradient between two palette colours, bent by depth-like low-frequency noise.
    near, far = _SEA_COLOURS[rng.choice(len(_SEA_COLOURS), 2, replace=False)] + rng.uniform(-12, 12, (2, 3))
    direction = rng.uniform(-np.pi, np.pi)
    along = np.cos(direction) * (xx / width - 0.5) + np.sin(direction) * (yy / height - 0.5)  # (H,W) in -0.7..0.7
    depth = np.clip(along / 1.4 + 0.5 + 0.12 * smooth_noise(rng, height, width, short_side / 3), 0, 1)[..., None]
    sea = near * (1 - depth) + far * depth  # (H,W,3)

    # Waves: two oriented sinusoids whose phase and amplitude wander, plus fine ripples.
    waves = np.zeros((height, width), np.float32)
    wavelength = max(4.0, short_side * rng.uniform(0.025, 0.07))
    wave_angle = rng.uniform(0, np.pi)
    for amplitude, scale, turn in ((1.0, 1.0, 0.0), (0.5, rng.uniform(0.45, 0.7), rng.uniform(0.3, 0.9))):
        angle = wave_angle + turn
        phase = 2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / (wavelength * scale)
        warp = 2.0 * smooth_noise(rng, height, width, wavelength * 4)
        swell = np.clip(0.6 + 0.4 * smooth_noise(rng, height, width, wavelength * 6), 0.1, None)
        waves += amplitude * swell * np.sin(phase + warp)
    waves += 0.35 * smooth_noise(rng, height, width, 1.5)
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
        froth = 0.5 * smooth_noise(rng, height, width, max(2.0, wavelength / 2)) + 0.3 * waves  # streaky
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
    return to_uint8(sea * exposure + noise), mask


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
