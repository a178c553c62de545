"""Synthetic anomalies: exact masks, area bounds, determinism, flat and grey inputs, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_lab.data import anomaly_synthesis as syn
from anomaly_lab.data.anomaly_synthesis import GENERATORS, CutPasteScar, PerlinBlend, perlin_noise, synthesise

SIZES = [(32, 32), (64, 64), (128, 128), (256, 256), (48, 80), (40, 200), (200, 36)]
DEFAULTS = [PerlinBlend(), CutPasteScar(), CutPasteScar(scar_p=1.0), CutPasteScar(scar_p=0.0)]
IDS = ["perlin", "cutpaste", "scar", "patch"]


def textured(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """(n,H,W,3) uint8 smooth random images: low-frequency colour plus a little noise."""
    base = rng.integers(0, 256, (n, height // 8 + 2, width // 8 + 2, 3)).astype(np.float64)
    big = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :height, :width]
    return np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)


def check_exact(image: np.ndarray, out: np.ndarray, mask: np.ndarray, gen: PerlinBlend | CutPasteScar) -> None:
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == np.bool_
    np.testing.assert_array_equal((out != image).any(axis=-1), mask)  # changed exactly on the mask
    np.testing.assert_array_equal(out[~mask], image[~mask])
    per_pixel = np.abs(out.astype(np.int16) - image.astype(np.int16)).mean(axis=-1)[mask]  # (K,)
    assert per_pixel.min() >= gen.min_change - 0.5
    n = mask.size
    assert np.ceil(gen.min_area * n - 1e-9) <= mask.sum() <= min(n - 1, np.floor(gen.max_area * n + 1e-9))


@pytest.mark.parametrize("gen", DEFAULTS, ids=IDS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_exact_masks_within_area_bounds(gen: PerlinBlend | CutPasteScar, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    images = textured(rng, 2, *size)
    source = textured(rng, 1, size[1] + 7, size[0] // 2 + 3)[0]  # another shape: rotated, padded, cropped
    for seed in range(8):
        out, mask = gen(images[0], source, np.random.default_rng(seed))
        check_exact(images[0], out, mask, gen)
        assert mask.any() and not mask.all()
    outs, masks = synthesise(images, gen, seed=3)
    for image, out, mask in zip(images, outs, masks, strict=True):
        check_exact(image, out, mask, gen)


@pytest.mark.parametrize("gen", DEFAULTS, ids=IDS)
def test_visible_on_average(gen: PerlinBlend | CutPasteScar) -> None:
    images = textured(np.random.default_rng(0), 6, 64, 64)
    outs, masks = synthesise(images, gen, seed=0)
    change = np.abs(outs.astype(np.int16) - images.astype(np.int16)).mean(axis=-1)  # (N,H,W)
    assert change[masks].mean() > 25


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_deterministic_by_seed(name: str) -> None:
    images = textured(np.random.default_rng(1), 5, 64, 96)
    gen = GENERATORS[name]()
    a, b, c = synthesise(images, gen, seed=7), synthesise(images, gen, seed=7), synthesise(images, gen, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[0], c[0])
    assert len({m.tobytes() for m in a[1]}) == len(images)  # each image its own anomaly


@pytest.mark.parametrize("gen", DEFAULTS, ids=IDS)
def test_grey_inputs(gen: PerlinBlend | CutPasteScar) -> None:
    grey = textured(np.random.default_rng(2), 3, 64, 64)[..., :1].repeat(3, axis=-1)  # R=G=B
    outs, masks = synthesise(grey, gen, seed=1)
    for image, out, mask in zip(grey, outs, masks, strict=True):
        check_exact(image, out, mask, gen)


@pytest.mark.parametrize("gen", DEFAULTS, ids=IDS)
@pytest.mark.parametrize("level", [0, 127, 128, 255])
def test_flat_image_and_flat_source(gen: PerlinBlend | CutPasteScar, level: int) -> None:
    flat = np.full((1, 48, 64, 3), level, dtype=np.uint8)  # N=1: the image is its own source
    for seed in range(4):
        outs, masks = synthesise(flat, gen, seed=seed)
        check_exact(flat[0], outs[0], masks[0], gen)


def test_single_image_and_input_untouched() -> None:
    images = textured(np.random.default_rng(3), 1, 32, 32)
    before = images.copy()
    for name in GENERATORS:
        outs, masks = synthesise(images, GENERATORS[name](), seed=0)
        assert outs.shape == images.shape and masks.shape == (1, 32, 32) and masks.any()
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("cls", [PerlinBlend, CutPasteScar])
def test_range_narrower_than_a_pixel_takes_the_nearest_count(cls: type) -> None:
    image = textured(np.random.default_rng(5), 1, 8, 8)[0]
    _, mask = cls(min_area=0.05, max_area=0.05)(image, image, np.random.default_rng(0))
    assert mask.sum() == 3  # 0.05 * 64 = 3.2 pixels


def test_perlin_noise() -> None:
    a = perlin_noise((40, 70), (4, 8), np.random.default_rng(0))
    b = perlin_noise((40, 70), (4, 8), np.random.default_rng(0))
    assert a.shape == (40, 70) and np.array_equal(a, b)
    assert np.abs(a).max() <= 0.75 and a.std() > 0.05
    assert np.abs(np.diff(a, axis=1)).max() < 0.2  # smooth: gradient noise, not white noise


def test_fallback_block_has_exact_count() -> None:
    for height, width, count in [(32, 32, 6), (8, 200, 37), (200, 8, 509), (5, 5, 24), (198, 45, 446), (3, 300, 899)]:
        block = syn._fallback_block(height, width, count)
        assert block.shape[0] <= height and block.shape[1] <= width and block.sum() == count


def test_cutpaste_falls_back_when_shapes_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syn, "MAX_SHAPE_TRIES", 0)
    gen = CutPasteScar()
    image = textured(np.random.default_rng(4), 1, 40, 120)[0]
    out, mask = gen(image, image, np.random.default_rng(0))
    check_exact(image, out, mask, gen)


@pytest.mark.parametrize(
    ("cls", "kwargs", "argument"),
    [
        (PerlinBlend, {"min_area": 0.0}, "min_area"),
        (PerlinBlend, {"min_area": 0.3, "max_area": 0.2}, "max_area"),
        (PerlinBlend, {"max_area": 1.0}, "max_area"),
        (PerlinBlend, {"beta_min": 0.0}, "beta_min"),
        (PerlinBlend, {"beta_min": 0.9, "beta_max": 0.5}, "beta_max"),
        (PerlinBlend, {"beta_max": 1.5}, "beta_max"),
        (PerlinBlend, {"min_scale_exp": -1}, "min_scale_exp"),
        (PerlinBlend, {"min_scale_exp": 4, "max_scale_exp": 2}, "max_scale_exp"),
        (PerlinBlend, {"invert_p": 1.5}, "invert_p"),
        (PerlinBlend, {"jitter": -0.1}, "jitter"),
        (PerlinBlend, {"min_change": 0}, "min_change"),
        (CutPasteScar, {"max_area": 0.001}, "max_area"),
        (CutPasteScar, {"scar_p": 2.0}, "scar_p"),
        (CutPasteScar, {"min_scar_aspect": 0.5}, "min_scar_aspect"),
        (CutPasteScar, {"min_scar_aspect": 9.0, "max_scar_aspect": 3.0}, "max_scar_aspect"),
        (CutPasteScar, {"max_angle": 200.0}, "max_angle"),
        (CutPasteScar, {"min_change": 128}, "min_change"),
    ],
)
def test_argument_validation(cls: type, kwargs: dict[str, float], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


def test_input_validation() -> None:
    gen = PerlinBlend()
    rng = np.random.default_rng(0)
    good = np.zeros((16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="image must be an"):
        gen(good[..., 0], good, rng)
    with pytest.raises(ValueError, match="source must be an"):
        gen(good, good.astype(np.float32), rng)
    with pytest.raises(ValueError, match="at least 2 pixels"):
        gen(np.zeros((1, 1, 3), np.uint8), good, rng)
    with pytest.raises(ValueError, match="images must be"):
        synthesise(good, gen, seed=0)
    with pytest.raises(ValueError, match="images must be"):
        synthesise(np.zeros((0, 8, 8, 3), np.uint8), gen, seed=0)


def test_generators_mapping() -> None:
    assert set(GENERATORS) == {"perlin", "cutpaste"}
    assert isinstance(GENERATORS["perlin"](max_area=0.05), PerlinBlend)
    assert isinstance(GENERATORS["cutpaste"](scar_p=1.0), CutPasteScar)


def bar_on_ground(rng: np.random.Generator, n: int, height: int = 64, width: int = 96) -> np.ndarray:
    """(n,H,W,3) uint8: a dark textured bar (a part, about 15% of the image) on a light, slightly noisy ground."""
    images = np.clip(220 + rng.normal(0, 4, (n, height, width, 3)), 0, 255)
    top, bottom = height // 2 - height // 12, height // 2 + height // 12
    images[:, top:bottom, width // 8 : -width // 8] = textured(rng, n, bottom - top, width - width // 4) // 3
    return images.astype(np.uint8)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_anomalies_placed_on_the_part_stay_on_it(name: str) -> None:
    """placement=part: every changed pixel lies on the part widened by its margin, never on the ground; still
    exact masks. Anywhere (the default), most anomalies reach the ground of the same images."""
    images = bar_on_ground(np.random.default_rng(5), 16)
    region = syn.part_region(images[0])
    assert 0.1 < region.mean() < 0.3  # the bar and its margin, not the ground
    outs, masks = synthesise(images, GENERATORS[name](), seed=2, on_part=True)
    for image, out, mask in zip(images, outs, masks, strict=True):
        np.testing.assert_array_equal((out != image).any(axis=-1), mask)
        assert mask.any() and not (mask & ~syn.part_region(image)).any()
    _, anywhere = synthesise(images, GENERATORS[name](), seed=2)
    assert sum(bool((m & ~syn.part_region(i)).any()) for i, m in zip(images, anywhere, strict=True)) >= 8


def test_an_image_with_no_part_on_a_ground_is_its_own_region() -> None:
    """A texture (no minority side of Otsu's threshold small enough to be a part) or a flat image: anywhere."""
    texture = textured(np.random.default_rng(2), 1, 64, 64)[0]
    flat = np.full((32, 32, 3), 128, np.uint8)
    for image in (texture, flat):
        assert syn.part_region(image).all()
    _, masks = synthesise(np.stack([flat, flat]), PerlinBlend(), seed=0, on_part=True)
    assert masks.any(axis=(1, 2)).all()
