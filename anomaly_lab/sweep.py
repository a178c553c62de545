"""Optuna sweeps that survive crashes, kills and restarts: the loop behind `hydra/sweeper=resumable_optuna`.

hydra-optuna-sweeper 1.3 loads an existing study (load_if_exists) but then always launches n_trials
more, leaves the trials of a killed process RUNNING forever, and with one-job batches stops at the
first failed trial. This subclass keeps its search-space parsing and trial configuration and replaces
only the loop:

- n_trials is the number of COMPLETE trials the study should hold. A re-run of the same command
  launches only the missing ones; several processes (or hosts) on one storage share that budget
  (each stops once the study holds n_trials complete trials, so W workers may add up to W-1 more).
  One run launches at most n_trials trials, so a sweep whose trials keep failing ends.
- While a trial runs, its heartbeat is written to the RDB storage; a trial whose heartbeat stopped
  for longer than the grace period (a killed worker) is failed with optuna's fail_stale_trials.
- A run joining a study that already has trials reseeds the sampler, so it does not replay the
  seeded draws of the run before it (only a fresh study is reproducible from the seed).
- A trial that raises (e.g. NonFiniteLossError on a NaN loss) or returns a non-finite value is told
  FAIL and the sweep goes on, until more than max_failure_rate * n_trials of its own trials failed.
- Training is seeded, so parameters that already COMPLETEd give the same value again: a trial the sampler
  draws with the parameters of a complete one is told that trial's value without training (user attr
  `duplicate_of`, as Optuna's FAQ advises). TPE redraws its best point of a small categorical space
  often; once every point of a finite (all-categorical) space has completed, the sweep ends.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


def rdb_storage(url: str, heartbeat_interval: int, grace_period: int | None = None) -> RDBStorage:
    """An RDB storage with heartbeats; for an SQLite file its folder is created first."""
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


def completed_params(study: optuna.Study) -> dict[ParamsKey, FrozenTrial]:
    """The first COMPLETE trial of each distinct parameter set."""
    first: dict[ParamsKey, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        first.setdefault(params_key(trial.params), trial)
    return first


def tell_if_duplicate(study: optuna.Study, trial: Trial, completed: dict[ParamsKey, FrozenTrial]) -> bool:
    """Tell `trial` the value of the completed trial with the same parameters, if there is one."""
    twin = completed.get(params_key(trial.params))
    if twin is None:
        return False
    log.info(
        "trial %d: the parameters of trial %d, value %s (not trained again)", trial.number, twin.number, twin.value
    )
    trial.set_user_attr("duplicate_of", twin.number)
    study.tell(trial, twin.value)
    return True


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(self, *, heartbeat_interval: int, grace_period: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period

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

        storage = self._storage()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler,
            direction=directions[0],
            load_if_exists=True,
        )
        log.info(
            "study %r in %s: %s; target %d complete",
            study.study_name,
            self.storage,
            self._describe(self._counts(study)),
            self.n_trials,
        )
        if study.get_trials(deepcopy=False):
            # a seeded sampler would replay the draws the earlier run (or the other worker) already made
            self.sampler.reseed_rng()
            log.info("the study has trials already: sampler reseeded so this run draws new parameters")
        launched = failed = 0
        last_error: BaseException | None = None
        space_size = finite_space_size(distributions)
        while launched < self.n_trials:
            optuna.storages.fail_stale_trials(study)  # no-op without heartbeats
            missing = self.n_trials - self._counts(study)[TrialState.COMPLETE]
            if missing <= 0:
                break
            completed = completed_params(study)
            if space_size is not None and len(completed) >= space_size:
                log.info("all %d points of the search space have completed: the sweep is done", space_size)
                break
            asked = [study.ask() for _ in range(min(missing, self.n_jobs, self.n_trials - launched))]
            asked_overrides = self._configure_trials(asked, distributions, fixed_params)
            launched += len(asked)
            pending = [
                (t, o)
                for t, o in zip(asked, asked_overrides, strict=True)
                if not tell_if_duplicate(study, t, completed)
            ]
            if not pending:
                continue
            trials = [trial for trial, _ in pending]
            with heartbeats(storage, trials, self.heartbeat_interval):
                returns = self.launcher.launch([o for _, o in pending], initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, job in zip(trials, returns, strict=True):
                error = self._tell(study, trial, job)
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
    def _tell(study: optuna.Study, trial: Trial, job: JobReturn) -> BaseException | None:
        """Tell the job's objective; a raised error or a non-finite value makes the trial FAIL."""
        if job.hydra_cfg is not None:
            trial.set_user_attr("output_dir", str(job.hydra_cfg.hydra.runtime.output_dir))
        try:
            value = float(job.return_value)  # re-raises the job's exception
            if not math.isfinite(value):
                raise FloatingPointError(f"objective is {value}")
        except Exception as error:
            log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
            study.tell(trial, state=TrialState.FAIL)
            return error
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
