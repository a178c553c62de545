"""Threshold rules by hand, and the threshold chosen on validation travelling with the checkpoint to test."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_lab.errors import ConfigError
from anomaly_lab.metrics import f1_max
from anomaly_lab.thresholds import F1Threshold, FixedThreshold, PercentileThreshold, metrics_at_threshold
from anomaly_lab.train import run
from tests.conftest import ComposeFn

REPO = Path(__file__).resolve().parents[1]


def test_fixed_threshold_ignores_the_scores() -> None:
    rule = FixedThreshold(0.002)
    assert rule(torch.tensor([5.0, 6.0]), torch.tensor([0, 1])) == 0.002
    assert rule(torch.tensor([-1.0]), torch.tensor([0])) == 0.002


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), True, "abc", None])
def test_a_fixed_threshold_that_is_not_a_finite_number_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^threshold\.value=\S+: expected a finite number"):
        FixedThreshold(value)  # type: ignore[arg-type]


def test_a_fixed_threshold_outside_every_validation_score_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    scores, labels = torch.tensor([0.02, 0.05, 0.09]), torch.tensor([0, 0, 1])
    with caplog.at_level(logging.WARNING, logger="anomaly_lab.thresholds"):
        assert FixedThreshold(0.05)(scores, labels) == 0.05
        assert caplog.messages == []  # inside the scores: calls some images anomalous, some not
        below = FixedThreshold(-1)
        below(scores, labels)
        below(scores * 2, labels)  # still below: said once
        assert caplog.messages == [
            "threshold.value=-1.0 is at or below every validation score (0.02 to 0.09): every image is called anomalous"
        ]
        caplog.clear()
        FixedThreshold(0.02)(scores, labels)  # score >= threshold is anomalous: the lowest score is called too
        FixedThreshold(0.1)(scores, labels)
    assert caplog.messages == [
        "threshold.value=0.02 is at or below every validation score (0.02 to 0.09): every image is called anomalous",
        "threshold.value=0.1 is above every validation score (0.02 to 0.09): no image is called anomalous",
    ]


def test_percentile_uses_only_normal_scores() -> None:
    normal = torch.arange(1.0, 102.0)  # 1..101: the 99th percentile is 100 by linear interpolation
    scores = torch.cat([normal, torch.tensor([1e6, 2e6])])
    labels = torch.cat([torch.zeros(101), torch.ones(2)]).long()
    assert PercentileThreshold(99)(scores, labels) == pytest.approx(100.0)
    assert PercentileThreshold(50)(scores, labels) == pytest.approx(51.0)
    rng = np.random.default_rng(0)
    values = rng.normal(size=37)
    assert PercentileThreshold(90)(torch.tensor(values), torch.zeros(37)) == pytest.approx(np.percentile(values, 90))


def test_percentile_errors() -> None:
    with pytest.raises(ValueError, match="percentile must be in"):
        PercentileThreshold(150)
    with pytest.raises(ValueError, match="needs normal validation images"):
        PercentileThreshold(99)(torch.tensor([1.0]), torch.tensor([1]))


def test_f1_threshold_is_f1_max_and_separates_separable_scores() -> None:
    scores = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.8, 0.25])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert F1Threshold()(scores, labels) == f1_max(scores, labels)[1]
    separable = torch.tensor([0.1, 0.2, 0.3, 0.7, 0.8])
    threshold = F1Threshold()(separable, torch.tensor([0, 0, 0, 1, 1]))
    assert 0.3 < threshold <= 0.7
    with pytest.raises(ValueError, match=r"threshold=f1 needs normal and anomalous.*threshold=percentile"):
        F1Threshold()(torch.tensor([0.1, 0.2]), torch.tensor([0, 0]))


def test_metrics_at_threshold_by_hand() -> None:
    scores = torch.tensor([0.1, 0.5, 0.6, 0.9, 0.4])
    labels = torch.tensor([0, 0, 1, 1, 1])
    # >= 0.5 calls {0.5, 0.6, 0.9}: TP 2, FP 1, FN 1
    result = metrics_at_threshold(scores, labels, 0.5)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (2, 1, 1, 1)
    # scores far outside [0, 1] are compared as they are, not squashed as logits
    assert metrics_at_threshold(scores * 1000, labels, 500.0) == result
    assert metrics_at_threshold(scores, labels, 10.0)["recall"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("option", ["percentile"])
def test_validation_threshold_is_saved_and_used_at_test(option: str, compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny([f"threshold={option}", "trainer.max_epochs=1"])
    run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    saved = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]["model.threshold"]
    assert math.isfinite(float(saved))
    assert metrics["val/threshold"] == pytest.approx(float(saved))
    assert metrics["test/threshold"] == pytest.approx(float(saved))
    with (out / "scores.csv").open() as file:
        rows = list(csv.DictReader(file))
    scores = torch.tensor([float(r["score"]) for r in rows])
    labels = torch.tensor([int(r["label"]) for r in rows])
    assert [int(r["prediction"]) for r in rows] == (scores >= saved).long().tolist()
    expected = metrics_at_threshold(scores, labels, float(saved))
    for name in ("precision", "recall", "f1", "tp", "fp", "fn", "tn"):
        assert metrics[f"test/{name}"] == pytest.approx(expected[name], abs=1e-6), name
    assert sum(metrics[f"test/{name}"] for name in ("tp", "fp", "fn", "tn")) == len(rows)


@pytest.mark.slow
def test_a_fixed_threshold_of_nan_stops_train_in_one_line(tmp_path: Path) -> None:
    """threshold.value=nan used to train, exit 0 and leave metrics.json without thresholds, counts and F1."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    command = [sys.executable, "-m", "anomaly_lab.train", "trainer=cpu", "model.image_size=32", "dataset.n_train=8"]
    command += ["threshold=fixed", "threshold.value=nan", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ConfigError: threshold.value=nan: expected a finite number")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_fixed_threshold_below_every_score_trains_with_a_warning(
    compose_tiny: ComposeFn, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_tiny(["threshold=fixed", "threshold.value=-1"])
    with caplog.at_level(logging.WARNING, logger="anomaly_lab.thresholds"):
        run(cfg)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "anomaly_lab.thresholds"]
    assert warning.startswith("threshold.value=-1.0 is at or below every validation score (")
    assert warning.endswith("): every image is called anomalous")
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/threshold"] == -1.0 and metrics["test/fn"] == metrics["test/tn"] == 0
    with (out / "scores.csv").open() as file:
        assert {row["prediction"] for row in csv.DictReader(file)} == {"1"}
