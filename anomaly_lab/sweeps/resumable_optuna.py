"""Optuna sweeps that survive crashes, kills and restarts: the loop behind `hydra/sweeper=resumable_optuna`.

hydra-optuna-sweeper 1.3 loads an existing study (load_if_exists) but then always launches n_trials
more, leaves the trials of a killed process RUNNING forever, and with one-job batches stops at the
first failed trial. This subclass keeps its search-space parsing and trial configuration and replaces
only the loop:

- n_trials is the number of finished (COMPLETE or PRUNED) trials the study should hold. A re-run of the same
  command launches only the missing ones; several processes (or hosts) on one storage share that budget
  (each stops once the study holds n_trials finished trials, so W workers may add up to W-1 more).
  One run launches at most n_trials trials, so a sweep whose trials keep failing ends.
- Each trial records its owner (host, pid, process start time) and its first heartbeat right after ask(), and
  beats while it is asked, trained or waits. Every round first fails the RUNNING trials whose owner process on
  this host is gone (a `kill -9`), at once; those of other hosts once their heartbeat (the database's clock) has
  been silent for longer than the grace period (fail_trials_of_dead_workers: optuna 2.10's fail_stale_trials
  reads PostgreSQL's transaction-start now() as a day-old heartbeat and raises where two workers fail one trial).
  A worker whose trial was failed elsewhere meanwhile logs it and goes on. Several workers may create optuna's
  tables at once (rdb_storage retries).
- A study records the data it is of (study and trial user attr `data`: configs.data_identity, the data's absolute
  paths or a generator's settings). A sweep of other data under its name would train nothing and report the other
  data's best value: it is refused in one line naming both, unless hydra.sweeper.allow_other_data=true (the data
  moved; the study's finished points then count as this data's). A study that records no data (made before this
  check) takes this sweep's.
- A storage that cannot be opened (no driver, no server, an SQLite folder that is not writable) is a
  StudyStorageError: one line naming the URL (its password masked: anomaly_lab/secrets.py) and the cause. A study
  name that is not one folder name (a '/' in it) is refused: hparams_search names the sweep's folder after it.
- A COMPLETE trial whose run reports a collapse in its metrics.json (`collapsed`, `collapse_reasons`) keeps
  its value but gets user attr `collapsed` with the reasons, and a warning.
- A run that did not create the study reseeds the sampler, so it does not replay the seeded draws of the run
  (or the worker started with it) that did (only a fresh study is reproducible from the seed; one made only to
  enqueue first points, as make tune does, counts as fresh for the first sweep on it: `first_sweep`).
- A trial that raises (e.g. NonFiniteLossError on a NaN loss) or returns a non-finite value is told
  FAIL and the sweep goes on, until more than max_failure_rate * n_trials of its own trials failed.
- Training is seeded, so parameters that already COMPLETEd give the same value again: a trial the sampler
  draws with the parameters of a complete one is told that trial's value without training (user attr
  `duplicate_of`, as Optuna's FAQ advises); one drawn with the parameters of a PRUNED one is pruned again,
  with that trial's reports. A point being trained (a RUNNING trial with a lower number, elsewhere or earlier in
  the same batch) is not trained again: the trial waits for that run (the batch's own first; another worker's
  is polled, failed by its heartbeat if that worker dies) and is told its outcome, or trains where it failed.
  TPE redraws its best point of a small categorical space often; once every point of a finite
  (all-categorical) space has finished, the sweep ends.
- A launcher that raises (hydra-submitit-launcher's, where a job died) fails that batch's trials with the error;
  hydra/launcher=slurm's own launcher (anomaly_lab.sweeps.launchers) fails only the dead job's.
- Pruning (anomaly_lab.sweeps.pruning): the pruner of `hydra.sweeper.pruner` (an allow-listed optuna pruner;
  none by default) is the study's. Each job gets `+sweep_trial.storage/study/number`, reports its objective
  after each validation (step = epochs trained) and stops where the pruner says; the job then raises
  TrialPruned and the trial is told PRUNED (value: its last report). A pruned trial is a result, not a fault:
  it counts toward n_trials (FINISHED = COMPLETE or PRUNED) and never toward max_failure_rate.
- A wall-clock budget (hydra.sweeper.budget_minutes, null: none; it needs a storage): the sweep ends when it is
  spent. A trial to be trained is started only where its estimated run fits in what is left: the estimate is the
  median, over this study's trained trials (user attrs `seconds`, `cost`, `epochs_trained`, `train_seconds`), of
  that trial's seconds scaled to the new trial's epochs (its training's share only), pixels and net width
  (trial_seconds: up linearly, or with the width squared; down less than linearly), times BUDGET_SAFETY. One that
  does not fit is told FAIL with user attr `not_started` (never trained; it counts toward no failure rate), and the
  sweep ends after MAX_NOT_STARTED of them. Each started trial gets the budget's end as `sweep_trial.deadline`: its
  training stops before an epoch that would end past it and the trial is PRUNED (anomaly_lab.sweeps.pruning), so
  trials the estimate let through stay inside the budget too. The first trial has nothing to estimate from: the
  deadline alone bounds it. hydra.sweeper.budget_fallback (e.g. {tune.length: short}): a draw that does not fit
  is still refused, and the same point with those values, where its estimate fits, is enqueued as the next trial,
  so the end of a budget trains the sampler's point at less cost instead of refusing draws until the sweep ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import socket
import statistics
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, ProgrammingError

from anomaly_lab.cli import one_line
from anomaly_lab.configs import data_identity
from anomaly_lab.errors import ConfigError, UserError, as_typed
from anomaly_lab.results import validation_key
from anomaly_lab.secrets import mask_secrets, mask_secrets_in_logs
from anomaly_lab.sweeps import private_api
from anomaly_lab.sweeps.launchers import failed_job
from anomaly_lab.sweeps.pruning import build_pruner, is_nop, pruner_settings, sweep_trial_overrides

# A finished trial counts toward n_trials when its run went to its end or was stopped by the pruner; a FAIL does not
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
log = logging.getLogger(__name__)
CREATE_ATTEMPTS = 5  # workers started together on an empty database race to create optuna's tables
SETTLE_S = 10.0  # at most this long a round waits for a lower-numbered trial elsewhere to get its parameters
BUDGET_SAFETY = 1.25  # a trial starts only where this times its estimated seconds fit in the budget left
MAX_NOT_STARTED = 10  # a budgeted sweep ends after this many drawn trials did not fit in what was left


class StudyStorageError(UserError):
    """The sweep's study storage (hydra.sweeper.storage) cannot be opened: no driver, no server, no writable
    folder. The message names the URL (its password masked) and the cause."""


def storage_cause(error: BaseException, url: str) -> str:
    """Why opening the storage at `url` failed, in one line (no password, no link to SQLAlchemy's error pages)."""
    if isinstance(error, NoSuchModuleError):
        driver = url.split("://", 1)[0]
        return f"SQLAlchemy has no driver {driver!r} (a typo, or the package that provides it is not installed)"
    if isinstance(error, ArgumentError):
        return f"not a database URL ({one_line(error)})"
    if isinstance(error, ImportError):  # optuna's "Failed to import DB access module", from the driver's import
        missing = error.__cause__ or error
        return f"its database driver is not installed ({type(missing).__name__}: {one_line(missing)})"
    if isinstance(error, DBAPIError):
        driver_error = error.orig if error.orig is not None else error  # the driver's own, without SQLAlchemy's link
        cause = one_line(driver_error)
        if url.startswith("sqlite"):
            folder = Path(str(make_url(url).database)).parent
            cause += f"; SQLite creates and writes the study file and its journal in {folder}: is it writable?"
        return f"{type(driver_error).__name__}: {cause}"
    return f"{type(error).__name__}: {one_line(error)}"


def rdb_storage(
    url: str, heartbeat_interval: int | None, grace_period: int | None = None, key: str = "hydra.sweeper.storage"
) -> RDBStorage:
    """An RDB storage (with heartbeats unless heartbeat_interval is None); an SQLite file's folder is created. A
    storage that cannot be opened is a StudyStorageError naming `key`, the URL (password masked) and the cause."""
    try:
        parsed = make_url(url)
        engine_kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
            # several local workers wait for SQLite's file lock instead of failing after 5 s
            engine_kwargs["connect_args"] = {"timeout": 60}
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its schema set-up logs a dozen INFO lines
        attempt = 1
        while True:
            try:
                return RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period
                )
            except (IntegrityError, ProgrammingError) as error:  # PostgreSQL: another worker's CREATE TYPE/TABLE won
                if attempt == CREATE_ATTEMPTS:
                    raise
                log.info(
                    "optuna's tables in %r: another worker is creating them (%s); again", parsed, type(error).__name__
                )
                time.sleep(random.uniform(0.2, 1.0) * attempt)
                attempt += 1
    except (IntegrityError, ProgrammingError):
        raise
    except (ArgumentError, ImportError, DBAPIError, OSError) as error:
        message = f"{key}={mask_secrets(url)!r} cannot be opened: {storage_cause(error, url)}"
        raise StudyStorageError(mask_secrets(message)) from error


