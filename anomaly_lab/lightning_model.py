"""The LightningModule: trains an InpaintingModel (anomaly_lab.model) and measures how its scores separate.

It wraps the built model with what training needs (loss, optimizer, scheduler, threshold rule, logging,
metrics); wiring is train.run's. Per-sample results are collected once per validation/test pass, gathered
once under DDP, and published as `self.results[stage]` for the callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import lightning as L
import torch

from anomaly_lab.checkpoint_loading import SPEC_KEY
from anomaly_lab.data.images import NATIVE_MASK_KEY
from anomaly_lab.errors import UserError
from anomaly_lab.masking import seeded_random_stream
from anomaly_lab.metrics import PixelMetrics, f1_max, image_auroc, wasserstein_separation
from anomaly_lab.model import InpaintingModel
from anomaly_lab.results import (
    ScoredSample,
    StageResults,
    anomaly_kind,
    gather_samples,
    scored_samples,
    without_masks_note,
)
from anomaly_lab.thresholds import PixelThreshold, ThresholdRule, metrics_at_threshold

log = logging.getLogger(__name__)

# What a pass over the whole test set (test_prefix "test/all") logs: the threshold-free metrics. Its images include
# the anomalous ones validation chose the threshold on, so counts and F1 at that threshold would flatter it.
WHOLE_TEST_SET_METRICS = (
    "image_auroc",
    "f1_max",
    "pixel_auroc",
    "aupro",
    "pixel_auroc_model_res",
    "aupro_model_res",
    "wasserstein",
    "wasserstein_normalised",
)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or inf (a diverged model, e.g. a far too high optimizer.lr); the run (or sweep
    trial) fails loudly."""


