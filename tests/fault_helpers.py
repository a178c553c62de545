"""Test-only callbacks that hold a real training process at a known point, so a test can kill it there."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L


class HoldInEpoch(L.Callback):
    """After batch `batch` of epoch `epoch` (0-based), write `marker` and wait to be killed (at most `wait` s)."""

    def __init__(self, epoch: int, batch: int, marker: str, wait: float = 600.0) -> None:
        self.epoch, self.batch, self.marker, self.wait = epoch, batch, Path(marker), wait

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self.marker.write_text(f"epoch {self.epoch} batch {self.batch}\n")
            time.sleep(self.wait)