def check_study_name(name: str | None) -> None:
    """A study name names the sweep's folder (outputs/sweeps/<study_name>/ in hparams_search): one folder, no path."""
    if name is None:
        return
    if name in ("", ".", "..") or any(character in name for character in "/\\\0"):
        raise ConfigError(
            f"hydra.sweeper.study_name={name!r}: a study name also names the sweep's folder "
            f"(outputs/sweeps/<study_name>/), so it may hold no '/' or backslash and may not be '', '.' or '..' "
            f"(use e.g. '-' instead of '/')"
        )


def describe_data(identity: Mapping[str, Any], keys: Collection[str]) -> str:
    """The `keys` of a data identity (configs.data_identity) as `key='value'`; a key it lacks as null."""
    return ", ".join(f"{key}={as_typed(identity.get(key))}" for key in sorted(keys))


def check_same_data(
    study: optuna.Study, identity: dict[str, Any], storage: str, allow_other_data: bool
) -> dict[str, Any] | None:
    """Refuse to add trials on this data (`identity`) to a study whose trials are of other data (study user attr
    `data`, else its trials' user attr `data`), unless allow_other_data; so is a study whose trials record no data
    (made by an older release). A study that records no data yet gets this one's. Returns the study's other data
    where it is allowed, else None."""
    recorded = study.user_attrs.get("data")
    if recorded is None:
        recorded = next(
            (t.user_attrs["data"] for t in study.get_trials(deepcopy=False) if "data" in t.user_attrs), None
        )
    if recorded is None:
        trials = len(study.get_trials(deepcopy=False))
        if trials and not allow_other_data:  # made before studies recorded their data: of which data is unknown
            raise ConfigError(
                f"hydra.sweeper.study_name={study.study_name!r} in {storage} holds {trials} trials that record no "
                f"data (a study made by an older anomaly_lab), so they may be of other data than this sweep's "
                f"({describe_data(identity, identity)}): choose another hydra.sweeper.study_name, or set "
                f"hydra.sweeper.allow_other_data=true if that study is of this data (it then records it)"
            )
        study.set_user_attr("data", identity)
        return None
    if recorded == identity:
        return None
    differ = {key for key in {*recorded, *identity} if recorded.get(key) != identity.get(key)}
    if not allow_other_data:
        theirs, ours = describe_data(recorded, differ), describe_data(identity, differ)
        raise ConfigError(
            f"hydra.sweeper.study_name={study.study_name!r} in {storage} holds trials of other data ({theirs}) than "
            f"this sweep's ({ours}): choose another hydra.sweeper.study_name (hparams_search's default names the "
            f"data), or set hydra.sweeper.allow_other_data=true to add these trials to that study (for data that "
            f"moved: its finished points count as this data's)"
        )
    log.warning(
        "study %r holds trials of other data (%s) than this sweep's (%s): joined (hydra.sweeper.allow_other_data=true)",
        study.study_name,
        describe_data(recorded, differ),
        describe_data(identity, differ),
    )
    return recorded


