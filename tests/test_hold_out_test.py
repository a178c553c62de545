"""test=false hold_out_test=true (a sweep trial of make tune): the final run's split, and no test image read."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from anomaly_lab.train import run
from tests.conftest import ComposeFn


def split_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "anomaly_lab.data.datamodules"]


@pytest.mark.slow
def test_a_trial_trains_on_the_final_runs_split_and_reads_no_test_image(
    compose_tiny: ComposeFn, tiny_bottles_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = ["dataset=folder", f"dataset.normal_dir={tiny_bottles_root / 'train' / 'good'}", "dataset.abnormal_dir=null"]
    caplog.set_level(logging.INFO)
    run(compose_tiny([*data, "test=true"], tmp_path / "final"))
    final = split_lines(caplog)
    caplog.clear()
    run(compose_tiny([*data, "test=false", "hold_out_test=true"], tmp_path / "trial"))
    trial = split_lines(caplog)
    caplog.clear()
    run(compose_tiny([*data, "test=false"], tmp_path / "all"))
    every = split_lines(caplog)
    assert trial and [line for line in trial if not line.startswith("test")] == [
        line for line in final if not line.startswith("test")
    ]
    assert every[0] != final[0]  # plain test=false trains on the held-out share too
    metrics = json.loads((tmp_path / "trial" / "metrics.json").read_text())
    assert not any(key.startswith("test/") for key in metrics)
    assert not (tmp_path / "trial" / "scores.csv").exists()
