"""Figures show what they claim (counts, curves, tile classes), and a run puts them into TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from anomaly_lab.callbacks import ReconstructionImages, column_header
from anomaly_lab.figures import precision_recall_figure, roc_figure, score_histogram, tile_classification_figure
from anomaly_lab.metrics import image_auroc
from anomaly_lab.train import run
from tests.conftest import ComposeFn


def test_histogram_counts_each_class_and_draws_the_threshold() -> None:
    rng = np.random.default_rng(0)
    normal, anomalous = rng.normal(0, 1, 40), rng.normal(3, 1, 15)
    figure = score_histogram(normal, anomalous, threshold=1.5, bins=12)
    axes = figure.axes[0]
    heights = [patch.get_height() for patch in axes.patches]
    assert len(heights) == 24  # 12 bars per class
    assert sum(heights[:12]) == 40 and sum(heights[12:]) == 15
    lines = [line for line in axes.get_lines() if "threshold" in str(line.get_label())]
    assert len(lines) == 1 and lines[0].get_xdata()[0] == 1.5
    assert not [line for line in score_histogram(normal, []).axes[0].get_lines()]  # NaN threshold: no line


def test_roc_curve_matches_auroc_and_marks_the_operating_point() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (60,), generator=g)
    scores = torch.rand(60, generator=g) * 500 + labels * 200  # far outside [0, 1] on purpose
    axes = roc_figure(scores, labels, threshold=400.0).axes[0]
    curve, _, point = axes.get_lines()
    fpr, tpr = curve.get_xdata(), curve.get_ydata()
    assert np.trapezoid(tpr, fpr) == pytest.approx(image_auroc(scores, labels), abs=1e-6)
    called = scores >= 400.0
    assert point.get_xdata()[0] == pytest.approx(float(called[labels == 0].float().mean()))
    assert point.get_ydata()[0] == pytest.approx(float(called[labels == 1].float().mean()))


def test_precision_recall_of_separable_scores_reaches_one_one() -> None:
    scores, labels = torch.tensor([0.1, 0.2, 0.3, 0.8, 0.9]), torch.tensor([0, 0, 0, 1, 1])
    axes = precision_recall_figure(scores, labels, threshold=0.5).axes[0]
    curve, chance, point = axes.get_lines()
    assert any(r == 1.0 and p == 1.0 for r, p in zip(curve.get_xdata(), curve.get_ydata(), strict=True))
    assert chance.get_ydata()[0] == pytest.approx(0.4)
    assert (point.get_xdata()[0], point.get_ydata()[0]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="need normal"):
        roc_figure(scores, torch.zeros(5))


def test_tile_figure_marks_exactly_the_tiles_at_or_above_threshold() -> None:
    page = np.full((64, 96, 3), 255, dtype=np.uint8)
    scores = np.array([[0.001, 0.003, 0.002], [0.0, np.nan, 0.05]])  # (rows=2, cols=3)
    figure = tile_classification_figure(page, scores, threshold=0.002, title="page 1")
    class_axes = figure.axes[2]
    overlay = class_axes.get_images()[1].get_array()
    np.testing.assert_array_equal(np.asarray(overlay), [[0, 1, 1], [0, 0, 1]])
    assert class_axes.get_images()[1].get_extent() == [0.0, 96.0, 64.0, 0.0]  # spread over the page
    assert class_axes.get_title() == "3 of 6 tiles >= 0.002"
    with pytest.raises(ValueError, match="rows, cols"):
        tile_classification_figure(page, np.zeros(4), 0.1)


@pytest.mark.slow
def test_run_writes_scores_csv_and_tensorboard_figures(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["trainer.max_epochs=1"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    with (out / "scores.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["path", "label", "defect", "score", "prediction"]
    # tiny synthetic test set: 3 good + 3 defect types x 2, minus the anomalous ones validation holds out
    assert len(rows) == len({r["path"] for r in rows}) >= 4
    assert {r["label"] for r in rows} == {"0", "1"}
    assert all(Path(r["path"]).is_file() for r in rows)
    assert {r["defect"] for r in rows if r["label"] == "0"} == {"good"}
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    images = set(events.Tags()["images"])
    expected = {
        "val/score_histogram",
        "test/score_histogram",
        "test/roc",
        "test/precision_recall",
        "val/input_masked_inpainted_error_truth",
    }
    assert expected <= images, images
    strip = events.Images("val/input_masked_inpainted_error_truth")[-1]  # a header row naming the 5 columns
    header = column_header(ReconstructionImages.columns, 32).shape[1]  # then one 32px row of panels per image
    assert strip.width == 5 * 32 and strip.height > header and (strip.height - header) % 32 == 0


@pytest.mark.slow
def test_tiled_run_draws_its_test_pages(compose_tiny: ComposeFn) -> None:
    # conftest's tiny notes pages: 96x96 in 32px tiles, 3x3 each; 4 marked pages, 1 held out for validation
    cfg = compose_tiny(
        [
            "dataset=synthetic_notes",
            "dataset.write_pages.n_anomalous=4",
            "callbacks.tile_page_figures.max_pages=2",
            "+trainer.limit_train_batches=2",
        ]
    )
    run(cfg)
    out = Path(cfg.paths.output_dir)
    with (out / "scores.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len({r["path"].split("#")[0] for r in rows}) == 3
    assert len(rows) == 3 * 3 * 3 and all("#r" in r["path"] for r in rows)
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    pages = sorted(tag for tag in events.Tags()["images"] if tag.startswith("test/tile_page_"))
    assert pages == ["test/tile_page_0", "test/tile_page_1"]  # 3 test pages, max_pages=2