def open_study(
    storage: BaseStorage, name: str | None, direction: str, sampler: optuna.samplers.BaseSampler, pruner: Any
) -> tuple[optuna.Study, bool]:
    """The study `name` in `storage`, created where it is not there yet (as optuna.create_study with
    load_if_exists); whether this call created it."""
    try:
        study_id, created = storage.create_new_study(name), True
    except optuna.exceptions.DuplicatedStudyError:
        study_id, created = storage.get_study_id_from_name(str(name)), False
    storage.set_study_directions(study_id, [StudyDirection[direction.upper()]])
    name = storage.get_study_name_from_id(study_id)
    return optuna.Study(study_name=name, storage=storage, sampler=sampler, pruner=pruner), created


def mark_enqueued_only(study: optuna.Study) -> None:
    """Mark a study made only to enqueue its first points (make tune), so the first sweep on it keeps its seed."""
    study.set_user_attr("first_sweep", "enqueued_only")


def first_sweep(study: optuna.Study, created: bool) -> bool:
    """Whether this sweep is the study's first, so its seeded sampler draws what the seed says: it created the
    study, or the study was made only to enqueue its first points (mark_enqueued_only; this call marks it taken,
    so a second worker or a rerun reseeds)."""
    if created:
        return True
    if study.user_attrs.get("first_sweep") != "enqueued_only":
        return False
    study.set_user_attr("first_sweep", "taken")
    return True


@contextmanager
def heartbeats(storage: BaseStorage, trials: Sequence[Trial], interval: float) -> Iterator[None]:
    """Record the trials' heartbeats every `interval` seconds while the block runs."""
    if not storage.is_heartbeat_enabled():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                for trial in trials:
                    storage.record_heartbeat(private_api.trial_id(trial))
            except Exception as error:  # e.g. the database restarting: the next beat may reach it again
                log.warning("heartbeat not recorded: %s: %s", type(error).__name__, error)

    for trial in trials:  # at once, so a kill right after ask() still leaves a heartbeat to go stale
        storage.record_heartbeat(private_api.trial_id(trial))
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


def ask_owned(study: optuna.Study, data: Mapping[str, Any] | None = None) -> Trial:
    """Ask for a trial and record its owner (user attr `owner`, one write) at once, so a re-run can fail it as
    soon as that process is gone; and the data it trains on (user attr `data`, configs.data_identity)."""
    trial = study.ask()
    trial.set_user_attr("owner", this_process())
    if data is not None:
        trial.set_user_attr("data", dict(data))
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


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str) -> bool:
    """Fail another process's RUNNING trial, giving `reason` (user attr `failed_because`); False where it was
    finished meanwhile (another worker failed it first, or its run ended)."""
    try:
        private_api.fail_stored_trial(study, trial, {"failed_because": reason})
    except RuntimeError:  # "has already finished and can not be updated"
        return False
    except IntegrityError:  # another worker wrote its failed_because in the same instant (PostgreSQL's unique key)
        return False
    log.warning("trial %d failed: %s", trial.number, reason)
    return True


