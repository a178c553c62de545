"""Pruning in sweeps, for real: tiny sweeps whose pruner stops every trial after its first validation (a
ThresholdPruner no objective can pass), a resumed sweep, redrawn points, the report, and pruner configs that
name code outside the allow-list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from optuna.trial import TrialState

from anomaly_lab.cli import run_cli
from anomaly_lab.errors import ConfigError
from anomaly_lab.sweeps.pruning import PRUNERS, build_pruner, hydra_quoted, load_trial
from anomaly_lab.sweeps.resumable_optuna import rdb_storage
from anomaly_lab.tools import sweep_report
from anomaly_lab.train import main
from tests.test_faults_sweep import table_cells
from tests.test_sweep import REPO, load, one_torch_thread, sweep, sweep_args  # noqa: F401 (fixtures)

# val/wasserstein is maximised: no trial reaches 1e9, so each is pruned at its first report (after epoch 1 of 3)
PRUNE_ALL = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1e9", "trainer.max_epochs=3"]
NO_FAILURE_ALLOWED = ["hydra.sweeper.max_failure_rate=0"]  # one trial counted as failed would stop the sweep


def checkpointed_and_tested(args: list[str]) -> list[str]:
    """The sweep's arguments, but each run writes checkpoints/last.ckpt after every epoch and tests at its end."""
    dropped = ("~callbacks.last_checkpoint", "+trainer.enable_checkpointing=false", "test=false")
    return [a for a in args if a not in dropped]


