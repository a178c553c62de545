"""A recipe for a new category from its folder and a budget: `make tune DATA=<folder> MINUTES=60`, i.e.
`python -m anomaly_lab.tune data=<folder> minutes=60 [defects=<folder>] [masks=<folder>] [tiled=true] [name=<recipe>]
[overwrite=true] [k=v ...]`.

Why: quality was made by hand, one category at a time. This runs the project's own loop instead: an Optuna search
(hparams_search=auto_cpu, ASHA pruning) scored by the separation of normal and anomalous validation images, inside
a wall-clock budget (hydra.sweeper.budget_minutes), then writes the best trial as an experiment YAML
(recipes/experiment/<name>.yaml, found by `experiment=<name>`: hydra_plugins/anomaly_lab_sweeper/recipes_searchpath
.py), its trials table beside it, and trains and tests that recipe once in a normal run folder.

The protocol: nothing is chosen on the test set. The search sees validation only (synthetic anomalies made from
held-out normal images, or a share of the user's defects where `defects=` is given); the test split is read once,
by the final training, after every choice.

How the data is read (one line each is printed):
- an MVTec AD category root (it has train/good/): dataset=mvtec, every real anomaly tested (synthetic validation
  anomalies), the test is MVTec's own test split;
- a plain folder of good images: dataset=folder, a seeded share of them held out for the test (test_fraction);
  the test's anomalies are `defects=` where given (then validation takes a share of them: the real objective), else,
  where the folder is <root>/train/good and <root>/test/ holds one defect folder, that folder (never seen by the
  search; its masks from <root>/ground_truth/<defect>/ where present). FolderDataModule takes one abnormal_dir: with
  several defect folders the data is read as the MVTec root instead (its test/good then are the test's normals).
  Held-out train/good normals rather than test/good: on the shared screw copy test/good is darker than train/good,
  so brightness alone would separate it (screw_cpu.yaml says more).
- tiled=true: a folder of pages cut into model.image_size tiles (64 px; hparams_search=auto_tiles_cpu, the thesis's
  notes and sharks domains): dataset=folder with preprocessing.tiled=true, split as those recipes' pages (PAGES:
  conf/dataset_base/pages.yaml): with defects= (marked pages; masks= their masks), one marked page validates whole
  and the other marked pages are the test, their unmarked tiles its normals, so the tuned recipe tests the tiles
  notes_highlighter and sharks test; without, a share of the normal tiles is held out for a test of normals. The
  budget counts tiles as images (STEP_S and RATE_S per tile; TILES_VALIDATION for validation's larger share).

Bad input is one line naming the key and exit 2, before anything trains: no images, too few to hold out validation
and test images, a category without normal images, a budget too small for one trial (the documented rate below,
not a probe: no training before the refusal), a search value the model cannot take (one config per value of each
parameter, and every size x band x grid, run through the train command's own checks), a recipe name taken.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import product
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
from omegaconf import DictConfig, OmegaConf

from anomaly_lab.cli import USER_ERRORS, exit_for_user_error
from anomaly_lab.configs import CONFIG_DIR, data_digest, data_identity
from anomaly_lab.data.datamodules import normal_shares
from anomaly_lab.data.images import IMAGE_SUFFIXES
from anomaly_lab.errors import ConfigError, UserError, as_typed
from anomaly_lab.metrics import validation_rank
from anomaly_lab.orientation import PartGeometry, part_geometry

log = logging.getLogger(__name__)

SEARCH = "auto_cpu"  # conf/hparams_search/auto_cpu.yaml
TILES_SEARCH = "auto_tiles_cpu"  # conf/hparams_search/auto_tiles_cpu.yaml: tiled=true
# Seconds of optimizer steps per training image and epoch on 2 idle CPU cores: STEP_S plus RATE_S per megapixel of
# model input for the narrow net (model.net.base_channels 8), times (width / 8) ** WIDTH_POWER for other widths.
# Fitted to train/images_per_s on idle cores: the searches of 2026-12-07 morning (the reference machine: width 8 at
# 256x96 0.069 s, at 128x64 0.029 s; width 16 at 128x128 0.090 s, at 256x96 0.125 s), times the ratio of this code's
# steps (SSIM's window as matrices, channels_last) to the old code's, both measured on 2026-12-07 afternoon at those
# points: 0.71, 0.9, 0.87 and 0.75 (docs/lab/2026-12-06-scoring-chosen-on-validation.md, "A faster training step").
STEP_S, RATE_S, WIDTH_POWER = 0.015, 1.4, 1.3
# A trial validates every 5 epochs (ASHA's rungs), each time with riad_wide_map's full-coverage passes, and chooses
# its scoring at its end: measured 1.29x (screw) and 1.33x (bottle) the seconds of its optimizer steps
SEARCH_VALIDATION = 1.3
# Tiles: validation is large against training (a fifth of the normal tiles and a whole marked page) and a masked
# net inpaints it in several passes (tiles_multiscale_grid: 4 sizes x 4), so an epoch is bounded at half again
TILES_VALIDATION = 1.5
# The final training's optimizer steps: 15 min on 2 cores less its start, its one validation with the scoring
# choice (the final validates at its last epoch only: FINAL_VALIDATION) and its test
FINAL_TRAINING_S = 13 * 60
FINAL_VALIDATION = 1.0
LENGTHS = {"short": 0.3, "medium": 0.6, "long": 1.0}  # tune.length: shares of the longest that fits
EPOCH_STEP, MAX_EPOCHS = 5, 100
START_S, DECODE_S = 10.0, 0.05  # a trial's start, and decoding per image file (1024 px PNG): the budget check
SWEEP_START_S = 15.0  # the search process's own start (imports, composing), before its budget's clock runs
VAL_FRACTION, TEST_FRACTION = 0.1, 0.2  # the loader's val_fraction; the normals a plain folder holds out to test
MIN_VALIDATION, MIN_TRAINING = 3, 8  # normal images validation and training need at least
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
OWN_KEYS = ("data", "minutes", "defects", "masks", "tiled", "name", "overwrite")
# Pages cut into tiles, split as the thesis recipes' pages (conf/dataset_base/pages.yaml): a tile is marked when
# more than 2% of it is; validation takes a fifth of the normal tiles and one marked page whole, the test the other
# marked pages (their unmarked tiles are the test's normals), so a tuned recipe tests the tiles notes_highlighter
# and sharks test on the same pages
PAGES = {
    "min_anomalous_fraction": 0.02,
    "val_fraction": 0.2,
    "val_anomalous": 1,
    "batch_size": 16,
    "eval_batch_size": 64,
}


def recipes_root() -> Path:
    """<project root>/recipes (PROJECT_ROOT or the working directory), the folder Hydra's search path gets."""
    return Path(os.environ.get("PROJECT_ROOT", ".")).resolve() / "recipes"


