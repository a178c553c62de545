"""experiment=screw_cpu (issue 16, item 5): bottles_cpu with each part turned to one pose and the band it lies in
seen at 256 px by a half-width net, scored by the L2 error, 70 epochs, read as a plain folder without masks.

Composed only (no training, no real data): the recipe reads a folder of grayscale images as 3 equal channels,
keeps every other setting of bottles_cpu, and still composes for an MVTec layout with dataset=mvtec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from anomaly_lab.config_checks import check_train_config
from anomaly_lab.data.folders import FolderDataModule
from tests.conftest import compose_config

FOLDER = "anomaly_lab.data.folders.FolderDataModule"
MVTEC = "anomaly_lab.data.datamodules.MVTecDataModule"
# what screw_cpu changes in bottles_cpu besides the dataset: twice the resolution in a band of rows (cells and blurs
# doubled, so their size in pixels is kept), a half-width net, the L2 error as the anomaly map, 70 epochs
OWN = {
    "model.image_size": 256,
    "model.net.base_channels": 8,
    "masking.grid_sizes": [16, 32, 64, 128],
    "scoring.anomaly_map.msgms": 0.0,
    "scoring.anomaly_map.l2": 1.0,
    "scoring.anomaly_map.blur_sigma": 24.0,
    "scoring.anomaly_map.score_blur_sigma": 8.0,
    "trainer.max_epochs": 70,
}


def settings(cfg: DictConfig) -> dict[str, object]:
    """Everything but the dataset, with screw_cpu's own settings taken out."""
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    for key in OWN:
        *parents, leaf = key.split(".")
        node = container
        for parent in parents:
            node = node[parent]
        del node[leaf]
    return {key: value for key, value in container.items() if key != "dataset"}


def preprocessing_settings(cfg: DictConfig) -> dict[str, object]:
    """The dataset's preprocessing node but for orient and crop_height."""
    node = OmegaConf.to_container(cfg.dataset.preprocessing, resolve=False)
    assert isinstance(node, dict)
    return {key: value for key, value in node.items() if key not in ("orient", "crop_height")}


@pytest.fixture
def gray_folders(tmp_path: Path) -> tuple[Path, Path]:
    """normal/ (10) and anomaly/ (4) 8-bit grayscale 48x48 images, screw-like: a dark bar on a light background."""
    rng = np.random.default_rng(0)
    folders = (tmp_path / "normal", tmp_path / "anomaly")
    for folder, count in zip(folders, (10, 4), strict=True):
        folder.mkdir()
        for i in range(count):
            image = np.full((48, 48), 185, np.uint8) + rng.integers(0, 8, (48, 48), dtype=np.uint8)
            image[20:28, 6:42] = 60 + 5 * i
            Image.fromarray(image, mode="L").save(folder / f"{i:03d}.png")
    return folders


def test_screw_cpu_is_bottles_cpu_with_parts_turned_to_one_pose_on_a_folder_without_masks() -> None:
    cfg = compose_config(["experiment=screw_cpu"])
    bottles = compose_config(["experiment=bottles_cpu"])
    assert cfg.dataset._target_ == FOLDER and cfg.dataset.mask_dir is None
    assert cfg.dataset.preprocessing.grayscale is False  # gray files decode to 3 equal channels; colour stays colour
    assert list(cfg.dataset.train_transform.transforms) == []  # augmentation=rotate measured no better
    assert all(OmegaConf.select(cfg, key) == value for key, value in OWN.items())
    assert cfg.dataset.preprocessing.orient == "principal_axis" and bottles.dataset.preprocessing.orient == "none"
    assert cfg.dataset.preprocessing.crop_height == 96 and bottles.dataset.preprocessing.crop_height is None
    assert preprocessing_settings(cfg) == preprocessing_settings(bottles)
    assert settings(cfg) == settings(bottles)  # masking, scoring, optimizer, callbacks, no time cap: bottles_cpu's
    assert cfg.trainer.max_time is None and cfg.callbacks.model_checkpoint.monitor is None


def test_screw_cpu_reads_a_grayscale_folder_as_three_equal_channels(gray_folders: tuple[Path, Path]) -> None:
    normal, anomaly = gray_folders
    cfg = compose_config(
        [
            "experiment=screw_cpu",
            f"dataset.normal_dir={normal}",
            f"dataset.abnormal_dir={anomaly}",
            "model.image_size=128",  # small and fast: the recipe's 128x128 grid needs 128 pixels
            "dataset.preprocessing.crop_height=32",
        ]
    )
    check_train_config(cfg)
    module = instantiate(cfg.dataset)
    assert isinstance(module, FolderDataModule)
    module.setup("fit")
    assert sum(s.label for s in module.splits["train"].samples) == 0  # normals only in training
    assert sum(s.label for s in module.splits["test"].samples) > 0
    assert any(s.label == 0 for s in module.splits["test"].samples)  # normals held out of normal_dir for the test
    for split in module.splits.values():
        for image in split.images:
            assert image.shape == (32, 128, 3) and image.dtype == np.uint8  # the centre band of the 128 px square
            assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    images = next(iter(module.train_dataloader()))["image"]
    assert images.shape[1:] == (3, 32, 128)
    assert bool((images[:, 0] == images[:, 1]).all()) and bool((images[:, 0] == images[:, 2]).all())
    test = next(iter(module.test_dataloader()))  # no masks: anomalous images count as anomalous everywhere
    assert test["mask_known"].tolist() == (test["label"] == 0).tolist()


def test_screw_cpu_composes_for_an_mvtec_layout_with_dataset_mvtec(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=screw_cpu", "dataset=mvtec", f"dataset.root={tmp_path}"])
    assert cfg.dataset._target_ == MVTEC and cfg.dataset.root == str(tmp_path)
    assert not {"normal_dir", "abnormal_dir", "mask_dir", "test_fraction"} & set(cfg.dataset)  # no folder keys
    assert cfg.dataset.preprocessing.grayscale is False  # colour stays colour
    assert cfg.dataset.preprocessing.orient == "principal_axis"
    check_train_config(cfg)
