"""Integration on the real MVTec AD bottle data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import json
import math
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
            "dataset=bottles",
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
