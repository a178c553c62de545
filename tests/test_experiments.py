"""Every experiment (conf/experiment/) is a global config file that runs one step on tiny data, and the command
line's choices win over its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.train import run
from tests.conftest import ComposeFn, compose_config

CONF = Path(CONFIG_DIR)
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
# The dataset option each experiment chooses, named again so compose_tiny shrinks it to tiny data.
DATASET = {
    "notes_highlighter": "synthetic_notes",
    "notes_thesis_scale": "synthetic_notes",
    "sharks": "synthetic_sharks",
    "sharks_gray": "synthetic_sharks",
    **{name: "mvtec" for name in EXPERIMENTS if name.startswith("bottles")},
    "screw_cpu": "folder",  # read from tiny_data_dir's folder/ (generated pages, whole images)
}


def slow_but(kept: str) -> list[object]:
    """EXPERIMENTS with every one but `kept` in the slow tier: `make test` runs kept, `make test-all` all."""
    return [pytest.param(name, marks=() if name == kept else pytest.mark.slow) for name in EXPERIMENTS]


def test_every_experiment_is_global_says_what_it_is_and_has_a_dataset_to_run_on() -> None:
    """A new experiment file gets the one-step run below; without `# @package _global_` its keys land under
    experiment.* and change nothing."""
    assert sorted(DATASET) == EXPERIMENTS
    for name in EXPERIMENTS:
        assert (CONF / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_\n# "), name


@pytest.mark.parametrize("name", slow_but("notes_highlighter"))  # the thesis's first
def test_experiment_runs_one_step(
    name: str, compose_tiny: ComposeFn, tiny_bottles_root: Path, request: pytest.FixtureRequest
) -> None:
    data = [f"dataset={DATASET[name]}"]  # compose_tiny adds the tiny page sizes for generated pages
    if DATASET[name] == "mvtec":
        data.append(f"dataset.root={tiny_bottles_root}")
    if DATASET[name] == "folder":
        data.append(f"paths.data_dir={request.getfixturevalue('tiny_data_dir')}")
    own = compose_config([f"experiment={name}"])
    # compose_tiny's trainer=cpu wins over a GPU experiment's trainer choice (its precision stays). 32px
    # (compose_tiny) and a narrow net: unet512's 64 base channels under 16 full-coverage passes take minutes
    tiny_net = ["model.net.base_channels=8"]
    cfg = compose_tiny([f"experiment={name}", *data, *tiny_net, "trainer.fast_dev_run=true"])
    # a 64x64 grid needs at least 64 pixels (the model refuses cells smaller than a pixel), a band of 96 rows 96
    needed = max(*OmegaConf.select(cfg, "masking.grid_sizes", default=[1]), cfg.dataset.preprocessing.crop_height or 1)
    if needed > cfg.model.image_size:
        size = f"model.image_size={max(64, -(-needed // 32) * 32)}"
        cfg = compose_tiny([f"experiment={name}", *data, *tiny_net, "trainer.fast_dev_run=true", size])
    assert cfg.dataset._target_ == own.dataset._target_  # DATASET[name] is the experiment's own dataset
    assert isinstance(run(cfg), float)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert "train/loss" in metrics
    if cfg.threshold._target_ == "anomaly_lab.thresholds.FixedThreshold":  # the fixed threshold, the counts at it
        assert metrics["test/threshold"] == pytest.approx(cfg.threshold.value)
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
    "mean",
    "std",
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


@pytest.mark.parametrize("name", slow_but("sharks"))  # its threshold value once broke threshold=auto
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
