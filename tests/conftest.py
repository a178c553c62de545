"""Shared fixtures: configs composed with Hydra's compose API over tiny generated data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from anomaly_lab.configs import CONFIG_DIR

# One torch thread in this process and in the processes tests start: on a small shared machine (CI's 2 cores)
# two threads wait on each other at every small operation, tens of times slower under load.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REAL_BOTTLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_bottle"

# Small enough for one CPU step per test; every model option divides 32 by 2**depth. On the CPU even where a GPU is
# present (the default trainer=auto would take it); a later trainer=... in a test's overrides wins.
TINY = [
    "trainer=cpu",
    "model.image_size=32",
    "dataset.batch_size=4",
    "dataset.eval_batch_size=8",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
]
TINY_SYNTHETIC = ["dataset.n_train=8", "dataset.n_test_good=3", "dataset.n_test_per_defect=2"]
# Generated pages of 96x96: 9 tiles of 32px each.
TINY_PAGES = {"n_normal": 4, "n_anomalous": 2, "height": 96, "width": 96}
TINY_SYNTHETIC_PAGES = [f"dataset.write_pages.{key}={value}" for key, value in TINY_PAGES.items()]

# A sweep trial in seconds on CPU: validation only (test=false), a narrow net, no checkpoints or image logging.
FAST_SWEEP = [
    "test=false",
    "model.net.base_channels=4",
    "~logger",
    "~callbacks.model_checkpoint",
    "~callbacks.last_checkpoint",
    "~callbacks.throughput",
    "~callbacks.reconstruction_images",
    "+trainer.enable_checkpointing=false",
    "hydra.sweeper.heartbeat_interval=1",
]

ComposeFn = Callable[..., DictConfig]
TINY_PARSER = OverridesParser.create()


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def predict_config(overrides: list[str]) -> DictConfig:
    """predict's config (no progress bar, on the CPU) with the overrides."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="predict", overrides=["progress=false", "device=cpu", *overrides])


def run_test_folder(run_dir: Path) -> Path:
    """The test folder a run tested (its scores.csv's first path: <root>/test/<defect>/x.png -> <root>/test)."""
    import csv

    with (run_dir / "scores.csv").open() as file:
        return Path(next(csv.DictReader(file))["path"]).parent.parent


@pytest.fixture(scope="session")
def tiny_bottles_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec-layout folder of generated 32px bottles, shared read-only by the session."""
    from anomaly_lab.data.synthetic import write_synthetic_bottles

    root = tmp_path_factory.mktemp("data") / "tiny_bottles"
    return write_synthetic_bottles(root, size=32, n_train=8, n_test_good=3, n_test_per_defect=2, seed=0)


@pytest.fixture(scope="session")
def tiny_pages_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pages folder (normal/, anomalous/, masks/) of generated 96x96 notes pages, shared read-only."""
    from anomaly_lab.data.synthetic import write_notes_pages

    return write_notes_pages(tmp_path_factory.mktemp("data") / "tiny_pages", **TINY_PAGES, seed=0)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bottles_root: Path, tiny_pages_root: Path) -> Path:
    """A `paths.data_dir` holding tiny data where each dataset option looks by default: mvtec_bottle/,
    notes/, sharks/, folder/ (normal/, anomalous/ and masks/ of generated pages), csv_list/images.csv."""
    data = tmp_path_factory.mktemp("data_dir")
    (data / "mvtec_bottle").symlink_to(tiny_bottles_root)
    for name in ("notes", "sharks", "folder"):
        (data / name).symlink_to(tiny_pages_root)
    rows = ["path,label,mask,defect"]
    for image in sorted(tiny_bottles_root.glob("t*/*/*.png")):
        defect = image.parent.name
        mask = "" if defect == "good" else tiny_bottles_root / "ground_truth" / defect / f"{image.stem}_mask.png"
        rows.append(f"{image},{int(defect != 'good')},{mask},{'' if defect == 'good' else defect}")
    (data / "csv_list").mkdir()
    (data / "csv_list" / "images.csv").write_text("\n".join(rows) + "\n")
    return data


@pytest.fixture
def compose_tiny(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ComposeFn:
    """Compose the train config on tiny data; output goes to this test's tmp_path."""
    cache = tmp_path_factory.getbasetemp() / "cache"

    def _compose(overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:  # type: ignore[assignment]
        base = [*TINY, f"paths.output_dir={output_dir or tmp_path / 'run'}", f"paths.cache_dir={cache}"]
        cfg = compose_config([*base, *overrides])
        # a generated dataset (any option with these keys, whatever its name) gets its tiny size where no override
        # sets it: set in the composed config as the command line would (one composition, not two: each costs
        # a few tenths of a second, over a hundred times a session)
        overridden = {override.key_or_group for override in TINY_PARSER.parse_overrides(list(overrides))}
        for tiny in TINY_PARSER.parse_overrides(TINY_SYNTHETIC + TINY_SYNTHETIC_PAGES):
            if tiny.key_or_group not in overridden and OmegaConf.select(cfg, tiny.key_or_group) is not None:
                OmegaConf.update(cfg, tiny.key_or_group, tiny.value())
        return cfg

    return _compose


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of one epoch on tiny synthetic bottles (RIAD maps, two grid sizes), shared read-only.

    Its checkpoints/best.ckpt serves predict and export tests; its scores.csv holds the test images' scores.
    """
    from anomaly_lab.train import run

    out = tmp_path_factory.mktemp("tiny_run")
    cache = tmp_path_factory.getbasetemp() / "cache"
    overrides = ["scoring=riad", "masking=multiscale_grid", "masking.grid_sizes=[2,4]", "masking.ratio=0.5"]
    run(compose_config([*TINY, *TINY_SYNTHETIC, f"paths.output_dir={out}", f"paths.cache_dir={cache}", *overrides]))
    return out
