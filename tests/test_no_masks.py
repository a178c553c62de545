"""Anomalous images without ground-truth masks (issue 16, item 5: MVTec AD screw as shared, grayscale, no
ground_truth/): image metrics only, pixel AUROC and AUPRO skipped with one line saying why; grayscale and 16-bit
images decode to RGB.

The data is a tiny screw-like tree made here from the generated 32px bottles (tests/conftest.py): train/good and
test/good, the defects merged into test/anomaly, no ground_truth/, every image 8-bit grayscale and test/good 16-bit.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from anomaly_lab.data.datamodules import MVTecDataModule, scan_mvtec
from anomaly_lab.data.images import ImageDataset
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.results import ScoredSample, without_masks_note
from anomaly_lab.train import run
from tests.conftest import ComposeFn

SKIPPED = "pixel AUROC and AUPRO skipped"


@pytest.fixture(scope="module")
def screw_like(tiny_bottles_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/good (L), test/good (16-bit), test/anomaly (L, the 6 bottles' defect images), no ground_truth/."""
    root = tmp_path_factory.mktemp("screw_like")
    for image in sorted(tiny_bottles_root.glob("t*/*/*.png")):
        split, defect = image.parent.parent.name, image.parent.name
        folder = root / split / ("good" if defect == "good" else "anomaly")
        folder.mkdir(parents=True, exist_ok=True)
        gray = Image.open(image).convert("L")
        name = image.name if defect == "good" else f"{defect}_{image.name}"
        if split == "test" and defect == "good":  # 16-bit: v * 257 decodes back to v
            Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(folder / name)
        else:
            gray.save(folder / name)
    return root


def metrics_of(cfg_dir: str) -> dict[str, float]:
    return json.loads((Path(cfg_dir) / "metrics.json").read_text())


def skipped_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if SKIPPED in r.getMessage()]


def test_grayscale_and_16_bit_decode_to_rgb_and_unknown_masks_are_flagged(screw_like: Path) -> None:
    assert Image.open(next((screw_like / "train" / "good").iterdir())).mode == "L"
    assert Image.open(next((screw_like / "test" / "good").iterdir())).mode.startswith("I")
    for grayscale in (False, True):
        module = MVTecDataModule(str(screw_like), preprocessing=Preprocessing(image_size=32, grayscale=grayscale))
        module.setup("fit")
        for split in module.splits.values():
            for sample, image, mask in zip(split.samples, split.images, split.masks, strict=True):
                assert image.shape == (32, 32, 3) and image.dtype == np.uint8
                gray = np.asarray(Image.open(sample.path))  # (32,32) uint8 or uint16
                gray = (gray // 257).astype(np.uint8) if gray.dtype != np.uint8 else gray
                assert all(np.array_equal(image[..., c], gray) for c in range(3)), sample.path
                assert sample.mask_known == (sample.label == 0)  # good: known clear; anomalous: unknown
                assert mask.all() if sample.label else not mask.any()  # no mask: anomalous everywhere
        batch = next(iter(module.test_dataloader()))
        assert batch["mask_known"].tolist() == (batch["label"] == 0).tolist()


def test_partial_ground_truth_marks_only_the_defects_without_masks(tiny_bottles_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "bottles"
    shutil.copytree(tiny_bottles_root, root)
    shutil.rmtree(root / "ground_truth" / "contamination")
    _, test = scan_mvtec(root)
    unknown = {s.defect for s in test if not s.mask_known}
    assert unknown == {"contamination"}
    assert all(s.mask_path for s in test if s.label and s.defect != "contamination")
    scored = [ScoredSample(s.path, s.label, s.defect, 0.0, s.path, 0, 0, s.mask_known) for s in test]
    note = without_masks_note(scored)
    assert note is not None and note.startswith("no ground-truth masks for 2 of the 6 anomalous test images (in ")
    assert str(root / "test" / "contamination") in note and SKIPPED in note
    assert without_masks_note([s for s in scored if s.mask_known]) is None


@pytest.mark.slow
def test_mvtec_without_ground_truth_gives_image_metrics_and_one_line(
    compose_tiny: ComposeFn, screw_like: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_tiny(["dataset=mvtec", f"dataset.root={screw_like}"])
    with caplog.at_level(logging.INFO):
        run(cfg)
    metrics = metrics_of(cfg.paths.output_dir)
    assert metrics["validation_anomalies"] == "real"
    for key in ("test/image_auroc", "test/f1_max", "test/f1", "val/image_auroc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert "test/pixel_auroc" not in metrics and "test/aupro" not in metrics
    # 6 anomalous images: round(0.25 * 6) = 2 to validation, 4 tested
    assert skipped_lines(caplog) == [
        f"no ground-truth masks for 4 of the 4 anomalous test images (in {screw_like / 'test' / 'anomaly'}): "
        f"{SKIPPED}, image metrics only"
    ]


@pytest.mark.slow
def test_folder_without_masks_and_synthetic_validation_anomalies(
    compose_tiny: ComposeFn, screw_like: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_tiny(
        [
            "dataset=folder",
            f"dataset.normal_dir={screw_like / 'train' / 'good'}",
            f"dataset.abnormal_dir={screw_like / 'test' / 'anomaly'}",
            "dataset.mask_dir=null",
            "validation_anomalies=synthetic",
        ]
    )
    module = instantiate(cfg.dataset)
    module.setup("fit")
    val_anomalies = [s for s in module.splits["val"].samples if s.label]
    assert val_anomalies and all(s.defect.startswith("synthetic_") and s.mask_known for s in val_anomalies)
    assert ImageDataset(module.splits["val"], module.preprocessing)[1]["mask_known"]
    with caplog.at_level(logging.INFO):
        run(cfg)
    metrics = metrics_of(cfg.paths.output_dir)
    assert metrics["validation_anomalies"] == "synthetic"
    assert 0.0 <= metrics["val/image_auroc"] <= 1.0 and 0.0 <= metrics["test/image_auroc"] <= 1.0
    assert "test/pixel_auroc" not in metrics and "test/aupro" not in metrics
    # validation takes no real anomaly: all 6 are tested
    assert len(lines := skipped_lines(caplog)) == 1 and "for 6 of the 6 anomalous test images" in lines[0]
