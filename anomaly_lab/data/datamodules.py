"""LightningDataModules: the split workflow every dataset layout shares, MVTec-AD-layout folders (real bottles)
and generated synthetic bottles.

SplitDataModule holds what every datamodule shares (loaders, rotated copies); LayoutDataModule decodes and splits
the files a layout lists, so a new layout is one class that says which files it reads (plus its YAML option);
plain folders of pages are in folders.py, CSV lists in csv_list.py.

Splits: train = normal images of train/good minus a seeded validation share; validation = those
normal images plus a seeded, per-defect share of the anomalous test images (the sweep objective
needs anomalies); test = test/good plus the anomalous images validation did not take. The whole test
set (`test_split="all"`: the test split and the real anomalous images validation took, every image of an
MVTec test/ folder) is what published tables measure; it is fair only for a run that selects no checkpoint
on validation.

Test batches carry each image's ground-truth mask at its file's own resolution (`mask_native`, a list), for
pixel metrics at the ground truth's resolution.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from anomaly_lab.data.augmentation import add_rotated_copies
from anomaly_lab.data.images import (
    MAX_IMAGE_PIXELS,
    BadImageError,
    DecodedImages,
    ImageDataset,
    Sample,
    check_max_image_pixels,
    collate_samples,
    list_images,
    warn_faint_files,
)
from anomaly_lab.data.synthetic import write_synthetic_bottles
from anomaly_lab.data.tiles import TileSizeError, cut_tiles, tile_labels
from anomaly_lab.data.validation_anomalies import ValidationAnomalies
from anomaly_lab.errors import ConfigError, as_typed
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.results import SYNTHETIC_DEFECT_PREFIX

log = logging.getLogger(__name__)

TEST_SPLITS = ("test", "all")


def scan_mvtec(root: Path, category: str = "bottle") -> tuple[list[Sample], list[Sample]]:
    """Normal training samples and test samples of an MVTec AD category folder.

    A defect type without its ground_truth/<defect>/ folder (or a category without ground_truth/) has no masks:
    its images are anomalous everywhere, for image metrics only. A defect folder that lacks one mask is an error.
    """
    if not (root / "train" / "good").is_dir():  # MVTecDataModule names a missing root: here it is a layout
        raise BadImageError(
            f"{root}: wrong layout: expected train/good/, and optionally test/<defect>/ and ground_truth/<defect>/ "
            f"(MVTec AD); found {sorted(p.name for p in root.iterdir()) if root.is_dir() else 'no folder'}"
        )
    train = [Sample(str(p), 0, "good") for p in list_images(root / "train" / "good")]
    test: list[Sample] = []
    test_dirs = sorted(d for d in (root / "test").iterdir() if d.is_dir()) if (root / "test").is_dir() else []
    for defect_dir in test_dirs:  # none: good images only (validation anomalies are then synthetic)
        defect = defect_dir.name
        for path in list_images(defect_dir):
            if defect == "good":
                test.append(Sample(str(path), 0, defect))
                continue
            mask_dir = root / "ground_truth" / defect
            mask = mask_dir / f"{path.stem}_mask.png"
            if mask_dir.is_dir() and not mask.is_file():
                raise BadImageError(f"{path}: anomalous image has no mask (expected {mask})")
            test.append(Sample(str(path), 1, defect, str(mask) if mask_dir.is_dir() else None))
    twice = linked_twice([Path(sample.path) for sample in [*train, *test]])
    if twice is not None:
        raise BadImageError(
            f"{twice[0]} and {twice[1]} are one file (linked, symbolically or hard): the test would score an image "
            f"the model trained on, or count it twice; keep one of them"
        )
    return train, test


def linked_twice(paths: list[Path]) -> tuple[Path, Path] | None:
    """The first two of paths that are one file (hard or symbolic links: same device and inode), or None. A path
    that reaches nothing is left to the decoder to name."""
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            status = path.stat()
        except OSError:
            continue
        identity = (status.st_dev, status.st_ino)
        if identity in seen:
            return seen[identity], path
        seen[identity] = path
    return None


def share(key: str, value: Any, low_open: bool, why: str) -> float:
    """value as a share in (0, 1) (low_open) or [0, 1); a ValueError naming `key=value` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}={as_typed(value)}: must be a number")
    if (value <= 0 if low_open else value < 0) or value >= 1:
        raise ValueError(f"{key}={as_typed(value)}: must be in {'(' if low_open else '['}0, 1); {why}")
    return float(value)


