"""Datamodules over plain folders of pages (normal/, anomalous/, masks/), whole or cut into tiles.

The thesis's notes and sharks experiments score 64x64 tiles of large pages; a user's own folder
may hold whole images of any mode and size. Both are read by one `FolderDataModule`; the generated
notes and sea pages are written once into such a folder (`SyntheticPagesDataModule`), so real and
synthetic data take the same path.

Conversion rule for any folder: every image is decoded to 8-bit RGB (grayscale replicated, RGBA and
palette images composited on white, 16-bit scaled by its type's range, v / 65535 * 255, whatever
the image holds), then prepared by the model's Preprocessing (anomaly_lab.preprocessing: resized whole
images, or pages to tile; grayscale). An image of more than `max_image_pixels` is refused from its header,
before it is decoded.

Splits: normal images (or tiles of normal pages) are split at random, seeded, into train /
validation / test (`val_fraction`, `test_fraction`); anomalous pages are held out whole, a seeded
`val_anomalous` share for validation and the rest for test. A tile of an anomalous page is labelled
anomalous when more than `min_anomalous_fraction` of its pixels are masked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_lab.data.datamodules import (
    SplitDataModule,
    linked_twice,
    normal_shares,
    split_validation,
    too_few_normal,
    validation_set,
)
from anomaly_lab.data.images import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    BadImageError,
    DecodedImages,
    NativeMask,
    Sample,
    check_max_image_pixels,
    list_images,
    native_mask,
    read_image,
    read_mask,
)
from anomaly_lab.data.tiles import TileGrid, TileSizeError, cut_tiles, tile_labels
from anomaly_lab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Page:
    """One decoded file: image (H,W,3) uint8, mask (H,W) bool."""

    path: Path
    image: np.ndarray
    mask: np.ndarray
    anomalous: bool
    defect: str
    mask_path: Path | None
    native_mask: NativeMask | None = None  # a whole image's mask at the file's resolution (see images.Sample)


def find_mask(mask_dir: Path, image_path: Path) -> Path:
    """The mask of an image: <stem>.<suffix> or <stem>_mask.<suffix> in mask_dir (MVTec names fit)."""
    for name in (image_path.stem, f"{image_path.stem}_mask"):
        for suffix in IMAGE_SUFFIXES:
            if (mask_dir / f"{name}{suffix}").is_file():
                return mask_dir / f"{name}{suffix}"
    raise BadImageError(
        f"{image_path}: anomalous image has no mask (expected {mask_dir}/{image_path.stem}.png "
        f"or {image_path.stem}_mask.png; set mask_dir=null if the anomalous images have no masks)"
    )


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file or folder a path reaches, through any links (None: it reaches nothing): two
    paths with one identity are one file, whether linked symbolically or hard."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def check_one_name_per_file(folder: Path, key: str) -> None:
    """A ConfigError when two of the folder's images are one file (hard or symbolic links, by device and inode)."""
    twice = linked_twice(list_images(folder))
    if twice is not None:
        raise ConfigError(
            f"{key}={folder}: {twice[0].name} and {twice[1].name} are one file (linked, symbolically or hard): "
            f"the split could train on it and test it; keep one name"
        )


def hold_out(
    n: int, test_fraction: float, rng: np.random.Generator, val_fraction: float, unit: str = "image"
) -> tuple[list[int], list[int]]:
    """Seeded (kept, held-out) indices of range(n) normal images (or tiles): held out for testing is
    ceil(test_fraction * n); what is kept must leave one to train once validation takes val_fraction of it, else a
    BadImageError says how many images these fractions need."""
    if normal_shares(n, val_fraction, test_fraction)[2] < 1:
        raise BadImageError(too_few_normal(n, val_fraction, test_fraction, unit))
    order = rng.permutation(n).tolist()
    n_out = math.ceil(test_fraction * n) if test_fraction > 0 else 0
    return sorted(order[n_out:]), sorted(order[:n_out])