@dataclass
class DataPlan:
    """The dataset options chosen for a data folder, what they mean (one line each) and the normal images."""

    overrides: list[str]
    lines: list[str]
    normal_images: int  # in the pool that is split into train / validation (/ test)
    holds_out_test: bool  # a share of the normals is held out for the test (dataset.test_fraction)
    image_files: int = 0  # every image file a run decodes (normals and anomalies)
    kind: str = "folder"
    val_fraction: float = VAL_FRACTION  # the share of the pool that validates (dataset.val_fraction)
    unit: str = "image"  # what a sample is: an image, or a tile of a page
    normal_dir: Path | None = None  # the folder of good images (the part's shape is read from a few of them)
    test_fraction: float = TEST_FRACTION  # the share of the pool held out to test, where holds_out_test


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def defect_folders(test: Path) -> list[Path]:
    """The defect folders of an MVTec-layout test/ folder: every subfolder but good that holds images."""
    if not test.is_dir():
        return []
    return [d for d in sorted(test.iterdir()) if d.is_dir() and d.name != "good" and count_images(d)]


def mvtec_plan(root: Path, key: str = "data") -> DataPlan:
    normal = count_images(root / "train" / "good")
    if normal == 0:
        raise UserError(
            f"{key}={root}: train/good holds no normal image ({'/'.join(IMAGE_SUFFIXES)}): a category "
            "needs good images to train on"
        )
    defects = defect_folders(root / "test")
    good = count_images(root / "test" / "good") if (root / "test" / "good").is_dir() else 0
    anomalous = sum(count_images(d) for d in defects)
    masks = [d.name for d in defects if (root / "ground_truth" / d.name).is_dir()]
    lines = [
        f"data: an MVTec AD category root (train/good: {normal} images) -> dataset=mvtec dataset.root={root}",
        "validation: synthetic anomalies from held-out normal images (validation_anomalies=synthetic): every real "
        "anomaly is tested, none is seen by the search",
        f"test: MVTec's own test split: test/good ({good}) and {anomalous} anomalies in "
        f"{', '.join(d.name for d in defects) or 'no defect folder'}"
        + (f"; masks for {', '.join(masks)} (pixel AUROC)" if masks else "; no masks (image AUROC only)"),
    ]
    overrides = ["dataset=mvtec", f"dataset.root={root}", "validation_anomalies=synthetic"]
    return DataPlan(
        overrides, lines, normal, False, normal + good + anomalous, "mvtec", normal_dir=root / "train" / "good"
    )


def folder_plan(data: Path, defects: Path | None, masks: Path | None = None) -> DataPlan:
    normal = count_images(data)
    if normal == 0:
        raise UserError(
            f"data={data}: no images ({'/'.join(IMAGE_SUFFIXES)}) in it: give a folder of good images, or an MVTec "
            "AD category root (with train/good/)"
        )
    overrides = ["dataset=folder", f"dataset.normal_dir={data}", f"dataset.test_fraction={TEST_FRACTION}"]
    lines = [
        f"data: a folder of {normal} good images -> dataset=folder dataset.normal_dir={data}, "
        f"{TEST_FRACTION:.0%} held out for the test (dataset.test_fraction={TEST_FRACTION})"
    ]
    anomalous, mask_dir = 0, None
    if defects is not None:
        if not defects.is_dir():
            raise UserError(f"defects={defects}: not a folder")
        anomalous = count_images(defects)
        if anomalous < 2:
            raise UserError(
                f"defects={defects}: {anomalous} images; validation takes a share of the defects and the test the "
                "rest, so give at least 2 (or leave defects out: synthetic validation anomalies)"
            )
        if masks is not None and not masks.is_dir():
            raise UserError(f"masks={masks}: not a folder")
        overrides += [f"dataset.abnormal_dir={defects}", f"dataset.mask_dir={masks or 'null'}"]
        overrides.append("validation_anomalies=auto")
        lines += [
            f"validation: a share of the {anomalous} defects in {defects} (validation_anomalies=auto, "
            "dataset.val_anomalous): the real objective",
            f"test: the held-out good images and the other defects of {defects}"
            + (f", masks in {masks}" if masks else "; no masks (image AUROC only)"),
        ]
    else:
        root = data.parent.parent
        found = defect_folders(root / "test") if data.name == "good" and data.parent.name == "train" else []
        if len(found) > 1:
            plan = mvtec_plan(root)
            plan.lines.insert(
                0,
                f"data: {data} is train/good of {root}, whose test/ holds {len(found)} defect folders "
                f"({', '.join(d.name for d in found)}): read as the MVTec root (one folder dataset takes one "
                "abnormal_dir)",
            )
            return plan
        if found:
            (defect,) = found
            anomalous = count_images(defect)
            masks = root / "ground_truth" / defect.name
            mask_dir = masks if masks.is_dir() else None
            overrides += [f"dataset.abnormal_dir={defect}", f"dataset.mask_dir={mask_dir or 'null'}"]
            overrides.append("validation_anomalies=synthetic")
            lines += [
                "validation: synthetic anomalies from held-out good images (validation_anomalies=synthetic)",
                f"test: the held-out good images and the {anomalous} defects of {defect} (never seen by the search)"
                + (f", masks in {mask_dir}" if mask_dir else "; no masks (image AUROC only)"),
            ]
        else:
            overrides += ["dataset.abnormal_dir=null", "validation_anomalies=synthetic"]
            lines += [
                "validation: synthetic anomalies from held-out good images (validation_anomalies=synthetic)",
                "test: the held-out good images only (no defects: give defects=<folder> for an AUROC)",
            ]
    return DataPlan(overrides, lines, normal, True, normal + anomalous, normal_dir=data)


@dataclass(frozen=True)
class Tiling:
    """How pages are cut (dataset.preprocessing): tile size, stride (None: the size), border, page width."""

    size: int = 64
    stride: int | None = None
    border: str = "drop"
    page_width: int | None = None