def normal_shares(total: int, val_fraction: float, test_fraction: float = 0.0) -> tuple[int, int, int]:
    """How many of total normal images (or tiles) are held out for testing, validate and train: test_fraction,
    then val_fraction of the rest, each rounded up as the splits round them."""
    tested = math.ceil(test_fraction * total) if test_fraction > 0 else 0
    validated = math.ceil(val_fraction * (total - tested)) if val_fraction > 0 else 0
    return tested, validated, total - tested - validated


def normal_images_needed(val_fraction: float, test_fraction: float = 0.0) -> tuple[int, int, int, int] | None:
    """The fewest normal images (or tiles) that leave one to train (normal_shares): (in all, to test, to validate,
    to train); None for fractions that need more than a million (each is below 1: the datamodule checks)."""
    for total in range(1, 1_000_001):
        tested, validated, trained = normal_shares(total, val_fraction, test_fraction)
        if trained >= 1:
            return total, tested, validated, trained
    return None


def too_few_normal(count: int, val_fraction: float, test_fraction: float = 0.0, unit: str = "image") -> str:
    """The error of count normal images (or tiles) too few for the fractions: how many they need, and for what."""
    keys = (f"dataset.test_fraction={test_fraction} and " if test_fraction > 0 else "") + (
        f"dataset.val_fraction={val_fraction}"
    )
    both = test_fraction > 0
    them, they_need, leave = ("them", "they need", "leave") if both else ("it", "it needs", "leaves")
    have = f"{count} normal {unit}{'' if count == 1 else 's'}"
    needed = normal_images_needed(val_fraction, test_fraction)
    if needed is None:
        return f"{keys} {leave} no training {unit} of {have}: lower {them}"
    total, tested, validated, trained = needed
    shares = ([f"{tested} to test"] if both else []) + [f"{validated} to validate", f"{trained} to train"]
    return (
        f"{keys} {leave} no training {unit} of {have}: {they_need} at least {total} ({', '.join(shares)}); "
        f"give more normal {unit}s, or lower {them}"
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


def split_validation(
    train: list[Sample], test: list[Sample], val_fraction: float, val_anomalous: float, seed: int
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Seeded indices: (train, val-normal) into `train`; (val-anomalous, test) into `test`.

    `val_anomalous` below 1 is a fraction of each defect type (at least one image of each, and at
    least one left for testing), 1 or more a total count spread over the defect types in turn.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    n_val = math.ceil(val_fraction * len(train)) if val_fraction > 0 else 0
    if n_val >= len(train):
        raise BadImageError(too_few_normal(len(train), val_fraction))
    by_defect: dict[str, list[int]] = {}
    for i, sample in enumerate(test):
        if sample.label:
            by_defect.setdefault(sample.defect, []).append(i)
    shuffled = {d: list(rng.permutation(ids)) for d, ids in sorted(by_defect.items())}
    val_anom: list[int] = []
    if not shuffled:
        pass  # good images only: validation anomalies, if any, are synthetic (data.validation_anomalies)
    elif 0 < val_anomalous < 1:
        for ids in shuffled.values():
            val_anom += ids[: min(len(ids) - 1, max(1, round(val_anomalous * len(ids))))]
    elif val_anomalous >= 1:
        total = sum(len(ids) for ids in shuffled.values())
        if int(val_anomalous) >= total:
            raise BadImageError(f"val_anomalous={val_anomalous} leaves no anomalous test image of {total}")
        while len(val_anom) < int(val_anomalous):
            for ids in shuffled.values():
                if ids and len(val_anom) < int(val_anomalous):
                    val_anom.append(ids.pop(0))
    taken = set(val_anom)
    test_ids = [i for i in range(len(test)) if i not in taken]
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist()), sorted(val_anom), test_ids


def interleave(n_first: int, n_second: int) -> list[int]:
    """Indices into [first..., second...] that alternate between the two groups while both last."""
    first, second = list(range(n_first)), list(range(n_first, n_first + n_second))
    order = [i for pair in zip(first, second, strict=False) for i in pair]
    shorter = min(n_first, n_second)
    return order + first[shorter:] + second[shorter:]


def validation_set(normal: DecodedImages, held_out: DecodedImages) -> DecodedImages:
    """Validation normals and held-out samples in one set, label 0 and label 1 alternating while both last,
    so any first batch (fast_dev_run, limit_val_batches) has both."""
    joined = DecodedImages.concat([normal, held_out])
    labels = np.array([s.label for s in joined.samples], dtype=np.int64)
    by_label = np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)])
    return joined.subset(by_label[interleave(int((labels == 0).sum()), int((labels == 1).sum()))].tolist())


