"""The LightningModule: trains a net to inpaint masked images and scores images by inpainting error.

It receives built objects (net, masking, loss, anomaly map, optimizer partial); wiring is train.run's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import lightning as L
import torch
from torch import nn
from torchmetrics import CatMetric

from anomaly_lab.errors import UserError
from anomaly_lab.inference import SPEC_KEY
from anomaly_lab.masking import Masking, inpaint_for_training
from anomaly_lab.metrics import PixelMetrics, f1_max, image_auroc, wasserstein_separation
from anomaly_lab.scoring import full_coverage_scores
from anomaly_lab.thresholds import ThresholdRule, metrics_at_threshold

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or inf (a diverged model, e.g. a far too high optimizer.lr); the run (or sweep
    trial) fails loudly."""


class InpaintingModule(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        masking: Masking,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        anomaly_map: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        score_reduce: str = "mean",
        topk_fraction: float = 0.01,
        normalise_wasserstein: bool = False,
        threshold_rule: ThresholdRule | None = None,
        channels_last: bool = False,
        inference_spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # channels_last: net weights and input images in NHWC memory order (faster convolutions on GPUs
        # with tensor cores, bf16 especially); results are the same up to rounding.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # nn.Module.to takes memory_format at run time; its type stubs do not list it
        self.net = net.to(memory_format=self.memory_format) if channels_last else net  # type: ignore[call-overload]
        self.masking = masking
        self.loss = loss
        self.anomaly_map = anomaly_map
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.score_reduce = score_reduce
        self.topk_fraction = topk_fraction
        self.normalise_wasserstein = normalise_wasserstein
        self.scores = nn.ModuleDict({stage: CatMetric() for stage in ("val", "test")})
        self.labels = nn.ModuleDict({stage: CatMetric() for stage in ("val", "test")})
        self.pixel_metrics = PixelMetrics()
        self.threshold_rule = threshold_rule
        # Image-score threshold set at each validation end; a buffer, so the checkpoint carries it to test.
        self.threshold: torch.Tensor
        self.register_buffer("threshold", torch.tensor(float("nan")))
        # Plain values that predict/export rebuild the scorer from (see anomaly_lab.inference).
        self.inference_spec = inference_spec

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-coverage inpainting error: anomaly maps (B,1,H,W) and image scores (B,)."""
        images = images.contiguous(memory_format=self.memory_format)
        return full_coverage_scores(
            self.net, images, self.masking, self.anomaly_map, self.score_reduce, self.topk_fraction
        )

    def _step(self, batch: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
        """{"loss"}, plus the image "scores" (B,) in val/test, which callbacks receive as `outputs`."""
        images = batch["image"].contiguous(memory_format=self.memory_format)  # (B,3,H,W)
        normal = batch["label"] == 0  # (B,)
        recon = inpaint_for_training(self.net, images, self.masking)  # (B,3,H,W)
        loss = self.loss(recon[normal], images[normal]) if normal.any() else images.new_zeros(())
        if not torch.isfinite(loss):
            lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
            hint = f"lower optimizer.lr (now {lr}) or check the data" if lr is not None else "check the data"
            raise NonFiniteLossError(
                f"{stage} loss is {loss.item()} at step {self.global_step}: the model diverged; {hint}"
            )
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=int(normal.sum()))
        if stage == "val" and len(images) > 1:  # signs of a dead net (see anomaly_lab.health)
            output = recon.detach().float()
            self.log("val/output_spread", output.std(dim=0).mean(), batch_size=len(images))
            saturated = (output <= 1e-4) | (output >= 1 - 1e-4)
            self.log("val/output_saturated", saturated.float().mean(), batch_size=len(images))
        if stage != "train":
            maps, scores = self(images)
            self._collector("scores", stage).update(scores)
            self._collector("labels", stage).update(batch["label"])
            if stage == "test":
                self.pixel_metrics.update(maps, batch["mask"] > 0.5)
            return {"loss": loss, "scores": scores.detach()}
        return {"loss": loss}

    def _collector(self, kind: str, stage: str) -> CatMetric:
        return cast(CatMetric, cast(nn.ModuleDict, getattr(self, kind))[stage])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._step(batch, "test")

    def _separation_metrics(self, stage: str) -> dict[str, float]:
        scores = self._collector("scores", stage).compute().float().cpu()  # (N,)
        labels = self._collector("labels", stage).compute().long().cpu()  # (N,)
        self._collector("scores", stage).reset()
        self._collector("labels", stage).reset()
        metrics = {f"{stage}/score_normal_mean": float(scores[labels == 0].mean())}
        if stage == "val" and self.threshold_rule is not None and not self.trainer.sanity_checking:
            self.threshold.fill_(self.threshold_rule(scores, labels))
        if torch.isfinite(self.threshold):  # NaN when no rule is set or no validation pass has run
            metrics[f"{stage}/threshold"] = float(self.threshold)
            if stage == "test":
                at_threshold = metrics_at_threshold(scores, labels, float(self.threshold))
                metrics.update({f"test/{name}": value for name, value in at_threshold.items()})
        if labels.min() == labels.max():
            return metrics  # one class only: no separation to measure
        normal_scores, anomalous_scores = scores[labels == 0].numpy(), scores[labels == 1].numpy()
        metrics[f"{stage}/wasserstein"] = wasserstein_separation(
            normal_scores, anomalous_scores, normalise=self.normalise_wasserstein
        )
        # scale-free form, comparable across losses and score rules (the benchmark's column)
        metrics[f"{stage}/wasserstein_normalised"] = wasserstein_separation(
            normal_scores, anomalous_scores, normalise=True
        )
        metrics[f"{stage}/image_auroc"] = image_auroc(scores, labels)
        metrics[f"{stage}/f1_max"] = f1_max(scores, labels)[0]
        return metrics

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self._separation_metrics("val"))

    def on_test_epoch_end(self) -> None:
        metrics = self._separation_metrics("test")
        if "test/image_auroc" in metrics:
            metrics.update({f"test/{name}": float(value) for name, value in self.pixel_metrics.compute().items()})
        self.pixel_metrics.reset()
        self.log_dict(metrics)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.inference_spec is not None:
            checkpoint[SPEC_KEY] = {**self.inference_spec, "threshold": float(self.threshold)}

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
