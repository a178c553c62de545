"""Sweep workers as real processes, for tests/test_postgres.py and tests/test_submitit.py.

- `start_postgres`: a throwaway PostgreSQL server: pgserver's (a registry wheel bundling the server binaries,
  the `postgres` extra), else this machine's initdb/pg_ctl; `PostgresUnavailable` says why neither started.
- `python -m tests.sweep_workers --host NAME <train arguments>`: `python -m anomaly_lab.train` on a pretend
  host, so a worker killed on "another host" can only be noticed through its heartbeats, as on a cluster.
- `HoldUntilReleased`: holds one job of a sweep as its training starts (marker file written) until the test
  creates the release file, so a test kills or releases workers at a known point however busy the machine is.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 600  # only stops a hung process: no assertion depends on how long a trial takes


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be started here; the message says why (the tests skip with it)."""


@dataclass
class Postgres:
    """A running server that listens on a Unix socket in `socket_dir` only (no TCP port to collide with)."""

    socket_dir: Path
    stop: Any = field(repr=False)  # () -> None
    how: str = ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        import sqlalchemy

        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)


def _system_binaries() -> Path | None:
    """The folder holding this machine's initdb and pg_ctl (on PATH or Debian's /usr/lib/postgresql/<v>/bin)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl", path=str(Path(initdb).resolve().parent)):
        return Path(initdb).resolve().parent
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _start_pgserver(root: Path) -> Postgres:
    import pgserver

    server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")  # as root it runs the server as `pgserver`
    info = server.get_postmaster_info()
    socket_dir = Path(str(info.socket_dir)) if getattr(info, "socket_dir", None) else root / "pgdata"
    return Postgres(socket_dir=socket_dir, stop=server.cleanup, how=f"pgserver {pgserver_version()}")


def pgserver_version() -> str:
    from importlib.metadata import version

    return version("pgserver")


def _start_system(root: Path, binaries: Path) -> Postgres:
    """initdb + pg_ctl from this machine; PostgreSQL refuses to run as root, so as root as `nobody`."""
    data = root / "pgdata"
    data.mkdir()
    user: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in (root, data):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=120, cwd=root, **user)

    run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    options = f"-h '' -k {root} -c fsync=off"  # a Unix socket only; a throwaway server need not sync
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "-t", "60", "start")

    def stop() -> None:
        subprocess.run([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], cwd=root, **user)

    return Postgres(socket_dir=root, stop=stop, how=f"system PostgreSQL in {binaries}")


def start_postgres() -> tuple[Postgres, Path]:
    """Start a throwaway server in a new folder under the system temp dir (short: a Unix socket path has at most
    107 bytes; world-traversable, as a server run as another user needs). Returns it and the folder, which
    the caller removes after `stop()`."""
    if importlib.util.find_spec("psycopg2") is None:
        raise PostgresUnavailable("psycopg2 is not installed: pip install -e '.[postgres]'")
    root = Path(tempfile.mkdtemp(prefix="anomaly_lab_pg_"))
    root.chmod(0o755)
    reasons = []
    if importlib.util.find_spec("pgserver") is not None:
        try:
            return _start_pgserver(root), root
        except Exception as error:  # e.g. no user may be created for the server
            reasons.append(f"pgserver: {type(error).__name__}: {error}")
            shutil.rmtree(root / "pgdata", ignore_errors=True)
    else:
        reasons.append("pgserver is not installed (pip install -e '.[postgres]')")
    binaries = _system_binaries()
    if binaries is None:
        reasons.append("no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin")
    else:
        try:
            return _start_system(root, binaries), root
        except (OSError, subprocess.SubprocessError, KeyError) as error:
            detail = getattr(error, "stderr", "") or ""
            reasons.append(f"{binaries}: {type(error).__name__}: {error} {detail.strip()[-300:]}")
    shutil.rmtree(root, ignore_errors=True)
    raise PostgresUnavailable("; ".join(reasons))


class HoldUntilReleased(L.Callback):
    """At the start of training of sweep job number `job_num` (hydra.job.num: 0 is the first trial a sweep
    process trains, whichever launcher runs it), write `marker` (holding the process id) and wait until
    `release` exists (at most `wait` s); meanwhile the test kills the process or releases it."""

    def __init__(self, marker: str, release: str, job_num: int = 0, wait: float = HANG_GUARD_S) -> None:
        self.marker, self.release, self.job_num, self.wait = Path(marker), Path(release), job_num, wait

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.get().job.num != self.job_num:
            return
        self.marker.write_text(f"{os.getpid()}\n")
        deadline = time.monotonic() + self.wait
        while not self.release.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def hold(marker: Path, release: Path, job_num: int = 0) -> str:
    """The override that adds a HoldUntilReleased callback to a sweep's runs."""
    spec = f"_target_: tests.sweep_workers.HoldUntilReleased, marker: {marker}, release: {release}"
    return f"+callbacks.hold={{{spec}, job_num: {job_num}}}"