class FolderDataModule(SplitDataModule):
    """Normal images in `normal_dir`, anomalous ones in `abnormal_dir` (null: good images only), their masks in
    `mask_dir`.

    preprocessing.tiled=false: each image, resized to image_size, is one sample. tiled=true: each page is cut
    into image_size x image_size tiles (see anomaly_lab.preprocessing) and each tile is one sample, with its
    page, row and column; `page_grids` maps each page to its (rows, cols).
    Without mask_dir an anomalous image counts as anomalous everywhere (its mask is all ones), for image metrics
    only: the test skips pixel AUROC and AUPRO, saying so.
    """

    def __init__(
        self,
        normal_dir: str,
        abnormal_dir: str | None = None,
        mask_dir: str | None = None,
        min_anomalous_fraction: float = 0.0,
        test_fraction: float = 0.0,
        skip_bad_files: bool = False,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        **loader_args: Any,
    ) -> None:
        super().__init__(**loader_args)
        self.normal_dir = Path(normal_dir)
        self.abnormal_dir = Path(abnormal_dir) if abnormal_dir is not None else None  # None: good images only
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        self.min_anomalous_fraction = min_anomalous_fraction
        self.tiled = self.preprocessing.tiled
        self.test_fraction = test_fraction
        self.skip_bad_files = skip_bad_files
        self.max_image_pixels = check_max_image_pixels(max_image_pixels, "dataset.max_image_pixels")
        self.page_grids: dict[str, tuple[int, int]] = {}

    def read_page(self, path: Path, anomalous: bool) -> Page:
        """Decode one file (and its mask) to the size the samples are cut from; BadImageError names what is wrong."""
        mask_path = find_mask(self.mask_dir, path) if anomalous and self.mask_dir is not None else None
        # (H,W,3) uint8, a large file at reduced size (preprocessing.decode_factors), its mask alike
        image = read_image(path, None, max_pixels=self.max_image_pixels, reduce_for=self.preprocessing)
        # (H,W) bool; a mask's size is checked against its image
        mask = (
            read_mask(mask_path, path, None, self.max_image_pixels, self.preprocessing)
            if mask_path is not None
            else np.full(image.shape[:2], anomalous)
        )
        # the file's mask too, in the pose the maps will be in
        image, full = self.preprocessing.turn(image, mask, str(path))
        image, mask = self.preprocessing.fit(image, full)
        defect = self.abnormal_dir.name if anomalous and self.abnormal_dir is not None else "good"
        # whole images resized to the model's size keep the file's mask for testing; an unknown one (no mask_dir) not
        known = not anomalous or mask_path is not None
        native = native_mask(full, mask) if known and not self.tiled else None
        return Page(path, image, mask, anomalous, defect, mask_path, native)

    def read_folder(self, folder: Path, anomalous: bool, bad: list[str]) -> list[Page]:
        pages: list[Page] = []
        for path in list_images(folder):
            try:
                page = self.read_page(path, anomalous)
                if self.tiled:
                    self.grid_of(page)  # a page smaller than a tile is bad input too
            except BadImageError as error:
                if not self.skip_bad_files:
                    raise
                bad.append(str(error))
                continue
            pages.append(page)
        if not pages:
            raise BadImageError(f"{folder}: no usable image; skipped as bad:\n" + "\n".join(bad))
        return pages

    def grid_of(self, page: Page) -> TileGrid:
        height, width = page.image.shape[:2]
        try:
            return self.preprocessing.tile_grid(height, width)
        except TileSizeError as error:
            raise BadImageError(f"{page.path}: {error}") from error

    def decode_units(self, pages: list[Page]) -> DecodedImages:
        """Samples of pages: one per image, or one per tile (labelled by its mask fraction)."""
        if not self.tiled:
            samples = [
                Sample(
                    str(p.path),
                    int(p.anomalous),
                    p.defect,
                    str(p.mask_path) if p.mask_path else None,
                    native_mask=p.native_mask,
                )
                for p in pages
            ]
            return DecodedImages(samples, np.stack([p.image for p in pages]), np.stack([p.mask for p in pages]))
        parts = []
        for page in pages:
            grid = self.grid_of(page)
            tiles, mask_tiles = cut_tiles(page.image, grid), cut_tiles(page.mask, grid)  # (N,t,t,3), (N,t,t)
            labels = tile_labels(mask_tiles, self.min_anomalous_fraction)
            mask_path = str(page.mask_path) if page.mask_path else None
            samples = [
                Sample(f"{page.path}#r{r}c{c}", int(y), page.defect if y else "good", mask_path, str(page.path), r, c)
                for r, c, y in zip(*grid.positions(), labels, strict=True)
            ]
            parts.append(DecodedImages(samples, tiles, mask_tiles))
        return DecodedImages.concat(parts)

    def check_separate_folders(self) -> None:
        """Refuse normal and anomalous folders that hold the same images (one folder, or files linked into both:
        symbolic or hard links, told by device and inode): those images would count as normal and as anomalous.
        One file under two names in one folder is refused too: the split could train on it and test it."""
        for key, folder in (("normal_dir", self.normal_dir), ("abnormal_dir", self.abnormal_dir)):
            if folder is not None and folder.is_dir():
                check_one_name_per_file(folder, f"dataset.{key}")
        if self.abnormal_dir is None:
            return
        keys = f"dataset.normal_dir={self.normal_dir} and dataset.abnormal_dir={self.abnormal_dir}"
        normal_folder = file_identity(self.normal_dir)
        if self.normal_dir.resolve() == self.abnormal_dir.resolve() or (
            normal_folder is not None and normal_folder == file_identity(self.abnormal_dir)
        ):
            raise ConfigError(f"{keys} are the same folder: its images would count as normal and as anomalous")
        normal_files = {file_identity(path): path for path in list_images(self.normal_dir)}
        normal_files.pop(None, None)  # a broken link: named as unreadable when read
        shared = [
            (normal_files[identity], path)
            for path in list_images(self.abnormal_dir)
            if (identity := file_identity(path)) in normal_files
        ]
        if shared:
            raise ConfigError(
                f"{keys} share {len(shared)} image files through links (symbolic or hard), e.g. {shared[0][0]} and "
                f"{shared[0][1]} are one file: it would count as normal and as anomalous"
            )

    def build_splits(self) -> dict[str, DecodedImages]:
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise FileNotFoundError(
                f"mask_dir {self.mask_dir} not found; set mask_dir=null if the anomalous images have no masks"
            )
        self.check_separate_folders()
        bad: list[str] = []
        normal_pages = self.read_folder(self.normal_dir, anomalous=False, bad=bad)
        anomalous_pages = (
            self.read_folder(self.abnormal_dir, anomalous=True, bad=bad) if self.abnormal_dir is not None else []
        )
        if bad:
            warnings.warn(f"skip_bad_files: skipped {len(bad)} bad files:\n" + "\n".join(bad), stacklevel=2)

        normal = self.decode_units(normal_pages)
        rng = np.random.default_rng(self.split_seed)
        unit = "tile" if self.tiled else "image"
        kept, test_normal = hold_out(len(normal.samples), self.test_fraction, rng, self.val_fraction, unit)
        page_samples = [Sample(str(p.path), 1, p.defect) for p in anomalous_pages]
        train_ids, val_ids, val_page_ids, test_page_ids = split_validation(
            [normal.samples[i] for i in kept], page_samples, self.val_fraction, self.val_anomalous, self.split_seed
        )
        if not val_ids:
            raise BadImageError(f"val_fraction={self.val_fraction} leaves no normal validation {unit} of {len(kept)}")
        splits = {
            "train": normal.subset([kept[i] for i in train_ids]),
            "val": validation_set(
                normal.subset([kept[i] for i in val_ids]),
                self.decode_units([anomalous_pages[i] for i in val_page_ids]) if val_page_ids else normal.subset([]),
            ),
            "test": DecodedImages.concat(
                [normal.subset(test_normal)]
                + ([self.decode_units([anomalous_pages[i] for i in test_page_ids])] if test_page_ids else [])
            ),
        }
        if self.tiled:
            self.page_grids = {str(p.path): self.grid_of(p).shape for p in normal_pages + anomalous_pages}
        for name, split in splits.items():
            labels = [s.label for s in split.samples]
            log.info("%s: %d %ss (%d anomalous)", name, len(labels), unit, sum(labels))
        return splits


