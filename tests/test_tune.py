"""make tune (anomaly_lab.tune) and the sweep budget behind it (issue 30, items 3 and 6).

Fast: how a folder is read, the epochs that bound the final training, the budget's estimate and gate on fake trials,
and each refusal of bad input (one line naming the key, exit 2, nothing trained). Slow, on tiny generated data in
real processes: a trial still training at the budget's end is stopped there and PRUNED (not FAILED), trials that
cannot fit are not started, and the whole command whose written recipe, trained again, gives the same model.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, UniformDistribution
from optuna.trial import TrialState
from PIL import Image

from anomaly_lab import tune
from anomaly_lab.errors import ConfigError
from anomaly_lab.sweeps.resumable_optuna import (
    BUDGET_SAFETY,
    MAX_NOT_STARTED,
    ResumableOptunaSweeperImpl,
    check_budget_fallback,
    trial_seconds,
)
from tests.conftest import FAST_SWEEP, TINY, TINY_SYNTHETIC

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 900  # only stops a hung process: no assertion depends on how long a run takes


def write_images(folder: Path, count: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def plan_keys(plan: tune.DataPlan) -> dict[str, str]:
    return dict(override.split("=", 1) for override in plan.overrides)


# how a folder is read


def test_an_mvtec_root_is_read_as_mvtec_with_every_real_anomaly_tested(tmp_path: Path) -> None:
    write_images(tmp_path / "train" / "good", 40)
    write_images(tmp_path / "test" / "good", 3)
    write_images(tmp_path / "test" / "crack", 2)
    plan = tune.plan_data(tmp_path, None)
    assert plan_keys(plan) == {
        "dataset": "mvtec",
        "dataset.root": str(tmp_path),
        "validation_anomalies": "synthetic",
    }
    assert not plan.holds_out_test and plan.normal_images == 40


def test_train_good_with_one_defect_folder_holds_out_normals_and_tests_that_folder(tmp_path: Path) -> None:
    good = write_images(tmp_path / "train" / "good", 40)
    write_images(tmp_path / "test" / "good", 3)  # darker on the shared screw copy: not the test's normals
    defect = write_images(tmp_path / "test" / "anomaly", 4)
    plan = tune.plan_data(good, None)
    keys = plan_keys(plan)
    assert keys["dataset"] == "folder" and keys["dataset.normal_dir"] == str(good)
    assert keys["dataset.abnormal_dir"] == str(defect) and keys["dataset.mask_dir"] == "null"
    assert keys["validation_anomalies"] == "synthetic"  # the search never sees the test's defects
    assert float(keys["dataset.test_fraction"]) == tune.TEST_FRACTION and plan.holds_out_test


def test_train_good_with_several_defect_folders_is_read_as_the_mvtec_root(tmp_path: Path) -> None:
    good = write_images(tmp_path / "train" / "good", 40)
    write_images(tmp_path / "test" / "crack", 2)
    write_images(tmp_path / "test" / "scratch", 2)
    plan = tune.plan_data(good, None)
    assert plan_keys(plan)["dataset"] == "mvtec" and plan_keys(plan)["dataset.root"] == str(tmp_path)
    assert "one folder dataset takes one abnormal_dir" in plan.lines[0]


def test_a_plain_folder_with_defects_validates_on_a_share_of_them(tmp_path: Path) -> None:
    good, defects = write_images(tmp_path / "good", 40), write_images(tmp_path / "bad", 6)
    keys = plan_keys(tune.plan_data(good, defects))
    assert keys["dataset.abnormal_dir"] == str(defects) and keys["validation_anomalies"] == "auto"
    keys = plan_keys(tune.plan_data(good, None))  # no defects anywhere: a test of normals only
    assert keys["dataset.abnormal_dir"] == "null" and keys["validation_anomalies"] == "synthetic"


def test_the_final_training_is_bounded_to_its_minutes_and_the_shipped_table_is_the_rule_for_200_images() -> None:
    cfg = tune.compose_train([f"hparams_search={tune.SEARCH}", "paths.output_dir=unused"])
    node = tune.plain_dict(cfg.tune)
    assert node["epochs"] == tune.epochs_table(node, 200)
    for images in (20, 230, 2000):
        table = tune.epochs_table(node, images)
        for size, bands in table.items():
            for band, widths in bands.items():
                for width, lengths in widths.items():
                    pixels = node["sizes"][size] * (node["bands"][size][band] or node["sizes"][size])
                    epoch = tune.seconds_per_epoch(images, pixels, node["widths"][width], tune.FINAL_VALIDATION)
                    assert lengths["short"] <= lengths["medium"] <= lengths["long"] <= tune.MAX_EPOCHS
                    assert all(epochs % tune.EPOCH_STEP == 0 for epochs in lengths.values())
                    # the longest fits, unless one step of epochs does not (then it is that one step)
                    assert lengths["long"] * epoch <= tune.FINAL_TRAINING_S or lengths["long"] == tune.EPOCH_STEP


# the budget's estimate and gate, on fake trials


def test_the_estimate_scales_a_trained_trial_up_linearly() -> None:
    trained = [({"epochs": 10, "pixels": 128 * 128, "width": 8}, 10, 100.0)]
    assert trial_seconds({"epochs": 10, "pixels": 128 * 128, "width": 8}, []) is None
    same = trial_seconds({"epochs": 10, "pixels": 128 * 128, "width": 8}, trained)
    assert same == pytest.approx(100 * BUDGET_SAFETY)
    assert trial_seconds({"epochs": 20, "pixels": 256 * 128, "width": 16}, trained) == pytest.approx(
        100 * 2 * 2 * 2 * BUDGET_SAFETY
    )
    # smaller trials: less than linearly smaller (a run's fixed part), so never below the linear share
    smaller = trial_seconds({"epochs": 5, "pixels": 64 * 64, "width": 8}, trained)
    assert smaller is not None and smaller > 100 * 0.5 * 0.25 * BUDGET_SAFETY
    # a pruned trial (5 of its 40 epochs trained) counts by the epochs it trained
    pruned = [({"epochs": 40, "pixels": 128 * 128, "width": 8}, 5, 50.0)]
    assert trial_seconds({"epochs": 40, "pixels": 128 * 128, "width": 8}, pruned) == pytest.approx(
        50 * 8 * BUDGET_SAFETY
    )


def study_with_a_trained_trial() -> optuna.Study:
    """A study whose one complete trial trained 10 epochs of 1024 pixels at width 1 in 10 s (the estimates' base)."""
    study = optuna.create_study(direction="maximize")
    done = study.ask()
    done.set_user_attr("cost", {"epochs": 10, "pixels": 1024, "width": 1})
    done.set_user_attr("epochs_trained", 10)
    done.set_user_attr("seconds", 10.0)
    study.tell(done, 0.5)
    return study


def budgeted_sweeper(load_sweep_config: Any, left_s: float, fallback: dict[str, Any]) -> Any:
    """What ResumableOptunaSweeperImpl._within_budget reads of its sweeper: `left_s` seconds of budget left."""
    return SimpleNamespace(
        budget_end=time.time() + left_s,
        config=OmegaConf.create({}),
        hydra_context=SimpleNamespace(config_loader=SimpleNamespace(load_sweep_config=load_sweep_config)),
        not_started=0,
        budget_fallback=fallback,
    )


def test_a_trial_that_cannot_fit_in_the_budget_left_is_not_started_and_one_that_fits_is() -> None:
    study = study_with_a_trained_trial()
    long, short = study.ask(), study.ask()
    epochs = {"long": 100, "short": 5}  # the job configs the sweep would compose for each trial

    def load_sweep_config(config: Any, overrides: list[str]) -> Any:
        return OmegaConf.create({"trainer": {"max_epochs": epochs[overrides[0]]}, "model": {"image_size": 32}})

    # 60 s left: 100 epochs need 125 s, 5 epochs 7.4 s (the safety included)
    sweeper = budgeted_sweeper(load_sweep_config, 60.0, {})
    started = ResumableOptunaSweeperImpl._within_budget(sweeper, study, [(long, ["long"]), (short, ["short"])])  # type: ignore[arg-type]
    assert [trial.number for trial, _ in started] == [short.number]
    assert sweeper.not_started == 1
    refused = study.trials[long.number]
    assert refused.state == TrialState.FAIL and "s left of the budget" in refused.user_attrs["not_started"]
    assert study.trials[short.number].user_attrs["cost"] == {"epochs": 5, "pixels": 1024, "width": 1}


def test_a_draw_that_cannot_fit_is_refused_and_its_short_version_is_the_next_trial_where_that_fits() -> None:
    """hydra.sweeper.budget_fallback: the end of a budget trains the sampler's point at less cost (the screw search
    of 2026-12-07 refused 8 draws with 14 of its 60 min left, then ended)."""
    study = study_with_a_trained_trial()
    space = {"length": CategoricalDistribution(["short", "long"]), "lr": UniformDistribution(1e-4, 1e-2)}
    epochs = {"short": 5, "long": 100, "medium": 70}

    def load_sweep_config(config: Any, overrides: list[str]) -> Any:
        values = dict(override.split("=", 1) for override in overrides)
        return OmegaConf.create({"trainer": {"max_epochs": epochs[values["length"]]}, "model": {"image_size": 32}})

    # 60 s left: 100 epochs need 125 s, 70 need 88 s, 5 need 7.4 s
    sweeper = budgeted_sweeper(load_sweep_config, 60.0, {"length": "short"})
    study.enqueue_trial({"length": "long", "lr": 3e-3})
    long = study.ask(space)
    started = ResumableOptunaSweeperImpl._within_budget(sweeper, study, [(long, ["length=long", "lr=0.003"])])  # type: ignore[arg-type]
    assert started == [] and sweeper.not_started == 1
    assert study.trials[long.number].state == TrialState.FAIL
    reason = study.trials[long.number].user_attrs["not_started"]
    assert re.search(r"s left of the budget; the draw with length=short \(\d+ s estimated\) is the next trial", reason)
    following = study.ask(space)
    assert following.params == {"length": "short", "lr": 3e-3}  # the sampler's point, short
    # where the short point does not fit either, nothing is enqueued
    sweeper.budget_fallback = {"length": "medium"}
    study.enqueue_trial({"length": "long", "lr": 3e-3})
    again = study.ask(space)
    ResumableOptunaSweeperImpl._within_budget(sweeper, study, [(again, ["length=long", "lr=0.003"])])  # type: ignore[arg-type]
    assert "next trial" not in study.trials[again.number].user_attrs["not_started"]
    assert not [t for t in study.trials if t.state == TrialState.WAITING]


def test_a_budget_fallback_outside_the_search_is_refused_naming_the_key() -> None:
    space = {"length": CategoricalDistribution(["short", "long"]), "lr": UniformDistribution(1e-4, 1e-2)}
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.budget_fallback\.size: not a parameter of the search"):
        check_budget_fallback({"size": "s128"}, space)
    with pytest.raises(ConfigError, match=r"budget_fallback\.length='tiny': not one of the parameter's choices"):
        check_budget_fallback({"length": "tiny"}, space)
    check_budget_fallback({"length": "short"}, space)


def test_the_first_trial_is_enqueued_until_the_study_has_a_complete_one(tmp_path: Path) -> None:
    storage, data = f"sqlite:///{tmp_path}/optuna.db", {"root": "/data/a"}
    first = tune.Point({"tune.size": "s128", "optimizer.lr": 1e-3}, 60.0, "bottles_cpu's point")
    tune.enqueue_first(storage, "s", "maximize", data, first)
    tune.enqueue_first(storage, "s", "maximize", data, first)  # one waits already: not twice
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.WAITING] and study.user_attrs["data"] == data
    trial = study.ask()  # the enqueued point, pruned (e.g. by a budget too short for it)
    assert trial.suggest_categorical("tune.size", ["s128", "s256"]) == "s128"
    study.tell(trial, state=TrialState.PRUNED)
    tune.enqueue_first(storage, "s", "maximize", data, first)  # no complete trial yet: it is enqueued again
    tune.enqueue_first(storage, "s", "maximize", {"root": "/data/b"}, first)  # other data: left to the sweep
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == [TrialState.PRUNED, TrialState.WAITING]


