"""Synthetic anomalies made from normal images, with exact masks, for validating on good images only.

A generator is a callable `(image, source, rng) -> (anomalous image, mask)`: `image` is the (H,W,3) uint8
normal image to damage, `source` another normal image of the dataset that donates the texture (no external
texture set is needed), `rng` a `np.random.Generator`. The mask is exact: True on every pixel the anomaly
changed, False elsewhere, where the output equals the input bit for bit.

Every changed pixel changes visibly: a mean absolute change over its channels of at least `min_change`
grey levels. Where the blend would change a pixel less, its opacity is raised just enough (the pixel
moves further towards the texture); where the texture itself is too close to the image (a flat image with
a flat source, a patch cut from the same place), the pixel takes a fixed step of `min_change` away from
the nearer end of the range. So a region is never "masked but unchanged", whatever the data.

Generators:
- `PerlinBlend` (DRAEM, Zavrtanik et al. 2021): a Perlin-noise blob region, filled with a jittered crop of
  the source, blended with opacity beta.
- `CutPasteScar` (CutPaste, Li et al. 2021): a thin rotated "scar" or a small rectangular patch cut from
  the source at a random place, colour-jittered, pasted opaquely at another random place.

`region` (optional, (H,W) bool): where the anomaly may go. A part photographed on a plain ground (a screw) has
its defects on the part; anomalies scattered over the ground are found by any model, so they cannot rank models
or scorings by what matters (`part_region`: the part as orientation finds it, a little widened).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

ImageU8 = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]

PATCH_ASPECT = (0.3, 3.3)  # CutPaste's aspect-ratio range for rectangular patches
MAX_SHAPE_TRIES = 50


class AnomalyGenerator(Protocol):
    """`(image (H,W,3) uint8, source (H',W',3) uint8, rng, region (H,W) bool | None) -> (anomalous (H,W,3) uint8,
    mask (H,W) bool)`; the mask lies inside `region` where one is given."""

    def __call__(
        self, image: ImageU8, source: ImageU8, rng: np.random.Generator, region: Mask | None = None
    ) -> tuple[ImageU8, Mask]: ...


# A part covering less than this share of the image is noise of the threshold; a ground whose luminance spreads
# (standard deviation) more than PLAIN_GROUND times the part's contrast with it is a texture, not a ground: either
# way the whole image is the region.
PART_MIN = 0.005
PLAIN_GROUND = 0.25


def part_region(image: ImageU8) -> Mask:
    """Where an anomaly of a part on a plain ground goes: the part (orientation.part_mask, Otsu's minority side)
    widened by 2% of the image's shorter side, so its edge (a thread's tip) is in; (H,W) bool. The whole image
    where no part stands out (a texture, a flat image, a part filling the image)."""
    import cv2

    from anomaly_lab.orientation import part_mask  # cv2, only where parts are asked for

    part = part_mask(image)  # (H,W) bool, at most half the image
    luminance = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float64)  # (H,W)
    if part.mean() < PART_MIN or part.all() or not part.any():
        return np.ones(image.shape[:2], dtype=bool)
    contrast = abs(luminance[part].mean() - luminance[~part].mean())
    if luminance[~part].std() > PLAIN_GROUND * contrast:
        return np.ones(image.shape[:2], dtype=bool)
    size = 2 * max(1, round(0.02 * min(image.shape[:2]))) + 1
    return cv2.dilate(part.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_image(name: str, array: np.ndarray) -> None:
    _require(
        array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8 and min(array.shape[:2]) > 0,
        f"{name} must be an (H,W,3) uint8 array, got shape {array.shape} dtype {array.dtype}",
    )


def _check_common(min_area: float, max_area: float, jitter: float, min_change: int) -> None:
    _require(
        0 < min_area <= max_area < 1,
        f"min_area and max_area must satisfy 0 < min_area <= max_area < 1, got {min_area}, {max_area}",
    )
    _require(0 <= jitter <= 1, f"jitter must be in [0, 1], got {jitter}")
    _require(1 <= min_change <= 127, f"min_change must be in [1, 127] grey levels, got {min_change}")


def _pixel_bounds(height: int, width: int, min_area: float, max_area: float) -> tuple[int, int]:
    """The allowed mask sizes in pixels: at least one, never all; the nearest count when none lies in the range."""
    n = height * width
    _require(n >= 2, f"image must have at least 2 pixels for an anomaly, got {height}x{width}")
    lo, hi = max(1, math.ceil(min_area * n - 1e-9)), min(n - 1, math.floor(max_area * n + 1e-9))
    if lo > hi:
        lo = hi = min(n - 1, max(1, round(min_area * n)))
    return lo, hi


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-uniform in [lo, hi]: small (subtle) anomalies as likely as large ones, per octave."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> Floats:
    """2D Perlin gradient noise, (H,W) float in about [-0.71, 0.71], with res[0] x res[1] lattice cells."""
    (height, width), (ry, rx) = shape, res
    angles = rng.uniform(0.0, 2 * np.pi, (ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (ry+1,rx+1,2)
    y, x = (np.arange(height) + 0.5) * ry / height, (np.arange(width) + 0.5) * rx / width
    iy, ix = y.astype(int), x.astype(int)  # (H,) (W,) cell of each pixel
    fy, fx = y - iy, x - ix  # (H,) (W,) position inside the cell

    def corner(oy: int, ox: int) -> Floats:
        g = grads[(iy + oy)[:, None], (ix + ox)[None, :]]  # (H,W,2)
        return g[..., 0] * (fy - oy)[:, None] + g[..., 1] * (fx - ox)[None, :]  # (H,W)

    def fade(t: Floats) -> Floats:
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(fy)[:, None], fade(fx)[None, :]
    top = corner(0, 0) + v * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + v * (corner(1, 1) - corner(1, 0))
    return top + u * (bottom - top)  # (H,W)


def _source_canvas(source: ImageU8, height: int, width: int, rng: np.random.Generator) -> ImageU8:
    """The source randomly rotated by k*90 degrees and flipped, mirror-padded to at least (height,width)."""
    canvas = np.rot90(source, int(rng.integers(4)))
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    pad_h, pad_w = max(0, height - canvas.shape[0]), max(0, width - canvas.shape[1])
    return np.pad(canvas, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")  # (>=H,>=W,3) uint8


def _crop(canvas: ImageU8, height: int, width: int, rng: np.random.Generator) -> ImageU8:
    top = int(rng.integers(canvas.shape[0] - height + 1))
    left = int(rng.integers(canvas.shape[1] - width + 1))
    return canvas[top : top + height, left : left + width]  # (height,width,3) uint8


def _jitter(texture: ImageU8, rng: np.random.Generator, strength: float, invert_p: float) -> Floats:
    """Per-channel gain and offset of +-strength (colour as well as brightness), inverted with prob invert_p."""
    gain = 1.0 + rng.uniform(-strength, strength, 3)
    offset = rng.uniform(-strength, strength, 3) * 128.0
    out = texture.astype(np.float64) * gain + offset  # (h,w,3)
    if rng.random() < invert_p:
        out = 255.0 - out
    return np.clip(out, 0.0, 255.0)


def _paint(image: ImageU8, target: Floats, mask: Mask, beta: float, min_change: int) -> tuple[ImageU8, Mask]:
    """Blend `target` (H,W,3) into `image` on `mask` with opacity beta, each masked pixel changing visibly."""
    img = image[mask].astype(np.float64)  # (K,3)
    full = target[mask] - img  # (K,3) the change at opacity 1
    size = np.abs(full).mean(axis=1)  # (K,)
    opacity = np.minimum(1.0, np.maximum(beta, min_change / np.maximum(size, 1e-9)))  # (K,)
    away = np.where(img < 128.0, 1.0, -1.0) * min_change  # (K,3) a step away from the nearer bound
    delta = np.where((size < min_change)[:, None], away, opacity[:, None] * full)  # (K,3)
    out = image.copy()
    out[mask] = np.clip(np.rint(img + delta), 0, 255).astype(np.uint8)
    return out, mask.copy()


@dataclass(frozen=True)
class PerlinBlend:
    """DRAEM's anomaly: a thresholded Perlin-noise region filled with the source's texture.

    The noise lattice has 2^k cells per axis, k drawn in [min_scale_exp, max_scale_exp] for each axis
    (capped so a cell spans at least 4 pixels). Instead of DRAEM's fixed threshold, the mask is the top
    fraction a of the noise, a log-uniform in [min_area, max_area]: never empty, never the whole image.
    The texture is a random crop / rot90 / flip of the source, colour-jittered; beta ~ U(beta_min, beta_max).
    """

    min_area: float = 0.01
    max_area: float = 0.2
    beta_min: float = 0.3
    beta_max: float = 1.0
    min_scale_exp: int = 0
    max_scale_exp: int = 5
    jitter: float = 0.3
    invert_p: float = 0.1
    min_change: int = 16

    def __post_init__(self) -> None:
        _check_common(self.min_area, self.max_area, self.jitter, self.min_change)
        _require(
            0 < self.beta_min <= self.beta_max <= 1,
            f"beta_min and beta_max must satisfy 0 < beta_min <= beta_max <= 1, got {self.beta_min}, {self.beta_max}",
        )
        _require(
            0 <= self.min_scale_exp <= self.max_scale_exp <= 10,
            "min_scale_exp and max_scale_exp must satisfy 0 <= min_scale_exp <= max_scale_exp <= 10, "
            f"got {self.min_scale_exp}, {self.max_scale_exp}",
        )
        _require(0 <= self.invert_p <= 1, f"invert_p must be in [0, 1], got {self.invert_p}")

    def __call__(
        self, image: ImageU8, source: ImageU8, rng: np.random.Generator, region: Mask | None = None
    ) -> tuple[ImageU8, Mask]:
        _check_image("image", image)
        _check_image("source", source)
        height, width = image.shape[:2]
        lo, hi = _pixel_bounds(height, width, self.min_area, self.max_area)
        count = min(hi, max(lo, round(_log_uniform(rng, lo, hi))))
        allowed = None if region is None else _checked_region(region, height, width).ravel()  # (H*W,)
        ry, rx = (
            min(2 ** int(rng.integers(self.min_scale_exp, self.max_scale_exp + 1)), max(1, d // 4))
            for d in (height, width)
        )
        noise = perlin_noise((height, width), (ry, rx), rng).ravel()  # (H*W,)
        if allowed is not None:  # the top of the noise inside the region, at most all of it
            noise = np.where(allowed, noise, -np.inf)
            count = min(count, int(allowed.sum()))
        mask = np.zeros(height * width, dtype=bool)
        mask[np.argpartition(noise, -count)[-count:]] = True
        texture = _crop(_source_canvas(source, height, width, rng), height, width, rng)  # (H,W,3) uint8
        target = _jitter(texture, rng, self.jitter, self.invert_p)  # (H,W,3) float
        beta = float(rng.uniform(self.beta_min, self.beta_max))
        return _paint(image, target, mask.reshape(height, width), beta, self.min_change)


def _checked_region(region: Mask, height: int, width: int) -> Mask:
    _require(
        region.shape == (height, width) and region.dtype == np.bool_ and bool(region.any()),
        f"region must be a non-empty ({height},{width}) bool array, got shape {region.shape} dtype {region.dtype}",
    )
    return region


def _rotated_rect(length: float, width: float, angle: float) -> Mask:
    """The pixels whose centres fall in a length x width rectangle turned by `angle` radians: (h,w) bool."""
    c, s = abs(math.cos(angle)), abs(math.sin(angle))
    bw, bh = max(1, math.ceil(length * c + width * s)), max(1, math.ceil(length * s + width * c))
    yy, xx = np.arange(bh)[:, None] + 0.5 - bh / 2, np.arange(bw)[None, :] + 0.5 - bw / 2
    u = xx * math.cos(angle) + yy * math.sin(angle)  # (bh,bw) along the length
    v = -xx * math.sin(angle) + yy * math.cos(angle)  # (bh,bw) across it
    return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)


def _fallback_block(height: int, width: int, count: int) -> Mask:
    """`count` pixels as an axis-aligned block shaped like the image, its last row partial: (h,w) bool."""
    w = min(width, max(1, round(math.sqrt(count * width / height)), -(-count // height)))
    block = np.zeros(-(-count // w) * w, dtype=bool)
    block[:count] = True
    return block.reshape(-1, w)


@dataclass(frozen=True)
class CutPasteScar:
    """CutPaste's anomaly: a scar (prob scar_p) or a rectangular patch cut from the source, jittered, pasted.

    The area is log-uniform in [min_area, max_area] of the image (scaled to the image, unlike the paper's
    fixed pixel sizes). A scar has length/width in [min_scar_aspect, max_scar_aspect] and is turned by up to
    +-max_angle degrees; a patch has CutPaste's aspect 0.3..3.3, unrotated. The cut comes from a random
    place of the source (randomly rot90/flipped; the image itself when there is no other) and is pasted
    opaquely: only the pixels inside the rotated rectangle.
    """

    min_area: float = 0.005
    max_area: float = 0.1
    scar_p: float = 0.5
    min_scar_aspect: float = 5.0
    max_scar_aspect: float = 15.0
    max_angle: float = 45.0
    jitter: float = 0.1
    min_change: int = 16

    def __post_init__(self) -> None:
        _check_common(self.min_area, self.max_area, self.jitter, self.min_change)
        _require(0 <= self.scar_p <= 1, f"scar_p must be in [0, 1], got {self.scar_p}")
        _require(
            1 <= self.min_scar_aspect <= self.max_scar_aspect,
            "min_scar_aspect and max_scar_aspect must satisfy 1 <= min_scar_aspect <= max_scar_aspect, "
            f"got {self.min_scar_aspect}, {self.max_scar_aspect}",
        )
        _require(0 <= self.max_angle <= 180, f"max_angle must be in [0, 180] degrees, got {self.max_angle}")

    def _shape(self, height: int, width: int, rng: np.random.Generator) -> Mask:
        lo, hi = _pixel_bounds(height, width, self.min_area, self.max_area)
        for _ in range(MAX_SHAPE_TRIES):
            area = _log_uniform(rng, lo, hi)
            if rng.random() < self.scar_p:
                aspect = rng.uniform(self.min_scar_aspect, self.max_scar_aspect)
                angle = math.radians(rng.uniform(-self.max_angle, self.max_angle))
            else:
                aspect, angle = _log_uniform(rng, *PATCH_ASPECT), 0.0
            length = math.sqrt(area * aspect)
            shape = _rotated_rect(length, area / length, angle)  # (h,w) bool
            if shape.shape[0] <= height and shape.shape[1] <= width and lo <= shape.sum() <= hi:
                return shape
        return _fallback_block(height, width, min(hi, max(lo, round(_log_uniform(rng, lo, hi)))))

    def __call__(
        self, image: ImageU8, source: ImageU8, rng: np.random.Generator, region: Mask | None = None
    ) -> tuple[ImageU8, Mask]:
        _check_image("image", image)
        _check_image("source", source)
        height, width = image.shape[:2]
        shape = self._shape(height, width, rng)  # (h,w) bool
        h, w = shape.shape
        patch = _crop(_source_canvas(source, h, w, rng), h, w, rng)  # (h,w,3) uint8
        mask = np.zeros((height, width), dtype=bool)
        if region is None:
            top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
            mask[top : top + h, left : left + w] = shape
        else:  # centred on a pixel of the region, cut to it (the region holds that centre)
            rows, columns = np.nonzero(_checked_region(region, height, width))
            at = int(rng.integers(rows.size))
            top = min(max(0, int(rows[at]) - h // 2), height - h)
            left = min(max(0, int(columns[at]) - w // 2), width - w)
            mask[top : top + h, left : left + w] = shape
            mask &= region
            if not mask.any():  # the shape missed the region's pixel (a thin part): that pixel at least
                mask[rows[at], columns[at]] = True
        target = np.zeros((height, width, 3))  # (H,W,3) float, read only under the mask
        target[top : top + h, left : left + w] = _jitter(patch, rng, self.jitter, 0.0)
        return _paint(image, target, mask, 1.0, self.min_change)


GENERATORS: dict[str, Callable[..., AnomalyGenerator]] = {"perlin": PerlinBlend, "cutpaste": CutPasteScar}


def synthesise(images: ImageU8, generator: AnomalyGenerator, seed: int, on_part: bool = False) -> tuple[ImageU8, Mask]:
    """One anomalous copy of each of the (N,H,W,3) uint8 images: ((N,H,W,3) uint8, (N,H,W) bool masks).

    Image i uses its own stream of `SeedSequence(seed)` (so it does not depend on the others' results) to
    pick its texture source, another image of the set (itself when N == 1), and to draw its anomaly.
    on_part: each anomaly inside its image's `part_region`.
    """
    _require(
        images.ndim == 4 and images.shape[3] == 3 and images.dtype == np.uint8 and images.shape[0] > 0,
        f"images must be a non-empty (N,H,W,3) uint8 array, got shape {images.shape} dtype {images.dtype}",
    )
    n = images.shape[0]
    out, masks = np.empty_like(images), np.zeros(images.shape[:3], dtype=bool)
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        rng = np.random.default_rng(child)
        j = i if n == 1 else (i + int(rng.integers(1, n))) % n
        region = part_region(images[i]) if on_part else None
        out[i], masks[i] = generator(images[i], images[j], rng, region)
    return out, masks
