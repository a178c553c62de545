"""Callbacks that report what a run did beyond its loss."""

from __future__ import annotations

import csv
import logging
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.utils.data import default_collate

from anomaly_lab.data.tiles import stitch_scores
from anomaly_lab.figures import precision_recall_figure, roc_figure, score_histogram, tile_classification_figure
from anomaly_lab.models.module import InpaintingModule

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


class ImagesPerSecond(L.Callback):
    """Throughput and cost: train and test images/s, training wall time, peak memory.

    Logs train/images_per_s (optimizer steps only, the first step excluded as warm-up),
    train/seconds (wall time since fit start, validation included; its last value is the training
    time), train/epochs (epochs completed), test/images_per_s (full-coverage scoring of the test
    set, metrics included) and peak_memory_mb.
    """

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self.test_images = 0
        self.test_seconds = 0.0
        self._start = 0.0
        self._fit_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

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
        module.log("train/seconds", time.perf_counter() - self._fit_start)
        module.log("train/epochs", float(trainer.current_epoch + 1))
        module.log("peak_memory_mb", peak_memory_mb(module.device))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.seconds > 0 and trainer.is_global_zero:
            log.info("training throughput: %.1f images/s", self.images / self.seconds)

    def on_test_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._start = time.perf_counter()

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0:
            return  # warm-up
        self.test_seconds += time.perf_counter() - self._start
        self.test_images += int(batch["image"].shape[0])

    def on_test_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.test_seconds > 0:
            module.log("test/images_per_s", self.test_images / self.test_seconds)
        module.log("peak_memory_mb", peak_memory_mb(module.device))


def column_header(titles: Sequence[str], width: int) -> torch.Tensor:
    """A white strip (3,h,len(titles)*width) in [0,1], each title in black centred over its width-px column."""
    fit = width / (0.6 * max(map(len, titles)))  # the longest title fills its column (72 dpi: points = pixels)
    points = max(6.0, min(fit, max(14.0, width / 16)))  # 14 pt, larger for wide columns
    height, total = math.ceil(1.6 * points), len(titles) * width
    figure = Figure(figsize=((total + 0.5) / 72, (height + 0.5) / 72), dpi=72)  # +0.5: Agg truncates to int
    for i, title in enumerate(titles):
        figure.text((i + 0.5) / len(titles), 0.5, title, ha="center", va="center", fontsize=points)
    (canvas := FigureCanvasAgg(figure)).draw()
    rgb = np.asarray(canvas.buffer_rgba())[:height, :total, :3]  # (h,total,3) uint8
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255


class ReconstructionImages(L.Callback):
    """TensorBoard image grid per validation: input | masked input | inpainted | error map | ground truth.

    A few normal and a few anomalous validation images, one row each, under a header row naming the columns
    (the panels are the images' own pixels, unscaled).
    """

    columns = ("input", "masked", "inpainting", "error", "truth")

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
        truth = batch["mask"].to(images).expand_as(images)
        panels = [images, masked.clamp(0, 1), recon.clamp(0, 1), maps.expand_as(images), truth]  # as self.columns
        rows = torch.cat(panels, dim=-1).float().cpu()  # (B,3,H,5W)
        grid = torch.cat([column_header(self.columns, images.shape[-1]), *rows], dim=-2)  # (3,h+B*H,5W)
        experiment.add_image("val/input_masked_inpainted_error_truth", grid, trainer.global_step)


@dataclass(frozen=True)
class ScoredSample:
    """One evaluated image (or tile: its page and position in the page's tile grid) and its image score."""

    path: str
    label: int
    defect: str
    score: float
    page: str
    row: int
    col: int


def scored_samples(batch: dict[str, Any], outputs: Any) -> list[ScoredSample]:
    """The batch's samples with the scores its val/test step returned (`outputs["scores"]`, (B,))."""
    scores = outputs["scores"].detach().float().cpu().tolist()
    labels, rows, cols = (torch.as_tensor(batch[key]).cpu().tolist() for key in ("label", "row", "col"))
    columns = zip(batch["path"], labels, batch["defect"], scores, batch["page"], rows, cols, strict=True)
    return [
        ScoredSample(str(path), int(label), str(defect), float(score), str(page), int(row), int(col))
        for path, label, defect, score, page, row, col in columns
    ]


def gather_samples(samples: list[ScoredSample]) -> list[ScoredSample]:
    """Every process's samples under DDP (each saw a shard); every rank must call this. Unchanged otherwise.

    Evaluation loaders use an unrepeated distributed sampler (data.datamodules.evaluation_sampler), so
    shards do not overlap; identical rows are still dropped as a safeguard against a padding sampler.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return samples
    parts: list[list[ScoredSample] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, samples)
    return list(dict.fromkeys(sample for part in parts for sample in part or []))


class ScoredSampleCollector(L.Callback):
    """Base: collects each batch's ScoredSamples in self.samples[stage] for the stages in `stages`."""

    stages: tuple[str, ...] = ("test",)

    def __init__(self) -> None:
        self.samples: dict[str, list[ScoredSample]] = {stage: [] for stage in self.stages}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val" in self.stages:
            self.samples["val"] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "test" in self.stages:
            self.samples["test"] = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "val" in self.stages:
            self.samples["val"] += scored_samples(batch, outputs)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "test" in self.stages:
            self.samples["test"] += scored_samples(batch, outputs)


