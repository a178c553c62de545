"""Every option of every config group runs for one step; resume, determinism and bad input; what a run says
about itself (a smoke run, a time cap that stops training early)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf, open_dict

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.data.images import BadImageError
from anomaly_lab.deprecations import DEPRECATED_OPTIONS
from anomaly_lab.errors import ConfigError
from anomaly_lab.train import missing_auroc_note, run
from tests.conftest import ComposeFn, compose_config

CONF = Path(CONFIG_DIR)
GROUPS = [
    "dataset",
    "augmentation",
    "model",
    "masking",
    "scoring",
    "threshold",
    "optimizer",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
]
# GPU trainers run their code path on CPU here; their precision/strategy stay as configured.
ON_CPU = {
    "gpu": ["trainer.accelerator=cpu", "trainer.benchmark=false"],
    "ddp": ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.sync_batchnorm=false"],
    "ddp_multinode": ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.sync_batchnorm=false"],
}
# deprecated aliases compose to their new option (tests/test_deprecations.py): not run twice
OPTIONS = [
    (group, path.stem)
    for group in GROUPS
    for path in sorted((CONF / group).glob("*.yaml"))
    if (group, path.stem) not in DEPRECATED_OPTIONS
]


# `make test` trains one option of each group, not its default (every other run trains that; callbacks has only its
# default); `make test-all` every option
ONE_PER_GROUP = {
    ("dataset", "synthetic_sharks"),
    ("augmentation", "rotate"),
    ("model", "unet64"),
    ("masking", "none"),
    ("scoring", "riad_wide_map"),
    ("threshold", "f1_midpoint"),
    ("optimizer", "sgd"),
    ("scheduler", "none"),
    ("trainer", "cpu"),  # ddp's one step (4 s, a process group) is in the slow tier with the DDP tests
    ("logger", "csv"),
}


@pytest.mark.parametrize(
    ("group", "option"),
    [pytest.param(g, o, id=f"{g}={o}", marks=() if (g, o) in ONE_PER_GROUP else pytest.mark.slow) for g, o in OPTIONS],
)
def test_every_option_runs_one_step(group: str, option: str, compose_tiny: ComposeFn, tiny_data_dir: Path) -> None:
    """Every option of every group trains one step; datasets read tiny data where they look by default."""
    overrides = [f"{group}={option}", "trainer.fast_dev_run=true", f"paths.data_dir={tiny_data_dir}"]
    if group == "trainer":
        overrides += ON_CPU.get(option, [])
    if group == "masking" and option in ("multiscale_grid", "multiscale_grid_stitched"):
        overrides.append("model.image_size=64")  # its 64x64 grid needs at least 64 pixels
    if (group, option) == ("threshold", "normal_sigma"):
        overrides.append("dataset.val_fraction=0.4")  # a standard deviation needs 2 normal validation images
    cfg = compose_tiny(overrides)
    absent = [v for v in cfg.dataset.values() if isinstance(v, str) and v.startswith(str(tiny_data_dir))]
    absent = [v for v in absent if not Path(v).exists()]
    if absent:  # a new layout: its own test shows it runs (e.g. tests/test_extensions.py)
        pytest.skip(f"dataset={option} reads {absent}: no tiny data there (conftest.tiny_data_dir)")
    try:
        objective = run(cfg)
    finally:  # Lightning leaves a DDP run's process group up: later single-device runs would think they are DDP
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert isinstance(objective, float)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert "train/loss" in metrics


@pytest.mark.slow
def test_short_run_reports_finite_test_metrics(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["trainer.max_epochs=2", "masking=multiscale_grid", "masking.grid_sizes=[2,4]"])
    objective = run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert objective == metrics["val/wasserstein"] >= 0.0
    for name in ("test/image_auroc", "test/pixel_auroc", "test/aupro"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_resume_continues_the_step_count(compose_tiny: ComposeFn, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    run(compose_tiny(["trainer.max_epochs=1", "test=false"], output_dir=out))
    last = out / "checkpoints" / "last.ckpt"
    steps_one_epoch = torch.load(last, weights_only=False)["global_step"]
    assert steps_one_epoch > 0
    run(compose_tiny(["trainer.max_epochs=3", "test=false", "resume=true"], output_dir=out))
    assert torch.load(last, weights_only=False)["global_step"] == 3 * steps_one_epoch


@pytest.mark.slow
def test_last_checkpoint_is_the_last_epoch_and_the_last_epoch_is_validated(
    compose_tiny: ComposeFn, tmp_path: Path
) -> None:
    out = tmp_path / "sparse_val"
    run(compose_tiny(["trainer.max_epochs=1", "test=false"], output_dir=out / "one"))
    steps_one_epoch = torch.load(out / "one" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    # validation every 2 epochs validates epoch 2 and, being the last, epoch 3
    run(compose_tiny(["trainer.max_epochs=3", "trainer.check_val_every_n_epoch=2", "test=false"], output_dir=out))
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)
    assert last["global_step"] == 3 * steps_one_epoch
    assert best["global_step"] in (2 * steps_one_epoch, 3 * steps_one_epoch)
    assert last["callbacks"]["TrainingHealth"]["epoch_losses"].__len__() == 3


def test_resume_without_checkpoint_is_a_clear_error(compose_tiny: ComposeFn) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*last\.ckpt"):
        run(compose_tiny(["resume=true"]))


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics(compose_tiny: ComposeFn, tmp_path: Path) -> None:
    results = []
    for name in ("a", "b"):
        cfg = compose_tiny(["trainer.max_epochs=1"], output_dir=tmp_path / name)
        results.append((run(cfg), json.loads((tmp_path / name / "metrics.json").read_text())))
    (obj_a, metrics_a), (obj_b, metrics_b) = results
    assert obj_a == obj_b
    assert metrics_a["test/image_auroc"] == metrics_b["test/image_auroc"]
    assert metrics_a["train/loss"] == metrics_b["train/loss"]


@pytest.mark.slow
def test_how_often_validation_runs_does_not_change_training(compose_tiny: ComposeFn, tmp_path: Path) -> None:
    """Validation masks images at random too; it must not draw from training's stream (masks, batch order)."""
    weights = []
    for name, every in (("every_epoch", 1), ("last_epoch_only", 3)):
        out = tmp_path / name
        overrides = ["trainer.max_epochs=3", f"trainer.check_val_every_n_epoch={every}", "test=false"]
        run(compose_tiny([*overrides, "masking=multiscale_grid", "masking.grid_sizes=[2,4]"], output_dir=out))
        weights.append(torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    differing = [key for key in weights[0] if not torch.equal(weights[0][key], weights[1][key])]
    assert differing == []


def test_missing_root_says_how_to_point_at_data(compose_tiny: ComposeFn, tmp_path: Path) -> None:
    cfg = compose_tiny(["dataset=mvtec", f"dataset.root={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"dataset\.root=.*nowhere: not found; point it at an MVTec AD category"):
        run(cfg)


def test_wrong_layout_is_named(compose_tiny: ComposeFn, tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(BadImageError, match="wrong layout"):
        run(compose_tiny(["dataset=mvtec", f"dataset.root={tmp_path / 'flat'}"]))


def _copy_layout(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".complete"))
    return dst


def test_empty_folder_is_named(compose_tiny: ComposeFn, tiny_bottles_root: Path, tmp_path: Path) -> None:
    root = _copy_layout(tiny_bottles_root, tmp_path / "bottles")
    for png in (root / "train" / "good").iterdir():
        png.unlink()
    with pytest.raises(BadImageError, match=r"train/good: empty folder"):
        run(compose_tiny(["dataset=mvtec", f"dataset.root={root}"]))


def test_corrupt_png_is_named(compose_tiny: ComposeFn, tiny_bottles_root: Path, tmp_path: Path) -> None:
    root = _copy_layout(tiny_bottles_root, tmp_path / "bottles")
    bad = sorted((root / "train" / "good").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    with pytest.raises(BadImageError, match=rf"{bad.name}: corrupt or unreadable image"):
        run(compose_tiny(["dataset=mvtec", f"dataset.root={root}"]))


def test_mask_size_mismatch_and_missing_mask_are_named(
    compose_tiny: ComposeFn, tiny_bottles_root: Path, tmp_path: Path
) -> None:
    from PIL import Image

    root = _copy_layout(tiny_bottles_root, tmp_path / "bottles")
    mask = sorted((root / "ground_truth").glob("*/*_mask.png"))[0]
    Image.new("L", (7, 9)).save(mask)
    with pytest.raises(BadImageError, match=rf"{mask.name}: mask size 7x9 differs"):
        run(compose_tiny(["dataset=mvtec", f"dataset.root={root}"]))
    mask.unlink()
    with pytest.raises(BadImageError, match="has no mask"):
        run(compose_tiny(["dataset=mvtec", f"dataset.root={root}"]))


def test_unknown_option_lists_the_choices() -> None:
    with pytest.raises(MissingConfigException, match=r"(?s)unet999.*unet512.*unet64.*unet_small"):
        compose_config(["model=unet999"])


def test_image_size_not_divisible_by_depth(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["model.image_size=40"])
    with pytest.raises(ValueError, match=r"^model\.image_size=40: must be a multiple of 2\*\*depth = 16 \(model\.net"):
        run(cfg)


def test_nan_loss_fails_loudly(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["optimizer.lr=1e30", "scheduler=none", "trainer.max_epochs=3"])
    with open_dict(cfg):
        cfg.model.net.output_activation = "none"
    with pytest.raises(FloatingPointError, match=r"loss is (nan|inf)"):
        run(cfg)


# ----------------------------------------------------------------------- what a run says about itself (issue 29)

REPO = Path(__file__).resolve().parents[1]
# tiny generated bottles: 21 training images in batches of 4 (5 steps an epoch); 6 test images, 2 a test batch
TINY_CLI = [
    "model.image_size=32",
    "dataset.batch_size=4",
    "dataset.eval_batch_size=2",
    "dataset.n_train=24",
    "dataset.n_test_good=3",
    "dataset.n_test_per_defect=2",
    "trainer.enable_progress_bar=false",
]


def train_cli(args: list[str], run_dir: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """`python -m anomaly_lab.train` as a user runs it, on tiny generated bottles."""
    command = [sys.executable, "-m", "anomaly_lab.train", *TINY_CLI, f"paths.cache_dir={cache}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [*command, f"hydra.run.dir={run_dir}", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_fast_dev_run_says_it_is_a_smoke_run_and_diagnoses_nothing(tmp_path: Path) -> None:
    """The README's check of a command. Its one test batch holds two anomalous images of the six (the test set
    is read in folder order), and lr=1 saturates the net in its one step: the run used to end with "the test
    set holds no anomalous image" and "THE MODEL LOOKS COLLAPSED"."""
    run_dir = tmp_path / "run"
    result = train_cli(["trainer.fast_dev_run=true", "optimizer.lr=1"], run_dir, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "COLLAPSED" not in output and "holds no anomalous image" not in output
    smoke = "trainer.fast_dev_run: a smoke run of 1 batch per stage (1 training step, 2 of the 6 test images scored)"
    assert smoke in output and "its metrics are not meaningful" in output
    assert smoke in (run_dir / "train.log").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fast_dev_run"] == 1 and metrics["collapsed"] is None and metrics["collapse_reasons"] == []


def test_a_test_that_scored_part_of_the_test_set_says_so_not_that_the_set_is_empty() -> None:
    held = [1, 1, 1, 0, 0, 0]  # the test split
    note = missing_auroc_note(held, scored=[1, 1], cfg=OmegaConf.create({"trainer": {"limit_test_batches": 1}}))
    assert note.startswith("the test scored 2 of the 6 test images (trainer.limit_test_batches=1), all anomalous")
    assert "holds 3 anomalous and 3 normal images" in note
    assert missing_auroc_note([0, 0, 0], [0, 0], OmegaConf.create({})).startswith(
        "the test set holds no anomalous image (good images only)"
    )
    assert missing_auroc_note([1, 1], [1, 1], OmegaConf.create({})).startswith("the test set holds no normal image")


@pytest.mark.slow
def test_a_time_cap_that_stops_training_early_says_so_in_the_log_and_metrics(tmp_path: Path) -> None:
    """1000 planned epochs cannot all run within one second on any machine: the cap stops training."""
    run_dir = tmp_path / "run"
    result = train_cli(["trainer.max_epochs=1000", "trainer.max_time=00:00:00:01"], run_dir, tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    trained = metrics["epochs_trained"]
    assert metrics["stopped_early_by"] == "max_time" and metrics["epochs_planned"] == 1000
    assert 1 <= trained < 1000 and trained == metrics["train/epochs"]
    warning = f"trainer.max_time='00:00:00:01' stopped training after {trained} of the 1000 planned epochs"
    assert warning in result.stdout + result.stderr
    assert warning in (run_dir / "train.log").read_text()
    assert "val/wasserstein" in metrics and "test/image_auroc" in metrics  # validated and tested all the same


def test_the_cpu_recipes_train_all_their_epochs_whatever_the_machine() -> None:
    for name in ("bottles_cpu", "bottles_cpu_fast", "bottles_riad_cpu", "bottles_thesis_cpu", "screw_cpu"):
        assert compose_config([f"experiment={name}"]).trainer.max_time is None, name