def evaluation_sampler(dataset: ImageDataset, split: str) -> UnrepeatedDistributedSampler | None:
    """Under DDP, a shard of the validation/test set per process in which every sample occurs exactly once.

    Lightning's default DistributedSampler pads the last shard with repeated samples so that every process
    runs as many batches; those repeats would enter the gathered image scores (CatMetric) and the pixel
    histograms (PixelMetrics) twice, and the metrics would differ from one process's. Lightning's own
    UnrepeatedDistributedSampler (used by its predict loop) leaves shards one sample apart instead; that is
    safe in evaluation, which synchronises nothing per batch. Lightning keeps a sampler that is already a
    DistributedSampler. Without DDP: None (the loader reads the split in order).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world_size = torch.distributed.get_world_size()
    if len(dataset) < world_size:
        raise BadImageError(f"the {split} split has {len(dataset)} samples, fewer than the {world_size} DDP processes")
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, shuffle=False)


class SplitDataModule(L.LightningDataModule):
    """Loaders over decoded train/val/test splits, which a subclass's `build_splits` makes once.

    The training split gets `rotation_copies` extra rotated copies of each image (the thesis's
    scheme), computed once here, so epochs reuse them; `train_transform` runs per item on top.
    """

    def __init__(
        self,
        preprocessing: Preprocessing,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_fraction: float = 0.1,
        val_anomalous: float = 0.25,
        split_seed: int = 0,
        train_transform: Callable[..., dict[str, Any]] | None = None,
        rotation_copies: int = 0,
        validation_anomalies: ValidationAnomalies | None = None,
    ) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.val_fraction = share(
            "val_fraction", val_fraction, True, "validation needs normal images (threshold, objective)"
        )
        self.validation_anomalies = validation_anomalies or ValidationAnomalies(source="real")
        # source=synthetic: no real anomaly is held out for validation, every one is tested
        self.val_anomalous = val_anomalous if self.validation_anomalies.uses_real else 0
        self.split_seed = split_seed
        self.train_transform = train_transform
        if isinstance(rotation_copies, bool) or not isinstance(rotation_copies, int) or rotation_copies < 0:
            raise ValueError(f"rotation_copies={as_typed(rotation_copies)}: must be an integer >= 0")
        self.rotation_copies = rotation_copies
        self.splits: dict[str, DecodedImages] = {}
        self.validation_anomaly_kind = "none"  # what validation's anomalous images are, once set up
        # what test_dataloader serves: "test" (the test split) or "all" (the whole test set, see whole_test_set)
        self.test_split = "test"

    def build_splits(self) -> dict[str, DecodedImages]:
        """{"train", "val", "test"}: decoded samples of each split."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.build_splits()  # assigned only when complete: a failed setup leaves nothing half-built
        warn_faint_files(splits)  # blank or nearly black files: one warning naming them, before any training
        splits["train"] = add_rotated_copies(splits["train"], self.rotation_copies)
        normal, anomalous, self.validation_anomaly_kind = self.validation_anomalies.split(splits["val"])
        splits["val"] = validation_set(normal, anomalous)
        self.splits = splits

    def held_out_test_images(self) -> list[int]:
        """Indices into splits["val"] of what validation took from the test set: its real anomalous images, and for
        tiled pages every tile of those pages (their unmarked tiles too; a tile of an anomalous page carries the
        page's mask file, a normal page's none). Synthetic anomalies are no test images."""
        real = [
            (i, s) for i, s in enumerate(self.splits["val"].samples) if not s.defect.startswith(SYNTHETIC_DEFECT_PREFIX)
        ]
        files = {s.page or s.path for _, s in real if s.label == 1 or (s.page is not None and s.mask_path is not None)}
        return [i for i, s in real if (s.page or s.path) in files]

    def whole_test_set(self) -> DecodedImages:
        """The test split and what validation took from the test set (held_out_test_images): the whole test set of
        the data (every image of an MVTec test/ folder), as published tables measure it. Built when asked (a copy of
        the held-out images, dropped after the pass)."""
        held_out = self.held_out_test_images()
        if not held_out:
            return self.splits["test"]
        return DecodedImages.concat([self.splits["test"], self.splits["val"].subset(held_out)])

    def _loader(self, split: str, train: bool) -> DataLoader[dict[str, Any]]:
        decoded = self.whole_test_set() if split == "all" else self.splits[split]
        test = split in TEST_SPLITS  # pixel metrics: masks at the files' resolution too
        dataset = ImageDataset(decoded, self.preprocessing, self.train_transform if train else None, native_masks=test)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=None if train else evaluation_sampler(dataset, split),
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_samples if test else None,
            # every loader iterator draws a seed for its workers: evaluation's from a generator of its own, so that
            # training's random stream (masks, batch order) is the same whether or how often validation runs
            generator=None if train else torch.Generator().manual_seed(0),
        )

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        """The test split, or with test_split="all" the whole test set (whole_test_set)."""
        if self.test_split not in TEST_SPLITS:
            raise ValueError(f"test_split={self.test_split!r}: expected one of {', '.join(TEST_SPLITS)}")
        return self._loader(self.test_split, train=False)


