"""Pruning of sweep trials: each validation reports the objective to the trial's Optuna study, and the study's
pruner can stop the training there.

The sweeper (anomaly_lab.sweeps.resumable_optuna) builds the pruner from `hydra.sweeper.pruner` and gives each
trial's job three config keys, `sweep_trial.storage`, `sweep_trial.study` and `sweep_trial.number`. The job may
run in another process or on another host (submitit, several workers on one RDB study): it finds its trial in
the storage, not in any Python object of the sweeper. train.run adds a TrialPruning callback when that node is
there; after each validation it calls `trial.report(objective, step=epochs trained)` and, where the pruner says
so, stops the training at the end of that epoch. run() then writes metrics.json as for any run (no test: the
trial is not kept) and raises optuna.TrialPruned, which the sweeper records as PRUNED.

A sweep with a wall-clock budget (hydra.sweeper.budget_minutes) also gives each job `sweep_trial.deadline` (unix
time, the budget's end). After each training epoch the job predicts the next one from the longest epoch so far
(validation included) and, when the next epoch is the last, the test after it (the longest validation scaled by
the test split's size over the validation split's); where that would end past the deadline, the training stops
there and the trial is PRUNED like one the pruner stopped (metrics.json: stopped_early_by=deadline). So a pruned
trial ends inside the budget, and counts as finished, not failed.

The pruner's settings travel as the trial's user attribute `pruner` (`_target_` and keyword arguments), so a
trial is judged by the pruner its own sweep was configured with. Data never chooses code: a `_target_` outside
PRUNERS is refused before anything is imported or built, in the sweeper and again in the job.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
    ThresholdPruner,
)
from optuna.storages import RDBStorage
from optuna.trial import Trial, TrialState

from anomaly_lab.errors import ConfigError, as_typed
from anomaly_lab.sweeps import private_api

log = logging.getLogger(__name__)

# The pruners a config (or a study's stored trial) may name, by their public optuna path.
PRUNERS: dict[str, type[BasePruner]] = {
    f"optuna.pruners.{cls.__name__}": cls
    for cls in (
        NopPruner,
        MedianPruner,
        PercentilePruner,
        SuccessiveHalvingPruner,
        HyperbandPruner,
        ThresholdPruner,
    )
}
PLAIN = (bool, int, float, str, type(None))


def pruner_settings(config: Mapping[str, Any] | None, where: str = "hydra.sweeper.pruner") -> dict[str, Any]:
    """The pruner's settings as plain values: `_target_` (one of PRUNERS) and its keyword arguments. None or an
    empty mapping is NopPruner. A ConfigError, naming `where`, for anything else; nothing is imported."""
    settings = dict(config or {"_target_": "optuna.pruners.NopPruner"})
    target = settings.get("_target_")
    if target not in PRUNERS:
        raise ConfigError(
            f"{where}._target_={as_typed(target)}: not a pruner this sweeper builds; one of {', '.join(PRUNERS)} "
            f"(hydra/sweeper/pruner=none|median|percentile|successive_halving|hyperband|threshold, or the presets "
            f"median_after_warmup|successive_halving_from_epoch5)"
        )
    for key, value in settings.items():
        if key != "_target_" and (key.startswith("_") or not isinstance(value, PLAIN)):
            raise ConfigError(
                f"{where}.{key}={as_typed(value)}: a pruner takes plain keyword arguments (numbers, strings)"
            )
    return settings


def build_pruner(config: Mapping[str, Any] | None, where: str = "hydra.sweeper.pruner") -> BasePruner:
    """The optuna pruner `config` describes (see pruner_settings); a setting its class refuses is a ConfigError."""
    settings = pruner_settings(config, where)
    cls = PRUNERS[settings.pop("_target_")]
    try:
        return cls(**settings)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {cls.__name__} refuses {settings}: {error}") from error


def is_nop(settings: Mapping[str, Any]) -> bool:
    return settings.get("_target_") == "optuna.pruners.NopPruner"


def hydra_quoted(value: str) -> str:
    """`value` as a single-quoted Hydra override value that reads back as exactly `value`: quotes escaped, the
    backslashes before a quote or the end doubled, `${` escaped (no interpolation)."""
    escaped = re.sub(r"(\\*)('|\Z)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return "'" + escaped.replace("${", "\\${") + "'"


def sweep_trial_overrides(storage: str, study: str, number: int, deadline: float | None = None) -> list[str]:
    """The overrides that tell a trial's job where its trial is (train.run builds a TrialPruning from them), and
    the unix time by which its training must have ended (None: no deadline)."""
    overrides = [
        f"+sweep_trial.storage={hydra_quoted(storage)}",
        f"+sweep_trial.study={hydra_quoted(study)}",
        f"+sweep_trial.number={number}",
    ]
    if deadline is not None:
        overrides.append(f"+sweep_trial.deadline={deadline:.3f}")
    return overrides


def predicted_end(
    now: float, epoch_seconds: float, next_is_last: bool, validation_seconds: float, test_per_validation: float
) -> float:
    """When the next epoch (as long as the longest so far) ends; after the last one, the test too (the longest
    validation times the test split's size over the validation split's)."""
    tail = validation_seconds * test_per_validation if next_is_last else 0.0
    return now + epoch_seconds + tail


def load_trial(rdb: RDBStorage, study_name: str, number: int) -> Trial:
    """Trial `number` of the stored study, loaded with the pruner its sweeper recorded (user attr `pruner`)."""
    study_id = rdb.get_study_id_from_name(study_name)
    trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, number)
    where = f"trial {number} of study {as_typed(study_name)}: user attribute pruner"
    pruner = build_pruner(rdb.get_trial(trial_id).user_attrs.get("pruner"), where)
    # a random sampler: the job samples nothing, and its relative search space is empty (no work at Trial())
    study = optuna.load_study(
        study_name=study_name, storage=rdb, sampler=optuna.samplers.RandomSampler(), pruner=pruner
    )
    return Trial(study, trial_id)


class TrialPruning(L.Callback):
    """After each validation (not the sanity check) reports `metric` to the sweep's trial, step = epochs trained;
    when the study's pruner prunes the trial, the training stops after this epoch and `pruned_epoch` is set.
    Only process 0 talks to the storage; its decision is broadcast to the others."""

    def __init__(self, storage: str, study: str, number: int, metric: str, deadline: float | None = None) -> None:
        self.where = (storage, study, number)
        self.metric = metric
        self.deadline = deadline  # unix time: no epoch starts that would end (with the test after it) past it
        self.stopped_by = "pruning"  # or "deadline": what stopped a pruned trial
        self._epoch_started: float | None = None
        self._validation_started: float | None = None
        self._longest_epoch = 0.0
        self._longest_validation = 0.0
        self.trial: Trial | None = None
        self.storage: RDBStorage | None = None
        self.pruned_epoch: int | None = None
        self.pruned_value: float | None = None
        self._reported: set[int] = set()
        self._warned_missing = False

    @classmethod
    def from_config(cls, node: Mapping[str, Any], metric: str) -> TrialPruning:
        deadline = node.get("deadline")
        return cls(
            str(node["storage"]),
            str(node["study"]),
            int(node["number"]),
            metric,
            None if deadline is None else float(deadline),
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self.trial is not None:
            return
        from anomaly_lab.sweeps.resumable_optuna import rdb_storage  # the same SQLite settings as the sweeper's

        url, study, number = self.where
        self.storage = rdb_storage(url, heartbeat_interval=None)
        trial = load_trial(self.storage, study, number)
        state = self.storage.get_trial(private_api.trial_id(trial)).state
        if state != TrialState.RUNNING:  # e.g. a trial's folder trained again by hand with its overrides
            log.warning("trial %d of study %r is %s: this run reports nothing to it", number, study, state.name)
            self.deadline = None  # the sweep's deadline is its own trial's, not this run's
            return
        self.trial = trial

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.storage is not None:  # an in-process sweep trains many trials: leave no connection open
            self.storage.engine.dispose()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = time.monotonic()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop before an epoch that would end past the deadline (validation ran inside this epoch already)."""
        if self.deadline is None or self._epoch_started is None or self.pruned_epoch is not None:
            return
        self._longest_epoch = max(self._longest_epoch, time.monotonic() - self._epoch_started)
        trained, last = trainer.current_epoch + 1, trainer.max_epochs
        if last is None or last < 0 or trained >= last or trainer.should_stop:
            return  # the last epoch has trained (or something else stops it): nothing would start
        next_is_last = trained + 1 >= last
        ratio = test_per_validation(trainer)
        end = predicted_end(time.time(), self._longest_epoch, next_is_last, self._longest_validation, ratio)
        stop = end > self.deadline
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop:
            self.pruned_epoch, self.stopped_by = trained, "deadline"
            tensor = trainer.callback_metrics.get(self.metric)
            self.pruned_value = None if tensor is None else float(tensor)
            trainer.should_stop = True
            log.info(
                "trial %d stopped after epoch %d of %d: the next would end %.0f s past the sweep's deadline "
                "(its budget, hydra.sweeper.budget_minutes)",
                self.where[2],
                trained,
                last,
                end - self.deadline,
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._validation_started is not None:
            self._longest_validation = max(self._longest_validation, time.monotonic() - self._validation_started)
        step = trainer.current_epoch + 1
        prune, value = False, None
        if self.trial is not None:
            tensor = trainer.callback_metrics.get(self.metric)
            value = None if tensor is None else float(tensor)
            if value is None and not self._warned_missing:
                self._warned_missing = True
                log.warning("%s was not logged by validation: nothing reported to the sweep's trial", self.metric)
            # not a non-finite value: optuna 2.10's RDB storage refuses NaN (NOT NULL), and such a trial fails anyway
            if value is not None and math.isfinite(value):
                try:
                    if step not in self._reported:  # one report per epoch, when it validates more than once
                        self._reported.add(step)
                        self.trial.report(value, step)
                    prune = self.trial.should_prune()
                except RuntimeError as error:  # finished meanwhile: another worker judged its sweeper dead
                    log.warning("trial %d: %s; this run reports nothing more to it", self.where[2], error)
                    self.trial = None
        if prune and trainer.max_epochs is not None and 0 < trainer.max_epochs <= step:
            prune = False  # the last epoch has trained: stopping saves nothing and would drop a finished trial
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned_epoch, self.pruned_value = step, value
            trainer.should_stop = True
            log.info(
                "trial %d pruned after epoch %d (%s = %s): the training stops here",
                self.where[2],
                step,
                self.metric,
                value,
            )

    def raise_if_pruned(self) -> None:
        """optuna.TrialPruned when the trial was pruned (after the run wrote its metrics)."""
        if self.pruned_epoch is not None:
            why = "stopped by the sweep's deadline" if self.stopped_by == "deadline" else "pruned"
            raise optuna.TrialPruned(f"{why} after epoch {self.pruned_epoch}: {self.metric} = {self.pruned_value}")


def test_per_validation(trainer: L.Trainer) -> float:
    """The test split's size over the validation split's (1.0 where the datamodule has no splits)."""
    splits = getattr(getattr(trainer, "datamodule", None), "splits", None) or {}
    validated, tested = len(splits["val"].samples) if "val" in splits else 0, 0
    if "test" in splits:
        tested = len(splits["test"].samples)
    return tested / validated if validated and tested else 1.0
