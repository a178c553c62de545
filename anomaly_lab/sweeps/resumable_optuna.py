"""Optuna sweeps that survive crashes, kills and restarts: the loop behind `hydra/sweeper=resumable_optuna`.

hydra-optuna-sweeper 1.3 loads an existing study (load_if_exists) but then always launches n_trials
more, leaves the trials of a killed process RUNNING forever, and with one-job batches stops at the
first failed trial. This subclass keeps its search-space parsing and trial configuration and replaces
only the loop:

- n_trials is the number of finished (COMPLETE or PRUNED) trials the study should hold. A re-run of the same
  command launches only the missing ones; several processes (or hosts) on one storage share that budget
  (each stops once the study holds n_trials finished trials, so W workers may add up to W-1 more).
  One run launches at most n_trials trials, so a sweep whose trials keep failing ends.
- Each trial records its owner (host, pid, process start time) right after ask(). Every round first fails
  the RUNNING trials whose owner process on this host is gone (a `kill -9`), at once; those of other hosts
  are failed once their heartbeat, written to the RDB storage while the trial runs, stopped for longer than
  the grace period (optuna's fail_stale_trials).
- A COMPLETE trial whose run reports a collapse in its metrics.json (`collapsed`, `collapse_reasons`) keeps
  its value but gets user attr `collapsed` with the reasons, and a warning.
- A run joining a study that already has trials reseeds the sampler, so it does not replay the
  seeded draws of the run before it (only a fresh study is reproducible from the seed).
- A trial that raises (e.g. NonFiniteLossError on a NaN loss) or returns a non-finite value is told
  FAIL and the sweep goes on, until more than max_failure_rate * n_trials of its own trials failed.
- Training is seeded, so parameters that already COMPLETEd give the same value again: a trial the sampler
  draws with the parameters of a complete one is told that trial's value without training (user attr
  `duplicate_of`, as Optuna's FAQ advises); one drawn with the parameters of a PRUNED one is pruned again,
  with that trial's reports. TPE redraws its best point of a small categorical space often; once every point
  of a finite (all-categorical) space has finished, the sweep ends.
- Pruning (anomaly_lab.sweeps.pruning): the pruner of `hydra.sweeper.pruner` (an allow-listed optuna pruner;
  none by default) is the study's. Each job gets `+sweep_trial.storage/study/number`, reports its objective
  after each validation (step = epochs trained) and stops where the pruner says; the job then raises
  TrialPruned and the trial is told PRUNED (value: its last report). A pruned trial is a result, not a fault:
  it counts toward n_trials (FINISHED = COMPLETE or PRUNED) and never toward max_failure_rate.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.storages._rdb.models import TrialHeartbeatModel
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.engine import make_url

from anomaly_lab.errors import ConfigError
from anomaly_lab.sweeps.pruning import build_pruner, is_nop, pruner_settings, sweep_trial_overrides

# A finished trial counts toward n_trials when its run went to its end or was stopped by the pruner; a FAIL does not
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
log = logging.getLogger(__name__)


def rdb_storage(url: str, heartbeat_interval: int | None, grace_period: int | None = None) -> RDBStorage:
    """An RDB storage (with heartbeats unless heartbeat_interval is None); an SQLite file's folder is created."""
    parsed = make_url(url)
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        # several local workers wait for SQLite's file lock instead of failing after 5 s
        engine_kwargs["connect_args"] = {"timeout": 60}
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its schema set-up logs a dozen INFO lines
    return RDBStorage(
        url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period
    )


@contextmanager
def heartbeats(storage: BaseStorage, trials: Sequence[Trial], interval: float) -> Iterator[None]:
    """Record the trials' heartbeats every `interval` seconds while the block runs."""
    if not storage.is_heartbeat_enabled():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial in trials:
                storage.record_heartbeat(trial._trial_id)

    for trial in trials:  # at once, so a kill right after ask() still leaves a heartbeat to go stale
        storage.record_heartbeat(trial._trial_id)
    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def proc_stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None where /proc is absent or the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()  # field 2, the name in parentheses, may hold spaces


