"""Callbacks read the module's published results and the batches they see, with a fake trainer and logger."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader

from anomaly_lab.callbacks import (
    ReconstructionImages,
    ScoreFigures,
    ScoresTable,
    SyntheticAnomalyImages,
    TilePageFigures,
    column_header,
    gather_tiles,
)
from anomaly_lab.data.images import DecodedImages, ImageDataset, Sample
from anomaly_lab.masking import GridMasking
from anomaly_lab.model import InpaintingModel
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.results import ScoredSample, StageResults
from anomaly_lab.scoring import AnomalyMap
from anomaly_lab.train import run
from tests.conftest import ComposeFn

SIZE = 8


class FakeExperiment:
    """What TensorBoard's SummaryWriter is asked: (tag, figure or image, step) per call."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}
        self.images: dict[str, torch.Tensor] = {}

    def add_figure(self, tag: str, figure: Any, step: int) -> None:
        self.figures[tag] = figure

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.images[tag] = image


class FakeModule(L.LightningModule):
    """The parts of anomaly_lab.lightning_model.InpaintingModule the callbacks read: model and results."""

    def __init__(self, tiled: bool = False) -> None:
        super().__init__()
        self.model = InpaintingModel(
            image_size=SIZE,
            net=nn.Identity(),
            masking=GridMasking(grid_sizes=2, ratio=0.5),
            anomaly_map=AnomalyMap(l2=1.0),
            preprocessing=Preprocessing(image_size=SIZE, tiled=tiled),
        )
        self.results: dict[str, StageResults] = {}


def fake_trainer(global_zero: bool = True, sanity_checking: bool = False) -> Any:
    logger = SimpleNamespace(experiment=FakeExperiment())
    return SimpleNamespace(logger=logger, is_global_zero=global_zero, sanity_checking=sanity_checking, global_step=7)


def sample(path: str, label: int, score: float, page: str = "", row: int = 0, col: int = 0) -> ScoredSample:
    return ScoredSample(path, label, "good" if label == 0 else "scratch", score, page or path, row, col)


def batch_of(samples: list[ScoredSample], images: torch.Tensor) -> dict[str, Any]:
    """A default-collated batch of these samples with images (B,3,S,S); anomalous ones are masked everywhere."""
    labels = torch.tensor([s.label for s in samples])
    return {
        "image": images,
        "mask": labels.float().view(-1, 1, 1, 1).expand(-1, 1, SIZE, SIZE),
        "label": labels,
        "defect": [s.defect for s in samples],
        "path": [s.path for s in samples],
        "page": [s.page for s in samples],
        "row": torch.tensor([s.row for s in samples]),
        "col": torch.tensor([s.col for s in samples]),
    }


SAMPLES = [sample("a.png", 0, 0.1), sample("b.png", 0, 0.3), sample("c.png", 1, 0.25), sample("d.png", 1, 0.9)]


@pytest.mark.parametrize("threshold", [0.25, math.nan])
def test_scores_table_writes_the_test_results(tmp_path: Path, threshold: float) -> None:
    module, trainer = FakeModule(), fake_trainer()
    module.results["test"] = StageResults("test", SAMPLES, threshold)
    table = ScoresTable(str(tmp_path / "out" / "scores.csv"))
    table.on_test_end(trainer, module)
    with table.path.open() as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["path", "label", "defect", "score", "prediction"]
    expected = ["0", "1", "1", "1"] if threshold == 0.25 else ["", "", "", ""]
    assert rows[1:] == [
        [s.path, str(s.label), s.defect, repr(s.score), p] for s, p in zip(SAMPLES, expected, strict=True)
    ]
    other = ScoresTable(str(tmp_path / "rank1.csv"))
    other.on_test_end(fake_trainer(global_zero=False), module)  # only rank 0 writes
    assert not other.path.exists()


