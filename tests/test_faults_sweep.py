"""Sweep faults as users cause them: a worker killed with SIGKILL mid-trial and the sweep re-run at once, a
trial killed right after ask(), a run whose model collapsed, a sweep of other data under a study's name, a storage
that cannot be opened and a study name that is not a folder name."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.storages import RDBStorage
from optuna.storages._rdb.models import TrialHeartbeatModel
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from anomaly_lab.sweeps.resumable_optuna import (
    ResumableOptunaSweeperImpl,
    fail_trial,
    fail_trials_of_dead_workers,
    rdb_storage,
    this_process,
)
from anomaly_lab.tools import sweep_report
from tests.conftest import FAST_SWEEP, TINY
from tests.sweep_workers import sweep_process
from tests.test_sweep import (  # noqa: F401 (fixtures)
    HANG_GUARD_S,
    REPO,
    kill_sweep_during_job,
    load,
    one_torch_thread,
    sweep,
    sweep_args,
)

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


@pytest.mark.slow
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


def set_heartbeat(storage: RDBStorage, trial_id: int, seconds_ago: float) -> None:
    """The trial's last heartbeat, `seconds_ago` s before now by SQLite's clock (UTC); negative: after now, as
    PostgreSQL's transaction-start now() sees a heartbeat committed while the check runs."""
    storage.record_heartbeat(trial_id)
    when = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=seconds_ago)
    with _create_scoped_session(storage.scoped_session) as session:
        session.query(TrialHeartbeatModel).filter(TrialHeartbeatModel.trial_id == trial_id).update({"heartbeat": when})


def test_trials_of_dead_workers_fail_by_process_or_heartbeat(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = rdb_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=1)
    study = optuna.create_study(storage=storage)
    finished = subprocess.Popen(["true"])
    finished.wait()
    me = this_process()
    elsewhere = {**me, "host": f"not-{me['host']}", "pid": finished.pid}
    owners = {
        "alive": me,
        "gone": {**me, "pid": finished.pid},
        "pid reused": {**me, "started": (me["started"] or 0) + 1},
        "gone on another host": elsewhere,  # and never beat: killed right after ask()
        "silent on another host": elsewhere,
        "beating on another host": elsewhere,
    }
    trials = {}
    for name, owner in owners.items():
        trials[name] = study.ask()
        trials[name].set_user_attr("owner", owner)
    trials["asked, never owned"] = study.ask()  # killed between ask() and recording its owner
    set_heartbeat(storage, trials["silent on another host"]._trial_id, seconds_ago=7200)
    set_heartbeat(storage, trials["beating on another host"]._trial_id, seconds_ago=-1)

    def failed() -> set[str]:
        return {name for name, t in trials.items() if study._storage.get_trial(t._trial_id).state == TrialState.FAIL}

    with caplog.at_level(logging.WARNING):
        fail_trials_of_dead_workers(study, storage, grace_period=3600)
    assert failed() == {"gone", "pid reused", "silent on another host"}
    reason = study._storage.get_trial(trials["gone"]._trial_id).user_attrs["failed_because"]
    assert reason == f"its worker process {finished.pid} on {me['host']} is gone"
    silent = study._storage.get_trial(trials["silent on another host"]._trial_id)
    assert silent.user_attrs["failed_because"].startswith(f"its worker on not-{me['host']} is silent: no heartbeat for")
    assert f"trial {silent.number} failed: its worker on not-{me['host']} is silent" in caplog.text

    # a heartbeat newer than the database's now() is not stale, however short the grace period (optuna 2.10 reads
    # it as 86399 s old); the trials that never beat are
    fail_trials_of_dead_workers(study, storage, grace_period=0)
    assert failed() == set(trials) - {"alive", "beating on another host"}


