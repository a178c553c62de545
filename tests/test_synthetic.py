"""Generated scenes: deterministic, masks exactly the anomaly's pixels, MVTec layout written atomically."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from anomaly_lab.data.synthetic import (
    BOTTLE_DEFECTS,
    make_bottle,
    make_notes_page,
    make_sea_image,
    write_synthetic_bottles,
)
from anomaly_lab.data.synthetic import bottles as synthetic


def twins(make: Callable, seed: int, plain_args: tuple, anomalous_args: tuple) -> tuple[np.ndarray, ...]:
    """The same generator state rendered without and with the anomaly: plain, anomalous, plain mask, mask."""
    plain, plain_mask = make(np.random.default_rng(seed), *plain_args)
    anomalous, mask = make(np.random.default_rng(seed), *anomalous_args)
    return plain, anomalous, plain_mask, mask


def assert_mask_is_exactly_the_change(plain: np.ndarray, anomalous: np.ndarray, mask: np.ndarray) -> None:
    changed = (plain != anomalous).any(-1)  # (H,W)
    assert mask.any(), "anomaly drew nothing"
    assert not (changed & ~mask).any(), f"{int((changed & ~mask).sum())} pixels changed outside the mask"
    assert changed[mask].all(), f"{int((mask & ~changed).sum())} mask pixels left unchanged"


def saturation(image: np.ndarray) -> np.ndarray:
    rgb = image.astype(np.float64)
    top = rgb.max(-1)
    return (top - rgb.min(-1)) / np.maximum(top, 1)  # (H,W) HSV saturation


def luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (H,W)


# ---------------------------------------------------------------------------------------------------------- bottles


@pytest.mark.parametrize("defect", [None, *BOTTLE_DEFECTS])
def test_bottle_is_deterministic_per_seed(defect: str | None) -> None:
    first, first_mask = make_bottle(np.random.default_rng(7), 64, defect)
    again, again_mask = make_bottle(np.random.default_rng(7), 64, defect)
    other, _ = make_bottle(np.random.default_rng(8), 64, defect)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first_mask, again_mask)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("size", [32, 64, 128, 512])
def test_bottle_shapes_and_types(size: int) -> None:
    image, mask = make_bottle(np.random.default_rng(0), size, None)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert mask.shape == (size, size) and mask.dtype == bool
    assert not mask.any()


@pytest.mark.parametrize("size", [32, 128])
@pytest.mark.parametrize("defect", BOTTLE_DEFECTS)
def test_bottle_defect_mask_is_exactly_the_changed_pixels(defect: str, size: int) -> None:
    for seed in range(6):
        plain, anomalous, plain_mask, mask = twins(make_bottle, seed, (size, None), (size, defect))
        assert not plain_mask.any()
        assert_mask_is_exactly_the_change(plain, anomalous, mask)


@pytest.mark.parametrize("defect", BOTTLE_DEFECTS)
def test_bottle_defects_are_visible_but_not_huge(defect: str) -> None:
    for seed in range(8):
        plain, anomalous, _, mask = twins(make_bottle, seed, (128, None), (128, defect))
        assert 0.0005 < mask.mean() < 0.06, f"seed {seed}: defect covers {mask.mean():.2%} of the image"
        change = np.abs(plain.astype(int) - anomalous.astype(int)).max(-1)[mask]
        assert change.mean() > 25, f"seed {seed}: defect barely visible (mean change {change.mean():.1f})"


def test_bottle_defect_kinds_look_different() -> None:
    """Broken rims sit at the rim and are bright; scratches are bright and thin; contamination is a blob inside."""
    size = 128
    for seed in range(5):
        plain, broken, _, rim_mask = twins(make_bottle, seed, (size, None), (size, "broken_rim"))
        _, scratched, _, scratch_mask = twins(make_bottle, seed, (size, None), (size, "scratch"))
        _, _, _, dirt_mask = twins(make_bottle, seed, (size, None), (size, "contamination"))
        yy, xx = np.mgrid[0:size, 0:size]
        distance = np.hypot(yy - size / 2, xx - size / 2) / size  # the bottle's outer radius is about 0.445
        assert distance[rim_mask].max() > 0.38 and distance[rim_mask].min() > 0.2
        assert distance[dirt_mask].max() < 0.42 and distance[scratch_mask].max() < 0.42
        assert luminance(broken)[rim_mask].mean() > luminance(plain)[rim_mask].mean() + 60
        assert luminance(scratched)[scratch_mask].mean() > luminance(plain)[scratch_mask].mean() + 60
        # thin: almost every scratch pixel touches a pixel outside the scratch
        assert binary_erosion(scratch_mask).sum() < 0.35 * scratch_mask.sum()


def test_normal_bottles_vary_but_stay_one_class() -> None:
    images = [luminance(make_bottle(np.random.default_rng(seed), 128, None)[0]) for seed in range(6)]
    for image in images:
        assert image[:6, :6].mean() > 200 and image[-6:, -6:].mean() > 200  # light background in the corners
        assert image[54:74, 54:74].mean() < 70  # dark centre
        ring = image[64, 64 + 30 : 64 + 52]  # along a radius through the annulus and the rim
        assert 40 < ring.mean() < 130
    reference = images[0]
    for image in images[1:]:
        assert not np.array_equal(image, reference)
        assert np.corrcoef(image.ravel(), reference.ravel())[0, 1] > 0.9


def test_unknown_defect_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown bottle defect"):
        make_bottle(np.random.default_rng(0), 64, "dent")


# ------------------------------------------------------------------------------------------------------------ notes


def test_notes_page_is_deterministic_per_seed() -> None:
    first = make_notes_page(np.random.default_rng(3), 160, 120, True)
    again = make_notes_page(np.random.default_rng(3), 160, 120, True)
    other = make_notes_page(np.random.default_rng(4), 160, 120, True)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize(("height", "width"), [(192, 144), (64, 48), (100, 240)])
def test_highlighter_mask_is_exactly_the_highlighted_pixels(height: int, width: int) -> None:
    for seed in range(3):
        plain, highlighted, plain_mask, mask = twins(
            make_notes_page, seed, (height, width, False), (height, width, True)
        )
        assert plain.shape == (height, width, 3) and plain.dtype == np.uint8
        assert mask.shape == (height, width) and mask.dtype == bool
        assert not plain_mask.any()
        assert_mask_is_exactly_the_change(plain, highlighted, mask)
        assert mask.mean() < 0.35


def test_highlighted_pixels_are_saturated_and_coloured() -> None:
    for seed in range(4):
        plain, page, _, mask = twins(make_notes_page, seed, (192, 144, False), (192, 144, True))
        assert saturation(page)[mask].mean() > saturation(page)[~mask].mean() + 0.2
        assert saturation(page)[mask].mean() > saturation(plain)[mask].mean() + 0.2
        # multiply blend: a highlighter only darkens, and darkens the channel its colour lacks
        difference = plain.astype(int) - page.astype(int)
        assert (difference[mask] > -8).all()  # sensor noise is identical, so only rounding could raise a value
        darkened = difference[mask].mean(0)  # (3,) per channel
        assert darkened.max() > 40 and darkened.min() < darkened.max() / 2


def test_notes_page_has_ruled_lines_and_ink() -> None:
    page, _ = make_notes_page(np.random.default_rng(0), 256, 192, False)
    brightness = luminance(page)
    assert np.median(brightness) > 200  # mostly paper
    ink = brightness < 120
    assert 0.005 < ink.mean() < 0.25
    assert (ink.sum(1) > 0).sum() > 40  # writing spread over many rows
    blue_or_black = page[ink].astype(int)
    assert (blue_or_black[:, 2] >= blue_or_black[:, 0] - 10).mean() > 0.9  # blue or neutral, never red/brown ink


# -------------------------------------------------------------------------------------------------------------- sea


def test_sea_image_is_deterministic_per_seed() -> None:
    first = make_sea_image(np.random.default_rng(5), 96, 128, 2)
    again = make_sea_image(np.random.default_rng(5), 96, 128, 2)
    other = make_sea_image(np.random.default_rng(6), 96, 128, 2)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize(("height", "width"), [(128, 192), (48, 64)])
@pytest.mark.parametrize("n_sharks", [1, 3])
def test_shark_mask_is_exactly_the_shark_pixels(height: int, width: int, n_sharks: int) -> None:
    for seed in range(4):
        sea, with_sharks, sea_mask, mask = twins(make_sea_image, seed, (height, width, 0), (height, width, n_sharks))
        assert sea.shape == (height, width, 3) and sea.dtype == np.uint8
        assert mask.shape == (height, width) and mask.dtype == bool
        assert not sea_mask.any()
        assert_mask_is_exactly_the_change(sea, with_sharks, mask)


def test_sharks_are_darker_than_the_sea_and_elongated() -> None:
    shark_levels, sea_levels = [], []
    for seed in range(6):
        sea, image, _, mask = twins(make_sea_image, seed, (192, 256, 0), (192, 256, 1))
        brightness = luminance(image)
        assert brightness[mask].mean() < 0.65 * luminance(sea)[mask].mean()  # darker than the water it covers
        shark_levels.append(brightness[mask].mean())
        sea_levels.append(brightness[~mask].mean())
        rows, cols = np.nonzero(mask)
        spread = np.sqrt(np.linalg.eigvalsh(np.cov(np.stack([rows, cols]))))  # (2,) ascending
        if rows.min() > 0 and cols.min() > 0 and rows.max() < 191 and cols.max() < 255:  # whole shark in view
            assert spread[1] > 2.5 * spread[0], f"seed {seed}: shark not elongated ({spread})"
    assert np.mean(shark_levels) < 0.7 * np.mean(sea_levels)  # and darker than the sea on average


def test_more_sharks_add_to_the_same_scene() -> None:
    _, one = make_sea_image(np.random.default_rng(2), 128, 128, 1)
    _, three = make_sea_image(np.random.default_rng(2), 128, 128, 3)
    assert not (one & ~three).any() and three.sum() > one.sum()


def test_sea_colour_varies_between_images() -> None:
    means = np.array([make_sea_image(np.random.default_rng(seed), 64, 64, 0)[0].mean((0, 1)) for seed in range(6)])
    assert (means[:, 2] > means[:, 0]).all()  # blue/green water, never red
    assert np.ptp(means, axis=0).max() > 20


# ------------------------------------------------------------------------------------------------ bottle folders

SMALL = dict(size=48, n_train=3, n_test_good=2, n_test_per_defect=2)


def relative_files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def test_written_folder_has_the_mvtec_layout(tmp_path: Path) -> None:
    root = write_synthetic_bottles(tmp_path / "bottles", **SMALL, seed=0)
    assert root == tmp_path / "bottles"
    expected = {".complete", "train/good/000.png", "train/good/001.png", "train/good/002.png"}
    expected |= {"test/good/000.png", "test/good/001.png"}
    for defect in BOTTLE_DEFECTS:
        expected |= {f"test/{defect}/000.png", f"test/{defect}/001.png"}
        expected |= {f"ground_truth/{defect}/000_mask.png", f"ground_truth/{defect}/001_mask.png"}
    assert relative_files(root) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bottles"]  # no staging folder left behind
    for name in expected - {".complete"}:
        with Image.open(root / name) as image:
            assert image.size == (48, 48)
            if name.startswith("ground_truth"):
                assert image.mode == "L"
                mask = np.asarray(image)
                assert set(np.unique(mask)) == {0, 255}
            else:
                assert image.mode == "RGB"


def test_written_masks_match_their_images(tmp_path: Path) -> None:
    root = write_synthetic_bottles(tmp_path / "bottles", **SMALL, seed=0)
    for defect in BOTTLE_DEFECTS:
        for stem in ("000", "001"):
            image = np.asarray(Image.open(root / "test" / defect / f"{stem}.png"))
            mask = np.asarray(Image.open(root / "ground_truth" / defect / f"{stem}_mask.png")) > 0
            # the file is the generator's output for its own seed stream, not some other image
            group = 2 + BOTTLE_DEFECTS.index(defect)
            expected, expected_mask = make_bottle(np.random.default_rng([0, group, int(stem)]), 48, defect)
            np.testing.assert_array_equal(image, expected)
            np.testing.assert_array_equal(mask, expected_mask)


def test_rewriting_a_complete_folder_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_synthetic_bottles(tmp_path / "bottles", **SMALL, seed=0)
    before = {name: (root / name).stat().st_mtime_ns for name in relative_files(root)}

    def must_not_run(*args: object) -> None:
        raise AssertionError("regenerated a complete folder")

    monkeypatch.setattr(synthetic, "make_bottle", must_not_run)
    assert write_synthetic_bottles(root, **SMALL, seed=0) == root
    assert {name: (root / name).stat().st_mtime_ns for name in relative_files(root)} == before


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = write_synthetic_bottles(tmp_path / "a", **SMALL, seed=3)
    second = write_synthetic_bottles(tmp_path / "b", **SMALL, seed=3)
    other = write_synthetic_bottles(tmp_path / "c", **SMALL, seed=4)
    names = relative_files(first)
    assert names == relative_files(second) == relative_files(other)
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    assert any((first / n).read_bytes() != (other / n).read_bytes() for n in names if n.endswith(".png"))


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_make_bottle = synthetic.make_bottle
    calls = []

    def fail_midway(rng: np.random.Generator, size: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
        calls.append(defect)
        if len(calls) > 4:
            raise RuntimeError("disk full")
        return real_make_bottle(rng, size, defect)

    monkeypatch.setattr(synthetic, "make_bottle", fail_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_bottles(tmp_path / "bottles", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_existing_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_synthetic_bottles(empty, **SMALL)
    assert (empty / ".complete").is_file() and (empty / "train" / "good" / "000.png").is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not generated")
    with pytest.raises(FileExistsError):
        write_synthetic_bottles(foreign, **SMALL)
    assert relative_files(foreign) == {"notes.txt"}