def test_the_search_on_a_study_made_to_enqueue_its_first_points_draws_from_the_seed(tmp_path: Path) -> None:
    """tune makes the study to enqueue its first points; the sweep that then opens it is its first and keeps the
    seeded draws (the search is reproducible from `seed`); a rerun or second worker on it reseeds, as on any study
    another run made."""
    from anomaly_lab.sweeps.resumable_optuna import first_sweep, open_study, rdb_storage

    storage = f"sqlite:///{tmp_path}/optuna.db"
    tune.enqueue_first(storage, "s", "maximize", {"root": "/data/a"}, tune.Point({"optimizer.lr": 1e-3}, 60.0))

    def opened(name: str) -> tuple[optuna.Study, bool]:
        return open_study(rdb_storage(storage, None), name, "maximize", optuna.samplers.RandomSampler(), None)

    assert first_sweep(*opened("s")) and not first_sweep(*opened("s"))
    tune.enqueue_first(storage, "s", "maximize", {"root": "/data/a"}, tune.Point({"optimizer.lr": 1e-3}, 60.0))
    assert not first_sweep(*opened("s"))  # a rerun's enqueue does not make it fresh again
    optuna.create_study(storage=storage, study_name="other", direction="maximize")
    assert not first_sweep(*opened("other")) and first_sweep(*opened("new"))


