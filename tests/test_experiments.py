"""Every experiment (conf/experiment/) composes with the settings it promises and runs one step on tiny data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.train import run
from tests.conftest import ComposeFn, compose_config

CONF = Path(CONFIG_DIR)
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
NO_MASKING = "anomaly_lab.masking.NoMasking"
GRID = "anomaly_lab.masking.GridMasking"
PAGES = "anomaly_lab.data.folders.SyntheticPagesDataModule"
MVTEC = "anomaly_lab.data.datamodules.MVTecDataModule"
FOLDER = "anomaly_lab.data.folders.FolderDataModule"
STEP_LR = "torch.optim.lr_scheduler.StepLR"
THESIS_TILES = {
    "model.image_size": 64,
    "model.net.depth": 3,
    "masking._target_": NO_MASKING,
    "scoring.loss.l2": 1.0,
    "scoring.loss.ssim": 0.0,
    "scoring.anomaly_map.l2": 1.0,
    "scoring.reduce": "mean",
    "threshold._target_": "anomaly_lab.thresholds.FixedThreshold",
    "dataset._target_": PAGES,
    "trainer.accelerator": "cpu",
    "callbacks.model_checkpoint.monitor": None,  # test the last epoch's model, as the thesis did
}
CPU_BOTTLES = {
    "dataset._target_": MVTEC,
    "model.image_size": 128,
    "model.net.base_channels": 16,
    "trainer.accelerator": "cpu",
    "trainer.max_epochs": 40,
    "trainer.check_val_every_n_epoch": 10,
    "trainer.max_time": None,  # a recipe is its epochs: no time cap that would stop it early on a busy machine
    "callbacks.model_checkpoint.monitor": None,  # a fixed budget: test the last epoch
}
THESIS_RULE = {"scoring.loss.ssim": 0.0, "scoring.anomaly_map.l2": 1.0, "scoring.reduce": "mean"}
RIAD = {
    "masking._target_": GRID,
    "masking.grid_sizes": [8, 16, 32, 64],
    "masking.ratio": 0.25,
    "scoring.loss.ssim": 1.0,
    "scoring.anomaly_map.msgms": 1.0,
    "scoring.reduce": "max",
}
TWO_BLURS = {"scoring.anomaly_map.blur_sigma": 12.0, "scoring.anomaly_map.score_blur_sigma": 4.0}
# What each experiment must set (dotted key -> value), from the thesis's settings and the measured CPU recipe.
EXPECTED: dict[str, dict[str, Any]] = {
    "notes_highlighter": {
        **THESIS_TILES,
        "dataset.write_pages._target_": "anomaly_lab.data.synthetic.write_notes_pages",
        "threshold.value": 0.002,
        "trainer.max_epochs": 5,
    },
    "notes_thesis_scale": {
        **THESIS_TILES,
        "dataset.write_pages._target_": "anomaly_lab.data.synthetic.write_notes_pages",
        "dataset.write_pages.height": 1600,
        "dataset.write_pages.width": 1088,
        "threshold._target_": "anomaly_lab.thresholds.F1Threshold",
        "trainer.max_epochs": 5,
    },
    "sharks": {
        **THESIS_TILES,
        "dataset.write_pages._target_": "anomaly_lab.data.synthetic.write_sea_pages",
        "dataset.preprocessing.grayscale": False,
        "threshold.value": 0.005,
        "trainer.max_epochs": 30,
    },
    "sharks_gray": {
        **THESIS_TILES,
        "dataset.write_pages._target_": "anomaly_lab.data.synthetic.write_sea_pages",
        "dataset.preprocessing.grayscale": True,
        "threshold.value": 0.005,
        "trainer.max_epochs": 30,
    },
    "bottles_thesis": {
        **THESIS_RULE,
        "dataset._target_": MVTEC,
        "dataset.rotation_copies": 9,
        "dataset.train_transform.transforms": [],
        "dataset.val_anomalous": 0.33,
        "model.image_size": 512,
        "model.net.base_channels": 64,
        "masking._target_": GRID,
        "masking.grid_sizes": [2],
        "masking.ratio": 0.5,
        "optimizer.lr": 1e-2,
        "scheduler._target_": STEP_LR,
        "trainer.accelerator": "gpu",
        "trainer.precision": "bf16-mixed",
    },
    "bottles_best": {
        **RIAD,
        "dataset._target_": MVTEC,
        "model.image_size": 256,
        "model.net.base_channels": 64,
        "trainer.accelerator": "gpu",
        "trainer.precision": "bf16-mixed",
    },
    "bottles_cpu": {**CPU_BOTTLES, **RIAD, **TWO_BLURS, "optimizer.lr": 1e-3, "masking.train_full_coverage": False},
    "bottles_cpu_fast": {
        **CPU_BOTTLES,
        **RIAD,
        **TWO_BLURS,
        "model.net.base_channels": 8,
        "masking.score_grid_sizes": [16, 32],
        "masking.train_full_coverage": False,
    },
    "bottles_riad_cpu": {
        **CPU_BOTTLES,
        **RIAD,
        "masking.train_full_coverage": True,
        "trainer.max_epochs": 12,
        "trainer.check_val_every_n_epoch": 4,
    },
    "bottles_thesis_cpu": {
        **CPU_BOTTLES,
        **THESIS_RULE,
        "masking._target_": GRID,
        "masking.grid_sizes": [2],
        "masking.ratio": 0.5,
        "optimizer.lr": 1e-3,
    },
    "bottles_unmasked_cpu": {**CPU_BOTTLES, **THESIS_RULE, "masking._target_": NO_MASKING, "optimizer.lr": 1e-3},
    # bottles_cpu with each part turned to one pose and the band it lies in seen at 256 px by a half-width net (grid
    # cells and blurs doubled), scored by the L2 error, 70 epochs, on a plain folder without masks (MVTec screw)
    "screw_cpu": {
        **CPU_BOTTLES,
        **RIAD,
        "scoring.anomaly_map.msgms": 0.0,
        "scoring.anomaly_map.l2": 1.0,
        "model.image_size": 256,
        "model.net.base_channels": 8,
        "masking.grid_sizes": [16, 32, 64, 128],
        "scoring.anomaly_map.blur_sigma": 24.0,
        "scoring.anomaly_map.score_blur_sigma": 8.0,
        "dataset._target_": FOLDER,
        "dataset.mask_dir": None,
        "dataset.preprocessing.grayscale": False,
        "dataset.preprocessing.orient": "principal_axis",
        "dataset.preprocessing.crop_height": 96,
        "dataset.train_transform.transforms": [],
        "trainer.max_epochs": 70,
        "optimizer.lr": 1e-3,
        "masking.train_full_coverage": False,
    },
}
# The dataset option each experiment chooses, named again so compose_tiny shrinks it to tiny data.
DATASET = {
    "notes_highlighter": "synthetic_notes",
    "notes_thesis_scale": "synthetic_notes",
    "sharks": "synthetic_sharks",
    "sharks_gray": "synthetic_sharks",
    **{name: "mvtec" for name in EXPECTED if name.startswith("bottles")},
    "screw_cpu": "folder",  # read from tiny_data_dir's folder/ (generated pages, whole images)
}
# GPU trainers run their code path on CPU here; precision stays as configured.
ON_CPU = ["trainer.accelerator=cpu", "trainer.benchmark=false"]


def test_every_experiment_has_expectations() -> None:
    assert sorted(EXPECTED) == EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_settings_land(name: str) -> None:
    cfg = compose_config([f"experiment={name}"])
    for key, value in EXPECTED[name].items():
        assert OmegaConf.select(cfg, key, throw_on_missing=True) == value, key
    assert (CONF / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_\n# ")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_one_step(
    name: str, compose_tiny: ComposeFn, tiny_bottles_root: Path, request: pytest.FixtureRequest
) -> None:
    data = [f"dataset={DATASET[name]}"]  # compose_tiny adds the tiny page sizes for generated pages
    if DATASET[name] == "mvtec":
        data.append(f"dataset.root={tiny_bottles_root}")
    if DATASET[name] == "folder":
        data.append(f"paths.data_dir={request.getfixturevalue('tiny_data_dir')}")
    gpu = ON_CPU if EXPECTED[name]["trainer.accelerator"] == "gpu" else []
    # 32px (compose_tiny) and a narrow net: unet512's 64 base channels under 16 full-coverage passes take minutes
    tiny_net = ["model.net.base_channels=8"]
    cfg = compose_tiny([f"experiment={name}", *data, *gpu, *tiny_net, "trainer.fast_dev_run=true"])
    # a 64x64 grid needs at least 64 pixels (config_checks refuses cells smaller than a pixel), a band of 96 rows 96
    needed = max(*OmegaConf.select(cfg, "masking.grid_sizes", default=[1]), cfg.dataset.preprocessing.crop_height or 1)
    if needed > cfg.model.image_size:
        size = f"model.image_size={max(64, -(-needed // 32) * 32)}"
        cfg = compose_tiny([f"experiment={name}", *data, *gpu, *tiny_net, "trainer.fast_dev_run=true", size])
    assert OmegaConf.select(cfg, "dataset._target_") == EXPECTED[name]["dataset._target_"]
    assert isinstance(run(cfg), float)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert "train/loss" in metrics
    if "threshold.value" in EXPECTED[name]:  # the thesis's fixed threshold, and the counts at it
        assert metrics["test/threshold"] == pytest.approx(EXPECTED[name]["threshold.value"])
        counts = [metrics[f"test/{k}"] for k in ("tp", "fp", "fn", "tn")]
        assert all(c >= 0 for c in counts) and sum(counts) > 0


def test_command_line_overrides_an_experiment() -> None:
    cfg = compose_config(["experiment=notes_highlighter", "dataset=notes", "trainer.max_epochs=2"])
    assert cfg.dataset._target_ == "anomaly_lab.data.folders.FolderDataModule"
    assert cfg.dataset.normal_dir.endswith("notes/normal")
    assert cfg.trainer.max_epochs == 2 and cfg.threshold.value == 0.002


def test_experiment_and_hparams_search_compose() -> None:
    cfg = compose_config(["experiment=bottles_cpu", "hparams_search=bottles_thesis"])
    assert cfg.trainer.max_epochs == 40
    assert cfg.dataset.val_anomalous == 0.33  # the search's split, applied after the experiment
    assert cfg.masking.grid_sizes == [8, 16, 32, 64]


@pytest.mark.parametrize(("mode", "direction"), [("max", "maximize"), ("min", "minimize")])
def test_sweep_direction_follows_objective_mode(mode: str, direction: str) -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hparams_search=bottles_wide", f"objective.mode={mode}"],
            return_hydra_config=True,
        )
    assert cfg.hydra.sweeper.direction == direction
    assert "objective" not in OmegaConf.load(CONF / "hparams_search" / "bottles_thesis.yaml")  # train.yaml's


PREPROCESSING_KEYS = [
    "_target_",
    "image_size",
    "grayscale",
    "tiled",
    "stride",
    "border",
    "page_width",
    "orient",
    "crop_height",
]
TILED = {"notes", "sharks", "synthetic_notes", "synthetic_sharks"}


@pytest.mark.parametrize("name", sorted(path.stem for path in (CONF / "dataset").glob("*.yaml")))
def test_every_dataset_has_one_preprocessing_node(name: str) -> None:
    dataset = compose_config([f"dataset={name}"]).dataset
    assert list(dataset.preprocessing) == PREPROCESSING_KEYS
    assert dataset.preprocessing._target_ == "anomaly_lab.preprocessing.Preprocessing"
    assert OmegaConf.to_container(dataset.preprocessing)["image_size"] == "${model.image_size}"
    assert dataset.preprocessing.tiled == (name in TILED)
    assert not set(PREPROCESSING_KEYS[1:]) & set(dataset)  # no flat image_size, grayscale, tiled, ... keys


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("group", ["threshold", "masking", "scoring", "model"])
def test_a_group_chosen_on_the_command_line_replaces_the_experiments_choice(name: str, group: str) -> None:
    """`experiment=X threshold=auto` gets the auto rule as its own file writes it: no key the experiment set for
    its own choice is merged into the user's (sharks' threshold value once broke threshold=auto)."""
    option = {"threshold": "auto", "masking": "multiscale_grid", "scoring": "riad", "model": "unet64"}[group]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        alone = compose("train", overrides=[f"{group}={option}"])
        chosen = compose("train", overrides=[f"experiment={name}", f"{group}={option}"])
    alone_node, chosen_node = OmegaConf.to_container(alone[group]), OmegaConf.to_container(chosen[group])
    assert isinstance(alone_node, dict) and isinstance(chosen_node, dict)
    assert set(chosen_node) == set(alone_node), f"experiment={name} adds keys to {group}={option}"