def count_tiles(folder: Path, tiling: Tiling, key: str) -> tuple[int, int]:
    """(pages, tiles) of a folder of pages, from the image headers (nothing decoded); a page smaller than a tile is
    a UserError naming the key and file."""
    from PIL import Image

    from anomaly_lab.data.images import list_images
    from anomaly_lab.data.tiles import TileGrid, TileSizeError

    pages = tiles = 0
    for path in list_images(folder):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as error:
            raise UserError(f"{key}={folder}: {path.name} cannot be read as an image: {error}") from error
        if tiling.page_width is not None:
            width, height = tiling.page_width, max(1, round(height * tiling.page_width / width))
        try:
            grid = TileGrid.of_page(height, width, tiling.size, tiling.stride, tiling.border)
        except TileSizeError as error:
            raise UserError(f"{key}={folder}: {path.name}: {error} (model.image_size is the tile)") from error
        pages, tiles = pages + 1, tiles + grid.rows * grid.cols
    return pages, tiles


def tiles_plan(data: Path, defects: Path | None, masks: Path | None, tiling: Tiling) -> DataPlan:
    """dataset=folder with preprocessing.tiled=true, split as the thesis recipes' pages (PAGES): with defects, one
    marked page validates (the real objective) and the others are the test, their unmarked tiles its normals; without,
    a share of the normal tiles is held out for a test of normals, validation's anomalies synthetic."""
    pages, tiles = count_tiles(data, tiling, "data")
    if tiles == 0:
        raise UserError(
            f"data={data}: no pages ({'/'.join(IMAGE_SUFFIXES)}) in it: give a folder of good pages to cut into "
            f"{tiling.size} px tiles"
        )
    pages_block = [f"dataset.{key}={value}" for key, value in PAGES.items()]
    overrides = ["dataset=folder", f"dataset.normal_dir={data}", "dataset.preprocessing.tiled=true", *pages_block]
    cut = f"{tiling.size}x{tiling.size} tiles (dataset.preprocessing.tiled=true)"
    lines = [f"data: a folder of {pages} good pages, {tiles} {cut} -> dataset=folder dataset.normal_dir={data}"]
    if defects is None:
        overrides += [
            f"dataset.test_fraction={TEST_FRACTION}",
            "dataset.abnormal_dir=null",
            "dataset.mask_dir=null",
            "validation_anomalies=synthetic",
        ]
        lines += [
            f"validation: {PAGES['val_fraction']:.0%} of the normal tiles and synthetic anomalies made from them "
            "(validation_anomalies=synthetic)",
            f"test: {TEST_FRACTION:.0%} of the normal tiles held out (dataset.test_fraction={TEST_FRACTION}); no "
            "defects: a test of normals only (give defects=<folder of marked pages> for a per-tile AUROC)",
        ]
        return DataPlan(overrides, lines, tiles, True, pages, "tiles", PAGES["val_fraction"], "tile")
    if not defects.is_dir():
        raise UserError(f"defects={defects}: not a folder")
    marked, marked_tiles = count_tiles(defects, tiling, "defects")
    if marked < 2:
        raise UserError(
            f"defects={defects}: {marked} pages; one marked page validates and the others are the test, so give at "
            "least 2 (or leave defects out: synthetic validation anomalies)"
        )
    if masks is not None and not masks.is_dir():
        raise UserError(f"masks={masks}: not a folder")
    overrides += [
        "dataset.test_fraction=0.0",
        f"dataset.abnormal_dir={defects}",
        f"dataset.mask_dir={masks or 'null'}",
        "validation_anomalies=auto",
    ]
    marking = (
        f"a tile is marked where more than {PAGES['min_anomalous_fraction']:.0%} of it is masked in {masks}"
        if masks
        else "no masks: every tile of a marked page counts as marked (give masks=<folder> for a per-tile label)"
    )
    lines += [
        f"validation: {PAGES['val_fraction']:.0%} of the normal tiles and {PAGES['val_anomalous']} of the {marked} "
        f"marked pages in {defects}, whole (validation_anomalies=auto: the real objective); {marking}",
        f"test: the tiles of the other {marked - PAGES['val_anomalous']} marked pages ({marked_tiles} tiles in all "
        "marked pages; the unmarked ones are the test's normals, dataset.test_fraction=0.0, as the notes_highlighter "
        "and sharks recipes test)" + ("; pixel AUROC from the masks" if masks else "; no masks (per-tile AUROC only)"),
    ]
    return DataPlan(
        overrides, lines, tiles, False, pages + marked, "tiles", PAGES["val_fraction"], "tile", test_fraction=0.0
    )


def plan_data(
    data: Path,
    defects: Path | None,
    masks: Path | None = None,
    tiling: Tiling | None = None,
) -> DataPlan:
    """The dataset options for `data` (and `defects`, their `masks`), checked to leave validation and training
    images; with a tiling, pages cut into tiles."""
    if not data.is_dir():
        raise UserError(f"data={data}: {'a file, not a folder' if data.exists() else 'folder not found'}")
    if masks is not None and defects is None:
        raise UserError(f"masks={masks}: the masks are the defects' (defects=<folder>): give defects too")
    if tiling is not None:
        if (data / "train" / "good").is_dir():
            raise UserError(
                f"tiled=true: {data} is an MVTec AD root of whole images; give a folder of pages (data=<pages>/normal)"
            )
        plan = tiles_plan(data, defects, masks, tiling)
        check_enough_normal(plan, data)
        return plan
    if (data / "train" / "good").is_dir():
        if defects is not None:
            raise UserError(
                f"defects={defects}: {data} is an MVTec AD root, whose defects are its test/ folders: leave defects out"
            )
        plan = mvtec_plan(data)
    else:
        plan = folder_plan(data, defects, masks)
    check_enough_normal(plan, data)
    return plan


def normal_split(
    total: int, holds_out_test: bool, val_fraction: float = VAL_FRACTION, test_fraction: float = TEST_FRACTION
) -> tuple[int, int, int]:
    """(tested, validated, trained) of `total` normal images (or tiles)."""
    return normal_shares(total, val_fraction, test_fraction if holds_out_test else 0.0)


def plan_split(plan: DataPlan, total: int | None = None) -> tuple[int, int, int]:
    """normal_split with the plan's fractions (of its pool, or of `total`)."""
    return normal_split(
        plan.normal_images if total is None else total, plan.holds_out_test, plan.val_fraction, plan.test_fraction
    )