# item 6: bad input, one line naming the key, exit 2, nothing trained


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project root (recipes/ and outputs/ land there); the command runs in it."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("PROJECT_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        tune.main(argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def nothing_trained(project: Path) -> bool:
    return not (project / "outputs" / "sweeps").exists() and not (project / "outputs" / "runs").exists()


def test_a_folder_without_images_is_refused_naming_data(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = refusal([f"data={empty}", "minutes=60"], capsys)
    assert f"data={empty}: no images" in line and nothing_trained(project)


def test_a_category_without_normal_images_is_refused_naming_data(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "category" / "train" / "good").mkdir(parents=True)
    write_images(tmp_path / "category" / "test" / "crack", 3)
    line = refusal([f"data={tmp_path / 'category'}", "minutes=60"], capsys)
    assert "data=" in line and "train/good holds no normal image" in line and nothing_trained(project)


def test_a_folder_too_small_to_hold_out_validation_and_test_images_is_refused(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_images(tmp_path / "good", 12)
    line = refusal([f"data={good}", "minutes=60"], capsys)
    assert f"data={good}: 12 normal images are too few to hold out validation and test images" in line
    assert "give at least" in line and nothing_trained(project)


def test_a_budget_too_small_for_one_trial_is_refused_naming_minutes(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_images(tmp_path / "good", 40)
    line = refusal([f"data={good}", "minutes=0.05"], capsys)
    assert line.startswith("UserError: minutes=0.05: too small for one trial") and nothing_trained(project)
    assert "minutes=soon: must be a positive number" in refusal([f"data={good}", "minutes=soon"], capsys)


def test_a_budget_fallback_the_search_cannot_draw_is_refused_before_the_study_is_written(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_images(tmp_path / "good", 40)
    line = refusal([f"data={good}", "minutes=60", "hydra.sweeper.budget_fallback={tune.length:tiny}"], capsys)
    assert "hydra.sweeper.budget_fallback.tune.length='tiny': not one of the parameter's choices" in line
    assert nothing_trained(project)
    line = refusal([f"data={good}", "minutes=60", "++hydra.sweeper.budget_fallback={tune.sise:s128}"], capsys)
    assert "hydra.sweeper.budget_fallback.tune.sise: not a parameter of the search" in line
    line = refusal([f"data={good}", "minutes=60", "hydra.sweeper.budget_fallback=short"], capsys)
    assert "hydra.sweeper.budget_fallback=short" in line and "Cannot assign str to Dict" in line  # the schema's
    assert nothing_trained(project)


@pytest.mark.slow
def test_a_search_value_the_model_cannot_take_is_refused_naming_it(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_images(tmp_path / "good", 40)
    line = refusal([f"data={good}", "minutes=60", "tune.bands.s128.half=40"], capsys)  # 40 rows: not a multiple of 16
    assert "the search point tune.size=s128 tune.band=half" in line
    assert "dataset.preprocessing.crop_height=40: must be a multiple of" in line and nothing_trained(project)


def test_a_recipe_name_in_use_is_refused_unless_overwrite(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_images(tmp_path / "good", 40)
    recipe = project / "recipes" / "experiment" / "mine.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text("# @package _global_\nseed: 1\n")
    line = refusal([f"data={good}", "minutes=60", "name=mine"], capsys)
    assert "name=mine" in line and "overwrite=true" in line
    assert "a shipped experiment" in refusal([f"data={good}", "minutes=60", "name=bottles_cpu"], capsys)
    assert recipe.read_text() == "# @package _global_\nseed: 1\n" and nothing_trained(project)


# real processes on tiny data


def tiny_env(root: Path) -> dict[str, str]:
    """One thread (seeded CPU training is bit-for-bit repeatable at a fixed thread count), this project root."""
    return {**os.environ, "PROJECT_ROOT": str(root), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def run(command: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=root, env=tiny_env(root), capture_output=True, text=True, timeout=HANG_GUARD_S, check=False
    )


@pytest.mark.slow
def test_a_trial_running_at_the_budgets_end_is_pruned_there_and_trials_that_cannot_fit_are_not_started(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cache = tmp_path_factory.getbasetemp() / "cache"
    args = [
        sys.executable,
        "-m",
        "anomaly_lab.train",
        "--multirun",
        "hparams_search=bottles_thesis",
        *TINY,
        *TINY_SYNTHETIC,
        *FAST_SWEEP,
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache}",
        "trainer.max_epochs=100000",  # far more than the budget: only its deadline stops the trial
        "hydra.sweeper.n_trials=1",
    ]
    started = time.time()
    done = run([*args, "hydra.sweeper.budget_minutes=0.3"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    storage = f"sqlite:///{tmp_path}/outputs/sweeps/optuna.db"
    (name,) = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    (trial,) = optuna.load_study(study_name=name, storage=storage).trials
    assert trial.state == TrialState.PRUNED  # a result (finished), not a failure
    assert trial.user_attrs["stopped_by"] == "deadline" and "error" not in trial.user_attrs
    run_dir = Path(trial.user_attrs["output_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stopped_early_by"] == "deadline" and 1 <= metrics["epochs_trained"] < 100000
    assert not any(key.startswith("test/") for key in metrics)  # a pruned trial is not tested
    overrides = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    (deadline,) = [float(o.split("=", 1)[1]) for o in overrides if o.startswith("+sweep_trial.deadline=")]
    assert started < deadline <= started + 0.3 * 60 + 30  # the budget's end (after the process started)
    # stopped before an epoch predicted to end past the deadline: it ended before it, give or take one epoch
    seconds_per_epoch = trial.user_attrs["seconds"] / metrics["epochs_trained"]
    assert (
        trial.datetime_complete is not None
        and trial.datetime_complete.timestamp() <= deadline + 2 * seconds_per_epoch + 10
    )

    # the same study with more trials and a budget none of them fits (100000 epochs each): none is started, and the
    # sweep ends after MAX_NOT_STARTED refused draws
    # n_trials well above the refusals: random redraws of trial 0's point (below) must not end the sweep first
    again = run([*args, f"hydra.sweeper.n_trials={MAX_NOT_STARTED + 20}", "hydra.sweeper.budget_minutes=0.5"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    refused = [t for t in trials[1:] if "duplicate_of" not in t.user_attrs]  # not a redrawn point of trial 0's
    # the reseeded sampler's draws are random: any number of them may repeat trial 0's point, pruned again untrained
    redrawn = [t for t in trials[1:] if "duplicate_of" in t.user_attrs]
    assert all(t.state == TrialState.PRUNED and t.user_attrs["duplicate_of"] == 0 for t in redrawn)
    assert len(redrawn) < MAX_NOT_STARTED + 20  # each counts as a finished trial: n_trials bounds them with trial 0
    assert 1 <= len(refused) <= MAX_NOT_STARTED  # it ends after MAX_NOT_STARTED refused draws, or the budget's end
    for trial in refused:
        assert trial.state == TrialState.FAIL and "s left of the budget" in trial.user_attrs["not_started"]
        assert "output_dir" not in trial.user_attrs  # never launched
    assert "budget of 0.5 min spent" in again.stdout + again.stderr


def state_dict(run_dir: Path) -> dict[str, torch.Tensor]:
    (checkpoint,) = (run_dir / "checkpoints").glob("best.ckpt")
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_make_tune_on_tiny_data_writes_a_recipe_that_trains_the_same_model_again(tmp_path: Path) -> None:
    from anomaly_lab.data.synthetic import write_synthetic_bottles

    data = write_synthetic_bottles(tmp_path / "bottles", size=32, n_train=40, n_test_good=4, n_test_per_defect=2)
    root = tmp_path / "project"
    root.mkdir()
    lengths = {"short": 1, "medium": 2, "long": 3}
    tiny_space = [  # 32 px, 1-2 epochs, a net 4 channels wide: every size, band and width of the space at that scale
        "tune.sizes={s128:32,s256:32}",
        "tune.bands={s128:{full:null,half:16,third:16},s256:{full:null,half:16,third:16}}",
        "tune.grids={s128:{coarse:[2],medium:[2,4],fine:[4]},s256:{coarse:[2],medium:[2,4],fine:[4]}}",
        "tune.blurs={s128:{map:2.0,score:1.0},s256:{map:2.0,score:1.0}}",
        "tune.widths={narrow:4,wide:4}",
        "tune.epochs="
        + tune.hydra_value(
            {
                s: {b: {w: lengths for w in ("narrow", "wide")} for b in ("full", "half", "third")}
                for s in ("s128", "s256")
            }
        ),
        "dataset.batch_size=4",
        "dataset.eval_batch_size=8",
        "trainer.enable_progress_bar=false",
        "trainer.check_val_every_n_epoch=1",  # the trials validate every epoch, the final once
    ]
    command = [sys.executable, "-m", "anomaly_lab.tune", f"data={data}", "minutes=2", "name=tiny", *tiny_space]
    done = run(command, root)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("tune: ")]
    assert lines[0].startswith("tune: data: an MVTec AD category root (train/good: 40 images) -> dataset=mvtec")

    recipe = root / "recipes" / "experiment" / "tiny.yaml"
    written = OmegaConf.load(recipe)
    assert {"override /scoring": "auto"} in written.defaults and written.dataset.root == str(data)
    assert written.trainer.check_val_every_n_epoch == written.trainer.max_epochs  # the final validates once
    with (recipe.with_suffix(".trials.csv")).open() as handle:
        trials = list(csv.DictReader(handle))
    assert trials and all("test" not in column for column in trials[0])  # chosen on validation only
    assert {row["state"] for row in trials} <= {"COMPLETE", "PRUNED", "FAIL"}
    assert all("s left of the budget" in row["note"] for row in trials if row["state"] == "FAIL")
    complete = [row for row in trials if row["state"] == "COMPLETE"]
    assert complete and all(row["val_image_auroc"] for row in complete)
    chosen = next(line for line in lines if line.startswith("tune: best trial ")).split()[3].rstrip(":")
    # the recipe: image AUROC within AUROC_TIE of the best, and of those the best map (pixel AUROC)
    top = max(float(row["val_image_auroc"]) for row in complete)
    tied = [row for row in complete if float(row["val_image_auroc"]) >= top - tune.AUROC_TIE - 1e-9]
    picked = next(row for row in complete if row["number"] == chosen)
    assert picked in tied and float(picked["val_pixel_auroc"]) == max(float(row["val_pixel_auroc"]) for row in tied)

    # the budget: the search ended within the command's minutes (the checks before it took their share), give or
    # take the last trial's epochs
    search_minutes = float(lines[-1].split("search ")[1].split(" min")[0])
    longest_trial = max(float(row["seconds"]) for row in trials if row["seconds"])
    assert search_minutes * 60 <= 2 * 60 + longest_trial

    # the final training, validated once, is the chosen trial's model, validated every epoch: the same weights
    final = root / lines[-1].split("run folder ")[1]
    storage = f"sqlite:///{root}/outputs/sweeps/optuna.db"
    (name,) = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.trials[int(chosen)]
    assert trial.user_attrs["epochs_trained"] == written.trainer.max_epochs > 1
    searched, trained = state_dict(Path(trial.user_attrs["output_dir"])), state_dict(final)
    assert searched.keys() == trained.keys() and all(torch.equal(searched[k], trained[k]) for k in searched)

    # the recipe, trained again, is the tune's model: the same weights and the same test scores
    again = run(
        [sys.executable, "-m", "anomaly_lab.train", "experiment=tiny", "hydra.run.dir=outputs/runs/again"], root
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    first, second = state_dict(final), state_dict(root / "outputs" / "runs" / "again")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (final / "scores.csv").read_text() == (root / "outputs" / "runs" / "again" / "scores.csv").read_text()
    reported = json.loads((final / "metrics.json").read_text())["test/image_auroc"]
    assert f"test image AUROC {reported:.4f}" in lines[-1]


def test_the_estimate_scales_only_the_training_share_of_a_run_with_the_epochs() -> None:
    """The screw search's trial 1 (5 epochs, 420 s, of which 120 s training: start, decoding, the choice and the
    test at 256 px took the rest) must not make a 25-epoch trial of an eighth of its pixels look like 35 min."""
    trained = [({"epochs": 5, "pixels": 256 * 256, "width": 8}, 5, 420.0, 120.0)]
    same_run_more_epochs = trial_seconds({"epochs": 25, "pixels": 256 * 256, "width": 8}, trained)
    assert same_run_more_epochs == pytest.approx((300 + 24 * 25) * BUDGET_SAFETY)
    smaller = trial_seconds({"epochs": 25, "pixels": 128 * 64, "width": 16}, trained)
    assert smaller is not None and smaller < 20 * 60
    # no training seconds recorded: the whole run scales with the epochs, as before
    assert trial_seconds({"epochs": 25, "pixels": 256 * 256, "width": 8}, [trained[0][:3]]) == pytest.approx(
        420 * 5 * BUDGET_SAFETY
    )


def test_one_short_trials_pessimistic_scaling_does_not_veto_the_search() -> None:
    """The median of the trials' estimates: three trained trials, one of them a 5-epoch pruned one whose per-epoch
    time scales up badly; the estimate is the middle one's, not the outlier's."""
    point = {"epochs": 90, "pixels": 128 * 64, "width": 16}
    long_run = ({"epochs": 45, "pixels": 128 * 128, "width": 16}, 45, 1300.0, 1184.0)
    short_runs = [
        ({"epochs": 30, "pixels": 128 * 48, "width": 8}, 5, 44.0, 41.4),
        ({"epochs": 50, "pixels": 128 * 64, "width": 8}, 5, 46.0, 44.5),
    ]
    each = [trial_seconds(point, [run]) for run in (long_run, *short_runs)]
    together = trial_seconds(point, [long_run, *short_runs])
    assert together == pytest.approx(sorted(each)[1])  # type: ignore[type-var]
    assert together is not None and together < max(e for e in each if e is not None)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_recipe_is_the_trial_with_the_highest_validation_auroc_the_objective_breaking_ties(
    tmp_path: Path, direction: str
) -> None:
    """The bottle search's case: the default's point (val AUROC 1.000, distance 1.17) against a short trial with the
    larger distance (1.64) and one pair in the wrong order (AUROC 0.9989). The recipe is the default's point; among
    equal AUROCs the better objective wins, and where both tie the first trial (the starting point) stays."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", direction=direction)
    better = 1.0 if direction == "maximize" else -1.0
    for auroc, value in ((1.0, 1.165), (0.9988662, 1.644), (1.0, 1.165), (0.5, 9.0)):
        trial = study.ask({"x": optuna.distributions.UniformDistribution(0, 1)})
        trial.set_user_attr("val_image_auroc", auroc)
        study.tell(trial, better * value)
    best, objective = tune.best_trial(study)
    assert best.number == 0 and objective == pytest.approx(better * 1.165)
    assert study.best_trial.number == 3  # Optuna's best: the objective alone
    tied = study.ask({"x": optuna.distributions.UniformDistribution(0, 1)})
    tied.set_user_attr("val_image_auroc", 1.0 + 1e-12)  # float noise: a tie
    study.tell(tied, better * 1.2)
    assert tune.best_trial(study)[0].number == tied.number


def validated_study(tmp_path: Path, trials: Sequence[tuple[float, float, float]]) -> optuna.Study:
    """A study of complete trials, each (val image AUROC, val pixel AUROC, objective) as the sweep records them."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", direction="maximize")
    for auroc, pixel, value in trials:
        trial = study.ask({"x": optuna.distributions.UniformDistribution(0, 1)})
        trial.set_user_attr("val_image_auroc", auroc)
        trial.set_user_attr("val_pixel_auroc", pixel)
        study.tell(trial, value)
    return study


def test_trials_tied_on_image_auroc_are_ranked_by_the_maps_pixel_auroc_before_the_distance(tmp_path: Path) -> None:
    """The screw search of 2026-12-07: the long-part start (45 epochs) and a 5-epoch model both at validation image
    AUROC 1.0; the short one had the larger distance (1.66 against 1.52) and the worse map (pixel AUROC 0.888
    against 0.979). A trial recorded without the pixel AUROC (an older study) is read from its run's metrics.json."""
    study = validated_study(tmp_path, ((1.0, 0.9789, 1.52), (1.0, 0.8875, 1.66), (0.99, 0.99, 1.45)))
    assert tune.best_trial(study)[0].number == 0  # trial 2's better map has too low an image AUROC
    run = tmp_path / "older"
    run.mkdir()
    (run / "metrics.json").write_text(
        json.dumps({"val/chosen/image_auroc": 1.0, "val/chosen/pixel_auroc_model_res": 0.99})
    )
    older = study.ask({"x": optuna.distributions.UniformDistribution(0, 1)})
    older.set_user_attr("val_image_auroc", 1.0)
    older.set_user_attr("output_dir", str(run))
    study.tell(older, 1.0)
    assert tune.best_trial(study)[0].number == older.number
    assert tune.trial_validation(study.trials[older.number]) == (1.0, 0.99)


def test_image_aurocs_within_half_a_standard_error_are_tied_and_the_pixel_auroc_decides(tmp_path: Path) -> None:
    """The bottle search of 2026-12-07: bottles_cpu's point (40 epochs) at validation image AUROC 0.9966 (pixel
    0.908) against a 10-epoch 256 px model at 0.9989 (pixel 0.848): a few pairs of 882, well inside one standard
    error (about 0.01); the better map decides."""
    study = validated_study(tmp_path, ((0.9966, 0.908, 1.607), (0.9977, 0.821, 1.647), (0.9989, 0.848, 1.698)))
    assert tune.best_trial(study)[0].number == 0
    assert tune.AUROC_TIE < 0.01


def test_the_sweep_records_a_trials_validation_auroc_the_chosen_scorings_first(tmp_path: Path) -> None:
    from anomaly_lab.sweeps.resumable_optuna import run_outcome

    metrics = {
        "epochs_trained": 5,
        "val/image_auroc": 0.7,
        "val/chosen/image_auroc": 0.9,
        "val/pixel_auroc_model_res": 0.6,
        "val/chosen/pixel_auroc_model_res": 0.8,
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert run_outcome(tmp_path)["val_image_auroc"] == 0.9
    assert run_outcome(tmp_path)["val_pixel_auroc"] == 0.8  # a run written before the best map's key
    # scoring=auto kept the recipe's map (0.8) over a candidate within noise (0.85): ties rank by the best map's
    (tmp_path / "metrics.json").write_text(json.dumps({**metrics, "val/chosen/best_map_pixel_auroc_model_res": 0.85}))
    assert run_outcome(tmp_path)["val_pixel_auroc"] == 0.85
    (tmp_path / "metrics.json").write_text(json.dumps({"val/image_auroc": 0.7}))
    assert run_outcome(tmp_path)["val_image_auroc"] == 0.7
    (tmp_path / "metrics.json").write_text(json.dumps({"val/image_auroc": float("nan")}))
    assert "val_image_auroc" not in run_outcome(tmp_path)


def test_a_search_whose_only_trial_its_deadline_stopped_still_gives_that_point(tmp_path: Path) -> None:
    """On a machine slower than the documented rate the deadline may stop the first trial an epoch short: the
    command then writes that trial's point (it trains its full epochs again) instead of failing; a trial the pruner
    stopped (not the deadline) is no recipe, and a complete trial always wins."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", direction="maximize")
    assert tune.best_trial(study)[0] is None
    for epochs, stopped_by in ((54, "deadline"), (5, None), (20, "deadline")):
        trial = study.ask({"x": optuna.distributions.CategoricalDistribution(["a", "b"])})
        for epoch in range(5, epochs + 1, 5):
            trial.report(0.1 * epoch, epoch)
        if stopped_by:
            trial.set_user_attr("stopped_by", stopped_by)
        study.tell(trial, state=TrialState.PRUNED)
    best, objective = tune.best_trial(study)
    assert best is not None and best.number == 0 and objective == pytest.approx(5.0)  # its last report, epoch 50
    done = study.ask({"x": optuna.distributions.CategoricalDistribution(["a", "b"])})
    study.tell(done, 0.01)
    best, objective = tune.best_trial(study)
    assert best.number == done.number and objective == pytest.approx(0.01)