class LayoutDataModule(SplitDataModule):
    """A dataset layout: a subclass says only which files it reads (`list_files`, and `with_mask` where a mask is
    looked up per file); decoding, bad-file skipping and the splits are here, the same for every layout.

    Each file is decoded through `preprocessing` (one sample per whole image, or with preprocessing.tiled=true one
    per tile of the page, labelled anomalous when more than `min_anomalous_fraction` of it is masked; `page_grids`
    maps each page to its (rows, cols)). skip_bad_files=true leaves out files that cannot be decoded (corrupt,
    larger than max_image_pixels, a mask of another size, a page smaller than a tile) with one warning listing
    them; an error of the layout itself (a missing folder, a file listed twice) still stops.

    Splits, seeded: `test_fraction` of the normal images (or tiles) is held out for testing, `val_fraction` of the
    rest validates; the test files (anomalous ones, and normal ones a layout keeps for testing such as MVTec's
    test/good) are held out whole, a `val_anomalous` share of each defect type's anomalous files for validation.

    `data_paths` and `data_settings` name the constructor arguments that say which images are read (paths, made
    absolute, and the settings of a generator): the sweep's study name digests them (configs.data_identity), so
    data sets that differ in one of them are different studies. Loader, split and preprocessing keys are no data.
    """

    data_paths: ClassVar[tuple[str, ...]] = ()
    data_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        test_fraction: float = 0.0,
        min_anomalous_fraction: float = 0.0,
        skip_bad_files: bool = False,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        **loader_args: Any,
    ) -> None:
        super().__init__(**loader_args)
        self.test_fraction = share(
            "test_fraction", test_fraction, False, "the share of normal images held out for testing"
        )
        self.min_anomalous_fraction = min_anomalous_fraction
        self.skip_bad_files = skip_bad_files
        self.max_image_pixels = check_max_image_pixels(max_image_pixels, "dataset.max_image_pixels")
        self.page_grids: dict[str, tuple[int, int]] = {}

    def list_files(self) -> tuple[list[Sample], list[Sample]]:
        """(normal files, test files), one Sample per file: the normal images to train, validate and test on, and
        the files only tested or validated (anomalous ones, label 1, and normal ones a layout keeps for testing)."""
        raise NotImplementedError

    def with_mask(self, file: Sample) -> Sample:
        """The file with its mask found, for a layout that looks masks up per file: a BadImageError here skips the
        file as bad (skip_bad_files=true) rather than stopping. By default the listing names the masks."""
        return file

    def decode_file(self, file: Sample) -> DecodedImages:
        """One file's samples: the whole image, or the page's tiles (each with its page, row and column)."""
        file = self.with_mask(file)
        decoded = DecodedImages.decode([file], self.preprocessing, self.max_image_pixels)
        if not self.preprocessing.tiled:
            return decoded
        page, mask = decoded.images[0], decoded.masks[0]  # (H,W,3) uint8, (H,W) bool
        try:
            grid = self.preprocessing.tile_grid(*mask.shape)
        except TileSizeError as error:
            raise BadImageError(f"{file.path}: {error}") from error
        tiles, mask_tiles = cut_tiles(page, grid), cut_tiles(mask, grid)  # (N,t,t,3), (N,t,t)
        labels = tile_labels(mask_tiles, self.min_anomalous_fraction)
        samples = [
            Sample(f"{file.path}#r{r}c{c}", int(y), file.defect if y else "good", file.mask_path, file.path, r, c)
            for r, c, y in zip(*grid.positions(), labels, strict=True)
        ]
        self.page_grids[file.path] = grid.shape
        return DecodedImages(samples, tiles, mask_tiles)

    def decode_files(self, files: list[Sample], bad: list[str] | None) -> list[tuple[Sample, DecodedImages]]:
        """Each usable file with its samples; a bad file raises, or with `bad` is left out and its error listed."""
        decoded = []
        for file in files:
            try:
                decoded.append((file, self.decode_file(file)))
            except BadImageError as error:
                if bad is None:
                    raise
                bad.append(str(error))
        if files and not decoded:
            where = os.path.commonpath([file.path for file in files])
            raise BadImageError(f"{where}: no usable image; skipped as bad:\n" + "\n".join(bad or []))
        return decoded

    def build_splits(self) -> dict[str, DecodedImages]:
        self.prepare_data()  # idempotent (a generated layout writes its files once); covers callers that skip it
        self.page_grids = {}
        normal_files, test_files = self.list_files()
        if not normal_files:
            source = ", ".join(f"dataset.{key}={getattr(self, key)}" for key in self.data_paths if hasattr(self, key))
            raise BadImageError(f"{source or type(self).__name__}: no normal image (label 0) to train on")
        bad: list[str] | None = [] if self.skip_bad_files else None
        normal = DecodedImages.concat([units for _, units in self.decode_files(normal_files, bad)])
        tested = self.decode_files(test_files, bad)  # held out whole: a page's tiles stay together
        if bad:
            warnings.warn(f"skip_bad_files: skipped {len(bad)} bad files:\n" + "\n".join(bad), stacklevel=2)

        unit = "tile" if self.preprocessing.tiled else "image"
        rng = np.random.default_rng(self.split_seed)
        kept, test_normal = hold_out(len(normal.samples), self.test_fraction, rng, self.val_fraction, unit)
        train_ids, val_ids, val_file_ids, test_file_ids = split_validation(
            [normal.samples[i] for i in kept],
            [file for file, _ in tested],
            self.val_fraction,
            self.val_anomalous,
            self.split_seed,
        )
        no_samples = normal.subset([])
        splits = {
            "train": normal.subset([kept[i] for i in train_ids]),
            "val": validation_set(
                normal.subset([kept[i] for i in val_ids]),
                DecodedImages.concat([no_samples] + [tested[i][1] for i in val_file_ids]),
            ),
            "test": DecodedImages.concat([normal.subset(test_normal)] + [tested[i][1] for i in test_file_ids]),
        }
        for name, split in splits.items():
            labels = [s.label for s in split.samples]
            log.info("%s: %d %ss (%d anomalous)", name, len(labels), unit, sum(labels))
        return splits