class ScoresTable(ScoredSampleCollector):
    """Per-sample test results as CSV: path, label, defect, score, prediction (score >= the module's threshold).

    prediction is left empty when the module has no threshold (no rule, or no validation pass ran).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples = gather_samples(self.samples["test"])
        if not trainer.is_global_zero:
            return
        threshold = float(cast(InpaintingModule, pl_module).threshold)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(["path", "label", "defect", "score", "prediction"])
            for s in samples:
                prediction = int(s.score >= threshold) if math.isfinite(threshold) else ""
                writer.writerow([s.path, s.label, s.defect, repr(s.score), prediction])
        log.info("per-sample test scores: %s", self.path)


class ScoreFigures(ScoredSampleCollector):
    """TensorBoard figures of score separation: a normal-vs-anomalous histogram with the threshold after each
    validation and at test, plus ROC and precision-recall curves at test."""

    stages = ("val", "test")

    def __init__(self, bins: int = 30) -> None:
        super().__init__()
        self.bins = bins

    # on_*_end, not on_*_epoch_end: callbacks' epoch-end hooks run before the module's, which sets the threshold
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._add_figures("val", trainer, cast(InpaintingModule, pl_module))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._add_figures("test", trainer, cast(InpaintingModule, pl_module))

    def _add_figures(self, stage: str, trainer: L.Trainer, module: InpaintingModule) -> None:
        samples = gather_samples(self.samples[stage])
        experiment = getattr(trainer.logger, "experiment", None)
        if not trainer.is_global_zero or not samples or experiment is None or not hasattr(experiment, "add_figure"):
            return
        scores = torch.tensor([s.score for s in samples])  # (N,)
        labels = torch.tensor([s.label for s in samples])  # (N,)
        threshold = float(module.threshold)
        step = trainer.global_step
        histogram = score_histogram(
            scores[labels == 0], scores[labels == 1], threshold, title=f"{stage} image scores", bins=self.bins
        )
        experiment.add_figure(f"{stage}/score_histogram", histogram, step)
        if stage == "test" and labels.min() != labels.max():
            experiment.add_figure("test/roc", roc_figure(scores, labels, threshold), step)
            experiment.add_figure("test/precision_recall", precision_recall_figure(scores, labels, threshold), step)


class TilePageFigures(ScoredSampleCollector):
    """TensorBoard figure per tiled test page (the thesis's notes figure): the page, its per-tile score grid and
    its tile classification at the module's threshold. Pages with anomalous tiles come first; whole-image
    datasets (every page a single tile) get none.

    The page is redrawn from its test tiles side by side at their (row, col), so it shows exactly what was
    scored; tiles of the page that are not in the test set stay black and NaN in the grid.
    """

    def __init__(self, max_pages: int = 4) -> None:
        super().__init__()
        self.max_pages = max_pages

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        samples = gather_samples(self.samples["test"])
        experiment = getattr(trainer.logger, "experiment", None)
        if not trainer.is_global_zero or experiment is None or not hasattr(experiment, "add_figure"):
            return
        by_page: dict[str, list[ScoredSample]] = {}
        for sample in samples:
            by_page.setdefault(sample.page, []).append(sample)
        tiled = {page: tiles for page, tiles in by_page.items() if any(t.row or t.col for t in tiles)}
        pages = sorted(tiled, key=lambda page: (-max(t.label for t in tiled[page]), page))[: self.max_pages]
        if not pages:
            return
        dataset = trainer.test_dataloaders.dataset  # type: ignore[union-attr]  # whole on every rank
        index = {sample.path: i for i, sample in enumerate(dataset.decoded.samples)}
        threshold = float(cast(InpaintingModule, pl_module).threshold)
        for number, page in enumerate(pages):
            tiles = tiled[page]
            grid_shape = (max(t.row for t in tiles) + 1, max(t.col for t in tiles) + 1)
            rows, cols = [t.row for t in tiles], [t.col for t in tiles]
            scores = stitch_scores([t.score for t in tiles], rows, cols, grid_shape)  # (R,C)
            images = dataset.decoded.images[[index[t.path] for t in tiles]]  # (N,t,t,3) uint8
            size = images.shape[1]
            canvas = np.zeros((grid_shape[0] * size, grid_shape[1] * size, *images.shape[3:]), images.dtype)
            # tile (row, col) at (row * size, col * size); the grid's positions() order is not assumed
            for image, row, col in zip(images, rows, cols, strict=True):
                canvas[row * size : (row + 1) * size, col * size : (col + 1) * size] = image
            figure = tile_classification_figure(canvas, scores, threshold, title=Path(page).name)
            experiment.add_figure(f"test/tile_page_{number}", figure, trainer.global_step)