def cache_name(write_pages: functools.partial[Path]) -> str:
    """A folder name per generator and settings: the function's name and a digest of its arguments."""
    settings = json.dumps(write_pages.keywords, sort_keys=True, default=str)
    return f"{write_pages.func.__name__}-{hashlib.sha1(settings.encode()).hexdigest()[:10]}"


class SyntheticPagesDataModule(FolderDataModule):
    """Generated pages with known masks, written once (atomically) under cache_dir, then read as a folder.

    `write_pages(root)` writes root/normal, root/anomalous, root/masks, e.g. a partial of
    synthetic.write_notes_pages or synthetic.write_sea_pages.
    """

    def __init__(self, cache_dir: str, write_pages: functools.partial[Path], **kwargs: Any) -> None:
        self.root = Path(cache_dir) / cache_name(write_pages)
        super().__init__(
            normal_dir=str(self.root / "normal"),
            abnormal_dir=str(self.root / "anomalous"),
            mask_dir=str(self.root / "masks"),
            **kwargs,
        )
        self.write_pages = write_pages

    def prepare_data(self) -> None:
        self.write_pages(self.root)

    def build_splits(self) -> dict[str, DecodedImages]:
        self.prepare_data()  # idempotent; also covers callers that skip prepare_data
        return super().build_splits()
