"""Sweep faults as users cause them: a worker killed with SIGKILL mid-trial and the sweep re-run at once, a
trial killed right after ask(), and a run whose model collapsed."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from anomaly_lab.sweeps.resumable_optuna import (
    ResumableOptunaSweeperImpl,
    fail_trials_of_dead_workers,
    rdb_storage,
    this_process,
)
from anomaly_lab.tools import sweep_report
from tests.test_sweep import kill_sweep_during_job, load, one_torch_thread, sweep, sweep_args  # noqa: F401 (fixtures)

LONG_GRACE = ["hydra.sweeper.grace_period=3600"]  # far longer than the test: heartbeats cannot be what fails a trial


def table_cells(table: str) -> dict[int, dict[str, str]]:
    """The report's trials table as {trial number: {column: cell}}, cut where its line of dashes says."""
    header, dashes, *rows = table.splitlines()
    spans, start = [], 0
    for dash in dashes.split("  "):
        spans.append(slice(start, start + len(dash)))
        start += len(dash) + 2
    names = [header[span].strip() for span in spans]
    return {
        int(row[spans[0]]): {name: row[span].strip() for name, span in zip(names, spans, strict=True)} for row in rows
    }


def test_a_killed_workers_trial_fails_at_the_start_of_the_rerun_and_the_study_reaches_n_trials(
    sweep_args: list[str],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = [*sweep_args, "hydra.sweeper.n_trials=2", *LONG_GRACE]
    pid = kill_sweep_during_job(args, tmp_path, job=0)
    (killed,) = load(tmp_path).get_trials()
    assert killed.state == TrialState.RUNNING and killed.user_attrs["owner"]["pid"] == pid

    sweep(args, monkeypatch)  # at once: well within the grace period
    trials = {t.number: t for t in load(tmp_path).get_trials()}
    failed = trials[killed.number]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["failed_because"] == f"its worker process {pid} on {socket.gethostname()} is gone"
    rerun = [t for t in trials.values() if t.number != killed.number]
    assert failed.datetime_complete is not None
    assert all(t.datetime_start is not None and failed.datetime_complete <= t.datetime_start for t in rerun)
    assert [t.state for t in rerun] == [TrialState.COMPLETE] * 2

    # the report shows run times of complete trials apart from the time until the killed one was failed
    cells = table_cells(sweep_report.trials_table(list(trials.values())))
    assert cells[killed.number]["seconds"] == "-" and float(cells[killed.number]["failed after"]) > 0
    for trial in rerun:
        assert float(cells[trial.number]["seconds"]) > 0 and cells[trial.number]["failed after"] == "-"
    notes = sweep_report.trial_notes(list(trials.values()))  # a tiny run may also collapse: a note of its own
    assert f"trial {killed.number} failed: its worker process {pid} on {socket.gethostname()} is gone" in notes


def test_trials_of_gone_workers_on_this_host_fail_whatever_the_grace_period(tmp_path: Path) -> None:
    storage = rdb_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    finished = subprocess.Popen(["true"])
    finished.wait()
    me = this_process()
    owners = {
        "alive": me,
        "gone": {**me, "pid": finished.pid},
        "pid reused": {**me, "started": (me["started"] or 0) + 1},
        "gone on another host": {**me, "host": f"not-{me['host']}", "pid": finished.pid},
    }
    trials = {}
    for name, owner in owners.items():
        trials[name] = study.ask()
        trials[name].set_user_attr("owner", owner)
    trials["asked, never owned"] = study.ask()  # killed between ask() and recording its owner
    trials["owner unknown, beating"] = study.ask()  # left to the heartbeats
    storage.record_heartbeat(trials["owner unknown, beating"]._trial_id)

    def failed() -> set[str]:
        return {name for name, t in trials.items() if study._storage.get_trial(t._trial_id).state == TrialState.FAIL}

    fail_trials_of_dead_workers(study, storage, grace_period=3600)
    assert failed() == {"gone", "pid reused"}
    reason = study._storage.get_trial(trials["gone"]._trial_id).user_attrs["failed_because"]
    assert reason == f"its worker process {finished.pid} on {me['host']} is gone"

    fail_trials_of_dead_workers(study, storage, grace_period=0)
    assert failed() == {"gone", "pid reused", "asked, never owned"}


def finished_job(output_dir: Path, value: float, metrics: dict[str, object]) -> JobReturn:
    """What the launcher returns for a run that wrote `metrics` to its metrics.json."""
    output_dir.mkdir(parents=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics))
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(output_dir)}}})
    return JobReturn(hydra_cfg=hydra_cfg, status=JobStatus.COMPLETED, _return_value=value)


def test_a_collapsed_run_completes_marked_and_the_report_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = optuna.create_study(direction="maximize")
    reasons = ["constant output", "loss not decreasing", "val/image_auroc 0.5 at or below chance"]
    jobs = [
        finished_job(tmp_path / "0", 0.1, {"collapsed": True, "collapse_reasons": reasons}),
        finished_job(tmp_path / "1", 0.9, {"collapsed": False, "collapse_reasons": []}),
        finished_job(tmp_path / "2", 0.8, {}),  # a run from before collapse checks
    ]
    with caplog.at_level(logging.WARNING):
        for job in jobs:
            assert ResumableOptunaSweeperImpl._tell(study, study.ask(), job) is None
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 and [t.value for t in trials] == [0.1, 0.9, 0.8]
    assert trials[0].user_attrs["collapsed"] == "; ".join(reasons)
    assert "collapsed" not in trials[1].user_attrs and "collapsed" not in trials[2].user_attrs
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert warnings == [f"trial 0 collapsed: {'; '.join(reasons)}"]

    cells = table_cells(sweep_report.trials_table(trials))
    assert [cells[n]["state"] for n in range(3)] == ["COMPLETE (collapsed)", "COMPLETE", "COMPLETE"]
    assert sweep_report.trial_notes(trials) == [f"trial 0 collapsed: {'; '.join(reasons)}"]