def fail_trials_of_dead_workers(study: optuna.Study, storage: RDBStorage, grace_period: int) -> None:
    """Fail the RUNNING trials whose worker is gone: at once where its owner process on this host is gone; those of
    other hosts once their heartbeat has been silent for longer than grace_period s, and those that never beat
    (killed right after ask()) once they started longer ago than that."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    ages = private_api.heartbeat_ages(storage, [private_api.trial_id(trial) for trial in running])
    here = this_process()
    for trial in running:
        owner, started = trial.user_attrs.get("owner"), trial.datetime_start or datetime.now()  # RUNNING: started
        age = ages.get(private_api.trial_id(trial))
        host = "?" if owner is None else owner["host"]
        if owner is not None and all(owner[key] == here[key] for key in ("host", "pid_namespace")):
            if process_is_alive(owner["pid"], owner["started"]):
                continue
            reason = f"its worker process {owner['pid']} on {host} is gone"
        elif age is not None:
            if age <= grace_period:
                continue
            reason = f"its worker on {host} is silent: no heartbeat for {age:.0f} s (grace period {grace_period} s)"
        elif datetime.now() - started > timedelta(seconds=grace_period):
            what = "neither owner nor heartbeat" if owner is None else f"no heartbeat (worker on {host})"
            reason = f"it has {what} {grace_period} s after it started (killed after ask())"
        else:
            continue
        fail_trial(study, trial, reason)


# A trial's validation results, recorded from its run (user attr: metrics.json keys, the first one present; the
# chosen scoring's under scoring=auto): the image AUROC and the pixel AUROC of the best map scoring=auto measured
# (else the anomaly map's), which tune ranks trials by
VALIDATION_ATTRS = {
    "val_image_auroc": ("val/image_auroc",),
    "val_pixel_auroc": ("val/best_map_pixel_auroc_model_res", "val/pixel_auroc_model_res"),
}


def run_outcome(output_dir: Path) -> dict[str, Any]:
    """The epochs a run trained, what stopped it early, how long its training took and its validation image and
    pixel AUROC (the chosen scoring's under scoring=auto), from its metrics.json (user attrs `epochs_trained`,
    `stopped_by`, `train_seconds` and VALIDATION_ATTRS; none where the run wrote no metrics)."""
    path = output_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    outcome: dict[str, Any] = {}
    if isinstance(metrics.get("epochs_trained"), int):
        outcome["epochs_trained"] = metrics["epochs_trained"]
    if isinstance(metrics.get("stopped_early_by"), str):
        outcome["stopped_by"] = metrics["stopped_early_by"]
    if isinstance(metrics.get("train/seconds"), int | float):  # fit's wall time: the budget's per-epoch estimate
        outcome["train_seconds"] = round(float(metrics["train/seconds"]), 3)
    for attr, names in VALIDATION_ATTRS.items():
        values = [metrics.get(validation_key(metrics, name)) for name in names]
        found = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
        if found:
            outcome[attr] = found[0]
    return outcome


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


PointKey = Callable[[FrozenTrial | Trial], str | None]


def point_key(names: Collection[str], fixed: Mapping[str, Any]) -> PointKey:
    """A trial's point in this sweep's space, as a key: its drawn parameters (`names`) and the space's parameters
    fixed on the command line (user attrs, as _configure_trials records them; or parameters, where an earlier sweep
    drew them). None for a trial of another space: other parameters, or other fixed values."""

    def key(trial: FrozenTrial | Trial) -> str | None:
        values = {**{name: trial.user_attrs.get(name) for name in fixed}, **trial.params}
        if set(values) != {*names, *fixed} or any(
            json.dumps(values[name], default=str) != json.dumps(value, default=str) for name, value in fixed.items()
        ):
            return None
        return json.dumps(values, sort_keys=True, default=str)

    return key


def finished_points(study: optuna.Study, key: PointKey) -> dict[str, FrozenTrial]:
    """The first COMPLETE trial of each point of the space, or where none completed the first PRUNED one."""
    first: dict[str, FrozenTrial] = {}
    for state in FINISHED:
        for trial in study.get_trials(deepcopy=False, states=(state,)):
            if (point := key(trial)) is not None:
                first.setdefault(point, trial)
    return first


def tell_twin(study: optuna.Study, trial: Trial, twin: FrozenTrial) -> None:
    """Tell `trial` the outcome of its finished twin (the same parameters): a complete twin's value, or a pruned
    twin's reports and PRUNED; user attr `duplicate_of` names the trained trial."""
    log.info(
        "trial %d: the parameters of trial %d, %s with value %s (not trained again)",
        trial.number,
        twin.number,
        twin.state.name,
        twin.value,
    )
    trial.set_user_attr("duplicate_of", twin.user_attrs.get("duplicate_of", twin.number))
    for attr in VALIDATION_ATTRS:
        if attr in twin.user_attrs:
            trial.set_user_attr(attr, twin.user_attrs[attr])
    if twin.state == TrialState.PRUNED:
        for step, value in sorted(twin.intermediate_values.items()):
            trial.report(value, step)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, twin.value)


