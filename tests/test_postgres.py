"""Sweep workers sharing one study on a real PostgreSQL server (issue 17): the server is started here, from the
`pgserver` wheel (`pip install -e '.[postgres]'`) or this machine's initdb/pg_ctl; without either the tests skip
and say why. Workers are real `python -m anomaly_lab.train --multirun` processes on tiny data."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.sweep_workers import (
    HANG_GUARD_S,
    REPO,
    Postgres,
    PostgresUnavailable,
    hold,
    kill_group,
    kill_started,
    only_study,
    start_postgres,
    start_worker,
    sweep_args,
    sweep_process,
    wait_for_markers,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR is not set"),
]  # pgserver's platformdirs

GRACE_S = 2  # FAST_SWEEP beats every second; optuna's grace period is then 2 x 1 s
ELSEWHERE = "worker-on-another-host.invalid"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    try:
        server, root = start_postgres()
    except PostgresUnavailable as reason:
        pytest.skip(f"no PostgreSQL server could be started here: {reason}")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_worker_left() -> Iterator[None]:
    yield
    kill_started()


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "cache"


def new_study_database(postgres: Postgres, name: str) -> str:
    """An empty database, without optuna's tables: the workers started on it together create them."""
    return postgres.create_database(name)


def join_study(url: str, barrier: Any, created: Any) -> None:
    """A worker's start on `url`: optuna's tables, then the study (in a forked process, once all are ready)."""
    import optuna

    from anomaly_lab.sweeps.resumable_optuna import open_study, rdb_storage

    barrier.wait()
    storage = rdb_storage(url, heartbeat_interval=1)
    _, made = open_study(storage, "together", "maximize", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner())
    created.put(made)