def pid_namespace() -> str | None:
    """This process's pid namespace: containers that share a hostname (host networking) do not share pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def this_process() -> dict[str, Any]:
    """Who runs a trial: host, pid and start time (field 22 of /proc/<pid>/stat, clock ticks after boot, which
    tells this process apart from a later one that gets the same pid)."""
    fields = proc_stat_fields(os.getpid())
    return {
        "host": socket.gethostname(),
        "pid_namespace": pid_namespace(),
        "pid": os.getpid(),
        "started": None if fields is None else int(fields[19]),
    }


def ask_owned(study: optuna.Study) -> Trial:
    """Ask for a trial and record its owner (user attr `owner`, one write) at once, so a re-run can fail it as
    soon as that process is gone."""
    trial = study.ask()
    trial.set_user_attr("owner", this_process())
    return trial


def process_is_alive(pid: int, started: int | None) -> bool:
    """Whether `pid` is still the live process that started at `started` (None: the pid alone decides)."""
    try:
        os.kill(pid, 0)  # signal 0 only checks that the pid exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists and belongs to another user
        pass
    fields = proc_stat_fields(pid)
    if fields is None:  # no /proc (or it just exited): the next round decides
        return True
    return fields[0] != "Z" and (started is None or int(fields[19]) == started)


def trials_with_heartbeat(storage: RDBStorage, trial_ids: Sequence[int]) -> set[int]:
    """The trials among `trial_ids` that ever recorded a heartbeat (optuna 2.10 has no public way to ask)."""
    with _create_scoped_session(storage.scoped_session) as session:
        rows = session.query(TrialHeartbeatModel.trial_id).filter(TrialHeartbeatModel.trial_id.in_(trial_ids))
        return {trial_id for (trial_id,) in rows}


def fail_trials_of_dead_workers(study: optuna.Study, storage: RDBStorage, grace_period: int) -> None:
    """Fail the RUNNING trials whose owner process on this host is gone, whatever the grace period, and those
    with neither owner nor heartbeat (killed right after ask()) older than the grace period. Trials of other
    hosts are left to the heartbeats (fail_stale_trials)."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    beating = trials_with_heartbeat(storage, [trial._trial_id for trial in running])
    here = this_process()
    for trial in running:
        owner, started = trial.user_attrs.get("owner"), trial.datetime_start or datetime.now()  # RUNNING: started
        if owner is not None:
            same_host = all(owner[key] == here[key] for key in ("host", "pid_namespace"))
            if not same_host or process_is_alive(owner["pid"], owner["started"]):
                continue
            reason = f"its worker process {owner['pid']} on {owner['host']} is gone"
        elif trial._trial_id not in beating and datetime.now() - started > timedelta(seconds=grace_period):
            reason = f"it has neither owner nor heartbeat {grace_period} s after it started (killed after ask())"
        else:
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "failed_because", reason)
            study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
        except RuntimeError:  # another worker on this host failed it first
            continue
        log.warning("trial %d failed: %s", trial.number, reason)


def collapse_reasons(output_dir: Path) -> str | None:
    """The reasons a run's metrics.json gives for a collapsed model; None when it did not collapse."""
    path = output_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    if not metrics.get("collapsed"):
        return None
    return "; ".join(metrics.get("collapse_reasons", [])) or "no reason given"


def finite_space_size(distributions: dict[str, BaseDistribution]) -> int | None:
    """The number of points of an all-categorical search space; None when any parameter is continuous."""
    size = 1
    for distribution in distributions.values():
        if not isinstance(distribution, CategoricalDistribution):
            return None
        size *= len(distribution.choices)
    return size


ParamsKey = tuple[tuple[str, Any], ...]


def params_key(params: dict[str, Any]) -> ParamsKey:
    return tuple(sorted(params.items()))


def finished_params(study: optuna.Study) -> dict[ParamsKey, FrozenTrial]:
    """The first COMPLETE trial of each distinct parameter set, or where none completed the first PRUNED one."""
    first: dict[ParamsKey, FrozenTrial] = {}
    for state in FINISHED:
        for trial in study.get_trials(deepcopy=False, states=(state,)):
            first.setdefault(params_key(trial.params), trial)
    return first


