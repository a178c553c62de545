"""tune's first points from the part's shape in a few good images: a long part is turned and banded, a round one not."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from anomaly_lab import tune
from anomaly_lab.orientation import part_geometry

SHAPE_KEYS = ("tune.size", "tune.band", "tune.width")  # what a long part changes besides orient


def bar(angle: float, size: int = 128, length: int = 80, width: int = 14) -> np.ndarray:
    """A dark bar on a light ground at `angle` degrees.  # (S,S,3) uint8"""
    image = np.full((size, size, 3), 220, dtype=np.uint8)
    box = cv2.boxPoints(((size / 2, size / 2), (length, width), angle)).astype(np.int32)
    cv2.fillPoly(image, [box], (40, 40, 40))
    return image


def disk(size: int = 128, radius: int = 40) -> np.ndarray:
    image = np.full((size, size, 3), 220, dtype=np.uint8)
    cv2.circle(image, (size // 2, size // 2), radius, (40, 40, 40), -1)
    return image


def test_a_bar_at_any_angle_is_long_and_a_disk_is_not() -> None:
    bars = part_geometry([bar(a) for a in range(0, 180, 15)])
    assert bars is not None and bars.elongated
    assert 5 < bars.elongation < 7  # 80 x 14
    assert 14 / 128 * 0.9 < bars.band < 14 / 128 * 1.6  # the turned bar's rows
    disks = part_geometry([disk() for _ in range(4)])
    assert disks is not None and not disks.elongated and disks.elongation < 1.2
    assert part_geometry([np.full((32, 32, 3), 128, dtype=np.uint8)]) is None  # nothing to measure


def search_node(plan: tune.DataPlan) -> tuple[dict, dict, tune.Point, tune.Point]:
    cfg = tune.compose_train([f"hparams_search={tune.SEARCH}", *plan.overrides])
    node = tune.plain_dict(cfg.tune)
    table = tune.epochs_table(node, tune.plan_split(plan)[2], tune.final_validation(plan))
    params = {key: str(spec) for key, spec in tune.plain_dict(cfg.hydra.sweeper.params).items()}
    default, cheapest = tune.first_points(node, table, plan, list(params))
    return node, table, default, cheapest


@pytest.fixture
def bars_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    for number, angle in enumerate(np.linspace(0, 170, 40)):
        Image.fromarray(bar(float(angle))).save(folder / f"{number:03d}.png")
    return folder


def test_a_long_part_starts_the_search_turned_at_the_band_it_spans(bars_folder: Path) -> None:
    plan = tune.plan_data(bars_folder, None, None, None)
    assert plan.normal_dir == bars_folder
    node, table, default, cheapest = search_node(plan)
    geometry = part_geometry(tune.sample_images(bars_folder))
    assert geometry is not None
    point = tune.long_part_point(node, table, plan, default, geometry)
    assert point is not None
    assert point.params["dataset.preprocessing.orient"] == "principal_axis"
    band = point.params["tune.band"]
    size = point.params["tune.size"]
    rows = node["bands"][size][band]
    assert rows >= 1.25 * geometry.band * node["sizes"][size]  # the band holds the turned part, with margin
    assert rows == min(r for r in node["bands"][size].values() if r is not None)  # the narrowest that does
    assert {k: v for k, v in point.params.items() if k not in ("dataset.preprocessing.orient", *SHAPE_KEYS)} == {
        k: v for k, v in default.params.items() if k not in ("dataset.preprocessing.orient", *SHAPE_KEYS)
    }
    firsts = tune.starting_points([point, default], cheapest, left_s=2 * (point.seconds + default.seconds))
    assert firsts == [point, default]
    assert tune.starting_points([point, default], cheapest, left_s=point.seconds / 0.75) == [point]
    assert tune.starting_points([point, default], cheapest, left_s=cheapest.seconds) == [cheapest]


def test_a_round_part_starts_at_the_default_point_alone(tmp_path: Path) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    for number in range(40):
        Image.fromarray(disk(radius=30 + number % 12)).save(folder / f"{number:03d}.png")
    plan = tune.plan_data(folder, None, None, None)
    node, table, default, _ = search_node(plan)
    geometry = part_geometry(tune.sample_images(folder))
    assert geometry is not None and not geometry.elongated
    assert tune.long_part_point(node, table, plan, default, geometry) is None