def test_score_figures_draw_each_stage_at_its_threshold() -> None:
    module, trainer = FakeModule(), fake_trainer()
    figures = ScoreFigures(bins=5)
    figures.on_validation_end(fake_trainer(sanity_checking=True), module)  # nothing published yet: nothing drawn
    module.results["val"] = StageResults("val", SAMPLES, threshold=0.2)
    figures.on_validation_end(trainer, module)
    experiment = trainer.logger.experiment
    assert set(experiment.figures) == {"val/score_histogram"}
    (line,) = [
        x for x in experiment.figures["val/score_histogram"].axes[0].get_lines() if "threshold" in str(x.get_label())
    ]
    assert line.get_xdata()[0] == 0.2
    heights = [patch.get_height() for patch in experiment.figures["val/score_histogram"].axes[0].patches]
    assert sum(heights[:5]) == 2 and sum(heights[5:]) == 2  # 5 bars per class

    module.results["test"] = StageResults("test", SAMPLES, threshold=0.5)
    figures.on_test_end(trainer, module)
    assert set(experiment.figures) == {
        "val/score_histogram",
        "test/score_histogram",
        "test/roc",
        "test/precision_recall",
    }
    point = experiment.figures["test/roc"].axes[0].get_lines()[-1]  # the operating point at 0.5: fpr 0, tpr 0.5
    assert (point.get_xdata()[0], point.get_ydata()[0]) == (0.0, 0.5)

    rank1 = fake_trainer(global_zero=False)
    figures.on_test_end(rank1, module)
    assert not rank1.logger.experiment.figures


def test_tile_page_figures_redraw_pages_from_the_kept_batch_tiles() -> None:
    # page A: 2x2 tiles, (1,1) not in the test set, one anomalous tile; page B: 1x2, normal; C: a whole image
    tiles = [
        sample("A#r0c0", 0, 0.1, "pages/A.png", 0, 0),
        sample("A#r0c1", 1, 0.9, "pages/A.png", 0, 1),
        sample("A#r1c0", 0, 0.2, "pages/A.png", 1, 0),
        sample("B#r0c0", 0, 0.1, "pages/B.png", 0, 0),
        sample("B#r0c1", 0, 0.3, "pages/B.png", 0, 1),
        sample("C.png", 0, 0.1),
    ]
    pixels = torch.randint(0, 256, (len(tiles), SIZE, SIZE, 3), generator=torch.Generator().manual_seed(0))
    images = pixels.permute(0, 3, 1, 2).float() / 255  # (N,3,S,S) in [0, 1]
    module, trainer = FakeModule(tiled=True), fake_trainer()
    callback = TilePageFigures(max_pages=3)
    callback.on_test_epoch_start(trainer, module)
    for start in (0, 4):  # two batches
        callback.on_test_batch_end(
            trainer, module, None, batch_of(tiles[start : start + 4], images[start : start + 4]), 0
        )
    module.results["test"] = StageResults("test", tiles, threshold=0.5)
    callback.on_test_end(trainer, module)

    figures = trainer.logger.experiment.figures
    assert list(figures) == ["test/tile_page_0", "test/tile_page_1"]  # no figure of the whole image C
    assert figures["test/tile_page_0"].get_suptitle() == "A.png"  # the page with anomalous tiles first
    expected = np.zeros((2 * SIZE, 2 * SIZE, 3), np.uint8)  # tile (1,1) not tested: black
    for (row, col), tile in zip([(0, 0), (0, 1), (1, 0)], pixels[:3].numpy(), strict=True):
        expected[row * SIZE : (row + 1) * SIZE, col * SIZE : (col + 1) * SIZE] = tile
    page_axes, score_axes, class_axes = figures["test/tile_page_0"].axes[:3]
    np.testing.assert_array_equal(np.asarray(page_axes.get_images()[0].get_array()), expected)
    np.testing.assert_array_equal(np.asarray(score_axes.get_images()[0].get_array()), [[0.1, 0.9], [0.2, np.nan]])
    assert class_axes.get_title() == "1 of 4 tiles >= 0.5"
    assert callback.tiles == {}  # freed after drawing