def check_enough_normal(plan: DataPlan, data: Path) -> None:
    tested, validated, trained = plan_split(plan)
    if validated >= MIN_VALIDATION and trained >= MIN_TRAINING and (tested >= 1 or not plan.holds_out_test):
        return
    needed = next(
        n for n in range(1, 100_000) if (s := plan_split(plan, n))[1] >= MIN_VALIDATION and s[2] >= MIN_TRAINING
    )
    shares = f"{tested} to test, " if plan.holds_out_test else ""
    unit = plan.unit
    raise UserError(
        f"data={data}: {plan.normal_images} normal {unit}s are too few to hold out validation"
        f"{' and test' if plan.holds_out_test else ''} {unit}s ({shares}{validated} to validate, {trained} to train; "
        f"the search needs at least {MIN_VALIDATION} to validate and {MIN_TRAINING} to train): give at least "
        f"{needed} good {unit}s" + (" (more pages)" if unit == "tile" else "")
    )


def seconds_per_epoch(training_images: int, pixels: int, width: int, validation: float = SEARCH_VALIDATION) -> float:
    """One epoch of training at the documented rate (STEP_S, RATE_S), with `validation`'s share on top (a trial's
    validation every 5 epochs: SEARCH_VALIDATION); an image is a tile where pages are tiled."""
    rate = RATE_S * (width / 8) ** WIDTH_POWER
    return (STEP_S + rate * pixels / 1e6) * training_images * validation


def epochs_table(tune: Mapping[str, Any], training_images: int, validation: float = FINAL_VALIDATION) -> dict[str, Any]:
    """tune.epochs for this data: by size, band and width, the longest final training (`validation`: its share on
    top of the steps, final_validation) that fits FINAL_TRAINING_S (a multiple of EPOCH_STEP, at most MAX_EPOCHS)
    and LENGTHS shares of it."""
    table: dict[str, Any] = {}
    for size_name, size in tune["sizes"].items():
        for band, height in tune["bands"][size_name].items():
            for width_name, width in tune["widths"].items():
                epoch = seconds_per_epoch(training_images, size * (height or size), width, validation)
                longest = min(MAX_EPOCHS, max(EPOCH_STEP, int(FINAL_TRAINING_S / epoch) // EPOCH_STEP * EPOCH_STEP))
                lengths = {
                    name: max(EPOCH_STEP, round(longest * share / EPOCH_STEP) * EPOCH_STEP)
                    for name, share in LENGTHS.items()
                }
                table.setdefault(size_name, {}).setdefault(band, {})[width_name] = lengths
    return table


def hydra_value(value: Any) -> str:
    """A plain value (dict, list, number, string, None) as a Hydra override value."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def plain_dict(node: Any) -> dict[str, Any]:
    """A config node as a plain dict with string keys (resolved)."""
    container = OmegaConf.to_container(node, resolve=True)
    assert isinstance(container, dict)
    return {str(key): value for key, value in container.items()}


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """The train config (with its hydra node) for these overrides, as the command line would compose it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def search_values(params: Mapping[str, str]) -> dict[str, list[Any]]:
    """Each search parameter's values to check: every choice; an interval's two ends."""
    parser = OverridesParser.create()
    values: dict[str, list[Any]] = {}
    for key, spec in params.items():
        sweep = parser.parse_override(f"{key}={spec}").value()
        if isinstance(sweep, ChoiceSweep):
            values[key] = list(sweep.list)
        elif isinstance(sweep, IntervalSweep):
            values[key] = [sweep.start, sweep.end]
        else:
            values[key] = [sweep]
    return values


def check_points(base: Sequence[str], params: Mapping[str, str]) -> int:
    """Compose one config per value of each search parameter, and one per size x band x grid, and run the train
    command's checks and builds on each: a value the model cannot take is a ConfigError naming the parameter and
    value. Returns the number of configs checked."""
    from anomaly_lab.config_checks import check_train_config
    from anomaly_lab.train import build_module

    values = search_values(params)
    joint = [key for key in ("tune.size", "tune.band", "tune.grid") if key in values]
    points: list[dict[str, Any]] = [
        dict(zip(joint, combo, strict=True)) for combo in product(*(values[k] for k in joint))
    ]
    points += [{key: value} for key, options in values.items() if key not in joint for value in options]
    for point in points:
        overrides = [*base, *(f"{key}={hydra_value(value)}" for key, value in point.items())]
        where = " ".join(f"{key}={hydra_value(value)}" for key, value in point.items())
        try:
            cfg = compose_train(overrides)
            check_train_config(cfg)
            build_module(cfg)
        except (*USER_ERRORS, ValueError, TypeError, KeyError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"hydra.sweeper.params: the search point {where} cannot train: {message}") from error
    return len(points)


def check_fallback(cfg: DictConfig, params: Mapping[str, str]) -> None:
    """hydra.sweeper.budget_fallback checked as the search will check it, before the study is written."""
    from anomaly_lab.sweeps.private_api import search_distributions
    from anomaly_lab.sweeps.resumable_optuna import check_budget_fallback

    node = cfg.hydra.sweeper.get("budget_fallback")  # typed Dict[str, Any] by the sweeper's schema
    if node is None:
        return
    fallback = OmegaConf.to_container(node, resolve=True)
    assert isinstance(fallback, dict)
    check_budget_fallback({str(key): value for key, value in fallback.items()}, search_distributions(params))


def check_epochs(table: Mapping[str, Any]) -> None:
    for size, bands in table.items():
        for band, widths in bands.items():
            for width, lengths in widths.items():
                for length, epochs in lengths.items():
                    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
                        key = f"tune.epochs.{size}.{band}.{width}.{length}"
                        raise ConfigError(f"{key}={as_typed(epochs)}: must be a positive integer")


@dataclass
class Point:
    """A point of the search and its estimated seconds of training (the documented rate)."""

    params: dict[str, Any]
    seconds: float
    label: str = ""


def point_seconds(
    tune: Mapping[str, Any], table: Mapping[str, Any], params: Mapping[str, Any], plan: DataPlan
) -> float:
    """A trial's seconds at the documented rate: its start, decoding every image file, its epochs. A name the search
    does not draw (e.g. tune.size for tiles) is the yaml's own."""
    drawn = (params.get(f"tune.{key}", tune[key]) for key in ("size", "band", "width", "length"))
    size_name, band, width_name, length = drawn
    size = tune["sizes"][size_name]
    pixels = size * (tune["bands"][size_name][band] or size)
    epochs = table[size_name][band][width_name][length]
    training = plan_split(plan)[2]
    epoch = seconds_per_epoch(training, pixels, tune["widths"][width_name], validation_share(plan))
    return START_S + DECODE_S * plan.image_files + epochs * epoch


def validation_share(plan: DataPlan) -> float:
    """A trial's validation on top of its steps (it validates every 5 epochs)."""
    return TILES_VALIDATION if plan.kind == "tiles" else SEARCH_VALIDATION


def final_validation(plan: DataPlan) -> float:
    """The final training's validation on top of its steps: it validates once, at its last epoch, except that a
    tile's validation is large enough to bound every epoch of tiles (TILES_VALIDATION)."""
    return TILES_VALIDATION if plan.kind == "tiles" else FINAL_VALIDATION


# The first trial of each search: the yaml's tune.* defaults and these values (the point a hand recipe trains)
FIRST_POINTS: dict[str, tuple[dict[str, Any], str]] = {
    SEARCH: (
        {"optimizer.lr": 1e-3, "dataset.preprocessing.orient": "none", "augmentation": "none"},
        "bottles_cpu's point",
    ),
    TILES_SEARCH: (
        {"masking": "none", "optimizer.lr": 1e-3, "augmentation": "none"},
        "the notes_highlighter and sharks recipes' point (unet64, no masking, L2 loss, lr 1e-3)",
    ),
}


def first_points(
    tune: Mapping[str, Any],
    table: Mapping[str, Any],
    plan: DataPlan,
    params: Sequence[str] | None = None,
    search: str = SEARCH,
) -> tuple[Point, Point]:
    """The search's first point (FIRST_POINTS: the yaml's tune.* defaults and a hand recipe's values) and the
    cheapest point with its estimated seconds; each names the search's `params` only (default: auto_cpu's)."""
    fixed, label = FIRST_POINTS[search]
    keys = list(params) if params is not None else [f"tune.{k}" for k in ("size", "band", "width", "grid", "length")]
    keys += [key for key in fixed if params is None]
    default = {  # a parameter added on the command line is drawn by the sampler
        key: tune[key[len("tune.") :]] if key.startswith("tune.") else fixed[key]
        for key in keys
        if key.startswith("tune.") or key in fixed
    }
    cheapest: Point | None = None
    sizes = tune["sizes"] if "tune.size" in default else [tune["size"]]
    for size, width in product(sizes, tune["widths"] if "tune.width" in default else [tune["width"]]):
        bands = tune["bands"][size] if "tune.band" in default else [tune["band"]]
        for band in bands:
            drawn = {"tune.size": size, "tune.band": band, "tune.width": width, "tune.length": "short"}
            point = {**default, **{key: value for key, value in drawn.items() if key in default}}
            seconds = point_seconds(tune, table, point, plan)
            if cheapest is None or seconds < cheapest.seconds:
                epochs = table[size][band][width]["short"]
                cheapest = Point(point, seconds, f"{size}, band {band}, {width} net, {epochs} epochs")
    assert cheapest is not None
    return Point(default, point_seconds(tune, table, default, plan), label), cheapest


def sample_images(folder: Path, count: int = 32, size: int = 256) -> list[Any]:
    """`count` images of folder, evenly spaced in name order, each decoded at most size px (H,W,3) uint8."""
    import numpy as np
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    picked = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(count, len(files)))] if files else []
    images = []
    for path in picked:
        try:
            with Image.open(path) as file:
                file.draft("RGB", (size, size))  # a JPEG decodes at reduced size
                image = file.convert("RGB")
                image.thumbnail((size, size))
                images.append(np.asarray(image))
        except OSError:  # an unreadable file: training names it; the shape is read from the others
            continue
    return images


