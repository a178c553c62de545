"""Callbacks that report what a run did beyond its loss."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class ImagesPerSecond(L.Callback):
    """Training throughput in images per second (optimizer steps only, validation excluded)."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0 and trainer.current_epoch == 0:
            return  # first step pays for warm-up
        self.seconds += time.perf_counter() - self._start
        self.images += int(batch["image"].shape[0])

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.seconds > 0:
            module.log("train/images_per_s", self.images / self.seconds)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.seconds > 0 and trainer.is_global_zero:
            log.info("training throughput: %.1f images/s", self.images / self.seconds)
