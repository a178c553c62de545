"""A run must end validated and must say when its model learnt nothing.

- ValidateLastEpoch: the last epoch (max_epochs reached, or max_time about to stop training) is always
  validated, whatever trainer.check_val_every_n_epoch says, so metrics.json always holds the val/ metrics
  and the objective (a 1-epoch run with validation every 5 epochs used to have none).
- TrainingHealth keeps each epoch's mean training loss (in checkpoints too, so a resumed run remembers);
  collapse_reasons reads it with the validation metrics: an inpainting that is the same for every image or
  saturated, a loss that did not go down, a validation AUROC at or below chance.
- stopped_early_by names what ended training before trainer.max_epochs (trainer.max_time, ...): a recipe is its
  epochs, and a run that trained fewer is another model, which train.run says in a warning and in metrics.json.
- smoke_run_batches: trainer.fast_dev_run's batches per stage; such a run checks that a command works, and its
  metrics (one step, one batch) say nothing about the model, so train.run diagnoses nothing.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, Timer

from anomaly_lab.results import validation_key

SATURATED_SHARE = 0.99  # of output values within 1e-4 of 0 or 1 (a sigmoid output driven to its limits)
CONSTANT_SPREAD = 1e-5  # mean over pixels of the std across validation images of the inpainting


class ValidateLastEpoch(L.Callback):
    """Runs validation after the last training epoch even when check_val_every_n_epoch would skip it."""

    @staticmethod
    def _validate_this_epoch(trainer: L.Trainer) -> None:
        if trainer.check_val_every_n_epoch is not None:
            trainer.check_val_every_n_epoch = 1

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.max_epochs
        if last is not None and last > 0 and trainer.current_epoch + 1 >= last:
            self._validate_this_epoch(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        timers = [callback for callback in trainer.callbacks if isinstance(callback, Timer)]  # type: ignore[attr-defined]
        remaining = [timer.time_remaining("train") for timer in timers]
        if trainer.should_stop or any(seconds is not None and seconds <= 0 for seconds in remaining):
            self._validate_this_epoch(trainer)


class TrainingHealth(L.Callback):
    """Each epoch's mean training loss, kept in checkpoints."""

    def __init__(self) -> None:
        self.epoch_losses: list[float] = []
        self.last_epoch_cut_short = False  # this process's last training epoch ran fewer batches than an epoch has
        self._sum = 0.0
        self._count = 0
        self._batches = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sum, self._count, self._batches = 0.0, 0, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._sum += float(loss)
            self._count += 1

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._count:
            self.epoch_losses.append(self._sum / self._count)
        self.last_epoch_cut_short = self._batches < trainer.num_training_batches

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_losses": list(self.epoch_losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_losses = [float(loss) for loss in state_dict.get("epoch_losses", [])]


def collapse_reasons(metrics: dict[str, float], epoch_losses: list[float]) -> list[str]:
    """Why a trained model looks dead (empty when it does not), from its last validation and its losses."""
    reasons = []
    spread = metrics.get("val/output_spread")
    if spread is not None and spread < CONSTANT_SPREAD:
        reasons.append(f"the inpainting is the same for every validation image (spread {spread:.2g})")
    saturated = metrics.get("val/output_saturated")
    if saturated is not None and saturated >= SATURATED_SHARE:
        reasons.append(f"{saturated:.0%} of the output pixels are saturated at 0 or 1")
    if len(epoch_losses) >= 2 and epoch_losses[-1] >= epoch_losses[0]:
        reasons.append(
            f"the training loss did not go down (epoch 1: {epoch_losses[0]:.4g}, "
            f"epoch {len(epoch_losses)}: {epoch_losses[-1]:.4g})"
        )
    auroc = metrics.get(validation_key(metrics, "val/image_auroc"))  # scoring=auto: the chosen score's
    if auroc is not None and auroc <= 0.5:
        reasons.append(f"validation image AUROC {auroc:.3f} is at or below chance (0.5)")
    return reasons


def smoke_run_batches(trainer: L.Trainer) -> int:
    """The batches per stage of a trainer.fast_dev_run smoke run (true is 1); 0 for a real run."""
    return int(getattr(trainer, "fast_dev_run", False))  # set by Lightning's Trainer, undeclared


def stopped_early_by(trainer: L.Trainer) -> str | None:
    """What ended a finished fit before trainer.max_epochs: "max_time" (trainer.max_time or another Timer ran out),
    "max_steps", "early_stopping", or "a callback" (another one set trainer.should_stop). None when every planned
    epoch ran, when no number was planned (max_epochs -1: a time budget), and in a fast_dev_run smoke run."""
    planned = trainer.max_epochs
    if smoke_run_batches(trainer) or planned is None or planned < 0 or trainer.current_epoch >= planned:
        return None
    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    remaining = [timer.time_remaining("train") for timer in callbacks if isinstance(timer, Timer)]
    if any(seconds is not None and seconds <= 0 for seconds in remaining):
        return "max_time"
    if 0 <= trainer.max_steps <= trainer.global_step:
        return "max_steps"
    if any(isinstance(callback, EarlyStopping) and callback.stopped_epoch > 0 for callback in callbacks):
        return "early_stopping"
    return "a callback"
