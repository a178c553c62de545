"""Test-only callbacks that hold a real training process at a known point, so a test can kill it there."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import lightning as L


class HoldInEpoch(L.Callback):
    """After batch `batch` of epoch `epoch` (0-based), write `marker` and wait to be killed (at most `wait` s).

    `occurrence`: hold the n-th time this process reaches that point (a sweep runs its trials in one process,
    so occurrence=2 holds the second trial that trains).
    """

    reached: ClassVar[int] = 0

    def __init__(self, epoch: int, batch: int, marker: str, wait: float = 600.0, occurrence: int = 1) -> None:
        self.epoch, self.batch, self.marker, self.wait, self.occurrence = epoch, batch, Path(marker), wait, occurrence

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            HoldInEpoch.reached += 1
            if HoldInEpoch.reached == self.occurrence:
                self.marker.write_text(f"epoch {self.epoch} batch {self.batch}\n")
                time.sleep(self.wait)