@pytest.mark.slow
def test_pruned_trials_stop_early_count_as_finished_not_failed_and_resume_runs_only_missing_ones(
    sweep_args: list[str],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [*checkpointed_and_tested(sweep_args), *PRUNE_ALL, *NO_FAILURE_ALLOWED]
    sweep([*args, "hydra.sweeper.n_trials=1"], monkeypatch)
    (first,) = load(tmp_path).get_trials()
    assert first.state == TrialState.PRUNED

    # two more trials in one batch of two jobs; the pruned trial counts toward n_trials and is not run again
    more = [*args, "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2"]
    sweep(more, monkeypatch)
    trials = load(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3
    assert trials[0].datetime_complete == first.datetime_complete and trials[0].value == first.value
    sweep(more, monkeypatch)  # the same command again: nothing missing, nothing launched
    assert len(load(tmp_path).get_trials()) == 3

    for trial in trials:
        assert "error" not in trial.user_attrs and "failed_because" not in trial.user_attrs
        if "duplicate_of" in trial.user_attrs:  # a redrawn point (see the test below): no run of its own
            continue
        assert trial.last_step == 1 and list(trial.intermediate_values) == [1]  # step = epochs trained
        assert trial.value == trial.intermediate_values[1]  # a pruned trial's value: its last report
        run = Path(trial.user_attrs["output_dir"])
        assert OmegaConf.load(run / ".hydra" / "config.yaml").trainer.max_epochs == 3
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["pruned_at_epoch"] == 1 and metrics["val/wasserstein"] == pytest.approx(trial.value)
        # Lightning counts epochs from 0: one epoch trained of 3
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
        assert not any(name.startswith("test/") for name in metrics)  # a pruned trial is not tested

    storage = f"sqlite:///{tmp_path}/outputs/sweeps/optuna.db"
    capsys.readouterr()  # the sweeps' own output
    sweep_report.main([f"storage={storage}", f"out={tmp_path / 'rep'}"])
    out = capsys.readouterr().out
    table = out.split("\n", 1)[1].split("\nno complete trial yet", 1)[0]
    cells = table_cells(table)
    assert [cells[n]["state"] for n in range(3)] == [
        "PRUNED" if "duplicate_of" not in t.user_attrs else f"= #{t.user_attrs['duplicate_of']} (PRUNED)"
        for t in trials
    ]
    assert [cells[n]["epochs"] for n in range(3)] == ["1"] * 3
    assert "(3 pruned)" in out and "no complete trial yet" in out
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs]
    for trial in trained:
        assert f"trial {trial.number} pruned after epoch 1 by ThresholdPruner" in out


@pytest.mark.slow
def test_a_redrawn_pruned_point_is_pruned_again_without_training(
    sweep_args: list[str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a 2-point space and up to 5 trials: each point trains once and is pruned; a redraw is told PRUNED with the
    # same reports, and once both points have finished the sweep ends. Sampler seed 2 draws one point three times
    # first (the assertions hold for any order; with this one the redraw path runs for sure)
    space = ["optimizer.lr=1e-3", "masking.grid_sizes=[2]", "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler.seed=2"]
    sweep([*sweep_args, *PRUNE_ALL, *NO_FAILURE_ALLOWED, *space], monkeypatch)
    trials = load(tmp_path).get_trials()
    assert {t.state for t in trials} == {TrialState.PRUNED}
    trained = {t.number: t for t in trials if "duplicate_of" not in t.user_attrs}
    assert sorted(t.params["masking.ratio"] for t in trained.values()) == [0.25, 0.5]
    for trial in trials:
        if trial.number not in trained:
            twin = trained[trial.user_attrs["duplicate_of"]]
            assert trial.params == twin.params and trial.intermediate_values == twin.intermediate_values
            assert trial.value == twin.value and "output_dir" not in trial.user_attrs
    assert len(trials) == max(trained) + 1  # nothing asked once both points had finished
    assert len(trials) > len(trained)  # some were redrawn


@pytest.mark.slow
def test_a_trials_last_epoch_is_never_pruned(
    sweep_args: list[str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the pruner that stops every trial at its first report, but the first report is after the last epoch:
    # stopping there would save nothing and drop a trained, tested trial
    last_epoch = [*PRUNE_ALL, "trainer.max_epochs=1", "hydra.sweeper.n_trials=1"]
    sweep([*checkpointed_and_tested(sweep_args), *last_epoch, *NO_FAILURE_ALLOWED], monkeypatch)
    (trial,) = load(tmp_path).get_trials()
    assert trial.state == TrialState.COMPLETE and list(trial.intermediate_values) == [1]
    metrics = json.loads((Path(trial.user_attrs["output_dir"]) / "metrics.json").read_text())
    assert "pruned_at_epoch" not in metrics and "test/image_auroc" in metrics


class HoldUntil(L.Callback):
    """After the first training batch of the process's first trial, write `held` and wait until `release` exists."""

    def __init__(self, held: str, release: str, timeout: float = 300.0) -> None:
        self.held, self.release, self.timeout = Path(held), Path(release), timeout

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.held.exists():
            return
        self.held.write_text("held\n")
        deadline = time.monotonic() + self.timeout
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


@pytest.mark.slow
def test_two_workers_on_one_study_prune_their_own_trials(
    sweep_args: list[str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker A (another process) is held in its first trial while worker B runs its sweep on the same study;
    then A goes on: every trial is pruned by the process that ran it, none is failed, and A stops at n_trials.
    Each worker fixes another mask ratio, so B never draws the point A holds (it would wait for A's run)."""
    args = [*sweep_args, *PRUNE_ALL, *NO_FAILURE_ALLOWED, "hydra.sweeper.n_trials=2"]
    held, release = tmp_path / "held", tmp_path / "release"
    hold = f"_target_: tests.test_pruning.HoldUntil, held: {held}, release: {release}"
    with (tmp_path / "worker_a.log").open("w") as output:
        worker_a = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "anomaly_lab.train",
                "--multirun",
                *args,
                "masking.ratio=0.25",
                f"+callbacks.hold={{{hold}}}",
            ],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 600  # only stops a hung test
            while not held.exists():
                assert worker_a.poll() is None and time.monotonic() < deadline, f"worker A ended: {output.name}"
                time.sleep(0.2)
            sweep([*args, "masking.ratio=0.5"], monkeypatch)  # worker B, while A's trial is RUNNING
            during = load(tmp_path).get_trials()
            release.touch()
            assert worker_a.wait(timeout=600) == 0, f"see {output.name}"
        finally:
            worker_a.kill()
            worker_a.wait()
    (a_trial,) = [t for t in during if t.state == TrialState.RUNNING]
    assert a_trial.user_attrs["owner"]["pid"] == worker_a.pid
    assert sum(t.state == TrialState.PRUNED for t in during) == 2  # B's: A's running trial is not B's to count

    trials = load(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3  # A's trial too: n_trials + (W - 1) at most
    pruned_a = trials[a_trial.number]
    assert pruned_a.last_step == 1 and pruned_a.value == pruned_a.intermediate_values[1]
    assert {t.user_attrs["owner"]["pid"] for t in trials} == {worker_a.pid, os.getpid()}


@pytest.mark.slow
def test_a_pruner_outside_the_allow_list_is_refused_in_one_line(
    sweep_args: list[str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [*sweep_args, "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner._target_=os.system"]
    monkeypatch.setattr(sys, "argv", ["anomaly_lab.train", "--multirun", *args])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ConfigError: hydra.sweeper.pruner._target_='os.system': not a pruner this sweeper builds")
    assert not (tmp_path / "outputs" / "sweeps" / "optuna.db").exists()  # refused before any study or trial


def test_a_stored_trial_naming_other_code_as_its_pruner_is_refused_by_the_job(tmp_path: Path) -> None:
    storage = rdb_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=None)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr("pruner", {"_target_": "builtins.exec", "source": "raise SystemExit"})
    with pytest.raises(ConfigError, match=r"trial 0 of study 's': user attribute pruner\._target_='builtins.exec'"):
        load_trial(storage, "s", 0)
    trial.set_user_attr("pruner", {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 0})
    assert isinstance(load_trial(storage, "s", 0).study.pruner, optuna.pruners.MedianPruner)


def test_pruner_configs_build_allow_listed_pruners_only() -> None:
    assert isinstance(build_pruner(None), optuna.pruners.NopPruner)
    assert set(PRUNERS) == {
        f"optuna.pruners.{name}Pruner"
        for name in ("Nop", "Median", "Percentile", "SuccessiveHalving", "Hyperband", "Threshold")
    }
    median = build_pruner({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1})
    assert isinstance(median, optuna.pruners.MedianPruner)
    with pytest.raises(ConfigError, match="MedianPruner refuses"):
        build_pruner({"_target_": "optuna.pruners.MedianPruner", "n_startup_trial": 2})  # a typo
    with pytest.raises(ConfigError, match="not a pruner this sweeper builds"):
        build_pruner({"_target_": "optuna.pruners.PatientPruner", "wrapped_pruner": None, "patience": 1})
    with pytest.raises(ConfigError, match="plain keyword arguments"):
        build_pruner({"_target_": "optuna.pruners.ThresholdPruner", "lower": {"_target_": "os.system"}})


@pytest.mark.parametrize(
    "value",
    ["sqlite:////tmp/a b/optuna.db", "postgresql://u:p'a\\ss${x}@h:5432/db", "a\\", "x\\'y", "c:\\\\x\\", "'"],
)
def test_storage_urls_reach_the_job_unchanged(value: str) -> None:
    (override,) = OverridesParser.create().parse_overrides([f"+sweep_trial.storage={hydra_quoted(value)}"])
    assert OmegaConf.create({"storage": override.value()}).storage == value
