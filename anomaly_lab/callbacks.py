"""Callbacks that report what a run did beyond its loss."""

from __future__ import annotations

import csv
import logging
import math
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from anomaly_lab.data.images import ImageDataset
from anomaly_lab.data.tiles import stitch_scores
from anomaly_lab.figures import precision_recall_figure, roc_figure, score_histogram, tile_classification_figure
from anomaly_lab.masking import seeded_random_stream
from anomaly_lab.model import InpaintingModel
from anomaly_lab.results import SYNTHETIC_DEFECT_PREFIX, ScoredSample, StageResults

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


DETERMINISTIC: Any = torch.utils.deterministic  # a module whose settings are properties (mypy sees none)


class WithoutNaNFill(L.Callback):
    """trainer.deterministic's algorithms without torch's NaN fill of every new empty tensor
    (torch.utils.deterministic.fill_uninitialized_memory): a debugging aid that costs 5-10% of a CPU training step,
    while no code here reads memory it has not written, so the weights are the same bit for bit. A callback, so that
    it is set in every training process and a launcher that pickles train.run by value (submitit) never meets torch's
    unpicklable module object. The caller's setting is back after each stage (train.run may run in a user's process)."""

    def __init__(self) -> None:
        self.caller_fills = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.caller_fills = DETERMINISTIC.fill_uninitialized_memory
        DETERMINISTIC.fill_uninitialized_memory = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        DETERMINISTIC.fill_uninitialized_memory = self.caller_fills


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
            module.log("train/images_per_s", self.images / self.seconds, sync_dist=True)  # per process, averaged
        module.log("train/seconds", time.perf_counter() - self._fit_start, sync_dist=True, reduce_fx="max")
        module.log("train/epochs", float(trainer.current_epoch + 1), sync_dist=True)
        module.log("peak_memory_mb", peak_memory_mb(module.device), sync_dist=True, reduce_fx="max")

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
        if batch_idx == 0 or whole_test_set_pass(module):
            return  # warm-up; the test split's speed only
        self.test_seconds += time.perf_counter() - self._start
        self.test_images += int(batch["image"].shape[0])

    def on_test_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if whole_test_set_pass(module):
            return
        if self.test_seconds > 0:
            module.log("test/images_per_s", self.test_images / self.test_seconds, sync_dist=True)
        module.log("peak_memory_mb", peak_memory_mb(module.device), sync_dist=True, reduce_fx="max")


def whole_test_set_pass(pl_module: L.LightningModule) -> bool:
    """True during train.run's second test pass, over the whole test set (the module logs it as "test/all"): the
    test's tables, figures and speed are the test split's, written in the first pass only."""
    return getattr(pl_module, "test_prefix", "test") != "test"


def published_results(pl_module: L.LightningModule, stage: str) -> StageResults | None:
    """`pl_module.results[stage]`: the stage's per-sample results, gathered once across DDP processes by the
    module (anomaly_lab.lightning_model, not imported here: no cycle); None while it has published none.

    The module publishes them in its on_validation_epoch_end / on_test_epoch_end, which Lightning calls after
    the callbacks' on_*_epoch_end, so callbacks read them in on_validation_end / on_test_end.
    """
    results = cast(dict[str, StageResults], getattr(pl_module, "results", {}))
    return results.get(stage)


def inpainting_model(pl_module: L.LightningModule) -> InpaintingModel:
    """The module's InpaintingModel (`pl_module.model`)."""
    return cast(InpaintingModel, pl_module.model)


