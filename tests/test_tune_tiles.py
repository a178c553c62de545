"""make tune for pages cut into tiles (issue 30, items 3-5: the thesis's notes and sharks domains).

Fast: how a folder of pages is read (the plan, its refusals), that the tuned recipe's test is the hand recipes' test
(the same tiles of the same pages), that the search's first point is the hand recipes' point, the epochs bound for
tiles, and that `python -m anomaly_lab.data.synthetic` writes the recipes' pages. Slow: every value of the tiles
search through the train command's checks, and the whole command on tiny generated pages in a real process.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from anomaly_lab import tune
from anomaly_lab.data.synthetic import __main__ as synthetic_cli
from anomaly_lab.data.synthetic import write_notes_pages
from tests.conftest import TINY_PAGES

TILE = tune.Tiling(32)  # tiny_pages_root: 96x96 pages, 9 tiles of 32 px each
HANG_GUARD_S = 900  # only stops a hung process: no assertion depends on how long a run takes


def plan_keys(plan: tune.DataPlan) -> dict[str, str]:
    return dict(override.split("=", 1) for override in plan.overrides)


def test_a_tiled_folder_with_marked_pages_is_split_as_the_hand_recipes_pages(tiny_pages_root: Path) -> None:
    normal, marked, masks = (tiny_pages_root / name for name in ("normal", "anomalous", "masks"))
    plan = tune.plan_data(normal, marked, masks, TILE)
    keys = plan_keys(plan)
    assert keys["dataset"] == "folder" and keys["dataset.preprocessing.tiled"] == "true"
    assert keys["dataset.abnormal_dir"] == str(marked) and keys["dataset.mask_dir"] == str(masks)
    assert keys["validation_anomalies"] == "auto"  # one marked page validates: the real objective
    # conf/dataset_base/pages.yaml's split: test normals are the unmarked tiles of the marked test pages
    assert keys["dataset.test_fraction"] == "0.0" and keys["dataset.val_anomalous"] == "1"
    assert float(keys["dataset.val_fraction"]) == 0.2 and float(keys["dataset.min_anomalous_fraction"]) == 0.02
    assert plan.normal_images == 4 * 9 and plan.unit == "tile" and not plan.holds_out_test
    assert plan.image_files == 4 + 2 and tune.plan_split(plan) == (0, 8, 28)
    assert plan.lines[0].startswith("data: a folder of 4 good pages, 36 32x32 tiles")
    assert "1 of the 2 marked pages" in plan.lines[1] and "the other 1 marked pages" in plan.lines[2]


def test_a_tiled_folder_of_good_pages_only_holds_out_tiles_and_validates_on_synthetic_anomalies(
    tiny_pages_root: Path,
) -> None:
    plan = tune.plan_data(tiny_pages_root / "normal", None, None, TILE)
    keys = plan_keys(plan)
    assert keys["dataset.abnormal_dir"] == "null" and keys["validation_anomalies"] == "synthetic"
    assert float(keys["dataset.test_fraction"]) == tune.TEST_FRACTION and plan.holds_out_test
    no_masks = plan_keys(tune.plan_data(tiny_pages_root / "normal", tiny_pages_root / "anomalous", None, TILE))
    assert no_masks["dataset.mask_dir"] == "null"  # every tile of a marked page is marked


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("masks without defects", "masks="),
        ("an MVTec root", "tiled=true:"),
        ("pages smaller than a tile", "is larger than the"),
        ("one marked page", "defects="),
        ("too few tiles", "normal tiles are too few"),
    ],
)
def test_bad_tiled_input_is_one_user_error_naming_the_key(
    case: str, expected: str, tiny_pages_root: Path, tmp_path: Path
) -> None:
    normal, marked, masks = (tiny_pages_root / name for name in ("normal", "anomalous", "masks"))
    tiling = TILE
    if case == "masks without defects":
        marked = None  # type: ignore[assignment]
    elif case == "an MVTec root":
        (tmp_path / "train" / "good").mkdir(parents=True)
        normal = tmp_path
    elif case == "pages smaller than a tile":
        tiling = tune.Tiling(128)
    elif case == "one marked page":
        marked = tmp_path / "one"
        marked.mkdir()
        (marked / "000.png").symlink_to(tiny_pages_root / "anomalous" / "000.png")
    elif case == "too few tiles":
        normal = tmp_path / "few"
        normal.mkdir()
        (normal / "000.png").symlink_to(tiny_pages_root / "normal" / "000.png")
    with pytest.raises(tune.UserError, match=expected):
        tune.plan_data(normal, marked, masks, tiling)


def test_the_tuned_recipe_tests_the_tiles_notes_highlighter_tests(tiny_pages_root: Path, tmp_path: Path) -> None:
    """The same pages as a folder (tune's plan) and as experiment=notes_highlighter's generated dataset: the same
    test tiles and labels, so the per-tile AUROCs are comparable."""
    normal, marked, masks = (tiny_pages_root / name for name in ("normal", "anomalous", "masks"))
    plan = tune.plan_data(normal, marked, masks, TILE)
    out = f"paths.output_dir={tmp_path}"
    tuned = tune.compose_train([f"hparams_search={tune.TILES_SEARCH}", *plan.overrides, "tune.sizes={t64:32}", out])
    # the hand recipe on the same files (the folder option of its pages block: dataset=notes)
    hand = tune.compose_train(
        [
            "experiment=notes_highlighter",
            "dataset=notes",
            "model.image_size=32",
            f"dataset.normal_dir={normal}",
            f"dataset.abnormal_dir={marked}",
            f"dataset.mask_dir={masks}",
            out,
        ]
    )

    def test_tiles(cfg: Any) -> list[tuple[str, int]]:
        split = instantiate(cfg.dataset).build_splits()["test"]
        return [(sample.path, sample.label) for sample in split.samples]

    tiles = test_tiles(tuned)
    assert tiles == test_tiles(hand) and len(tiles) == 9 and any(label for _, label in tiles)
    for key in ("val_fraction", "val_anomalous", "test_fraction", "min_anomalous_fraction", "split_seed"):
        assert tuned.dataset[key] == hand.dataset[key], key


def test_the_first_point_of_the_tiles_search_is_the_hand_recipes_point(tmp_path: Path) -> None:
    out = f"paths.output_dir={tmp_path}"
    cfg = tune.compose_train([f"hparams_search={tune.TILES_SEARCH}", "dataset=folder", out])
    params = list(tune.plain_dict(cfg.hydra.sweeper.params))
    node = tune.plain_dict(cfg.tune)
    plan = tune.DataPlan([], [], 288, False, 10, "tiles", 0.2, "tile", 0.0)
    first, cheapest = tune.first_points(node, node["epochs"], plan, params, tune.TILES_SEARCH)
    assert set(first.params) == set(params) and cheapest.seconds <= first.seconds
    drawn = [f"{key}={tune.hydra_value(value)}" for key, value in first.params.items()]
    point = tune.compose_train([f"hparams_search={tune.TILES_SEARCH}", "dataset=folder", *drawn, out])
    hand = tune.compose_train(["experiment=notes_highlighter", out])
    for key in ("model.net", "model.image_size", "masking", "scoring.loss", "optimizer", "dataset.train_transform"):
        assert OmegaConf.select(point, key) == OmegaConf.select(hand, key), key


def test_the_tiles_table_bounds_the_final_training_per_tile_and_is_the_rule_for_the_notes_pages(
    tmp_path: Path,
) -> None:
    cfg = tune.compose_train([f"hparams_search={tune.TILES_SEARCH}", f"paths.output_dir={tmp_path}"])
    node = tune.plain_dict(cfg.tune)
    assert node["epochs"] == tune.epochs_table(node, 230, tune.TILES_VALIDATION)  # notes: 288 tiles, 0.2 validate
    for tiles in (28, 307, 2040):  # the tiny pages, the sharks' 8 pages of 48 tiles, the thesis-scale notes
        for width, lengths in tune.epochs_table(node, tiles, tune.TILES_VALIDATION)["t64"]["full"].items():
            epoch = tune.seconds_per_epoch(tiles, 64 * 64, node["widths"][width], tune.TILES_VALIDATION)
            assert lengths["long"] * epoch <= tune.FINAL_TRAINING_S or lengths["long"] == tune.EPOCH_STEP


def test_parse_args_takes_tiled_and_masks_and_names_the_recipe_after_the_pages_folder(tmp_path: Path) -> None:
    args = tune.parse_args(
        [f"data={tmp_path}/notes/normal", "minutes=15", "tiled=true", f"masks={tmp_path}/notes/masks"]
    )
    assert args.tiled and args.masks == tmp_path / "notes" / "masks" and args.name == "tune_notes"
    with pytest.raises(tune.UserError, match="tiled=yes: true or false"):
        tune.parse_args([f"data={tmp_path}", "minutes=15", "tiled=yes"])


def digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.png"))
    }


def test_the_synthetic_cli_writes_the_recipes_pages_into_a_folder(tmp_path: Path) -> None:
    tiny = [f"{key}={value}" for key, value in TINY_PAGES.items()]
    root = synthetic_cli.write("notes", tmp_path / "notes", tiny)
    settings = json.loads((root / ".complete").read_text())
    assert settings == {"scene": "notes", "seed": 0, **TINY_PAGES}  # the yaml's seed, these sizes
    assert digests(root) == digests(write_notes_pages(tmp_path / "direct", **TINY_PAGES, seed=0))
    # without overrides: the dataset option's own counts and sizes (what experiment=notes_highlighter reads)
    cfg = tune.compose_train(["dataset=synthetic_sharks", f"paths.output_dir={tmp_path}"])
    assert (cfg.dataset.write_pages.n_normal, cfg.dataset.write_pages.width) == (8, 512)
    with pytest.raises(SystemExit) as exit_info:
        synthetic_cli.main(["fish", str(tmp_path / "x")])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_every_value_of_the_tiles_search_passes_the_train_commands_checks(
    tiny_pages_root: Path, tmp_path: Path
) -> None:
    plan = tune.plan_data(tiny_pages_root / "normal", tiny_pages_root / "anomalous", tiny_pages_root / "masks", TILE)
    base = [f"hparams_search={tune.TILES_SEARCH}", *plan.overrides, f"paths.output_dir={tmp_path}"]
    cfg = tune.compose_train(base)
    params = {key: str(spec) for key, spec in tune.plain_dict(cfg.hydra.sweeper.params).items()}
    assert "tune.size" not in params and "dataset.preprocessing.orient" not in params  # no size, band or orient
    assert tune.check_points(base, params) == 1 + sum(len(v) for v in tune.search_values(params).values())


def tiny_env(root: Path) -> dict[str, str]:
    return {**os.environ, "PROJECT_ROOT": str(root), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.slow
def test_make_tune_on_tiny_pages_writes_a_tiled_recipe_and_tests_it_per_tile(
    tiny_pages_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    lengths = {"short": 1, "medium": 2, "long": 2}
    tiny_space = [  # 32 px tiles, 1-2 epochs, nets 4 channels wide
        "tune.sizes={t64:32}",
        "tune.widths={narrow:4,medium:4,thesis:4}",
        "tune.blurs={t64:{map:2.0,score:1.0}}",
        "tune.epochs=" + tune.hydra_value({"t64": {"full": {w: lengths for w in ("narrow", "medium", "thesis")}}}),
        "dataset.batch_size=4",
        "dataset.eval_batch_size=8",
        "trainer.enable_progress_bar=false",
    ]
    normal, marked, masks = (tiny_pages_root / name for name in ("normal", "anomalous", "masks"))
    command = [
        sys.executable,
        "-m",
        "anomaly_lab.tune",
        f"data={normal}",
        f"defects={marked}",
        f"masks={masks}",
        "tiled=true",
        "minutes=1.5",
        "name=tiles",
        *tiny_space,
    ]
    done = subprocess.run(
        command, cwd=root, env=tiny_env(root), capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("tune: ")]
    assert lines[0].startswith("tune: data: a folder of 4 good pages, 36 32x32 tiles")
    assert any("first trial: the notes_highlighter and sharks recipes' point" in line for line in lines)

    recipe = root / "recipes" / "experiment" / "tiles.yaml"
    written = OmegaConf.load(recipe)
    assert written.dataset.preprocessing.tiled is True and written.dataset.mask_dir == str(masks)
    assert written.dataset.test_fraction == 0.0 and written.model.image_size == 32
    assert {"override /scoring": "auto"} in written.defaults
    with recipe.with_suffix(".trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    assert trials and all("test" not in column for column in trials[0])  # chosen on validation only
    first = trials[0]
    assert (first["masking"], first["tune.loss"], first["augmentation"]) == ("none", "l2", "none")

    final = root / lines[-1].split("run folder ")[1]
    metrics = json.loads((final / "metrics.json").read_text())
    assert "test/image_auroc" in metrics and "test/pixel_auroc" in metrics  # per tile, and from the masks
    assert f"test image AUROC {metrics['test/image_auroc']:.4f}" in lines[-1]
    scores = (final / "scores.csv").read_text().splitlines()
    assert len(scores) == 1 + 9 and "#r" in scores[1]  # the 9 tiles of the one marked test page


def test_tiny_pages_fixture_is_what_these_tests_assume(tiny_pages_root: Path) -> None:
    page = np.asarray(Image.open(tiny_pages_root / "normal" / "000.png"))
    assert page.shape[:2] == (96, 96) and len(list((tiny_pages_root / "normal").glob("*.png"))) == 4