def running_points(
    storage: BaseStorage, study_id: int, batch: Sequence[Trial], key: PointKey
) -> dict[str, FrozenTrial]:
    """The lowest-numbered RUNNING trial of each point outside `batch` (another process's, trained or waiting for
    its own twin). Lower-numbered trials with no parameters yet (asked a moment ago) get SETTLE_S s to draw them."""
    ours, below = {private_api.trial_id(trial) for trial in batch}, max(trial.number for trial in batch)
    deadline = time.monotonic() + SETTLE_S
    while True:
        running = [
            trial
            for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if private_api.trial_id(trial) not in ours
        ]
        if all(t.params or t.number > below for t in running) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    lowest: dict[str, FrozenTrial] = {}
    for trial in sorted(running, key=lambda t: t.number):
        if (point := key(trial)) is not None:
            lowest.setdefault(point, trial)
    return lowest


def sync_reports(trial: Trial, backend: RDBStorage) -> None:
    """Copy the reports the trial's job wrote to the storage into this process's view of the trial.

    optuna's cached storage assumes a RUNNING trial is changed only by the process that asked for it and never
    reads it back; the job (another storage object, maybe another process) wrote its reports past that cache.
    """
    for step, value in sorted(backend.get_trial(private_api.trial_id(trial)).intermediate_values.items()):
        trial.report(value, step)  # also written to the storage again: the same row, the same value


def trial_cost(config: Any) -> dict[str, int] | None:
    """What a trial's run costs, from its job's config: epochs planned, input pixels (image_size x crop_height) and
    net width (model.net.base_channels); None where the config has no planned epochs or image size."""
    epochs, size = OmegaConf.select(config, "trainer.max_epochs"), OmegaConf.select(config, "model.image_size")
    if not isinstance(epochs, int) or epochs < 1 or not isinstance(size, int):
        return None
    height = OmegaConf.select(config, "dataset.preprocessing.crop_height") or size
    width = OmegaConf.select(config, "model.net.base_channels")
    return {"epochs": epochs, "pixels": size * int(height), "width": int(width) if isinstance(width, int) else 1}


def fallback_point(
    params: Mapping[str, Any], overrides: Sequence[str], fallback: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]] | None:
    """The values hydra.sweeper.budget_fallback changes in a drawn point (e.g. {tune.length: short}) and the job's
    overrides with them; None where the fallback names none of its parameters or changes nothing."""
    changed = {name: value for name, value in fallback.items() if name in params and params[name] != value}
    if not changed:
        return None
    kept = [override for override in overrides if override.split("=", 1)[0] not in changed]
    return changed, [*kept, *(f"{name}={value}" for name, value in changed.items())]


def check_budget_fallback(fallback: Mapping[str, Any], distributions: Mapping[str, BaseDistribution]) -> None:
    """Each key of hydra.sweeper.budget_fallback a parameter of the search, each value one it can draw."""
    for name, value in fallback.items():
        key = f"hydra.sweeper.budget_fallback.{name}"
        distribution = distributions.get(name)
        if distribution is None:
            raise ConfigError(
                f"{key}: not a parameter of the search (hydra.sweeper.params: {', '.join(distributions)})"
            )
        if isinstance(distribution, CategoricalDistribution) and value not in distribution.choices:
            choices = ", ".join(map(str, distribution.choices))
            raise ConfigError(f"{key}={as_typed(value)}: not one of the parameter's choices ({choices})")


def scaled(ratio: float, up: float, down: float) -> float:
    """ratio ** up for a larger trial, ratio ** down for a smaller one (down < 1: a run's fixed part)."""
    return ratio ** (up if ratio > 1 else down)


TrainedRun = tuple[Mapping[str, int], int, float] | tuple[Mapping[str, int], int, float, float | None]