class InpaintingModule(L.LightningModule):
    def __init__(
        self,
        model: InpaintingModel,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        normalise_wasserstein: bool = False,
        threshold_rule: ThresholdRule | None = None,
        spec: dict[str, Any] | None = None,
        pixel_threshold_rule: PixelThreshold | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.normalise_wasserstein = normalise_wasserstein
        self.threshold_rule = threshold_rule
        self.pixel_threshold_rule = pixel_threshold_rule
        # test pixel metrics: the map resized (bilinear) to each ground-truth mask's own resolution (the published
        # protocol, test/pixel_auroc, test/aupro) and at the model's resolution against the prepared masks (*_model_res)
        self.pixel_metrics = PixelMetrics()
        self.pixel_metrics_model_res = PixelMetrics()
        # validation's, at the model's resolution (cheap each epoch): what a map setting is chosen on, never the test
        self.val_pixel_metrics_model_res = PixelMetrics()
        # where on_test_epoch_end logs and publishes: "test", or e.g. "test/all" for a pass over the whole test set
        # (datamodule.test_split="all"): its threshold-free metrics only, results in self.results["test/all"]
        self.test_prefix = "test"
        self.samples: dict[str, list[ScoredSample]] = {"val": [], "test": []}
        self.results: dict[str, StageResults] = {}
        # Plain values that predict/export rebuild the model from (anomaly_lab.checkpoint_loading.model_spec).
        self.spec = spec

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-coverage inpainting error: anomaly maps (B,1,H,W) and image scores (B,)."""
        return self.model(images)

    def _step(self, batch: dict[str, Any], stage: str, batch_idx: int) -> torch.Tensor:
        images = batch["image"]  # (B,3,H,W)
        normal = batch["label"] == 0  # (B,)
        if stage == "train":
            recon = self.model.training_reconstruction(images)  # (B,3,H,W)
        else:
            # Validation and test draw their random masks from a stream of their own, seeded by the batch: their
            # losses compare across epochs, and training's stream (masks, batch order) is the same whether or how
            # often validation ran.
            with seeded_random_stream(images.device, batch_idx):
                recon = self.model.training_reconstruction(images)
        loss = self.loss(recon[normal], images[normal]) if normal.any() else images.new_zeros(())
        if not torch.isfinite(loss):
            lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
            hint = f"lower optimizer.lr (now {lr}) or check the data" if lr is not None else "check the data"
            raise NonFiniteLossError(
                f"{stage} loss is {loss.item()} at step {self.global_step}: the model diverged; {hint}"
            )
        # epoch-level values are averaged over DDP processes (each saw a shard); step-level training loss is not
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=int(normal.sum()), sync_dist=stage != "train")
        if stage == "val" and len(images) > 1:  # signs of a dead net (see anomaly_lab.training_end)
            output = recon.detach().float()
            self.log("val/output_spread", output.std(dim=0).mean(), batch_size=len(images), sync_dist=True)
            saturated = (output <= 1e-4) | (output >= 1 - 1e-4)
            self.log("val/output_saturated", saturated.float().mean(), batch_size=len(images), sync_dist=True)
        if stage != "train":
            maps, scores = self.model(images)
            self.samples[stage] += scored_samples(batch, scores)
            masks = batch["mask"] > 0.5  # (B,1,S,S) the prepared masks
            if stage == "val":
                self.val_pixel_metrics_model_res.update(maps, masks)
            if stage == "test":
                self.pixel_metrics_model_res.update(maps, masks)
                # (1,h,w) each at its file's resolution (data.images.NATIVE_MASK_KEY), against the map of the whole
                # square (0 in the rows a crop_height band leaves out); a loader without them: the prepared masks
                native = batch.get(NATIVE_MASK_KEY)
                if native is None:
                    self.pixel_metrics.update(maps, masks)
                else:
                    self.pixel_metrics.update(self.model.preprocessing.uncrop(maps), native)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test", batch_idx)

    def on_validation_epoch_start(self) -> None:
        self.samples["val"] = []

    def on_test_epoch_start(self) -> None:
        self.samples["test"] = []

    def _separation_metrics(self, stage: str, publish_as: str | None = None) -> dict[str, float]:
        """Publish self.results[publish_as or stage] (one gather) and measure it; validation sets the threshold
        first."""
        results = StageResults(stage, gather_samples(self.samples[stage]))
        self.samples[stage] = []
        scores, labels = torch.from_numpy(results.scores), torch.from_numpy(results.labels)  # (N,), (N,)
        threshold = self.model.threshold
        if stage == "val" and self.threshold_rule is not None and not self.trainer.sanity_checking:
            threshold.fill_(self.threshold_rule(scores, labels))
        if not self.trainer.sanity_checking:
            self.results[publish_as or stage] = replace(results, threshold=float(threshold))
        metrics = {f"{stage}/score_normal_mean": float(scores[labels == 0].mean())}
        if torch.isfinite(threshold):  # NaN when no rule is set or no validation pass has run
            metrics[f"{stage}/threshold"] = float(threshold)
            if stage == "test":
                at_threshold = metrics_at_threshold(scores, labels, float(threshold))
                if not bool((labels == 1).any()):  # good images only: just the normal images' calls
                    at_threshold = {name: at_threshold[name] for name in ("fp", "tn")}
                metrics.update({f"test/{name}": value for name, value in at_threshold.items()})
        if labels.min() == labels.max():
            return metrics  # one class only: no separation to measure
        normal_scores, anomalous_scores = results.scores[labels == 0], results.scores[labels == 1]
        # signed: negative when anomalies score lower on average (a sweep must not reward that)
        metrics[f"{stage}/wasserstein"] = wasserstein_separation(
            normal_scores, anomalous_scores, normalise=self.normalise_wasserstein, signed=True
        )
        # scale-free form, comparable across losses and score rules (the benchmark's column)
        metrics[f"{stage}/wasserstein_normalised"] = wasserstein_separation(
            normal_scores, anomalous_scores, normalise=True, signed=True
        )
        metrics[f"{stage}/image_auroc"] = image_auroc(scores, labels)
        metrics[f"{stage}/f1_max"] = f1_max(scores, labels)[0]
        kinds = [anomaly_kind(sample.defect) if sample.label == 1 else "" for sample in results.samples]
        if len(set(kinds) - {""}) > 1:  # e.g. real and synthetic anomalies: how each kind separates on its own
            for kind in sorted(set(kinds) - {""}):
                of_kind = torch.tensor([k == kind for k in kinds])  # (N,) bool
                metrics[f"{stage}/{kind}/wasserstein"] = wasserstein_separation(
                    normal_scores, results.scores[of_kind.numpy()], normalise=self.normalise_wasserstein, signed=True
                )
                keep = of_kind | (labels == 0)  # (N,) this kind's anomalies and every normal sample
                metrics[f"{stage}/{kind}/image_auroc"] = image_auroc(scores[keep], labels[keep])
        return metrics

    def on_validation_epoch_end(self) -> None:
        metrics = self._separation_metrics("val")
        results = None if self.trainer.sanity_checking else self.results.get("val")
        if "val/image_auroc" in metrics and results is not None and without_masks_note(results.samples) is None:
            pixel = self.val_pixel_metrics_model_res.compute()
            metrics.update({f"val/{name}_model_res": float(value) for name, value in pixel.items()})
        if self.pixel_threshold_rule is not None and results is not None:
            metrics["val/pixel_threshold"] = self.fit_pixel_threshold(without_masks_note(results.samples) is None)
        self.val_pixel_metrics_model_res.reset()
        self.log_dict(metrics, sync_dist=True)  # the same on every process (gathered)

    def fit_pixel_threshold(self, masks_known: bool) -> float:
        """The pixel threshold (self.pixel_threshold_rule) from this validation's pixel histograms (the whole split
        under DDP), into the model; without known masks, from the normal pixels alone."""
        assert self.pixel_threshold_rule is not None
        metric = self.val_pixel_metrics_model_res
        with metric.sync_context():
            anomalous = metric.anomalous_hist if masks_known else torch.zeros_like(metric.anomalous_hist)
            value, _ = self.pixel_threshold_rule(metric.normal_hist, anomalous, float(metric.upper))
        self.model.pixel_threshold.fill_(value)
        return value

    def on_test_epoch_end(self) -> None:
        prefix = self.test_prefix
        metrics = self._separation_metrics("test", publish_as=prefix)
        # anomalous samples without ground-truth masks (all ones) would make pixel metrics meaningless: skip them.
        # Decided on the gathered samples, so every DDP process skips (or syncs) alike.
        note = without_masks_note(self.results[prefix].samples) if prefix in self.results else None
        if note is not None and self.trainer.is_global_zero:
            log.warning(note)
        if "test/image_auroc" in metrics and note is None:
            for suffix, pixel in (("", self.pixel_metrics), ("_model_res", self.pixel_metrics_model_res)):
                metrics.update({f"test/{name}{suffix}": float(value) for name, value in pixel.compute().items()})
        self.pixel_metrics.reset()
        self.pixel_metrics_model_res.reset()
        if prefix != "test":
            metrics = {
                f"{prefix}/{name.removeprefix('test/')}": value
                for name, value in metrics.items()
                if name.removeprefix("test/") in WHOLE_TEST_SET_METRICS
            }
        self.log_dict(metrics, sync_dist=True)  # the same on every process (gathered)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.spec is not None:
            checkpoint[SPEC_KEY] = self.spec

    def parameter_groups(self) -> Any:
        """The optimizer's parameters: a net with `parameter_groups(lr)` (the optimizer's lr) gives its own groups,
        e.g. a pretrained encoder at a lower learning rate; any parameter they leave out trains at lr."""
        groups_of = getattr(self.model.net, "parameter_groups", None)
        if groups_of is None:
            return self.parameters()
        lr = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        if lr is None:
            raise UserError("optimizer.lr is not set: the net's parameter_groups(lr) sets its groups' rates from it")
        groups = [{**group, "params": list(group["params"])} for group in groups_of(lr)]  # generators read once
        grouped = {id(p) for group in groups for p in group["params"]}
        rest = [p for p in self.parameters() if id(p) not in grouped]
        return groups + ([{"params": rest}] if rest else [])

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