class MVTecDataModule(LayoutDataModule):
    """An MVTec AD category folder (any category: bottle, screw, ...), whole images prepared by `preprocessing`.

    A mask missing from its ground_truth/<defect>/ folder is a layout error and stops even with skip_bad_files. A
    defect type without that folder (a category without ground_truth/) gets image metrics only: its images are
    anomalous everywhere, and the test skips pixel AUROC and AUPRO, saying so.
    """

    data_paths: ClassVar[tuple[str, ...]] = ("root",)
    writes_root: ClassVar[bool] = False  # a generated layout writes its root in prepare_data

    def __init__(self, root: str, category: str = "bottle", **layout_args: Any) -> None:
        super().__init__(**layout_args)
        self.root = Path(root)
        self.category = category  # the MVTec AD category the root holds: its default folder, data/mvtec_<category>
        if not self.writes_root and not self.root.is_dir():
            raise ValueError(
                f"root={root}: {'is a file, not a folder' if self.root.is_file() else 'not found'}; point it at an "
                f"MVTec AD category folder (train/good, test/<defect>, ground_truth/<defect>), e.g. "
                f"root=../shared/data/mvtec_{category}, or symlink one to data/mvtec_{category}"
            )
        if self.preprocessing.tiled:
            raise ConfigError(
                "dataset.preprocessing.tiled=true: the MVTec AD layout is read as whole images; tile pages with "
                "dataset=folder"
            )

    def list_files(self) -> tuple[list[Sample], list[Sample]]:
        return scan_mvtec(self.root, self.category)


class SyntheticBottlesDataModule(MVTecDataModule):
    """Generated bottle bottoms with known defect masks, written once into an MVTec-layout cache."""

    data_paths = ()  # the cache folder is no data: the generator's settings fix what is written
    writes_root = True
    data_settings = ("n_train", "n_test_good", "n_test_per_defect", "data_seed")

    def __init__(
        self,
        cache_dir: str,
        n_train: int = 60,
        n_test_good: int = 10,
        n_test_per_defect: int = 6,
        data_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        image_size = kwargs["preprocessing"].image_size
        root = Path(cache_dir) / f"bottles_{image_size}px_{n_train}-{n_test_good}-{n_test_per_defect}_seed{data_seed}"
        super().__init__(root=str(root), **kwargs)
        self.generator_args = dict(
            size=image_size,
            n_train=n_train,
            n_test_good=n_test_good,
            n_test_per_defect=n_test_per_defect,
            seed=data_seed,
        )

    def prepare_data(self) -> None:
        write_synthetic_bottles(self.root, **self.generator_args)
