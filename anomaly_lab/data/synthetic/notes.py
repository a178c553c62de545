"""Photographed handwritten-notes pages, with highlighter strokes as the anomaly, and their page folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from anomaly_lab.data.synthetic.drawing import child_rng, distance_to_points, smooth_noise, to_uint8
from anomaly_lab.data.synthetic.folder_writer import write_pages

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
    highlighter_rng = child_rng(rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # Paper: off-white, blotchy at a large scale, grainy at a small one.
    paper_rgb = np.array([245, 242, 232], np.float32) + rng.uniform(-6, 6, 3).astype(np.float32)
    blotches = 1 + 0.012 * smooth_noise(rng, height, width, max(height, width) / 6)
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
        distance = distance_to_points((height, width), np.concatenate(strokes), pen_radius + 1)
        pressure = 0.85 + 0.1 * smooth_noise(rng, height, width, spacing)
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
    return to_uint8(page * lighting + noise), mask


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


def write_notes_pages(
    root: Path, *, n_normal: int = 6, n_anomalous: int = 4, height: int = 512, width: int = 384, seed: int = 0
) -> Path:
    """Notes pages: normal/ without marks, anomalous/ with highlighter strokes, masks/ where they are."""

    def make(rng: np.random.Generator, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
        return make_notes_page(rng, height, width, highlighter=anomalous)

    return write_pages(root, make, n_normal, n_anomalous, seed, {"scene": "notes", "height": height, "width": width})
