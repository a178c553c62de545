"""Folder and tiled datamodules: generated page folders, splits, conversions, augmentation, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from anomaly_lab.data.augmentation import add_rotated_copies
from anomaly_lab.data.folders import FolderDataModule
from anomaly_lab.data.images import BadImageError, DecodedImages, ImageDataset, Sample
from anomaly_lab.data.synthetic import make_notes_page, make_sea_image, write_notes_pages, write_sea_pages
from anomaly_lab.data.tiles import stitch_scores
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.train import run
from scripts.benchmark_loader import benchmark
from tests.conftest import REAL_BOTTLES, TINY_PAGES, ComposeFn, compose_config
from tests.test_synthetic import assert_mask_is_exactly_the_change

SMALL_PAGES = {"n_normal": 2, "n_anomalous": 3, "height": 96, "width": 128}


PREPROCESSING_KEYS = ("image_size", "tiled", "grayscale", "page_width", "stride", "border")


def pages_module(root: Path, **kwargs: Any) -> FolderDataModule:
    """Tiled 32px datamodule over a pages folder (normal/, anomalous/, masks/); preprocessing keys go to its
    Preprocessing, the others to the datamodule."""
    preprocessing = {"image_size": 32, "tiled": True, **{k: kwargs.pop(k) for k in PREPROCESSING_KEYS if k in kwargs}}
    settings: dict[str, Any] = dict(
        normal_dir=str(root / "normal"),
        abnormal_dir=str(root / "anomalous"),
        mask_dir=str(root / "masks"),
        val_fraction=0.2,
        val_anomalous=1,
        test_fraction=0.0,
    )
    return FolderDataModule(preprocessing=Preprocessing(**preprocessing), **{**settings, **kwargs})


def copy_pages(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".complete"))
    return dst


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# ------------------------------------------------------------------------------------------------ generated folders


def test_notes_pages_are_deterministic_and_highlighted_only_when_anomalous(tmp_path: Path) -> None:
    first = write_notes_pages(tmp_path / "a", **SMALL_PAGES, seed=5)
    again = write_notes_pages(tmp_path / "b", **SMALL_PAGES, seed=5)
    other = write_notes_pages(tmp_path / "c", **SMALL_PAGES, seed=6)
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*.png"))
    assert len(names) == 2 + 3 + 3
    assert all((first / n).read_bytes() == (again / n).read_bytes() for n in names)
    assert all((first / n).read_bytes() != (other / n).read_bytes() for n in names if n.startswith("normal"))
    height, width = SMALL_PAGES["height"], SMALL_PAGES["width"]
    for index in range(2):  # a normal page is the generator's page without highlighter
        plain, mask = make_notes_page(np.random.default_rng([5, 0, index]), height, width, False)
        np.testing.assert_array_equal(read_png(first / "normal" / f"{index:03d}.png"), plain)
        assert not (first / "masks" / f"{index:03d}.png").exists() and not mask.any()
    for index in range(3):  # an anomalous page differs from its plain twin exactly inside its mask
        plain, _ = make_notes_page(np.random.default_rng([5, 1, index]), height, width, False)
        page = read_png(first / "anomalous" / f"{index:03d}.png")
        mask = read_png(first / "masks" / f"{index:03d}_mask.png") > 0
        assert_mask_is_exactly_the_change(plain, page, mask)


def test_sea_pages_mask_exactly_the_sharks(tmp_path: Path) -> None:
    root = write_sea_pages(tmp_path / "sea", **SMALL_PAGES, max_sharks=2, seed=1)
    assert write_sea_pages(tmp_path / "again", **SMALL_PAGES, max_sharks=2, seed=1)
    for path in sorted(root.rglob("*.png")):
        assert path.read_bytes() == (tmp_path / "again" / path.relative_to(root)).read_bytes()
    height, width = SMALL_PAGES["height"], SMALL_PAGES["width"]
    for index in range(3):
        rng = np.random.default_rng([1, 1, index])
        n_sharks = int(rng.integers(1, 3))
        sea, _ = make_sea_image(rng, height, width, 0)
        image = read_png(root / "anomalous" / f"{index:03d}.png")
        assert_mask_is_exactly_the_change(sea, image, read_png(root / "masks" / f"{index:03d}_mask.png") > 0)
        _, drawn = make_sea_image(np.random.default_rng([1, 1, index]), height, width, 0)
        assert n_sharks >= 1 and not drawn.any()
    assert json.loads((root / ".complete").read_text())["max_sharks"] == 2


# ------------------------------------------------------------------------------------------------------- splits


def test_notes_tiles_split_four_to_one_and_seeded(tiny_pages_root: Path) -> None:
    module = pages_module(tiny_pages_root, split_seed=0)
    module.setup()
    n_normal_tiles = TINY_PAGES["n_normal"] * 9  # 96x96 pages, 32px tiles: 3 x 3
    train, val = module.splits["train"].samples, module.splits["val"].samples
    val_normal = [s for s in val if s.page and "/normal/" in s.page]
    assert len(train) + len(val_normal) == n_normal_tiles
    assert len(val_normal) == int(np.ceil(0.2 * n_normal_tiles))
    assert not {s.path for s in train} & {s.path for s in val_normal}
    assert all(s.label == 0 for s in train)

    again, other = pages_module(tiny_pages_root, split_seed=0), pages_module(tiny_pages_root, split_seed=1)
    again.setup()
    other.setup()
    assert [s.path for s in again.splits["train"].samples] == [s.path for s in train]
    assert [s.path for s in other.splits["train"].samples] != [s.path for s in train]


def test_anomalous_pages_go_whole_to_validation_or_test(tiny_pages_root: Path) -> None:
    module = pages_module(tiny_pages_root, min_anomalous_fraction=0.02)
    module.setup()
    val_pages = {s.page for s in module.splits["val"].samples if "/anomalous/" in str(s.page)}
    test_pages = {s.page for s in module.splits["test"].samples}
    assert len(val_pages) == 1 and len(test_pages) == TINY_PAGES["n_anomalous"] - 1
    assert not val_pages & test_pages
    test = module.splits["test"]
    labels = np.array([s.label for s in test.samples])
    fractions = test.masks.reshape(len(labels), -1).mean(1)
    np.testing.assert_array_equal(labels, fractions > 0.02)
    assert 0 < labels.sum() < len(labels)  # marked pages have unmarked tiles too
    assert {s.defect for s in test.samples if s.label} == {"anomalous"}
    # the whole test set: the test tiles and every tile of the page validation took, its unmarked ones too
    whole = module.whole_test_set().samples
    assert {s.page for s in whole} == val_pages | test_pages
    assert len(whole) == len(test.samples) + 9 and 0 < sum(s.label for s in whole[len(test.samples) :]) < 9


def test_stitched_tile_scores_rebuild_the_page_mask(tiny_pages_root: Path) -> None:
    module = pages_module(tiny_pages_root)
    module.setup()
    test = module.splits["test"]
    page = test.samples[0].page
    assert page is not None
    ids = [i for i, s in enumerate(test.samples) if s.page == page]
    fraction = test.masks[ids].mean((1, 2))  # (N,) masked share per tile
    grid = stitch_scores(fraction, [test.samples[i].row for i in ids], [test.samples[i].col for i in ids], (3, 3))
    assert module.page_grids[page] == (3, 3)
    page_mask = read_png(Path(str(test.samples[0].mask_path))) > 0  # (96,96)
    np.testing.assert_allclose(grid, page_mask.reshape(3, 32, 3, 32).mean((1, 3)))


def test_batches_carry_page_row_col(tiny_pages_root: Path) -> None:
    module = pages_module(tiny_pages_root)
    module.setup()
    batch = next(iter(module.test_dataloader()))
    assert batch["image"].shape[1:] == (3, 32, 32)
    assert set(batch) >= {"page", "row", "col"}
    first = module.splits["test"].samples[0]
    assert (batch["page"][0], int(batch["row"][0]), int(batch["col"][0])) == (first.page, first.row, first.col)
    assert batch["path"][0] == f"{first.page}#r{first.row}c{first.col}"


# ------------------------------------------------------------------------------------------------- conversions


def write_mixed_folder(root: Path) -> Path:
    """Normal images in L, RGBA, 16-bit, P and RGB modes and different sizes; one anomalous with its mask."""
    rng = np.random.default_rng(0)
    (root / "normal").mkdir(parents=True)
    (root / "anomalous").mkdir()
    (root / "masks").mkdir()
    Image.fromarray(rng.integers(0, 256, (70, 90), dtype=np.uint8), "L").save(root / "normal" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA").save(root / "normal" / "alpha.png")
    Image.fromarray(rng.integers(0, 65536, (80, 66), dtype=np.uint16)).save(root / "normal" / "deep.png")
    Image.fromarray(rng.integers(0, 256, (96, 64, 3), dtype=np.uint8)).convert("P").save(root / "normal" / "pal.png")
    Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(root / "normal" / "rgb.jpg")
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(root / "anomalous" / "bad.png")
    mask = np.zeros((64, 96), np.uint8)
    mask[:20, :20] = 255
    Image.fromarray(mask).save(root / "masks" / "bad.png")  # the <stem>.png naming
    return root


@pytest.mark.parametrize("tiled", [False, True])
def test_mixed_modes_and_sizes_become_rgb_uint8(tmp_path: Path, tiled: bool) -> None:
    root = write_mixed_folder(tmp_path / "mixed")
    module = pages_module(root, tiled=tiled, val_fraction=0.2, val_anomalous=0, test_fraction=0.2)
    module.setup()
    for split in module.splits.values():
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 3)
    anomalous = [s for s in module.splits["test"].samples if s.label]
    assert anomalous and all(s.mask_path and s.mask_path.endswith("masks/bad.png") for s in anomalous)
    if tiled:  # pages of different sizes give different grids
        assert module.page_grids[str(root / "normal" / "gray.png")] == (2, 2)
        assert module.page_grids[str(root / "normal" / "rgb.jpg")] == (3, 3)
    # test batches: each ground-truth mask at its file's resolution (sizes differ within a batch); a tile's is its own
    batch = next(iter(module.test_dataloader()))
    assert any("/anomalous/" in path for path in batch["path"])
    for path, native, mask in zip(batch["path"], batch["mask_native"], batch["mask"], strict=True):
        if tiled:
            assert torch.equal(native, mask > 0.5)
            continue
        with Image.open(path) as image:
            assert native.shape == (1, image.height, image.width)
        truth = read_png(root / "masks" / "bad.png") > 0 if "/anomalous/" in path else np.zeros(native.shape[1:], bool)
        assert np.array_equal(native[0].numpy(), truth)


def test_grayscale_replicates_luminance(tiny_pages_root: Path) -> None:
    module = pages_module(tiny_pages_root, grayscale=True)
    module.setup()
    images = module.splits["train"].images
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 1] == images[..., 2]).all()


def test_page_width_scales_pages_keeping_aspect(tmp_path: Path) -> None:
    root = write_notes_pages(tmp_path / "p", **SMALL_PAGES, seed=0)  # 96 x 128 pages
    module = pages_module(root, page_width=64, val_anomalous=1)
    module.setup()
    assert set(module.page_grids.values()) == {(1, 2)}  # 48 x 64 pages


# ------------------------------------------------------------------------------------------------ augmentation


def test_rotation_copies_are_exact_quarter_turns(tiny_pages_root: Path) -> None:
    module = pages_module(tiny_pages_root, rotation_copies=3)
    module.setup()
    plain = pages_module(tiny_pages_root)
    plain.setup()
    n = len(plain.splits["train"].samples)
    images = module.splits["train"].images
    assert len(images) == 4 * n
    for k in range(1, 4):  # 90, 180, 270 degrees counter-clockwise
        np.testing.assert_array_equal(images[k * n : (k + 1) * n], np.rot90(images[:n], k, axes=(1, 2)))


def test_rotation_copies_rotate_masks_with_images() -> None:
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 2:10, 20:30] = 255
    decoded = DecodedImages([Sample("x", 1, "d")], image, image[..., 0] > 0)
    rotated = add_rotated_copies(decoded, 9)
    assert len(rotated.samples) == 10
    for picture, mask in zip(rotated.images[1:], rotated.masks[1:], strict=True):
        bright = picture[..., 0] > 127
        assert (bright & mask).sum() / (bright | mask).sum() > 0.8  # same place after rotation
    assert not np.array_equal(rotated.masks[1], rotated.masks[0])


@pytest.mark.parametrize("option", ["none", "rotate", "flip_jitter"])
def test_augmentation_moves_masks_with_images(option: str) -> None:
    transform = instantiate(compose_config([f"augmentation={option}", "paths.output_dir=x"]).dataset.train_transform)
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 3:12, 18:29] = 200
    decoded = DecodedImages([Sample("x", 0, "good")], image, image[..., 0] > 0)
    dataset = ImageDataset(decoded, Preprocessing(image.shape[1]), transform)
    for _ in range(5):
        item = dataset[0]
        bright, mask = item["image"][0] > 0.3, item["mask"][0] > 0.5  # (H,W)
        assert mask.any() and (bright & mask).sum() / (bright | mask).sum() > 0.8


# ------------------------------------------------------------------------------------------------------ bad input


def break_first(folder: Path, how: str) -> Path:
    path = sorted(folder.glob("*.png"))[0]
    if how == "corrupt":
        path.write_bytes(b"not an image at all")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    return path


@pytest.mark.parametrize("how", ["corrupt", "truncated"])
def test_bad_image_is_named(tiny_pages_root: Path, tmp_path: Path, how: str) -> None:
    root = copy_pages(tiny_pages_root, tmp_path / "pages")
    bad = break_first(root / "normal", how)
    module = pages_module(root)
    with pytest.raises(BadImageError, match=rf"{bad.name}: corrupt or unreadable image"):
        module.setup()
    assert module.splits == {}  # nothing half-built


def test_empty_folder_is_named(tiny_pages_root: Path, tmp_path: Path) -> None:
    root = copy_pages(tiny_pages_root, tmp_path / "pages")
    shutil.rmtree(root / "anomalous")
    (root / "anomalous").mkdir()
    with pytest.raises(BadImageError, match=r"anomalous: empty folder"):
        pages_module(root).setup()


def test_missing_mask_is_named(tiny_pages_root: Path, tmp_path: Path) -> None:
    root = copy_pages(tiny_pages_root, tmp_path / "pages")
    (root / "masks" / "001_mask.png").unlink()
    with pytest.raises(BadImageError, match=r"001.png: anomalous image has no mask"):
        pages_module(root).setup()
    with pytest.raises(FileNotFoundError, match=r"mask_dir .*nowhere not found"):
        pages_module(root, mask_dir=str(tmp_path / "nowhere")).setup()


def test_mask_of_another_size_is_named(tiny_pages_root: Path, tmp_path: Path) -> None:
    root = copy_pages(tiny_pages_root, tmp_path / "pages")
    Image.new("L", (50, 40)).save(root / "masks" / "000_mask.png")
    with pytest.raises(BadImageError, match=r"000_mask.png: mask size 50x40 differs from its image"):
        pages_module(root).setup()


def test_tile_larger_than_the_page_is_named(tiny_pages_root: Path, tmp_path: Path) -> None:
    root = copy_pages(tiny_pages_root, tmp_path / "pages")
    Image.new("RGB", (20, 100)).save(root / "normal" / "narrow.png")
    with pytest.raises(BadImageError, match=r"narrow.png: a 32x32 tile is larger than the 20x100 page"):
        pages_module(root).setup()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"val_fraction": 0.99}, r"val_fraction=0.99 leaves no training tile of 36 normal tiles: it needs at least"),
        ({"test_fraction": 0.99}, r"test_fraction=0.99 and dataset\.val_fraction=0\.2 leave no training tile"),
        ({"val_anomalous": 2}, r"val_anomalous=2 leaves no anomalous test image"),
    ],
)
def test_split_leaving_a_set_empty_is_named(tiny_pages_root: Path, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(BadImageError, match=message):
        pages_module(tiny_pages_root, **settings).setup()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"val_fraction": 1.0}, r"^val_fraction=1\.0: must be in \(0, 1\); validation needs normal images"),
        ({"val_fraction": 0}, r"^val_fraction=0: must be in \(0, 1\)"),
        ({"test_fraction": 1}, r"^test_fraction=1: must be in \[0, 1\); the share of normal images held out"),
        ({"rotation_copies": -1}, r"^rotation_copies=-1: must be an integer >= 0$"),
    ],
)
def test_the_datamodule_refuses_a_share_or_count_it_cannot_use(
    tiny_pages_root: Path, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        pages_module(tiny_pages_root, **settings)


def test_skip_bad_files_warns_once_listing_them(tiny_pages_root: Path, tmp_path: Path) -> None:
    root = copy_pages(tiny_pages_root, tmp_path / "pages")
    corrupt = break_first(root / "normal", "corrupt")
    Image.new("RGB", (20, 100)).save(root / "normal" / "narrow.png")
    (root / "masks" / "001_mask.png").unlink()
    module = pages_module(root, skip_bad_files=True, val_anomalous=0)
    with pytest.warns(UserWarning, match=r"skipped 3 bad files") as caught:
        module.setup()
    assert len(caught) == 1
    for name in (corrupt.name, "narrow.png", "anomalous/001.png"):
        assert name in str(caught[0].message)
    pages = {s.page for split in module.splits.values() for s in split.samples}
    assert str(corrupt) not in pages and str(root / "anomalous" / "000.png") in pages


def test_skipping_every_file_is_still_an_error(tiny_pages_root: Path, tmp_path: Path) -> None:
    root = copy_pages(tiny_pages_root, tmp_path / "pages")
    for path in (root / "masks").iterdir():
        path.unlink()
    with pytest.raises(BadImageError, match=r"(?s)anomalous: no usable image; skipped as bad:.*000.png.*001.png"):
        pages_module(root, skip_bad_files=True).setup()


# ------------------------------------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_synthetic_notes_run_reports_per_tile_auroc(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["dataset=synthetic_notes", "trainer.max_epochs=1"])
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert 0.0 <= metrics["test/image_auroc"] <= 1.0
    scores = (Path(cfg.paths.output_dir) / "scores.csv").read_text()
    assert "anomalous/" in scores and "#r0c0" in scores  # one row per tile
    # tiles keep their pages' pixels: the two pixel protocols coincide
    for name in ("pixel_auroc", "aupro"):
        assert 0.0 <= metrics[f"test/{name}"] == metrics[f"test/{name}_model_res"] <= 1.0


@pytest.mark.slow
def test_loader_benchmark_measures_both(compose_tiny: ComposeFn) -> None:
    result = benchmark(compose_tiny(["dataset=synthetic_sharks"]), steps=2, loader_epochs=1)
    assert result["loader_per_s"] > 0 and result["training_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["loader_per_s"] / result["training_per_s"])


@pytest.mark.slow
@pytest.mark.skipif(not REAL_BOTTLES.is_dir(), reason=f"real data not found at {REAL_BOTTLES}")
def test_folder_reads_mvtec_bottle_as_a_plain_folder(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(
        [
            "dataset=folder",
            f"dataset.normal_dir={REAL_BOTTLES / 'train' / 'good'}",
            f"dataset.abnormal_dir={REAL_BOTTLES / 'test' / 'broken_large'}",
            f"dataset.mask_dir={REAL_BOTTLES / 'ground_truth' / 'broken_large'}",
            "model.image_size=64",
            "trainer.fast_dev_run=true",
        ]
    )
    module = instantiate(cfg.dataset)
    module.setup()
    sizes = {name: len(split.samples) for name, split in module.splits.items()}
    assert sum(sizes.values()) == 209 + 20
    assert sum(s.label for s in module.splits["test"].samples) == 20 - 5  # a quarter held out for validation
    assert isinstance(run(cfg), float)