def test_workers_started_together_on_an_empty_database_all_join_one_study(postgres: Postgres) -> None:
    # PostgreSQL refuses concurrent CREATE TYPE/TABLE of one name (pg_type_typname_nsp_index): the losers retry
    import optuna

    url = postgres.create_database("together")
    context = multiprocessing.get_context("fork")
    n = 6
    barrier, created = context.Barrier(n), context.Queue()
    workers = [context.Process(target=join_study, args=(url, barrier, created)) for _ in range(n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=HANG_GUARD_S)
    assert [worker.exitcode for worker in workers] == [0] * n
    assert sorted(created.get(timeout=10) for _ in range(n)) == [False] * (n - 1) + [True]
    (summary,) = optuna.get_all_study_summaries(url)
    assert summary.study_name == "together" and summary.direction == optuna.study.StudyDirection.MAXIMIZE


def wait_until_each_trains_or_waits(names: list[str], folder: Path, workers: list[subprocess.Popen[bytes]]) -> None:
    """Until each worker holds its first run (marker `<name>.held`) or waits for another worker's run of the point
    it drew (its log says so: that point is not trained twice)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not all(
        (folder / f"{n}.held").exists() or "waits for it" in (folder / f"{n}.log").read_text() for n in names
    ):
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            pytest.fail(f"not every worker reached its hold or a wait; logs: {logs(folder)}")
        time.sleep(0.2)


def logs(folder: Path) -> str:
    return ", ".join(str(log) for log in sorted(folder.glob("*.log")))


def killed_trial(url: str) -> FrozenTrial:
    """The trial of the worker killed "on another host"."""
    (trial,) = [t for t in only_study(url).get_trials() if t.user_attrs.get("owner", {}).get("host") == ELSEWHERE]
    return trial


def params_key(params: dict[str, object]) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(params.items()))


def test_workers_share_one_study_a_killed_workers_trial_fails_and_the_report_reads_it(
    postgres: Postgres, tmp_path: Path, cache: Path
) -> None:
    n_trials, n_workers = 5, 3
    url = new_study_database(postgres, "shared")
    args = sweep_args(tmp_path, cache, url, n_trials)
    # every worker holds its first run until all three hold one (or wait for another's run of the point they drew);
    # then the one "on another host" is killed
    hosts = {"a": None, "b": None, "elsewhere": ELSEWHERE}
    workers = {
        name: start_worker(
            [*args, hold(tmp_path / f"{name}.held", tmp_path / f"{name}.release")], tmp_path / f"{name}.log", host
        )
        for name, host in hosts.items()
    }
    wait_until_each_trains_or_waits(list(workers), tmp_path, list(workers.values()))
    killed_at = datetime.now()
    kill_group(workers.pop("elsewhere"))
    time.sleep(GRACE_S + 1.5)  # its heartbeat goes stale; the held trials of the others keep beating
    # released together, both may fail the stale trial at once: the slower one finds it failed and goes on
    (tmp_path / "a.release").touch()
    (tmp_path / "b.release").touch()
    for name, worker in workers.items():
        assert worker.wait(timeout=HANG_GUARD_S) == 0, f"worker {name} failed: {tmp_path / name}.log"

    study = only_study(url)
    trials = study.get_trials()
    assert TrialState.RUNNING not in {t.state for t in trials}
    # the killed worker's trial: its owner is on another host, so no pid check applies; its heartbeat went stale
    killed = killed_trial(url)
    assert killed.state == TrialState.FAIL
    assert killed.datetime_complete is not None
    # failed once its heartbeat had been silent for the grace period (a bound against the kill's time would depend
    # on when its last beat ran, up to an interval before the kill, later under load)
    assert killed.datetime_complete > killed_at
    silent = rf"its worker on {re.escape(ELSEWHERE)} is silent: no heartbeat for \d+ s \(grace period {GRACE_S} s\)"
    assert re.fullmatch(silent, killed.user_attrs["failed_because"]), killed.user_attrs["failed_because"]
    # the others went on: every trial of theirs completed, the two held through the grace period included
    others = [t for t in trials if t.number != killed.number]
    assert {t.state for t in others} == {TrialState.COMPLETE}
    assert {t.user_attrs["owner"]["host"] for t in others} == {socket.gethostname()}
    assert len({t.user_attrs["owner"]["pid"] for t in others}) == 2
    # n_trials complete trials; n_workers workers may add up to n_workers - 1 more (README, sweeper docstring)
    assert n_trials <= len(others) <= n_trials + n_workers - 1

    trained = [t for t in others if "duplicate_of" not in t.user_attrs]
    for twin in (t for t in others if "duplicate_of" in t.user_attrs):  # told the value of a completed point
        original = next(t for t in trained if t.number == twin.user_attrs["duplicate_of"])
        assert twin.params == original.params and twin.value == original.value
    # no point trained twice: a point drawn while another worker trains it waits for that run's value
    by_point = defaultdict(list)
    for trial in trained:
        by_point[params_key(trial.params)].append(trial.number)
    assert [runs for runs in by_point.values() if len(runs) > 1] == []
    # each run in a folder of its own, whose metrics.json holds the value the study has
    folders = [trial.user_attrs["output_dir"] for trial in trained]
    assert len(set(folders)) == len(folders)
    for trial in trained:
        metrics = json.loads((Path(trial.user_attrs["output_dir"]) / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val/wasserstein"])

    # `make sweep-report ARGS="storage='...'"` runs this
    out = tmp_path / "report"
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "anomaly_lab.tools.sweep_report",
            f"storage='{url}'",
            f"study={study.study_name}",
            f"out={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert report.returncode == 0, report.stderr
    best = study.best_trial
    assert f"best trial {best.number}: objective {best.value:.6g}" in report.stdout
    rows = [line.split() for line in report.stdout.splitlines()]
    assert [row[1] for row in rows if row and row[0] == str(killed.number)] == ["FAIL"]
    for plot in ("optimization_history.png", "param_importances.png"):
        assert (out / plot).stat().st_size > 1000


def test_a_sweep_killed_mid_way_resumes_with_no_complete_trial_lost(
    postgres: Postgres, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n_trials = 8  # so that redrawn points (told, and counted) never end a worker before its second run
    url = new_study_database(postgres, "resumed")
    args = sweep_args(tmp_path, cache, url, n_trials)
    # two workers each complete one trial and are killed (SIGKILL, the whole process group) in their second
    never = tmp_path / "never-released"
    workers = [
        start_worker([*args, hold(tmp_path / f"{i}.held", never, job_num=1)], tmp_path / f"{i}.log") for i in range(2)
    ]
    wait_for_markers([tmp_path / f"{i}.held" for i in range(2)], workers, logs(tmp_path))
    for worker in workers:
        kill_group(worker)
    before = only_study(url).get_trials()
    completed = {t.number: t.value for t in before if t.state == TrialState.COMPLETE}
    running = {t.number: t.user_attrs["owner"]["pid"] for t in before if t.state == TrialState.RUNNING}
    assert len(completed) >= 2 and sorted(running.values()) == sorted(w.pid for w in workers)

    # the same command again, in this process: it fails the dead workers' trials at once and runs the missing ones
    monkeypatch.setattr(sys, "argv", ["anomaly_lab.train", "--multirun", *args])
    from anomaly_lab.train import main

    main()
    after = {t.number: t for t in only_study(url).get_trials()}
    for number, value in completed.items():
        assert after[number].state == TrialState.COMPLETE and after[number].value == value
    host = socket.gethostname()
    for number, pid in running.items():
        assert after[number].state == TrialState.FAIL
        assert after[number].user_attrs["failed_because"] == f"its worker process {pid} on {host} is gone"
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == n_trials
    assert TrialState.RUNNING not in {t.state for t in after.values()}


def test_workers_that_draw_the_same_point_at_once_train_it_once(
    postgres: Postgres, tmp_path: Path, cache: Path
) -> None:
    url = new_study_database(postgres, "pigeonhole")
    two_points = ["optimizer.lr=1e-3", "masking.grid_sizes=[2]"]  # left to draw: masking.ratio 0.25 or 0.5
    # n_trials well above the space's 2 points: a worker stops once both have finished. (With n_trials=2, three
    # workers whose first draws all hit one point would hold 3 finished trials of it and stop there.)
    args = [*sweep_args(tmp_path, cache, url, n_trials=24), *two_points]
    release = tmp_path / "release"
    workers = [start_worker([*args, hold(tmp_path / f"{i}.held", release)], tmp_path / f"{i}.log") for i in range(3)]
    # three workers, two points: hold every run until each worker has drawn its first point and every point drawn
    # is being trained, so all draws happen before any run completes
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        study = only_study(url)
        trials = [] if study is None else study.get_trials()
        drawn = {params_key(t.params) for t in trials if t.state == TrialState.RUNNING}
        holding = sum((tmp_path / f"{i}.held").exists() for i in range(3))
        if len(trials) >= 3 and holding >= len(drawn):
            break
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            pytest.fail(f"the workers did not all draw a point; logs: {logs(tmp_path)}")
        time.sleep(0.5)
    release.touch()
    for worker in workers:
        assert worker.wait(timeout=HANG_GUARD_S) == 0, logs(tmp_path)
    complete = [t for t in only_study(url).get_trials() if t.state == TrialState.COMPLETE]
    trained = sorted(t.params["masking.ratio"] for t in complete if "duplicate_of" not in t.user_attrs)
    assert trained == [0.25, 0.5], f"runs per point: {trained}"


PASSWORD = "pg-Secret-4e1d"  # the test server trusts its socket's clients: it takes the password and ignores it


def run_sweep(args: list[str], env: dict[str, str] | None = None) -> str:
    """`python -m anomaly_lab.train --multirun <args>` as a user runs it; its console output (exit 0 asserted)."""
    process = sweep_process(args, env)
    output = process.stdout + process.stderr
    assert process.returncode == 0, output
    return output


def test_a_storage_password_shows_in_no_console_line_and_no_file(
    postgres: Postgres, tmp_path: Path, cache: Path
) -> None:
    url = new_study_database(postgres, "secret").replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    assert PASSWORD in url
    masked = url.replace(PASSWORD, "***")
    # the URL on the command line; the console stays quiet (no config dump)
    quiet = run_sweep([*sweep_args(tmp_path, cache, url, n_trials=1), "masking.ratio=0.5"])
    assert f"in {masked}:" in quiet and "sweep_trial:" not in quiet
    # the URL from the environment (README), with the config dump asked for
    # (another mask ratio: a point of its own, so this run trains rather than takes the first run's value)
    from_env = [*sweep_args(tmp_path, cache, "${oc.env:ANOMALY_LAB_TEST_STORAGE}", n_trials=2), "masking.ratio=0.25"]
    verbose = run_sweep([*from_env, "hydra.verbose=anomaly_lab.train"], env={"ANOMALY_LAB_TEST_STORAGE": url})
    assert f"storage: {masked}" in verbose  # the dump, masked
    for console in (quiet, verbose):
        assert PASSWORD not in console

    study = only_study(url)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:  # each job reported its validations to the study: it had the real URL
        assert trial.intermediate_values, trial.number
    folders = [Path(trial.user_attrs["output_dir"]) for trial in trials]
    for folder in folders:  # Hydra wrote the masked URL (the job's own +sweep_trial.storage) into the run folder
        assert f"storage: {masked}" in (folder / ".hydra" / "config.yaml").read_text()
        assert f"+sweep_trial.storage='{masked}'" in (folder / ".hydra" / "overrides.yaml").read_text()
    assert f"storage: {masked}" in (folders[1] / "train.log").read_text()  # the verbose run's dump
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) > 10
    assert [path for path in written if PASSWORD.encode() in path.read_bytes()] == []