def long_part_point(
    tune: Mapping[str, Any], table: Mapping[str, Any], plan: DataPlan, default: Point, geometry: PartGeometry
) -> Point | None:
    """For a long part (PartGeometry.elongated, from the good images alone): the default point turned to one pose
    (orient=principal_axis) and, where a band of the search's table holds the rows the turned part spans (with a
    quarter more as margin), that band at the larger size with the narrow net, which costs about what the default's
    whole square does (screw_cpu's reasoning, docs/lab/2026-11-30-screw.md); None for any other part."""
    keys = default.params
    if not geometry.elongated or "dataset.preprocessing.orient" not in keys:
        return None
    point = {**keys, "dataset.preprocessing.orient": "principal_axis"}
    label = "the default point turned to one pose (orient=principal_axis): a long part"
    size = max(tune["sizes"], key=lambda name: tune["sizes"][name])
    bands = [(rows, name) for name, rows in tune["bands"][size].items() if rows is not None]
    fitting = sorted(b for b in bands if b[0] >= 1.25 * geometry.band * tune["sizes"][size])
    if fitting and {"tune.size", "tune.band", "tune.width"} <= set(keys):
        rows, band = fitting[0]
        narrow = min(tune["widths"], key=lambda name: tune["widths"][name])
        point.update({"tune.size": size, "tune.band": band, "tune.width": narrow})
        label = (
            f"a long part: turned to one pose (orient=principal_axis), the band of its {rows} rows at "
            f"{tune['sizes'][size]} px (tune.band={band}), the {narrow} net"
        )
    return Point(point, point_seconds(tune, table, point, plan), label)


def starting_points(candidates: Sequence[Point], cheapest: Point, left_s: float) -> list[Point]:
    """The points enqueued first, in order: each candidate while together they fit 3/4 of the search's seconds
    (the search keeps a quarter for its own draws); the cheapest point where none fits."""
    chosen: list[Point] = []
    total = 0.0
    for point in candidates:
        if total + point.seconds <= 0.75 * left_s:
            chosen.append(point)
            total += point.seconds
    return chosen or [cheapest]


@dataclass
class Args:
    data: Path
    minutes: float
    defects: Path | None = None
    name: str = ""
    overwrite: bool = False
    extras: list[str] = field(default_factory=list)
    masks: Path | None = None
    tiled: bool = False