def test_tile_page_figures_keep_nothing_for_whole_images() -> None:
    module, trainer = FakeModule(tiled=False), fake_trainer()
    callback = TilePageFigures()
    callback.on_test_epoch_start(trainer, module)
    callback.on_test_batch_end(trainer, module, None, batch_of(SAMPLES, torch.rand(4, 3, SIZE, SIZE)), 0)
    module.results["test"] = StageResults("test", SAMPLES, threshold=0.5)
    callback.on_test_end(trainer, module)
    assert callback.tiles == {} and not trainer.logger.experiment.figures


def test_gather_tiles_under_a_process_group(tmp_path: Path) -> None:
    tiles = {"A#r0c0": np.zeros((SIZE, SIZE, 3), np.uint8)}
    assert gather_tiles(tiles) is tiles  # no process group: unchanged
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        gathered = gather_tiles(tiles)
    finally:
        torch.distributed.destroy_process_group()
    assert list(gathered) == ["A#r0c0"] and np.array_equal(gathered["A#r0c0"], tiles["A#r0c0"])


def test_reconstruction_images_draw_the_first_normal_and_anomalous_validation_images() -> None:
    module, trainer = FakeModule(), fake_trainer()
    module.train()
    callback = ReconstructionImages(num_images=2)
    images = torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    labelled = [sample(f"{i}.png", label, 0.0) for i, label in enumerate([0, 1, 0, 0, 1, 1])]
    sanity = fake_trainer(sanity_checking=True)
    callback.on_validation_epoch_start(sanity, module)
    callback.on_validation_batch_end(sanity, module, None, batch_of(labelled[:3], images[:3]), 0)
    callback.on_validation_end(sanity, module)
    assert not sanity.logger.experiment.images

    callback.on_validation_epoch_start(trainer, module)
    for start in (0, 3):
        callback.on_validation_batch_end(
            trainer, module, None, batch_of(labelled[start : start + 3], images[start : start + 3]), 0
        )
    callback.on_validation_end(trainer, module)
    (tag, grid), *_ = trainer.logger.experiment.images.items()
    assert tag == "val/input_masked_inpainted_error_truth"
    header = column_header(ReconstructionImages.columns, SIZE).shape[1]
    assert grid.shape == (3, header + 2 * 2 * SIZE, 5 * SIZE)
    inputs = grid[:, header:, :SIZE].reshape(3, 4, SIZE, SIZE).permute(1, 0, 2, 3)  # the input column, row by row
    torch.testing.assert_close(inputs, images[[0, 2, 1, 4]])  # normal 0, 2 then anomalous 1, 4
    truth = grid[:, header:, 4 * SIZE :]  # (3,4S,S)
    assert truth[:, : 2 * SIZE].eq(0).all() and truth[:, 2 * SIZE :].eq(1).all()
    assert module.model.training  # train mode restored


def validation_loader(defects: list[str]) -> tuple[DataLoader[dict[str, Any]], np.ndarray, np.ndarray]:
    """A loader over validation samples: a normal image per "good", then each anomaly made from the normal at the
    same position ("synthetic_*": path "<source>#<defect>", as data.validation_anomalies names them)."""
    n_normal = defects.count("good")
    samples = [Sample(f"{i}.png", 0, "good") for i in range(n_normal)]
    samples += [
        Sample(f"{i}.png#{d}" if d.startswith("synthetic_") else f"real{i}.png", 1, d)
        for i, d in enumerate(defects[n_normal:])
    ]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(samples), SIZE, SIZE, 3), dtype=np.uint8)  # (N,S,S,3)
    masks = rng.random((len(samples), SIZE, SIZE)) < 0.3  # (N,S,S)
    dataset = ImageDataset(DecodedImages(samples, images, masks), Preprocessing(image_size=SIZE))
    return DataLoader(dataset, batch_size=4), images, masks


