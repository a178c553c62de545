"""hydra-submitit-launcher as the sweep's launcher (issue 17; `pip install -e '.[slurm]'`, else these skip):
the project's SLURM config reaches sbatch, and a sweep through submitit's local executor (each trial a process
of its own, as each trial is a SLURM array task on a cluster) shares its study through the RDB storage,
completes, and resumes after the sweep was killed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from optuna.trial import TrialState

from anomaly_lab.configs import CONFIG_DIR
from tests.sweep_workers import (
    HANG_GUARD_S,
    hold,
    kill_group,
    kill_started,
    only_study,
    start_worker,
    sweep_args,
    wait_for_markers,
)

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
    reason="hydra-submitit-launcher is not installed: pip install -e '.[slurm]'",
)


@pytest.fixture(autouse=True)
def no_worker_left() -> Iterator[None]:
    yield
    kill_started()


class Submitted(Exception):
    """Raised in place of running sbatch; carries the script submitit wrote."""


def test_the_slurm_launcher_config_reaches_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from submitit.slurm.slurm import SlurmExecutor

    fake_bin = tmp_path / "bin"  # submitit's SLURM executor refuses to start where srun is not on PATH
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")

    def submit(executor: SlurmExecutor, command: str) -> None:
        raise Submitted(executor._make_submission_file_text(command, "uid"))

    monkeypatch.setattr(SlurmExecutor, "_submit_command", submit)
    overrides = [
        "hparams_search=bottles_thesis",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.array_parallelism=2",
        "hydra.launcher.setup=[module load cuda/12.8]",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    with pytest.raises(Submitted) as submitted:  # the launcher pickles itself with the config for each job first
        launcher.launch([["masking.ratio=0.25"], ["masking.ratio=0.5"], ["masking.ratio=0.75"]], initial_job_idx=0)
    sbatch = set(str(submitted.value).splitlines())
    expected = [
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=240",
        "#SBATCH --array=0-2%2",  # one array task per trial, at most array_parallelism at once
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "module load cuda/12.8",
    ]
    assert [line for line in expected if line not in sbatch] == []


@pytest.fixture
def local_sweep(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], str]:
    """The tiny thesis sweep through submitit's local executor (hydra/launcher=slurm_local: hydra/launcher=slurm's
    launcher), its study in an SQLite file (one host); its storage URL."""
    storage = f"sqlite:///{tmp_path}/outputs/sweeps/optuna.db"
    cache = tmp_path_factory.getbasetemp() / "cache"
    args = sweep_args(tmp_path, cache, storage, n_trials=3)
    return [*args, "hydra/launcher=slurm_local", "hydra.launcher.timeout_min=10"], storage


@pytest.mark.slow
def test_a_sweep_through_submitit_local_completes_and_resumes_after_a_crash(
    tmp_path: Path, local_sweep: tuple[list[str], str]
) -> None:
    args, storage = local_sweep
    # the sweep completes its first trial and is killed (SIGKILL, its process group) while the second trains
    marker, never = tmp_path / "held", tmp_path / "never-released"
    sweeper = start_worker([*args, hold(marker, never, job_num=1)], tmp_path / "killed.log")
    wait_for_markers([marker], [sweeper], str(tmp_path / "killed.log"))
    job_pid = int(marker.read_text())
    assert job_pid != sweeper.pid  # the trial runs in a process of its own, started by submitit
    kill_group(sweeper)
    with contextlib.suppress(ProcessLookupError):
        os.kill(job_pid, signal.SIGKILL)
    before = only_study(storage).get_trials()
    completed = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    (killed,) = [t for t in before if t.state == TrialState.RUNNING]
    assert completed and killed.user_attrs["owner"]["pid"] == sweeper.pid

    # the same command again, two trials per round (an array of two local jobs)
    rerun = start_worker([*args, "hydra.sweeper.n_jobs=2"], tmp_path / "rerun.log")
    assert rerun.wait(timeout=HANG_GUARD_S) == 0, tmp_path / "rerun.log"
    after = {t.number: t for t in only_study(storage).get_trials()}
    for number, value in completed.items():
        assert after[number].state == TrialState.COMPLETE and after[number].value == value
    assert after[killed.number].state == TrialState.FAIL
    reason = f"its worker process {sweeper.pid} on {socket.gethostname()} is gone"
    assert after[killed.number].user_attrs["failed_because"] == reason
    complete = [t for t in after.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and TrialState.RUNNING not in {t.state for t in after.values()}
    # each run's job returned its objective to the sweeper, which told it to the study
    trained = [t for t in complete if "duplicate_of" not in t.user_attrs]
    for trial in trained:
        metrics = json.loads((Path(trial.user_attrs["output_dir"]) / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val/wasserstein"])
    results = list(tmp_path.glob("outputs/sweeps/*/*/.submitit/*/*_result.pkl"))
    assert len(results) == len(trained)  # the killed job left none


@pytest.mark.slow
def test_a_killed_job_fails_its_trial_and_the_sweep_goes_on(tmp_path: Path, local_sweep: tuple[list[str], str]) -> None:
    args, storage = local_sweep
    marker, never = tmp_path / "held", tmp_path / "never-released"
    # two trials in one array; the first job dies as on a node failure, an out-of-memory kill or SLURM's time limit
    args = [*args, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", hold(marker, never, job_num=0)]
    sweeper = start_worker(args, tmp_path / "sweep.log")
    wait_for_markers([marker], [sweeper], str(tmp_path / "sweep.log"))
    os.kill(int(marker.read_text()), signal.SIGKILL)
    returncode = sweeper.wait(timeout=HANG_GUARD_S)
    trials = only_study(storage).get_trials()
    assert (returncode, sorted(t.state.name for t in trials)) == (0, ["COMPLETE", "FAIL"]), tmp_path / "sweep.log"
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    assert "UncompletedJobError" in dead.user_attrs["error"]  # submitit's, with the job's id