def parse_args(argv: Sequence[str]) -> Args:
    """key=value arguments: data, minutes, defects, masks, tiled, name, overwrite; any other key=value is a Hydra
    override for the search and the recipe (e.g. dataset.preprocessing.grayscale=true)."""
    own: dict[str, str] = {}
    extras: list[str] = []
    for argument in argv:
        key, equals, value = argument.partition("=")
        if not equals:
            raise UserError(f"{argument!r}: arguments are key=value (data=<folder> minutes=<budget> ...)")
        if key in OWN_KEYS:
            own[key] = value
        else:
            extras.append(argument)
    for key in ("data", "minutes"):
        if not own.get(key):
            raise UserError(f"{key}=...: required (python -m anomaly_lab.tune data=<folder> minutes=60)")
    try:
        minutes = float(own["minutes"])
    except ValueError:
        minutes = math.nan
    if not 0 < minutes < math.inf:
        raise UserError(f"minutes={own['minutes']}: must be a positive number of minutes (MINUTES=60)")
    data = Path(own["data"]).expanduser().resolve()
    defects = Path(own["defects"]).expanduser().resolve() if own.get("defects") else None
    masks = Path(own["masks"]).expanduser().resolve() if own.get("masks") else None
    for key, path in (("data", data), ("defects", defects), ("masks", masks)):
        if path is not None:
            check_override_path(key, path)
    named = {"good": data.parent.parent.name, "normal": data.parent.name}.get(data.name, data.name)  # train/good
    name = own.get("name") or f"tune_{re.sub(r'[^A-Za-z0-9_-]', '_', named)}"
    if not NAME.fullmatch(name):
        raise UserError(f"name={name}: a recipe name is letters, digits, '_' and '-' (it names the experiment)")
    if (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").is_file():
        raise UserError(
            f"name={name}: a shipped experiment has that name (experiment={name} would find it): choose another"
        )
    flags = {}
    for key in ("overwrite", "tiled"):
        flags[key] = own.get(key, "false").lower()
        if flags[key] not in ("true", "false"):
            raise UserError(f"{key}={own[key]}: true or false")
    return Args(
        data, minutes, defects, name, flags["overwrite"] == "true", extras, masks, tiled=flags["tiled"] == "true"
    )


def check_override_path(key: str, path: Path) -> None:
    """A folder the search and the recipe name in Hydra overrides (dataset.normal_dir=<path>): a path that is not read
    back as itself (a comma makes a sweep, `=` or brackets do not parse, `${...}` is an interpolation) is a UserError
    naming the key, before anything runs."""
    text = str(path)
    try:
        override = OverridesParser.create().parse_override(f"key={text}")
        same = not override.is_sweep_override() and override.value() == text
    except Exception:  # the grammar's errors name neither the key nor the path
        same = False
    if not same or "${" in text:
        raise UserError(
            f"{key}={text}: this path cannot be a Hydra override value (a comma, '=', brackets, braces, quotes or "
            "'${' in it): rename the folder, or copy its images into one without them"
        )


def recipe_path(name: str) -> Path:
    return recipes_root() / "experiment" / f"{name}.yaml"


# What a recipe sets beyond its group choices: the search's keys and the dataset's options (from the plan)
RECIPE_KEYS = (
    "seed",
    "model.image_size",
    "model.net.base_channels",
    "model.channels_last",
    "dataset.preprocessing.crop_height",
    "dataset.preprocessing.orient",
    "masking.grid_sizes",
    "scoring.loss.ssim",
    "scoring.loss.msgms",
    "scoring.anomaly_map.blur_sigma",
    "scoring.anomaly_map.score_blur_sigma",
    "optimizer.lr",
    "trainer.max_epochs",
    "trainer.check_val_every_n_epoch",
    "callbacks.model_checkpoint.monitor",
)
RECIPE_GROUPS = ("dataset", "model", "masking", "scoring", "trainer", "augmentation", "validation_anomalies")
# What must be equal between the best trial's config and the written recipe's (the recipe trains that model)
COMPARED = (
    "seed",
    "model",
    "dataset",
    "masking",
    "scoring",
    "optimizer",
    "scheduler",
    "trainer",
    "threshold",
    "objective",
    "callbacks.model_checkpoint",
)


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The config keys (not groups, hydra.* or tune.*) that overrides set, in order."""
    keys = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if override.is_delete() or key.startswith(("hydra.", "tune.")) or key in RECIPE_GROUPS:
            continue
        keys.append(key.lstrip("+"))
    return keys


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def recipe_yaml(cfg: DictConfig, keys: Sequence[str], header: str) -> str:
    """The experiment YAML of a composed config: its group choices and the plain (resolved) values of `keys`."""
    choices = cfg.hydra.runtime.choices
    defaults = [{f"override /{group}": choices[group]} for group in RECIPE_GROUPS if choices.get(group)]
    values: dict[str, Any] = {}
    absent = object()
    for key in keys:
        value = OmegaConf.select(cfg, key, default=absent)
        if value is absent:  # not a key of the chosen group (masking.grid_sizes of masking=none)
            continue
        values[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    body = OmegaConf.to_yaml(OmegaConf.create({"defaults": [*defaults, "_self_"], **nested(values)}))
    return f"# @package _global_\n{header}{body}"


def resolved(cfg: DictConfig, keys: Sequence[str]) -> dict[str, Any]:
    out = {}
    for key in keys:
        value = OmegaConf.select(cfg, key)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def differences(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted({*a, *b}, key=str):
            yield from differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
    elif a != b:
        yield f"{prefix}: {as_typed(a)} != {as_typed(b)}"


def write_trials(study: Any, path: Path) -> None:
    """The trials table (csv): number, state, objective, validation image and pixel AUROC, seconds, epochs trained,
    what stopped it, params. No test metric: the search chose on validation only."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    params = sorted({name for trial in trials for name in trial.params})
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = [
            "number",
            "state",
            "value",
            "val_image_auroc",
            "val_pixel_auroc",
            "seconds",
            "epochs_trained",
            "stopped_by",
            "note",
        ]
        writer.writerow([*header, *params])
        for trial in trials:
            attrs = trial.user_attrs
            state = trial.state.name
            note = attrs.get("not_started") or attrs.get("error") or attrs.get("failed_because") or ""
            if "duplicate_of" in attrs:
                note = f"same point as trial {attrs['duplicate_of']}"
            seconds = attrs.get("seconds")
            if seconds is None and trial.duration is not None and trial.state != TrialState.FAIL:
                seconds = round(trial.duration.total_seconds(), 1)
            writer.writerow(
                [
                    trial.number,
                    state,
                    "" if trial.value is None else f"{trial.value:.6g}",
                    attrs.get("val_image_auroc", ""),
                    attrs.get("val_pixel_auroc", ""),
                    seconds or "",
                    attrs.get("epochs_trained", ""),
                    attrs.get("stopped_by", ""),
                    note,
                    *(trial.params.get(name, "") for name in params),
                ]
            )


def run_command(command: Sequence[str]) -> tuple[int, float]:
    """Run a command in the foreground (its output on this console); its exit status and minutes."""
    started = time.monotonic()
    status = subprocess.run(list(command), check=False).returncode
    return status, (time.monotonic() - started) / 60


def tune(args: Args) -> dict[str, Any]:
    """The whole command; returns what it printed last (for tests): recipe path, run folder, metrics, minutes."""
    started = time.monotonic()
    recipe = recipe_path(args.name)
    if recipe.exists() and not args.overwrite:
        raise UserError(f"name={args.name}: {recipe} exists already: choose another name, or overwrite=true")
    search = TILES_SEARCH if args.tiled else SEARCH
    scratch = f"paths.output_dir={recipes_root().parent / 'outputs' / 'tune_checks'}"
    tiling = None
    if args.tiled:  # the tile (model.image_size) and how pages are cut, as the search and the user's overrides set
        cut = compose_train([f"hparams_search={search}", "dataset=folder", *args.extras, scratch])
        pre = cut.dataset.preprocessing
        tiling = Tiling(int(cut.model.image_size), pre.stride, str(pre.border), pre.page_width)
    plan = plan_data(args.data, args.defects, args.masks, tiling)
    for line in plan.lines:
        print(f"tune: {line}", flush=True)
    base = [f"hparams_search={search}", *plan.overrides]
    cfg = compose_train([*base, *args.extras, scratch])
    tune_node = plain_dict(cfg.tune)
    training = plan_split(plan)[2]
    table = epochs_table(tune_node, training, final_validation(plan))
    base.append(f"tune.epochs={hydra_value(table)}")
    base += args.extras  # the user's overrides win over the table
    cfg = compose_train([*base, scratch])
    tune_node = plain_dict(cfg.tune)
    check_epochs(tune_node["epochs"])
    params = {key: str(spec) for key, spec in plain_dict(cfg.hydra.sweeper.params).items()}
    check_fallback(cfg, params)
    default, cheapest = first_points(tune_node, tune_node["epochs"], plan, list(params), search)
    budget_s = args.minutes * 60
    if cheapest.seconds > budget_s:
        raise UserError(
            f"minutes={args.minutes:g}: too small for one trial: the cheapest point of the search ({cheapest.label}) "
            f"needs about {cheapest.seconds / 60:.1f} min on {training} training {plan.unit}s at the documented rate "
            f"(anomaly_lab/tune.py, RATE_S: 2 idle CPU cores); give minutes={math.ceil(cheapest.seconds / 60)} or more"
        )
    checked = check_points([*base, scratch], params)
    print(f"tune: the search space: {checked} points checked by the train command's checks", flush=True)
    print(
        f"tune: the final training's epochs are sized to about {FINAL_TRAINING_S / 60:.0f} min of optimizer steps on "
        f"2 idle cores, 15 min with its start, one validation and the test ({training} training {plan.unit}s; "
        "tune.epochs)",
        flush=True,
    )

    import optuna

    storage = str(cfg.hydra.sweeper.storage)
    study_name = f"{search}-{cfg.hydra.runtime.choices.dataset}-{data_digest(cfg.dataset, os.getcwd())}"
    left_s = budget_s - (time.monotonic() - started) - SWEEP_START_S
    if left_s < cheapest.seconds:
        raise UserError(
            f"minutes={args.minutes:g}: too small for one trial once the checks ran: {max(left_s, 0):.0f} s "
            f"left for the search, and its cheapest point ({cheapest.label}) needs about {cheapest.seconds:.0f} s"
        )
    geometric = None
    if search == SEARCH:
        geometry = part_geometry(sample_images(plan.normal_dir)) if plan.normal_dir is not None else None
        if geometry is not None:
            print(f"tune: the part in {plan.normal_dir}: {geometry.describe()}", flush=True)
            geometric = long_part_point(tune_node, tune_node["epochs"], plan, default, geometry)
    firsts = starting_points([p for p in (geometric, default) if p is not None], cheapest, left_s)
    identity = data_identity(cfg.dataset, os.getcwd())
    enqueue_first(storage, study_name, str(cfg.hydra.sweeper.direction), identity, *firsts)
    left = left_s / 60
    print(f"tune: searching for {left:.1f} min (study {study_name!r} in {storage})", flush=True)
    command = [
        sys.executable,
        "-m",
        "anomaly_lab.train",
        "--multirun",
        *base,
        f"hydra.sweeper.study_name={study_name}",
        f"hydra.sweeper.budget_minutes={left:.3f}",
    ]
    status, search_minutes = run_command(command)
    if status != 0:
        raise SearchFailed(f"the search ({' '.join(command[1:4])} ...) exited with {status}: its output is above")
    study = optuna.load_study(study_name=study_name, storage=storage)
    best, objective = best_trial(study)
    if best is None:
        raise UserError(
            f"minutes={args.minutes:g}: no trial completed within the budget ({len(study.trials)} trials in study "
            f"{study_name!r}); give more minutes (a rerun resumes the study)"
        )
    point = [f"{key}={hydra_value(value)}" for key, value in best.params.items()]
    if best.state != optuna.trial.TrialState.COMPLETE:
        print(
            f"tune: no trial completed within the budget; trial {best.number} was stopped by its deadline after "
            f"{max(best.intermediate_values)} epochs: its point is the recipe (its last validation: {objective:.4g})",
            flush=True,
        )
    val_image, val_pixel = trial_validation(best)
    on_validation = f"{objective:.4g}" + (f", val image AUROC {val_image:.4f}" if math.isfinite(val_image) else "")
    on_validation += f", val pixel AUROC {val_pixel:.4f}" if math.isfinite(val_pixel) else ""
    print(f"tune: best trial {best.number}: {on_validation} ({', '.join(point)})", flush=True)

    # the final training validates once, at its last epoch: the trial's weights (validation draws nothing from
    # training's random stream), without the trial's validations every 5 epochs that only ASHA needed
    epochs = int(compose_train([*base, *point, scratch]).trainer.max_epochs)
    best_cfg = compose_train([*base, *point, f"trainer.check_val_every_n_epoch={epochs}", scratch])
    keys = [*RECIPE_KEYS, *(k for k in override_keys([*plan.overrides, *args.extras]) if k not in RECIPE_KEYS)]
    header = (
        f"# Written by `python -m anomaly_lab.tune data={args.data} minutes={args.minutes:g}"
        f"{f' defects={args.defects}' if args.defects else ''}{f' masks={args.masks}' if args.masks else ''}"
        f"{' tiled=true' if args.tiled else ''} name={args.name}` on {datetime.now():%Y-%m-%d %H:%M}:\n"
        f"# trial {best.number} of study {study_name} ({storage}), objective {cfg.objective.metric} = "
        f"{on_validation} on validation (image AUROC within {AUROC_TIE} of the highest, then pixel AUROC, image AUROC, "
        f"the objective); its params: "
        f"{', '.join(point)}; validated once, at its last epoch. Trials: {args.name}.trials.csv beside it.\n"
        f"#   python -m anomaly_lab.train experiment={args.name}\n"
    )
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(recipe_yaml(best_cfg, keys, header))
    write_trials(study, recipe.with_suffix(".trials.csv"))
    recipe_cfg = compose_train([f"experiment={args.name}", scratch])
    mismatch = list(differences(resolved(best_cfg, COMPARED), resolved(recipe_cfg, COMPARED)))
    if mismatch:
        raise RuntimeError(
            f"the written recipe {recipe} is not trial {best.number}'s config: {'; '.join(mismatch[:5])}"
        )
    print(f"tune: wrote {recipe} and {recipe.with_suffix('.trials.csv').name}", flush=True)

    run_dir = Path("outputs") / "runs" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{args.name}"
    command = [sys.executable, "-m", "anomaly_lab.train", f"experiment={args.name}", f"hydra.run.dir={run_dir}"]
    status, training_minutes = run_command(command)
    if status != 0:
        raise SearchFailed(f"the final training (experiment={args.name}) exited with {status}: its output is above")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    report = {
        "recipe": str(recipe),
        "run_dir": str(run_dir),
        "image_auroc": metrics.get("test/image_auroc"),
        "pixel_auroc": metrics.get("test/pixel_auroc"),
        "search_minutes": search_minutes,
        "training_minutes": training_minutes,
    }
    auroc = "none (no anomalous test image)" if report["image_auroc"] is None else f"{report['image_auroc']:.4f}"
    pixel = "" if report["pixel_auroc"] is None else f", pixel AUROC {report['pixel_auroc']:.4f}"
    print(
        f"tune: {args.name}: test image AUROC {auroc}{pixel}; search {search_minutes:.1f} min, final training "
        f"{training_minutes:.1f} min; run folder {run_dir}",
        flush=True,
    )
    return report


# Validation image AUROCs this close to the best count as tied: near 1.0 on bottle's 21 normal and 42 synthetic
# validation images one standard error (Hanley and McNeil) is about 0.01, one pair in the wrong order 0.001
AUROC_TIE = 0.005


def trial_validation(trial: Any) -> tuple[float, float]:
    """A trial's validation (image AUROC, pixel AUROC), -inf where not measured: its user attrs, or for a trial
    recorded before the sweep kept the pixel AUROC, its run's metrics.json (resumable_optuna.run_outcome)."""
    from anomaly_lab.sweeps.resumable_optuna import run_outcome

    attrs = dict(trial.user_attrs)
    if "val_pixel_auroc" not in attrs and attrs.get("output_dir"):
        attrs = {**run_outcome(Path(str(attrs["output_dir"]))), **attrs}
    return float(attrs.get("val_image_auroc", -math.inf)), float(attrs.get("val_pixel_auroc", -math.inf))


def best_trial(study: Any) -> tuple[Any, float]:
    """The recipe's trial and its objective: of the complete trials within AUROC_TIE of the highest validation image
    AUROC (user attr `val_image_auroc`), the one with the highest validation pixel AUROC (`val_pixel_auroc`: the best
    map scoring=auto measured, on the synthetic anomalies' exact masks or the user's), then image AUROC, then the
    objective (metrics.validation_rank, scoring=auto's order; the lower number where all tie, so the first trials, the
    starting points, keep a tie). A trial with the larger distance but more normal-anomalous pairs in the wrong order is
    not the better recipe: the distance is carried by the easiest anomalies. Synthetic anomalies often give several
    trials image AUROC 1.0; their pixel AUROC still tells how well the map finds them (measured:
    docs/lab/2026-12-06-scoring-chosen-on-validation.md, "Ties on validation"). Where none completed, the trial its
    deadline stopped after the most epochs and its last validation (the budget ran out on a machine slower than the
    documented rate: its point is still the one measured furthest); (None, nan) where there is neither."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0

        validation = {trial.number: trial_validation(trial) for trial in complete}  # may read metrics.json

        def rank(trial: Any) -> tuple[float, float, float]:
            image, pixel = validation[trial.number]
            image_auroc, objective = validation_rank(image, sign * float(trial.value))
            return round(pixel, 9), image_auroc, objective

        top = max(image for image, _ in validation.values())
        tied = [trial for trial in complete if validation[trial.number][0] >= top - AUROC_TIE - 1e-9]
        best = max(tied, key=rank)  # max keeps the first of equals
        return best, float(best.value)
    stopped = [
        t
        for t in trials
        if t.state == optuna.trial.TrialState.PRUNED
        and t.user_attrs.get("stopped_by") == "deadline"
        and t.intermediate_values
    ]
    if not stopped:
        return None, math.nan
    best = max(stopped, key=lambda t: max(t.intermediate_values))
    return best, float(best.intermediate_values[max(best.intermediate_values)])


class SearchFailed(RuntimeError):
    """A subprocess (the search or the final training) failed; its own output said why."""


def enqueue_first(storage: str, name: str, direction: str, data: dict[str, Any], *points: Point) -> None:
    """The first trials of a study without a complete (or waiting) one, in order (tune.starting_points), so the
    search has complete trials to estimate from and to fall back on. A study of other data is left to the sweep
    (which refuses it)."""
    import optuna

    from anomaly_lab.sweeps.resumable_optuna import mark_enqueued_only, open_study, rdb_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # enqueue_trial: optuna 2.10's
    study, created = open_study(rdb_storage(storage, None), name, direction, optuna.samplers.RandomSampler(), None)
    if created:  # the search's seeded sampler then draws as on a fresh study (resumable_optuna.first_sweep)
        mark_enqueued_only(study)
    trials = study.get_trials(deepcopy=False)
    if any(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING) for t in trials):
        return
    if "data" not in study.user_attrs:
        if trials:  # made before studies recorded their data: the sweep refuses it
            return
        study.set_user_attr("data", data)
    elif study.user_attrs["data"] != data:
        return
    for number, point in enumerate(points):
        study.enqueue_trial(point.params)
        print(
            f"tune: {'first' if number == 0 else 'then'} trial: {point.label} (about {point.seconds / 60:.1f} min at "
            "the documented rate)",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        tune(parse_args(sys.argv[1:] if argv is None else argv))
    except SearchFailed as error:
        print(f"tune: {error}", file=sys.stderr)
        sys.exit(1)
    except USER_ERRORS as error:
        exit_for_user_error(error)


if __name__ == "__main__":
    main()
