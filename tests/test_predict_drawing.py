"""What predict draws: heatmaps on one colour scale, the mask's outline, masks of images called anomalous, panels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_lab.predict import run as predict
from anomaly_lab.predict_outputs import Drawing, Scored, draw_contour, heatmap_overlay, image_mask, write_image_outputs
from tests.conftest import predict_config, run_test_folder

GREY = np.full((32, 32, 3), 128, dtype=np.uint8)


def drawing(**changes: object) -> Drawing:
    values = {"threshold": 1.0, "pixel_threshold": 0.5, "heatmap_max": 1.0, "heatmap_alpha": 0.5}
    return Drawing(**{**values, **changes})  # type: ignore[arg-type]


def test_the_pixel_threshold_is_the_same_colour_in_every_image() -> None:
    """Two images whose maps differ in range: where each map equals the pixel threshold, the same colour."""
    low = np.zeros((32, 32), dtype=np.float32)
    low[10, 10] = 0.5
    high = np.linspace(0, 5, 32 * 32, dtype=np.float32).reshape(32, 32)
    high[10, 10] = 0.5
    a, b = heatmap_overlay(GREY, low, drawing()), heatmap_overlay(GREY, high, drawing())
    assert np.array_equal(a[10, 10], b[10, 10])
    assert not np.array_equal(a[10, 10], GREY[10, 10])  # coloured at the threshold


def test_where_the_map_is_far_below_the_threshold_the_image_shows_unchanged() -> None:
    quiet = np.full((32, 32), 0.2, dtype=np.float32)  # below half the pixel threshold (0.25)
    assert np.array_equal(heatmap_overlay(GREY, quiet, drawing()), GREY)


def test_the_outline_of_the_mask_is_drawn_white_on_its_edge_and_dark_outside() -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 8:16] = True
    drawn = draw_contour(GREY, mask)
    assert (drawn[8, 8:16] == 255).all() and (drawn[15, 8:16] == 255).all()  # the edge rows
    assert (drawn[12, 12] == 128).all()  # inside stays
    assert (drawn[7, 10] == 0).all() and (drawn[12, 16] == 0).all()  # just outside
    assert np.array_equal(draw_contour(GREY, np.zeros_like(mask)), GREY)


def scored(peak: float, score: float) -> Scored:
    anomaly_map = np.zeros((32, 32), dtype=np.float32)
    anomaly_map[4:8, 4:8] = peak
    anomaly_map[5:7, 5:7] = peak * 1.05
    return Scored(Path("x.png"), score, anomaly_map)


def test_an_image_called_anomalous_whose_map_stays_below_the_pixel_threshold_is_marked_at_its_peak() -> None:
    below = scored(peak=0.4, score=2.0)  # called anomalous (score >= 1), map below 0.5 everywhere
    mask, from_peak = image_mask(below, drawing(mask_peak_share=0.9))
    assert from_peak and mask.sum() == 16 and mask[4:8, 4:8].all()
    mask, from_peak = image_mask(below, drawing(mask_peak_share=None))
    assert not from_peak and not mask.any()
    normal = scored(peak=0.4, score=0.5)  # called normal: no fallback
    assert not image_mask(normal, drawing(mask_peak_share=0.9))[0].any()
    reaching = scored(peak=0.6, score=2.0)  # reaches the threshold: the threshold's mask
    mask, from_peak = image_mask(reaching, drawing(mask_peak_share=0.9))
    assert not from_peak and mask.sum() == 16


def test_outputs_record_where_each_mask_came_from(tmp_path: Path) -> None:
    written = write_image_outputs(scored(0.4, 2.0), GREY, Path("x.png"), tmp_path, drawing(mask_peak_share=0.9))
    assert written["mask_from"] == "peak"
    assert (np.asarray(Image.open(tmp_path / written["mask"])) > 0).sum() == 16


def test_panels_show_image_heatmap_mask_and_the_ground_truth_of_an_mvtec_test_image(
    tiny_run: Path, tmp_path: Path
) -> None:
    test_dir = run_test_folder(tiny_run)
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    out = tmp_path / "out"
    summary = predict(predict_config([f"ckpt_path={ckpt}", f"input={test_dir}", f"output={out}", "panel=true"]))
    with (out / "scores.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == summary["images"] and all(row["panel"] for row in rows)
    assert summary["masks_from_peak"] == sum(row["mask_from"] == "peak" for row in rows)
    for row in rows:
        image_path = Path(row["path"])
        panel = np.asarray(Image.open(out / row["panel"]))  # (H, 4W + 12, 3): 4 parts, 3 gaps of 4 px
        width = Image.open(image_path).size[0]
        assert panel.shape[1] == 4 * width + 12
        truth = panel[:, 3 * (width + 4) :, 0] > 127  # the ground-truth part
        if image_path.parent.name == "good":
            assert not truth.any()
        else:
            mask_file = test_dir.parent / "ground_truth" / image_path.parent.name / f"{image_path.stem}_mask.png"
            assert np.array_equal(truth, np.asarray(Image.open(mask_file).convert("L")) > 127)


@pytest.mark.parametrize("bad", ["2", "0", "-0.5", "yes"])
def test_a_bad_mask_peak_share_is_refused_naming_the_key(bad: str, tiny_run: Path, tmp_path: Path) -> None:
    from anomaly_lab.errors import ConfigError

    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    with pytest.raises(ConfigError, match="mask_peak_share="):
        predict(
            predict_config(
                [f"ckpt_path={ckpt}", f"input={tmp_path}", f"output={tmp_path / 'o'}", f"mask_peak_share={bad}"]
            )
        )