def test_workers_that_fail_one_trial_both_go_on_and_its_own_worker_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/optuna.db"
    storage = rdb_storage(url, heartbeat_interval=1)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask()  # this worker's, judged dead by two others at once
    workers = [optuna.load_study(study_name="s", storage=rdb_storage(url, heartbeat_interval=1)) for _ in range(2)]
    frozen = workers[0].get_trials()[0]
    assert fail_trial(workers[0], frozen, "silent") and not fail_trial(workers[1], frozen, "silent")

    # the run ends after all: nothing recorded, nothing raised, a warning says why
    job = finished_job(tmp_path / "0", 0.5, {})
    with caplog.at_level(logging.WARNING):
        assert ResumableOptunaSweeperImpl._tell(study, trial, job, storage) is None
    stored = storage.get_trial(trial._trial_id)
    assert stored.state == TrialState.FAIL and stored.user_attrs["failed_because"] == "silent"
    assert "trial 0 was already FAIL when its run ended (silent): its outcome (0.5) is not recorded" in caplog.text


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


def test_a_launcher_that_raises_fails_the_rounds_trials_and_the_sweep_goes_on() -> None:
    class Broken:  # as hydra-submitit-launcher's own launch when one job of the array died
        def launch(self, jobs: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
            raise RuntimeError("node failure")

    sweeper = ResumableOptunaSweeperImpl.__new__(ResumableOptunaSweeperImpl)  # only what _launch uses
    sweeper.launcher, sweeper.job_idx = Broken(), 0  # type: ignore[assignment]
    study = optuna.create_study()
    trials = [study.ask(), study.ask()]
    errors = sweeper._launch(study, study._storage, [(trial, ["masking.ratio=0.5"]) for trial in trials])
    assert [str(error) for error in errors] == ["node failure"] * 2 and sweeper.job_idx == 2
    for trial in study.get_trials():
        assert trial.state == TrialState.FAIL and trial.user_attrs["error"] == "RuntimeError: node failure"


PASSWORD = "s3cret-Pw-not-shown"


def one_line_refusal(process: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused sweep prints (exit 2, nothing else on the console)."""
    output = process.stdout + process.stderr
    assert process.returncode == 2, output
    assert process.stdout == "" and len(process.stderr.strip().splitlines()) == 1, output
    return process.stderr.strip()


@pytest.mark.slow
def test_a_sweep_of_other_data_under_a_studys_name_is_refused_naming_both(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # as in the issue: a 1-point space, a finished study on one folder, then the same study_name on another folder
    # (before: "all 1 points of the search space have finished", the first data's best value, exit 0)
    from anomaly_lab.data.synthetic import write_synthetic_bottles

    sizes = {"size": 32, "n_train": 8, "n_test_good": 3, "n_test_per_defect": 2}
    bottle = write_synthetic_bottles(tmp_path / "data" / "bottle", **sizes, seed=0).resolve()
    screw = write_synthetic_bottles(tmp_path / "data" / "screw", **sizes, seed=1).resolve()
    one_point = ["optimizer.lr=1e-3", "masking.grid_sizes=[2]", "masking.ratio=0.5"]
    storage = f"sqlite:///{tmp_path}/optuna.db"

    def args(root: Path) -> list[str]:
        common = [*TINY, *FAST_SWEEP, *one_point, f"paths.root_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache"]
        return [
            "hparams_search=bottles_thesis",
            *common,
            "dataset=mvtec",
            f"dataset.root={root}",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=shared",
            "hydra.sweeper.n_trials=2",  # more than the 1-point space holds, as in the issue
        ]

    first = sweep_process(args(bottle))
    assert first.returncode == 0, first.stdout + first.stderr
    study = optuna.load_study(study_name="shared", storage=storage)
    (trained,) = study.get_trials()
    assert trained.state == TrialState.COMPLETE
    assert study.user_attrs["data"]["root"] == str(bottle) == trained.user_attrs["data"]["root"]  # each trial's data
    sweep_folders = sorted((tmp_path / "outputs" / "sweeps" / "shared").iterdir())

    line = one_line_refusal(sweep_process(args(screw)))
    assert line.startswith(
        f"ConfigError: hydra.sweeper.study_name='shared' in {storage} holds trials of other data (root='{bottle}') "
        f"than this sweep's (root='{screw}'): choose another hydra.sweeper.study_name"
    ), line
    assert "hydra.sweeper.allow_other_data=true" in line
    assert [t.number for t in optuna.load_study(study_name="shared", storage=storage).get_trials()] == [0]
    assert sorted((tmp_path / "outputs" / "sweeps" / "shared").iterdir()) == sweep_folders  # nothing written

    # the user means it (the data moved): the study's finished point counts, nothing trains again
    joined = sweep_process([*args(screw), "hydra.sweeper.allow_other_data=true"])
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert f"holds trials of other data (root='{bottle}') than this sweep's (root='{screw}'): joined" in joined.stdout
    assert "all 1 points of the search space have finished" in joined.stdout
    assert [t.number for t in optuna.load_study(study_name="shared", storage=storage).get_trials()] == [0]


def closed_port() -> int:
    """A local TCP port nothing listens on (bound a moment ago, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def read_only_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in: mode 555; as root (who writes whatever the mode) procfs, which refuses
    new files to root too."""
    if os.geteuid() == 0:
        return Path("/proc")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


STORAGE_FAULTS = {
    # a dialect or driver SQLAlchemy does not know (a typo)
    "no such driver": (
        f"postgresql+nonexistentdriver://optuna:{PASSWORD}@localhost/optuna",
        "SQLAlchemy has no driver 'postgresql+nonexistentdriver' (a typo, or the package that provides it is not "
        "installed)",
    ),
    # a known dialect whose driver package is not installed (mysqlclient)
    "driver not installed": (
        f"mysql://optuna:{PASSWORD}@localhost/optuna",
        "its database driver is not installed (ModuleNotFoundError: No module named 'MySQLdb')",
    ),
    "server unreachable": (
        f"postgresql://optuna:{PASSWORD}@127.0.0.1:{{port}}/optuna",
        'OperationalError: connection to server at "127.0.0.1", port {port} failed: Connection refused',
    ),
    "SQLite in a read-only folder": (
        "sqlite:///{read_only}/optuna.db",
        "OperationalError: unable to open database file; SQLite creates and writes the study file and its journal in "
        "{read_only}: is it writable?",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(STORAGE_FAULTS))
def test_a_storage_that_cannot_be_opened_is_one_line_naming_it_and_the_cause(
    fault: str,
    sweep_args: list[str],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    if fault == "driver not installed" and importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed here: the driver is not missing")
    if fault == "server unreachable" and importlib.util.find_spec("psycopg2") is None:
        pytest.skip("psycopg2 is not installed (pip install -e '.[postgres]'): no connection is tried")
    url, cause = STORAGE_FAULTS[fault]
    where = {"port": closed_port(), "read_only": read_only_folder(tmp_path)}
    url, cause = url.format(**where), cause.format(**where)
    line = one_line_refusal(sweep_process([*sweep_args, f"hydra.sweeper.storage='{url}'"]))
    masked = url.replace(PASSWORD, "***")
    assert line.startswith(f"StudyStorageError: hydra.sweeper.storage='{masked}' cannot be opened: {cause}"), line
    assert PASSWORD not in line
    assert not (tmp_path / "outputs").exists()  # no sweep folder, no trial


@pytest.mark.slow
def test_a_study_name_with_a_slash_is_refused_before_any_folder_is_made(
    sweep_args: list[str],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    line = one_line_refusal(sweep_process([*sweep_args, "hydra.sweeper.study_name=bottle/screw"]))
    assert line.startswith("ConfigError: hydra.sweeper.study_name='bottle/screw': a study name also names the sweep's")
    assert not (tmp_path / "outputs").exists()  # no outputs/sweeps/bottle/screw/..., no study database
