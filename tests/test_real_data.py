"""Integration on the real MVTec AD bottle data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest

from anomaly_lab.train import run
from tests.conftest import REAL_BOTTLES, ComposeFn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REAL_BOTTLES.is_dir(), reason=f"real data not found at {REAL_BOTTLES}"),
]


def test_unet_small_on_real_bottles_gives_finite_auroc(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(
        [
            "dataset=mvtec",
            f"dataset.root={REAL_BOTTLES}",
            "model=unet_small",
            "model.image_size=128",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=4",
        ]
    )
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert math.isfinite(metrics["test/image_auroc"])
    assert math.isfinite(metrics["test/pixel_auroc"])


def test_one_epoch_at_64px_reports_every_metric_and_a_killed_run_resumes_to_the_same(tmp_path: Path) -> None:
    """The reliability issue's commands on real data: 1 epoch with validation every 5 epochs; 3 epochs killed
    with SIGKILL in epoch 2, resumed, equal to an uninterrupted run."""
    from tests.test_faults import kill_mid_epoch, quality_metrics, train

    real = ["dataset=mvtec", f"dataset.root={REAL_BOTTLES}", "model=unet_small", "model.image_size=64"]
    cache = tmp_path / "cache"
    one = train([*real, "trainer.max_epochs=1", "dataset.batch_size=8"], tmp_path / "one", cache)
    assert one.returncode == 0, one.stderr[-2000:]
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    for key in ("test/image_auroc", "test/pixel_auroc", "test/aupro", "test/f1_max", "val/wasserstein"):
        assert math.isfinite(metrics[key]), key

    three = [*real, "trainer.max_epochs=3", "dataset.batch_size=8"]
    assert train(three, tmp_path / "uninterrupted", cache).returncode == 0
    assert kill_mid_epoch(tmp_path / "killed", cache, signal.SIGKILL, three) != 0
    resumed = train([*three, "resume=true"], tmp_path / "killed", cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert quality_metrics(tmp_path / "killed") == quality_metrics(tmp_path / "uninterrupted")


def test_bottles_cpu_reaches_the_readme_cpu_bar(tmp_path: Path) -> None:
    """README's CPU bar (what a ~150-line plain RIAD script reaches on 2 cores): `experiment=bottles_cpu` on the
    real bottle data gives test image AUROC >= 0.97 and pixel AUROC >= 0.93. 9-20 minutes on 2 CPU cores."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "anomaly_lab.train",
        "experiment=bottles_cpu",
        f"dataset.root={REAL_BOTTLES}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_time=null",  # all 40 epochs however busy the machine: the bar must not depend on load
    ]
    # The recipe's 15-min cap is lifted above; the timeout only stops a hung process.
    # both cores for this one long run (conftest gives test processes one thread): 2x sooner on CI's idle 2 cores
    two_threads = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=5400, env=two_threads)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/image_auroc"] >= 0.97, metrics
    assert metrics["test/pixel_auroc"] >= 0.93, metrics