def test_synthetic_anomaly_images_draw_source_anomaly_mask_and_map_once() -> None:
    module = FakeModule()
    module.train()
    loader, images, masks = validation_loader(["good"] * 3 + ["scratch", "synthetic_perlin", "synthetic_perlin"])
    callback = SyntheticAnomalyImages(num_images=4)
    sanity = fake_trainer(sanity_checking=True)
    sanity.val_dataloaders = loader
    callback.on_fit_start(sanity, module)
    callback.on_validation_end(sanity, module)
    assert not sanity.logger.experiment.images  # the sanity check draws nothing

    trainer = fake_trainer()
    trainer.val_dataloaders = [loader]
    callback.on_validation_end(trainer, module)
    (tag, grid), *_ = trainer.logger.experiment.images.items()
    assert tag == SyntheticAnomalyImages.tag == "val/synthetic_anomalies_source_mask_map"
    header = column_header(SyntheticAnomalyImages.columns, SIZE).shape[1]
    assert grid.shape == (3, header + 2 * SIZE, 4 * SIZE)  # the 2 synthetic anomalies, not the real scratch
    columns = grid[:, header:].reshape(3, 2, SIZE, 4, SIZE).permute(3, 1, 0, 2, 4)  # (4 columns,B,3,S,S)
    as_tensors = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N,3,S,S)
    torch.testing.assert_close(columns[0], as_tensors[[1, 2]])  # sources: normals 1 and 2 ("1.png#...")
    torch.testing.assert_close(columns[1], as_tensors[[4, 5]])
    torch.testing.assert_close(columns[2], torch.from_numpy(masks[[4, 5]]).float()[:, None].expand(-1, 3, -1, -1))
    assert columns[3].amax() == 1 and columns[3].amin() >= 0  # the maps, scaled to their largest value
    assert module.model.training  # train mode restored

    callback.on_validation_end(trainer, module)  # once per fit
    trainer.logger.experiment.images.clear()
    callback.on_validation_end(trainer, module)
    assert not trainer.logger.experiment.images
    callback.on_fit_start(trainer, module)
    callback.on_validation_end(trainer, module)
    assert list(trainer.logger.experiment.images) == [SyntheticAnomalyImages.tag]


def test_synthetic_anomaly_images_draw_nothing_without_synthetic_anomalies_or_image_logger() -> None:
    module = FakeModule()
    real_only, _, _ = validation_loader(["good", "good", "scratch"])
    trainer = fake_trainer()
    trainer.val_dataloaders = real_only
    SyntheticAnomalyImages().on_validation_end(trainer, module)
    assert not trainer.logger.experiment.images
    synthetic, _, _ = validation_loader(["good", "synthetic_cutpaste"])
    for logger in (SimpleNamespace(experiment=object()), None):  # CSVLogger's experiment has no add_image; none
        other: Any = SimpleNamespace(logger=logger, is_global_zero=True, sanity_checking=False, global_step=7)
        other.val_dataloaders = synthetic
        SyntheticAnomalyImages().on_validation_end(other, module)  # no error
    rank1 = fake_trainer(global_zero=False)
    rank1.val_dataloaders = synthetic
    SyntheticAnomalyImages().on_validation_end(rank1, module)
    assert not rank1.logger.experiment.images


@pytest.mark.slow
@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_run_logs_synthetic_validation_anomalies_to_tensorboard_once(compose_tiny: ComposeFn, source: str) -> None:
    cfg = compose_tiny([f"validation_anomalies={source}", "test=false", "trainer.max_epochs=2"])
    run(cfg)
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "tensorboard")).Reload()
    tags = events.Tags()["images"]
    assert "val/input_masked_inpainted_error_truth" in tags  # validation drew its images
    if source == "real":  # the tiny bottles' real anomalies only: nothing to show
        assert SyntheticAnomalyImages.tag not in tags
        return
    (image,) = events.Images(SyntheticAnomalyImages.tag)  # once, not per validation
    header = column_header(SyntheticAnomalyImages.columns, 32).shape[1]
    rows, rest = divmod(image.height - header, 32)  # a row per synthetic anomaly: one per validation normal
    assert image.width == 4 * 32 and rest == 0 and 1 <= rows <= 4