STARTED: list[subprocess.Popen[bytes]] = []  # every worker start_worker started, for kill_started


def start_worker(args: Sequence[str], log: Path, host: str | None = None) -> subprocess.Popen[bytes]:
    """`python -m anomaly_lab.train --multirun <args>` (on the pretend `host`) in a session of its own, output
    to `log`."""
    module = ["-m", "tests.sweep_workers", "--host", host] if host else ["-m", "anomaly_lab.train"]
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, *module, "--multirun", *args],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    STARTED.append(worker)
    return worker


def kill_started() -> None:
    """Kill the workers still running (a test that failed half-way leaves them holding), each with its session."""
    while STARTED:
        worker = STARTED.pop()
        if worker.poll() is None:
            kill_group(worker)


def wait_for_markers(markers: Sequence[Path], workers: Sequence[subprocess.Popen[bytes]], logs: str) -> None:
    """Wait until every marker exists; fail if a worker exits first or the hang guard runs out."""
    import pytest

    deadline = time.monotonic() + HANG_GUARD_S
    while not all(marker.exists() for marker in markers):
        ended = [w.args for w in workers if w.poll() is not None]
        if ended or time.monotonic() > deadline:
            pytest.fail(f"not every worker reached its hold ({ended or 'hang guard'}); logs: {logs}")
        time.sleep(0.2)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and everything it started (its session), as `kill -9` of a whole job would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def main(argv: Sequence[str]) -> None:
    """`python -m tests.sweep_workers [--host NAME] <train arguments>`: train's command line, on `NAME`."""
    args = list(argv)
    if args[:1] == ["--host"]:
        host = args[1]
        socket.gethostname = lambda: host  # what the sweeper records as the trial's owner host
        args = args[2:]
    sys.argv = ["anomaly_lab.train", *args]
    from anomaly_lab.train import main as train_main

    train_main()


if __name__ == "__main__":
    main(sys.argv[1:])


def sweep_args(root: Path, cache: Path, storage: str, n_trials: int) -> list[str]:
    """The thesis sweep on tiny data (tests/conftest.py's TINY and FAST_SWEEP: heartbeats every second) with its
    study in `storage`; trial folders under root/outputs/sweeps."""
    from tests.conftest import FAST_SWEEP, TINY, TINY_SYNTHETIC

    return [
        "hparams_search=bottles_thesis",
        *TINY,
        *TINY_SYNTHETIC,
        *FAST_SWEEP,
        f"paths.root_dir={root}",
        f"paths.cache_dir={cache}",
        f"hydra.sweeper.storage='{storage}'",
        f"hydra.sweeper.n_trials={n_trials}",
    ]


def only_study(storage: str) -> Any:
    """The one study in `storage` (optuna.Study); None while there is none."""
    import optuna

    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    if not names:
        return None
    (name,) = names
    return optuna.load_study(study_name=name, storage=storage)


def sweep_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m anomaly_lab.train --multirun <args>` as a user runs it (no HYDRA_FULL_ERROR), its output kept."""
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "anomaly_lab.train", "--multirun", *args],
        cwd=REPO,
        env={**environment, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