def trial_seconds(cost: Mapping[str, int], trained: Sequence[TrainedRun]) -> float | None:
    """The estimated seconds of a run of `cost` (trial_cost) from trained trials (their cost, epochs trained, seconds
    and, where recorded, the seconds of training itself): the median of each one's seconds scaled to it, times
    BUDGET_SAFETY; None without trained trials. The median, not the largest: the largest let one short
    pruned trial's scaling veto most of a search (measured on screw, 3 of 5 draws refused with 22 of 45 min left);
    a trial the estimate lets through too optimistically is stopped by its deadline, inside the budget.

    A run is a fixed part (start, decoding, the full-coverage scoring of validation's choice and of the test) and its
    epochs: where the training's own seconds are known (metrics.json train/seconds), the epochs' share scales with
    the epochs linearly and the fixed part does not (a 5-epoch trial whose test took half its time says little about
    an epoch). Pixels scale up linearly and down by the power 0.75, the net width up linearly and down by the power
    0.5 (its FLOPs are quadratic in it, but a small net on a CPU is bound by memory traffic: width 16 trained 1.2x
    slower than width 8 per pixel on screw, not 4x). Without the training's seconds the whole run scales with the
    epochs (up linearly, down by the power 0.75).
    """
    estimates = []
    for other, epochs, seconds, *rest in trained:
        size = scaled(cost["pixels"] / other["pixels"], 1.0, 0.75) * scaled(cost["width"] / other["width"], 1.0, 0.5)
        training = rest[0] if rest and rest[0] is not None and 0 < rest[0] <= seconds else None
        if training is None:
            estimates.append(seconds * scaled(cost["epochs"] / max(epochs, 1), 1.0, 0.75) * size)
        else:
            per_epoch = training / max(epochs, 1)
            estimates.append(((seconds - training) + per_epoch * cost["epochs"]) * size)
    return BUDGET_SAFETY * statistics.median(estimates) if estimates else None


def trained_costs(study: optuna.Study) -> list[TrainedRun]:
    """(cost, epochs trained, seconds, training seconds or None) of the study's trials that trained (COMPLETE or
    PRUNED, not a twin's)."""
    return [
        (
            t.user_attrs["cost"],
            int(t.user_attrs["epochs_trained"]),
            float(t.user_attrs["seconds"]),
            float(t.user_attrs["train_seconds"])
            if isinstance(t.user_attrs.get("train_seconds"), int | float)
            else None,
        )
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if {"cost", "epochs_trained", "seconds"} <= set(t.user_attrs) and "duplicate_of" not in t.user_attrs
    ]