def tell_if_duplicate(study: optuna.Study, trial: Trial, finished: dict[ParamsKey, FrozenTrial]) -> bool:
    """Tell `trial` the outcome of the finished trial with the same parameters, if there is one: a complete
    twin's value, or a pruned twin's reports and PRUNED."""
    twin = finished.get(params_key(trial.params))
    if twin is None:
        return False
    log.info(
        "trial %d: the parameters of trial %d, %s with value %s (not trained again)",
        trial.number,
        twin.number,
        twin.state.name,
        twin.value,
    )
    trial.set_user_attr("duplicate_of", twin.number)
    if twin.state == TrialState.PRUNED:
        for step, value in sorted(twin.intermediate_values.items()):
            trial.report(value, step)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, twin.value)
    return True


def sync_reports(trial: Trial, backend: RDBStorage) -> None:
    """Copy the reports the trial's job wrote to the storage into this process's view of the trial.

    optuna's cached storage assumes a RUNNING trial is changed only by the process that asked for it and never
    reads it back; the job (another storage object, maybe another process) wrote its reports past that cache.
    """
    for step, value in sorted(backend.get_trial(trial._trial_id).intermediate_values.items()):
        trial.report(value, step)  # also written to the storage again: the same row, the same value


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(self, *, heartbeat_interval: int, grace_period: int | None, pruner: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        # the pruner's config, built (allow-list first) when the sweep starts: a refusal is one line, not a
        # Hydra instantiation error
        self.pruner_config: Any = (
            OmegaConf.to_container(pruner, resolve=True) if OmegaConf.is_config(pruner) else pruner
        )

    def _storage(self) -> BaseStorage:
        if self.storage is None:
            log.warning("hydra.sweeper.storage is null: the study lives in memory and cannot be resumed")
            return InMemoryStorage()
        return rdb_storage(str(self.storage), self.heartbeat_interval, self.grace_period)

    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        if isinstance(self.sampler, optuna.samplers.GridSampler) or not isinstance(
            self.sampler, optuna.samplers.BaseSampler
        ):
            raise ValueError(f"{self.sampler!r}: this sweeper takes an instantiated sampler (tpe, random, cmaes)")
        directions = self._get_directions()
        if len(directions) != 1:
            raise ValueError(f"one objective only (run(cfg) returns one float); got directions {directions}")
        self._process_searchspace_config()
        distributions, fixed_params = create_params_from_overrides([*self._parse_sweeper_params_config(), *arguments])
        distributions = {**(self.search_space_distributions or {}), **distributions}
        for name in fixed_params:
            distributions.pop(name, None)

        pruning = pruner_settings(self.pruner_config)
        pruner = build_pruner(pruning)
        if self.storage is None and not is_nop(pruning):
            raise ConfigError(
                "hydra.sweeper.pruner needs hydra.sweeper.storage (null here): each trial reports its validations "
                "to the study there"
            )
        storage = self._storage()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler,
            pruner=pruner,
            direction=directions[0],
            load_if_exists=True,
        )
        log.info(
            "study %r in %s: %s; target %d finished (complete or pruned); pruner %s",
            study.study_name,
            self.storage,
            self._describe(self._counts(study)),
            self.n_trials,
            type(pruner).__name__,
        )
        if study.get_trials(deepcopy=False):
            # a seeded sampler would replay the draws the earlier run (or the other worker) already made
            self.sampler.reseed_rng()
            log.info("the study has trials already: sampler reseeded so this run draws new parameters")
        # optuna's default: two heartbeats
        grace_period = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        launched = failed = 0
        last_error: BaseException | None = None
        space_size = finite_space_size(distributions)
        while launched < self.n_trials:
            if isinstance(storage, RDBStorage):
                fail_trials_of_dead_workers(study, storage, grace_period)
                with warnings.catch_warnings():  # experimental in optuna 2.10 (the pinned release), used knowingly
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            counts = self._counts(study)
            missing = self.n_trials - sum(counts[state] for state in FINISHED)
            if missing <= 0:
                break
            finished = finished_params(study)
            if space_size is not None and len(finished) >= space_size:
                log.info("all %d points of the search space have finished: the sweep is done", space_size)
                break
            asked = [ask_owned(study) for _ in range(min(missing, self.n_jobs, self.n_trials - launched))]
            asked_overrides = self._configure_trials(asked, distributions, fixed_params)
            if isinstance(storage, RDBStorage):  # the job finds its trial there, to report to it
                if not is_nop(pruning):
                    for trial in asked:
                        trial.set_user_attr("pruner", pruning)
                asked_overrides = [
                    (*o, *sweep_trial_overrides(str(self.storage), study.study_name, t.number))
                    for t, o in zip(asked, asked_overrides, strict=True)
                ]
            launched += len(asked)
            pending = [
                (t, o) for t, o in zip(asked, asked_overrides, strict=True) if not tell_if_duplicate(study, t, finished)
            ]
            if not pending:
                continue
            trials = [trial for trial, _ in pending]
            with heartbeats(storage, trials, self.heartbeat_interval):
                returns = self.launcher.launch([o for _, o in pending], initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, job in zip(trials, returns, strict=True):
                error = self._tell(study, trial, job, storage if isinstance(storage, RDBStorage) else None)
                if error is not None:
                    failed, last_error = failed + 1, error
            if failed > self.max_failure_rate * self.n_trials:
                raise RuntimeError(
                    f"{failed} of the {launched} trials launched failed, more than max_failure_rate="
                    f"{self.max_failure_rate} of n_trials={self.n_trials}; the last error is above"
                ) from last_error
        self._save_best(study, Path(str(self.config.hydra.sweep.dir)))

    @staticmethod
    def _counts(study: optuna.Study) -> Counter[TrialState]:
        return Counter(trial.state for trial in study.get_trials(deepcopy=False))

    @staticmethod
    def _describe(counts: Counter[TrialState]) -> str:
        return (
            ", ".join(
                f"{n} {state.name.lower()}" for state, n in sorted(counts.items(), key=lambda item: item[0].value)
            )
            or "no trials"
        )

    @staticmethod
    def _tell(
        study: optuna.Study, trial: Trial, job: JobReturn, backend: RDBStorage | None = None
    ) -> BaseException | None:
        """Tell the job's objective; a raised error or a non-finite value makes the trial FAIL, a job the pruner
        stopped (optuna.TrialPruned) makes it PRUNED. A run that reports a collapse keeps its value (it is a real,
        bad result) but is marked `collapsed`. Returns the error of a failed trial, else None."""
        output_dir = None if job.hydra_cfg is None else Path(str(job.hydra_cfg.hydra.runtime.output_dir))
        if output_dir is not None:
            trial.set_user_attr("output_dir", str(output_dir))
        if backend is not None:
            sync_reports(trial, backend)
        # the exception itself: JobReturn.return_value would re-raise it and print "Error executing job"
        if job.status == JobStatus.FAILED and isinstance(job._return_value, optuna.TrialPruned):
            log.info("trial %d pruned: %s", trial.number, job._return_value)
            study.tell(trial, state=TrialState.PRUNED)  # its value: the last report
            return None
        try:
            value = float(job.return_value)  # re-raises the job's exception
            if not math.isfinite(value):
                raise FloatingPointError(f"objective is {value}")
        except Exception as error:
            log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
            study.tell(trial, state=TrialState.FAIL)
            return error
        collapsed = None if output_dir is None else collapse_reasons(output_dir)
        if collapsed is not None:
            log.warning("trial %d collapsed: %s", trial.number, collapsed)
            trial.set_user_attr("collapsed", collapsed)
        study.tell(trial, value)
        return None

    def _save_best(self, study: optuna.Study, sweep_dir: Path) -> None:
        counts = self._counts(study)
        log.info("study %r: %s", study.study_name, self._describe(counts))
        if not counts[TrialState.COMPLETE]:
            log.warning("no trial has completed yet: no best parameters")
            return
        best = study.best_trial
        log.info("best trial %d: value %s, params %s", best.number, best.value, best.params)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(
            OmegaConf.create({"name": "optuna", "best_params": best.params, "best_value": best.value}),
            sweep_dir / "optimization_results.yaml",
        )