def rank_zero_experiment(trainer: L.Trainer, method: str) -> Any | None:
    """The logger's experiment on global rank 0 when it has `method` (add_image, add_figure); None otherwise."""
    experiment = getattr(trainer.logger, "experiment", None)
    return experiment if trainer.is_global_zero and hasattr(experiment, method) else None


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

    The first `num_images` normal and `num_images` anomalous images of each validation pass (rank 0's own
    batches under DDP), one row each, under a header row naming the columns (the panels are the images' own
    pixels, unscaled; the error maps are scaled together to the largest value).
    """

    columns = ("input", "masked", "inpainting", "error", "truth")

    def __init__(self, num_images: int = 3) -> None:
        self.num_images = num_images
        self.kept: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {0: [], 1: []}  # label -> (image, mask)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.kept = {0: [], 1: []}

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for i, label in enumerate(torch.as_tensor(batch["label"]).tolist()):
            kept = self.kept.get(int(label))
            if kept is not None and len(kept) < self.num_images:
                kept.append((batch["image"][i].detach().cpu().clone(), batch["mask"][i].detach().cpu().clone()))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = rank_zero_experiment(trainer, "add_image")
        pairs = self.kept[0] + self.kept[1]
        if trainer.sanity_checking or experiment is None or not pairs:
            return
        model = inpainting_model(pl_module)
        images = torch.stack([image for image, _ in pairs]).to(pl_module.device)  # (B,3,S,S)
        truth = torch.stack([mask for _, mask in pairs]).to(images).expand_as(images)  # (B,3,S,S)
        was_training = model.training
        model.eval()
        try:
            # the same masks at every validation (pictures compare across epochs), training's random stream untouched
            with torch.no_grad(), seeded_random_stream(images.device, 0):
                masked, recon = model.masked_inpainting(images)
                maps, _ = model(images)  # (B,1,S,S)
        finally:
            model.train(was_training)
        maps = maps / maps.amax().clamp_min(1e-8)
        panels = [images, masked.clamp(0, 1), recon.clamp(0, 1), maps.expand_as(images), truth]  # as self.columns
        rows = torch.cat(panels, dim=-1).float().cpu()  # (B,3,S,5S)
        grid = torch.cat([column_header(self.columns, images.shape[-1]), *rows], dim=-2)  # (3,h+B*S,5S)
        experiment.add_image("val/input_masked_inpainted_error_truth", grid, trainer.global_step)


class SyntheticAnomalyImages(L.Callback):
    """TensorBoard image grid, once per fit: the synthetic validation anomalies the objective measures.

    Up to `num_images` of them, spread over the validation set, one row each: the normal validation image it was
    made from | the synthetic anomaly | its exact mask | the model's anomaly map (scaled to the largest value), at
    the first validation after the sanity check. Nothing when validation has no synthetic anomalies
    (anomaly_lab.data.validation_anomalies) or the logger takes no images. The samples come from the validation
    dataset, which every DDP process holds whole (only its loader's sampler shards it).
    """

    columns = ("source", "synthetic", "mask", "score map")
    tag = "val/synthetic_anomalies_source_mask_map"

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self.logged = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.logged = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        experiment = rank_zero_experiment(trainer, "add_image")
        if self.logged or trainer.sanity_checking or experiment is None:
            return
        self.logged = True
        loaders = trainer.val_dataloaders
        dataset = getattr(loaders[0] if isinstance(loaders, list | tuple) else loaders, "dataset", None)
        if not isinstance(dataset, ImageDataset) or self.num_images < 1:
            return
        samples = dataset.decoded.samples
        # validation_anomalies names them defect "synthetic_<generator>", path "<source's path>#<defect>"; several
        # generators' come one after the other, so evenly spaced picks show each
        synthetic = [i for i, s in enumerate(samples) if s.defect.startswith(SYNTHETIC_DEFECT_PREFIX)]
        picked = synthetic[:: max(1, len(synthetic) // self.num_images)][: self.num_images]
        if not picked:
            return
        items = [dataset[i] for i in picked]
        normal = {s.path: i for i, s in enumerate(samples) if s.label == 0}
        sources = [normal.get(samples[i].path.rsplit("#", 1)[0]) for i in picked]
        blank = torch.zeros_like(items[0]["image"])  # should a source not be in validation
        images = torch.stack([item["image"] for item in items]).to(pl_module.device)  # (B,3,S,S)
        masks = torch.stack([item["mask"] for item in items]).to(images)  # (B,1,S,S)
        normals = torch.stack([blank if j is None else dataset[j]["image"] for j in sources]).to(images)  # (B,3,S,S)
        model = inpainting_model(pl_module)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                maps, _ = model(images)  # (B,1,S,S)
        finally:
            model.train(was_training)
        maps = maps / maps.amax().clamp_min(1e-8)
        panels = [normals, images, masks.expand_as(images), maps.expand_as(images)]  # as self.columns
        rows = torch.cat(panels, dim=-1).float().cpu()  # (B,3,S,4S)
        grid = torch.cat([column_header(self.columns, images.shape[-1]), *rows], dim=-2)  # (3,h+B*S,4S)
        experiment.add_image(self.tag, grid, trainer.global_step)


class ScoresTable(L.Callback):
    """Per-sample test results as CSV: path, label, defect, score, prediction (score >= the test threshold).

    prediction is left empty when there is no threshold (no rule, or no validation pass ran).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = published_results(pl_module, "test")
        if not trainer.is_global_zero or results is None or whole_test_set_pass(pl_module):
            return
        threshold = results.threshold
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(["path", "label", "defect", "score", "prediction"])
            for s in results.samples:
                prediction = int(s.score >= threshold) if math.isfinite(threshold) else ""
                writer.writerow([s.path, s.label, s.defect, repr(s.score), prediction])
        log.info("per-sample test scores: %s", self.path)


class ScoreFigures(L.Callback):
    """TensorBoard figures of score separation: a normal-vs-anomalous histogram with the threshold after each
    validation and at test, plus ROC and precision-recall curves at test."""

    def __init__(self, bins: int = 30) -> None:
        self.bins = bins

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # the module publishes no results of the sanity check
            self._add_figures("val", trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not whole_test_set_pass(pl_module):
            self._add_figures("test", trainer, pl_module)

    def _add_figures(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = published_results(pl_module, stage)
        experiment = rank_zero_experiment(trainer, "add_figure")
        if results is None or not results.samples or experiment is None:
            return
        scores, labels, threshold = results.scores, results.labels, results.threshold  # (N,), (N,)
        step = trainer.global_step
        histogram = score_histogram(
            scores[labels == 0], scores[labels == 1], threshold, title=f"{stage} image scores", bins=self.bins
        )
        experiment.add_figure(f"{stage}/score_histogram", histogram, step)
        if stage == "test" and labels.min() != labels.max():
            experiment.add_figure("test/roc", roc_figure(scores, labels, threshold), step)
            experiment.add_figure("test/precision_recall", precision_recall_figure(scores, labels, threshold), step)


class TilePageFigures(L.Callback):
    """TensorBoard figure per tiled test page (the thesis's notes figure): the page, its per-tile score grid and
    its tile classification at the test threshold. Pages with anomalous tiles come first, at most `max_pages`;
    whole-image datasets (every page a single tile) get none.

    The page is redrawn from its test tiles side by side at their (row, col), so it shows exactly what was
    scored; tiles of the page that are not in the test set stay black and NaN in the grid. The tiles' pixels
    are kept (uint8) from the test batches, when the model's preprocessing tiles pages; under DDP each process
    sends rank 0 the kept tiles of the pages drawn, once at test end.
    """

    def __init__(self, max_pages: int = 4) -> None:
        self.max_pages = max_pages
        self.tiles: dict[str, np.ndarray] = {}  # path -> (S,S,3) uint8
        self.keep = False

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.tiles = {}
        # whole images, or the whole-test-set pass (its pages are drawn from the test split): keep nothing
        self.keep = bool(inpainting_model(pl_module).preprocessing.tiled) and not whole_test_set_pass(pl_module)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.keep:
            pixels = (batch["image"].detach() * 255).round().clamp(0, 255).to(torch.uint8)  # (B,3,S,S)
            self.tiles.update(zip(map(str, batch["path"]), pixels.permute(0, 2, 3, 1).cpu().numpy(), strict=True))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = published_results(pl_module, "test")  # the same on every rank
        if results is None or not self.keep:
            return
        by_page: dict[str, list[ScoredSample]] = {}
        for sample in results.samples:
            by_page.setdefault(sample.page, []).append(sample)
        tiled = {page: tiles for page, tiles in by_page.items() if any(t.row or t.col for t in tiles)}
        pages = sorted(tiled, key=lambda page: (-max(t.label for t in tiled[page]), page))[: self.max_pages]
        if not pages:  # decided alike on every rank: the results are the gathered ones
            return
        wanted = {t.path for page in pages for t in tiled[page]}
        kept = gather_tiles({path: tile for path, tile in self.tiles.items() if path in wanted})  # every rank
        self.tiles = {}
        experiment = rank_zero_experiment(trainer, "add_figure")
        if experiment is None:
            return
        size = inpainting_model(pl_module).image_size
        for number, page in enumerate(pages):
            tiles = tiled[page]
            grid_shape = (max(t.row for t in tiles) + 1, max(t.col for t in tiles) + 1)
            scores = stitch_scores([t.score for t in tiles], [t.row for t in tiles], [t.col for t in tiles], grid_shape)
            canvas = np.zeros((grid_shape[0] * size, grid_shape[1] * size, 3), np.uint8)  # black where no tile
            # tile (row, col) at (row * size, col * size); the grid's positions() order is not assumed
            for t in tiles:
                if t.path in kept:
                    canvas[t.row * size : (t.row + 1) * size, t.col * size : (t.col + 1) * size] = kept[t.path]
            figure = tile_classification_figure(canvas, scores, results.threshold, title=Path(page).name)
            experiment.add_figure(f"test/tile_page_{number}", figure, trainer.global_step)


def gather_tiles(tiles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's tiles under DDP (every rank must call this); unchanged otherwise."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tiles
    parts: list[dict[str, np.ndarray] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, tiles)
    return {path: tile for part in parts for path, tile in (part or {}).items()}