class ResumableOptunaSweeperImpl(private_api.OptunaSweeperImpl):
    def __init__(
        self,
        *,
        heartbeat_interval: int,
        grace_period: int | None,
        pruner: Any = None,
        allow_other_data: bool = False,
        budget_minutes: float | None = None,
        budget_fallback: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        mask_secrets_in_logs()  # the storage URL's password, in every line this process logs
        super().__init__(**kwargs)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.allow_other_data = allow_other_data
        self.budget_minutes = budget_minutes
        self.budget_end: float | None = None  # unix time, set when the sweep starts
        fallback: Any = budget_fallback
        if OmegaConf.is_config(fallback):
            fallback = OmegaConf.to_container(fallback)
        self.budget_fallback: dict[str, Any] = dict(fallback or {})
        self.not_started = 0
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
        directions = private_api.sweep_directions(self)
        if len(directions) != 1:
            raise ValueError(f"one objective only (run(cfg) returns one float); got directions {directions}")
        space, distributions, fixed_params = private_api.parse_search_space(self, arguments)
        # a point: the values of the search space's parameters, drawn or fixed on the command line (not the rest of
        # the command line, such as paths, which may differ between workers)
        swept = {*(self.search_space_distributions or {}), *(override.split("=", 1)[0] for override in space)}
        distributions = {**(self.search_space_distributions or {}), **distributions}
        for name in fixed_params:
            distributions.pop(name, None)
        # a value fixed on the command line stays fixed
        self.budget_fallback = {name: v for name, v in self.budget_fallback.items() if name not in fixed_params}
        check_budget_fallback(self.budget_fallback, distributions)

        check_study_name(self.study_name)
        cwd = OmegaConf.select(self.config, "hydra.runtime.cwd")
        data = (
            data_identity(self.config.dataset, None if cwd is None else str(cwd)) if "dataset" in self.config else None
        )
        pruning = pruner_settings(self.pruner_config)
        pruner = build_pruner(pruning)
        if self.storage is None and not is_nop(pruning):
            raise ConfigError(
                "hydra.sweeper.pruner needs hydra.sweeper.storage (null here): each trial reports its validations "
                "to the study there"
            )
        if self.budget_minutes is not None:
            budget = self.budget_minutes
            if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget < math.inf:
                raise ConfigError(f"hydra.sweeper.budget_minutes={as_typed(budget)}: must be a positive number or null")
            if self.storage is None:
                raise ConfigError(
                    "hydra.sweeper.budget_minutes needs hydra.sweeper.storage (null here): each trial's run finds "
                    "its deadline and reports there, and the estimates read the study's trained trials"
                )
            self.budget_end = time.time() + 60.0 * float(budget)
        storage = self._storage()
        study, created = open_study(storage, self.study_name, directions[0], self.sampler, pruner)
        where = mask_secrets(str(self.storage)) if self.storage is not None else "memory"
        if data is not None:
            check_same_data(study, data, where, self.allow_other_data)
        log.info(
            "study %r in %s: %s; target %d finished (complete or pruned); pruner %s",
            study.study_name,
            where,
            self._describe(self._counts(study)),
            self.n_trials,
            type(pruner).__name__,
        )
        if not first_sweep(study, created):
            # a seeded sampler would replay the draws of the run (or the worker started with this one) that made it
            self.sampler.reseed_rng()
            log.info("the study existed already: sampler reseeded so this run draws its own parameters")
        # optuna's default: two heartbeats
        grace_period = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        launched = failed = 0
        last_error: BaseException | None = None
        space_size = finite_space_size(distributions)
        key = point_key(distributions, {name: value for name, value in fixed_params.items() if name in swept})
        while launched < self.n_trials:
            if self.budget_end is not None and (time.time() >= self.budget_end or self.not_started >= MAX_NOT_STARTED):
                log.info(
                    "budget of %s min spent (%d drawn trials did not fit in what was left): the sweep ends",
                    self.budget_minutes,
                    self.not_started,
                )
                break
            if isinstance(storage, RDBStorage):
                fail_trials_of_dead_workers(study, storage, grace_period)
            counts = self._counts(study)
            missing = self.n_trials - sum(counts[state] for state in FINISHED)
            if missing <= 0:
                break
            if space_size is not None and len(finished_points(study, key)) >= space_size:
                log.info("all %d points of the search space have finished: the sweep is done", space_size)
                break
            asked = [ask_owned(study, data) for _ in range(min(missing, self.n_jobs, self.n_trials - launched))]
            with heartbeats(storage, asked, self.heartbeat_interval):  # from ask() on, so no worker fails them
                asked_overrides = private_api.configure_trials(self, asked, distributions, fixed_params)
                if isinstance(storage, RDBStorage):  # the job finds its trial there, to report to it
                    if not is_nop(pruning):
                        for trial in asked:
                            trial.set_user_attr("pruner", pruning)
                    asked_overrides = [
                        (*o, *sweep_trial_overrides(str(self.storage), study.study_name, t.number, self.budget_end))
                        for t, o in zip(asked, asked_overrides, strict=True)
                    ]
                launched += len(asked)
                errors = self._run(study, storage, key, list(zip(asked, asked_overrides, strict=True)), grace_period)
            failed += len(errors)
            last_error = errors[-1] if errors else last_error
            if failed > self.max_failure_rate * self.n_trials:
                raise RuntimeError(
                    f"{failed} of the {launched} trials launched failed, more than max_failure_rate="
                    f"{self.max_failure_rate} of n_trials={self.n_trials}; the last error is above"
                ) from last_error
        self._save_best(study, Path(str(self.config.hydra.sweep.dir)))

    def _run(
        self,
        study: optuna.Study,
        storage: BaseStorage,
        key: PointKey,
        batch: list[tuple[Trial, Sequence[str]]],
        grace_period: int,
    ) -> list[BaseException]:
        """Train the batch's trials, each point once: a point that finished is told at once; one trained elsewhere
        (a lower-numbered RUNNING trial) or earlier in this batch is told that run's outcome once it has one, and
        trained where that run failed. Returns the errors of the trials that failed."""
        finished = finished_points(study, key)
        elsewhere = running_points(storage, private_api.study_id(study), [trial for trial, _ in batch], key)
        train: dict[str, tuple[Trial, Sequence[str]]] = {}
        waiting: list[tuple[Trial, Sequence[str], int]] = []  # and the trial id of the run it waits for
        for trial, overrides in batch:
            point = key(trial) or f"#{trial.number}"  # outside the space (a search space extender's): its own
            twin = elsewhere.get(point)
            if point in finished:
                tell_twin(study, trial, finished[point])
            elif twin is not None and twin.number < trial.number:
                log.info(
                    "trial %d: the parameters of trial %d, running elsewhere: waits for it", trial.number, twin.number
                )
                waiting.append((trial, overrides, private_api.trial_id(twin)))
            elif point in train:
                waiting.append((trial, overrides, private_api.trial_id(train[point][0])))
            else:
                train[point] = (trial, overrides)
        errors = self._launch(study, storage, self._within_budget(study, list(train.values())))
        retrain: list[tuple[Trial, Sequence[str]]] = []
        for trial, overrides, twin_id in waiting:
            while (twin := storage.get_trial(twin_id)).state == TrialState.RUNNING:  # another worker's run
                time.sleep(self.heartbeat_interval)
                if isinstance(storage, RDBStorage):  # where that worker died, its heartbeat goes stale
                    fail_trials_of_dead_workers(study, storage, grace_period)
            if twin.state in FINISHED:
                tell_twin(study, trial, twin)
            else:
                log.info(
                    "trial %d: trial %d, its parameters' run, %s: trains them",
                    trial.number,
                    twin.number,
                    twin.state.name,
                )
                retrain.append((trial, overrides))
        return errors + (self._run(study, storage, key, retrain, grace_period) if retrain else [])

    def _within_budget(
        self, study: optuna.Study, batch: list[tuple[Trial, Sequence[str]]]
    ) -> list[tuple[Trial, Sequence[str]]]:
        """The batch's trials whose estimated run fits in the budget left (all without a budget); the others are
        told FAIL, not started (user attr `not_started`). Each started trial records its cost (user attr `cost`)."""
        if self.budget_end is None:
            return batch
        assert self.hydra_context is not None and self.config is not None
        config_loader, sweep_config = self.hydra_context.config_loader, self.config
        trained, fits = trained_costs(study), []

        def estimated(job: Sequence[str]) -> tuple[dict[str, int] | None, float | None]:
            """A job's cost (trial_cost) and estimated seconds (None where either is unknown)."""
            cost = trial_cost(config_loader.load_sweep_config(sweep_config, list(job)))
            return cost, None if cost is None else trial_seconds(cost, trained)

        for trial, overrides in batch:
            cost, estimate = estimated(overrides)
            left = self.budget_end - time.time()
            if left > 0 and (estimate is None or estimate <= left):
                if cost is not None:
                    trial.set_user_attr("cost", cost)
                fits.append((trial, overrides))
                continue
            reason = f"{estimate or 0:.0f} s estimated, {max(left, 0):.0f} s left of the budget"
            fallback = fallback_point(trial.params, overrides, self.budget_fallback)
            if fallback is not None and left > 0:
                changed, fallback_overrides = fallback
                shorter = estimated(fallback_overrides)[1]
                if shorter is not None and shorter <= left:
                    with warnings.catch_warnings():  # enqueue_trial: optuna 2.10's ExperimentalWarning
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        study.enqueue_trial({**trial.params, **changed})
                    values = ", ".join(f"{name}={value}" for name, value in changed.items())
                    reason += f"; the draw with {values} ({shorter:.0f} s estimated) is the next trial"
            log.info("trial %d not started (hydra.sweeper.budget_minutes): %s", trial.number, reason)
            trial.set_user_attr("not_started", reason)
            study.tell(trial, state=TrialState.FAIL)
            self.not_started += 1
        return fits

    def _launch(
        self, study: optuna.Study, storage: BaseStorage, batch: list[tuple[Trial, Sequence[str]]]
    ) -> list[BaseException]:
        """Run the trials' jobs through the launcher and tell their outcomes; a launcher that raises fails them all
        (its error as theirs). Returns the errors of the trials that failed."""
        assert self.launcher is not None
        if not batch:
            return []
        jobs = [overrides for _, overrides in batch]
        started = time.monotonic()
        try:
            returns = self.launcher.launch(jobs, initial_job_idx=self.job_idx)
        except Exception as error:  # e.g. hydra-submitit-launcher's, when one job of the array died
            log.error(
                "the launcher failed: %s: %s; trials %s fail", type(error).__name__, error, [t.number for t, _ in batch]
            )
            returns = [failed_job(error, overrides) for overrides in jobs]
        self.job_idx += len(returns)
        seconds = time.monotonic() - started  # the batch's: each trial's run took at most this long
        for trial, _ in batch:
            with contextlib.suppress(RuntimeError):  # finished by another worker meanwhile: _tell says so
                trial.set_user_attr("seconds", round(seconds, 3))
        backend = storage if isinstance(storage, RDBStorage) else None
        errors = [self._tell(study, trial, job, backend) for (trial, _), job in zip(batch, returns, strict=True)]
        return [error for error in errors if error is not None]

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
        bad result) but is marked `collapsed`. Returns the error of a failed trial, else None. A trial another
        worker finished meanwhile (it judged this one dead) is left as it is, with a warning."""
        try:
            if backend is None or backend.get_trial(private_api.trial_id(trial)).state == TrialState.RUNNING:
                return ResumableOptunaSweeperImpl._record(study, trial, job, backend)
        except RuntimeError:  # "Cannot change attributes of finished trial": finished by another worker since
            if backend is None or backend.get_trial(private_api.trial_id(trial)).state == TrialState.RUNNING:
                raise
        assert backend is not None
        stored = backend.get_trial(private_api.trial_id(trial))
        log.warning(
            "trial %d was already %s when its run ended (%s): its outcome (%s) is not recorded",
            trial.number,
            stored.state.name,
            stored.user_attrs.get("failed_because", "finished by another worker"),
            private_api.job_outcome(job),
        )
        return None

    @staticmethod
    def _record(study: optuna.Study, trial: Trial, job: JobReturn, backend: RDBStorage | None) -> BaseException | None:
        output_dir = None if job.hydra_cfg is None else Path(str(job.hydra_cfg.hydra.runtime.output_dir))
        if output_dir is not None:
            trial.set_user_attr("output_dir", str(output_dir))
            for key, value in run_outcome(output_dir).items():
                trial.set_user_attr(key, value)
        if backend is not None:
            sync_reports(trial, backend)
        if job.status == JobStatus.FAILED and isinstance(private_api.job_outcome(job), optuna.TrialPruned):
            log.info("trial %d pruned: %s", trial.number, private_api.job_outcome(job))
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
