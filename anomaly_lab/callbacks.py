"""Callbacks that report what a run did beyond its loss."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import lightning as L
import torch
from torch.utils.data import default_collate

from anomaly_lab.models.module import InpaintingModule

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


class ReconstructionImages(L.Callback):
    """TensorBoard image grid per validation: input | masked input | inpainted | error map | ground truth.

    A few normal and a few anomalous validation images, one row each.
    """

    def __init__(self, num_images: int = 3) -> None:
        self.num_images = num_images

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = getattr(trainer.logger, "experiment", None)
        if trainer.sanity_checking or experiment is None or not hasattr(experiment, "add_image"):
            return
        if not trainer.is_global_zero:
            return
        module = cast(InpaintingModule, pl_module)
        dataset = trainer.val_dataloaders.dataset  # type: ignore[union-attr]
        labels = [s.label for s in dataset.decoded.samples]
        normal = [i for i, y in enumerate(labels) if y == 0][: self.num_images]
        anomalous = [i for i, y in enumerate(labels) if y == 1][: self.num_images]
        batch = default_collate([dataset[i] for i in normal + anomalous])
        images = batch["image"].to(module.device)  # (B,3,H,W)
        with torch.no_grad():
            masks = module.masking.random_masks(len(images), images.shape[-2], images.shape[-1], device=images.device)
            masked = module.masking.apply(images, masks)
            recon = module.net(masked)
            maps, _ = module(images)  # (B,1,H,W)
        maps = maps / maps.amax().clamp_min(1e-8)
        panels = [
            images,
            masked.clamp(0, 1),
            recon.clamp(0, 1),
            maps.expand_as(images),
            batch["mask"].to(images).expand_as(images),
        ]
        rows = torch.cat(panels, dim=-1)  # (B,3,H,5W)
        grid = torch.cat(list(rows), dim=-2)  # (3,B*H,5W)
        experiment.add_image("val/input_masked_inpainted_error_truth", grid.cpu(), trainer.global_step)
