"""The pixel threshold of predict's masks: chosen on validation, kept in the checkpoint, used by predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from anomaly_lab.checkpoint_loading import load_model
from anomaly_lab.metrics import PixelMetrics
from anomaly_lab.predict import run as predict
from anomaly_lab.thresholds import PixelThreshold
from anomaly_lab.train import run as train
from tests.conftest import ComposeFn, predict_config, run_test_folder


def maps_with_a_defect(n_normal: int = 6, n_anomalous: int = 4, size: int = 16, seed: int = 0):
    """Normal maps N(1, 0.1); anomalous ones the same with a square of 3.0 where their mask is."""
    generator = torch.Generator().manual_seed(seed)
    n = n_normal + n_anomalous
    maps = 1.0 + 0.1 * torch.randn(n, 1, size, size, generator=generator)  # (N,1,S,S)
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    masks[n_normal:, :, 4:8, 4:8] = True
    maps[masks] = 3.0
    labels = torch.tensor([0] * n_normal + [1] * n_anomalous)
    return maps.clamp_min(0), labels, masks


def test_with_masks_the_threshold_separates_the_defect_pixels_from_the_rest() -> None:
    maps, labels, masks = maps_with_a_defect()
    value, how = PixelThreshold().fit(maps, labels, masks, torch.ones(len(labels), dtype=torch.bool))
    normal_peak = float(maps[~masks].max())
    assert normal_peak < value <= 3.0, (normal_peak, value)
    assert "F1" in how
    marked = maps >= value
    assert bool(torch.equal(marked, masks))


def test_without_masks_the_threshold_is_the_percentile_of_normal_pixels() -> None:
    maps, labels, masks = maps_with_a_defect()
    unknown = labels == 0  # no anomalous image has a known mask: they are left out
    value, how = PixelThreshold(percentile=99.0).fit(maps, labels, masks, unknown)
    normal = maps[labels == 0].flatten()
    share_above = float((normal >= value).double().mean())
    assert share_above <= 0.01 + 1e-9  # the bin's upper edge: at most 1% of normal pixels at or above it
    assert share_above > 0.0 or value <= float(normal.max()) * 1.01  # and not far above the normal tail
    assert "percentile" in how


def test_the_rule_reads_the_same_histograms_as_the_validation_pixel_metrics() -> None:
    maps, labels, masks = maps_with_a_defect()
    metric = PixelMetrics()
    metric.update(maps, masks)
    assert PixelThreshold()(metric.normal_hist, metric.anomalous_hist, float(metric.upper)) == PixelThreshold().fit(
        maps, labels, masks, torch.ones(len(labels), dtype=torch.bool)
    )


@pytest.mark.parametrize("bad", [0, 100, 150, -1, True, "high"])
def test_a_bad_percentile_is_refused_naming_the_key(bad: object) -> None:
    with pytest.raises(ValueError, match="percentile="):
        PixelThreshold(percentile=bad)  # type: ignore[arg-type]


def test_a_checkpoint_written_before_pixel_thresholds_loads_without_one(tiny_run: Path, tmp_path: Path) -> None:
    loaded = torch.load(tiny_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    del loaded["state_dict"]["model.pixel_threshold"]
    old = tmp_path / "old.ckpt"
    torch.save(loaded, old)
    assert math.isnan(float(load_model(old).pixel_threshold))


@pytest.mark.slow  # two trainings and two predicts: 13 s of the fast tier
@pytest.mark.parametrize("scoring", ["riad", "auto"])
def test_training_stores_a_pixel_threshold_that_predict_uses(
    scoring: str, compose_tiny: ComposeFn, tmp_path: Path
) -> None:
    """A run (its own scoring, or scoring=auto's chosen map) writes a finite pixel threshold into best.ckpt; predict
    marks exactly the pixels of the map at or above it, and pixel_threshold= still overrides."""
    run_dir = tmp_path / "run"
    train(compose_tiny([f"scoring={scoring}", "masking=multiscale_grid", "masking.grid_sizes=[2,4]"], run_dir))
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    model = load_model(ckpt)
    value = float(model.pixel_threshold)
    assert math.isfinite(value) and value > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    key = "val/chosen/pixel_threshold" if scoring == "auto" else "val/pixel_threshold"
    assert metrics[key] == pytest.approx(value)
    test_dir = run_test_folder(run_dir)
    summary = predict(predict_config([f"ckpt_path={ckpt}", f"input={test_dir}", f"output={tmp_path / 'out'}"]))
    assert summary["pixel_threshold"] == pytest.approx(value) and summary["pixel_threshold_from"] == "checkpoint"
    override = predict(
        predict_config([f"ckpt_path={ckpt}", f"input={test_dir}", f"output={tmp_path / 'o2'}", "pixel_threshold=1e9"])
    )
    assert override["pixel_threshold"] == 1e9 and override["pixel_threshold_from"] == "override"
