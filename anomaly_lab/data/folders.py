"""Datamodules over plain folders of pages (normal/, anomalous/, masks/), whole or cut into tiles.

The thesis's notes and sharks experiments score 64x64 tiles of large pages; a user's own folder
may hold whole images of any mode and size. Both are read by one `FolderDataModule`; the generated
notes and sea pages are written once into such a folder (`SyntheticPagesDataModule`), so real and
synthetic data take the same path.

Decoding (any image becomes 8-bit RGB, see data/images.py), tiling and the splits are LayoutDataModule's: normal
images (or tiles of normal pages) are split at random, seeded, into train / validation / test (`val_fraction`,
`test_fraction`); anomalous pages are held out whole, a seeded `val_anomalous` share for validation and the rest
for test.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from anomaly_lab.data.datamodules import LayoutDataModule, linked_twice
from anomaly_lab.data.images import IMAGE_SUFFIXES, BadImageError, Sample, list_images
from anomaly_lab.errors import ConfigError


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


class FolderDataModule(LayoutDataModule):
    """Normal images in `normal_dir`, anomalous ones in `abnormal_dir` (null: good images only), their masks in
    `mask_dir`, whole or cut into tiles (preprocessing.tiled, see LayoutDataModule).

    Without mask_dir an anomalous image counts as anomalous everywhere (its mask is all ones), for image metrics
    only: the test skips pixel AUROC and AUPRO, saying so. An anomalous image whose mask is missing from mask_dir
    is a bad file (skip_bad_files=true leaves it out).
    """

    data_paths: ClassVar[tuple[str, ...]] = ("normal_dir", "abnormal_dir", "mask_dir")

    def __init__(
        self,
        normal_dir: str,
        abnormal_dir: str | None = None,
        mask_dir: str | None = None,
        **layout_args: Any,
    ) -> None:
        super().__init__(**layout_args)
        self.normal_dir = Path(normal_dir)
        self.abnormal_dir = Path(abnormal_dir) if abnormal_dir is not None else None  # None: good images only
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None

    def list_files(self) -> tuple[list[Sample], list[Sample]]:
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise FileNotFoundError(
                f"mask_dir {self.mask_dir} not found; set mask_dir=null if the anomalous images have no masks"
            )
        self.check_separate_folders()
        normal = [Sample(str(path), 0, "good") for path in list_images(self.normal_dir)]
        if self.abnormal_dir is None:
            return normal, []
        return normal, [Sample(str(path), 1, self.abnormal_dir.name) for path in list_images(self.abnormal_dir)]

    def with_mask(self, file: Sample) -> Sample:
        if not file.label or self.mask_dir is None:
            return file
        return replace(file, mask_path=str(find_mask(self.mask_dir, Path(file.path))))

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


def cache_name(write_pages: functools.partial[Path]) -> str:
    """A folder name per generator and settings: the function's name and a digest of its arguments."""
    settings = json.dumps(write_pages.keywords, sort_keys=True, default=str)
    return f"{write_pages.func.__name__}-{hashlib.sha1(settings.encode()).hexdigest()[:10]}"


class SyntheticPagesDataModule(FolderDataModule):
    """Generated pages with known masks, written once (atomically) under cache_dir, then read as a folder.

    `write_pages(root)` writes root/normal, root/anomalous, root/masks, e.g. a partial of
    synthetic.write_notes_pages or synthetic.write_sea_pages.
    """

    data_paths = ()  # the cache folder is no data: the generator and its settings fix what is written
    data_settings = ("write_pages",)

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
