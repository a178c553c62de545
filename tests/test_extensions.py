"""Issue 14's three extension points, each shown by a real example that ships in the package.

Each extension is one Python file plus one YAML option, and nothing else in the code base changed for it:

- a dataset in a new layout, images listed in a CSV file (`dataset=csv_list`):
  anomaly_lab/data/csv_list.py + anomaly_lab/conf/dataset/csv_list.yaml
- a new backbone, a plain convolutional autoencoder without skips (`model=conv_autoencoder`):
  anomaly_lab/nets/conv_autoencoder.py + anomaly_lab/conf/model/conv_autoencoder.yaml
- a new pixel score, the absolute error (`scoring=l1`):
  anomaly_lab/pixel_maps/l1.py + anomaly_lab/conf/scoring/l1.yaml

Each trains for one epoch on tiny data through `anomaly_lab.train.run`; the backbone and the score are also
rebuilt from their checkpoint by `anomaly_lab.checkpoint_loading.load_model` and score images.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from anomaly_lab.checkpoint_loading import load_model
from anomaly_lab.data.csv_list import CsvListDataModule
from anomaly_lab.data.images import BadImageError
from anomaly_lab.data.synthetic import write_synthetic_bottles
from anomaly_lab.errors import ConfigError
from anomaly_lab.nets.conv_autoencoder import ConvAutoencoder
from anomaly_lab.pixel_maps.l1 import l1_map
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.registry import PIXEL_MAPS, load_builtin_parts
from anomaly_lab.scoring import AnomalyMap, ReconstructionLoss
from anomaly_lab.train import run
from tests.conftest import ComposeFn

SMALL_NET = ["model.net.base_channels=4"]  # the default U-Net, narrower: the runs below test the option, not the net


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def bottles_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """images.csv beside generated 32px bottles (MVTec layout), every path relative to the CSV's folder."""
    root = write_synthetic_bottles(
        tmp_path_factory.mktemp("csv_data") / "bottles", size=32, n_train=8, n_test_good=3, n_test_per_defect=2
    )
    rows = []
    for image in sorted(root.glob("t*/*/*.png")):  # train/good, test/<defect or good>
        defect = image.parent.name
        mask = root / "ground_truth" / defect / f"{image.stem}_mask.png"
        rows.append(
            {
                "path": str(image.relative_to(root)),
                "label": "0" if defect == "good" else "1",
                "mask": str(mask.relative_to(root)) if defect != "good" else "",
                "defect": "" if defect == "good" else defect,
            }
        )
    return write_csv(root / "images.csv", rows)


def read_metrics(cfg_output_dir: str) -> dict[str, float]:
    return json.loads((Path(cfg_output_dir) / "metrics.json").read_text())


# (a) a dataset layout


@pytest.mark.slow
def test_csv_list_dataset_trains_one_epoch(compose_tiny: ComposeFn, bottles_csv: Path) -> None:
    cfg = compose_tiny(["dataset=csv_list", f"dataset.csv={bottles_csv}", *SMALL_NET])
    assert math.isfinite(run(cfg))
    metrics = read_metrics(cfg.paths.output_dir)
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["test/image_auroc"] <= 1.0
    with (Path(cfg.paths.output_dir) / "scores.csv").open() as file:
        scored = list(csv.DictReader(file))
    with bottles_csv.open() as file:
        listed = {str(bottles_csv.parent / row["path"]): row["label"] for row in csv.DictReader(file)}
    assert all(listed[row["path"]] == row["label"] for row in scored)  # test images are listed rows, labels kept
    assert {row["label"] for row in scored} == {"0", "1"}


def test_csv_list_splits_and_maskless_rows(tmp_path: Path, bottles_csv: Path) -> None:
    root = bottles_csv.parent
    rows = [{"path": str(p), "label": "0"} for p in sorted(root.glob("train/good/*.png"))]  # absolute paths work too
    rows += [{"path": str(p), "label": "1"} for p in sorted(root.glob("test/scratch/*.png"))]  # no mask column
    data = CsvListDataModule(
        csv=str(write_csv(tmp_path / "list.csv", rows)),
        preprocessing=Preprocessing(image_size=16),
        val_fraction=0.25,
        val_anomalous=1,
        test_fraction=0.25,
    )
    data.setup()
    labels = {name: sorted(s.label for s in split.samples) for name, split in data.splits.items()}
    assert labels == {"train": [0] * 4, "val": [0, 0, 1], "test": [0, 0, 1]}
    assert data.splits["train"].images.shape == (4, 16, 16, 3)
    anomalous = [i for i, s in enumerate(data.splits["test"].samples) if s.label]
    assert data.splits["test"].samples[anomalous[0]].defect == "anomalous"
    assert data.splits["test"].masks[anomalous].all()  # no mask: anomalous everywhere
    assert not data.splits["train"].masks.any()


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("path,mask", "train/good/000.png,", r"images\.csv, row 1: no column 'label' \(header: path,mask\)"),
        ("path,label", "train/good/000.png,2", r"images\.csv, row 3, column label: '2' is not 0 \(normal\) or 1"),
        ("path,label", "train/good/nothing.png,0", r"images\.csv, row 3, column path: .*nothing\.png not found"),
        ("path,label", ",0", r"images\.csv, row 3, column path: empty"),
        ("path,label,mask", "train/good/001.png,1,gone.png", r"images\.csv, row 3, column mask: .*gone\.png not found"),
        ("path,label", "train/good/000.png,0", r"row 3, column path: .*000\.png is listed twice \(first in row 2\)"),
    ],
)
def test_csv_list_errors_name_file_row_and_column(tmp_path: Path, header: str, row: str, message: str) -> None:
    (tmp_path / "train" / "good").mkdir(parents=True)
    for name in ("000.png", "001.png"):
        (tmp_path / "train" / "good" / name).write_bytes(b"")  # listing errors come before any decoding
    (tmp_path / "images.csv").write_text(f"{header}\ntrain/good/000.png,0{',' if 'mask' in header else ''}\n{row}\n")
    data = CsvListDataModule(csv=str(tmp_path / "images.csv"), preprocessing=Preprocessing(image_size=16))
    with pytest.raises(BadImageError, match=message) as error:
        data.setup()
    assert "\n" not in str(error.value)


def test_csv_list_missing_file_and_tiling_are_config_errors(tmp_path: Path) -> None:
    data = CsvListDataModule(csv=str(tmp_path / "none.csv"), preprocessing=Preprocessing(image_size=16))
    with pytest.raises(ConfigError, match=r"dataset\.csv=.*none\.csv: not found; point it at a CSV file"):
        data.setup()
    with pytest.raises(ConfigError, match=r"dataset\.preprocessing\.tiled=true"):
        CsvListDataModule(csv="x.csv", preprocessing=Preprocessing(image_size=16, tiled=True))


# (b) a backbone and (c) a pixel score: trained, then rebuilt from the checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("option", ["model=conv_autoencoder", "scoring=l1"])
def test_new_option_trains_and_its_checkpoint_scores(option: str, compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny([option, *SMALL_NET])
    assert math.isfinite(run(cfg))
    assert math.isfinite(read_metrics(cfg.paths.output_dir)["train/loss"])
    model = load_model(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    if option.startswith("model="):
        assert isinstance(model.net, ConvAutoencoder) and model.net.depth == cfg.model.net.depth
    else:
        assert model.anomaly_map.weights == {"l1": 1.0}
    maps, scores = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert maps.shape == (2, 1, 32, 32) and scores.shape == (2,)
    assert torch.isfinite(scores).all() and (scores >= 0).all()


def test_conv_autoencoder_shapes_and_clear_size_error() -> None:
    assert ConvAutoencoder(channels=[4, 8, 16], depth=None)(torch.rand(1, 3, 24, 40)).shape == (1, 3, 24, 40)
    with pytest.raises(ValueError, match=r"channels=\[4, 8\] has 2 levels but depth=4"):
        ConvAutoencoder(channels=[4, 8])
    with pytest.raises(ValueError, match=r"crop_height=20: must be a multiple of 2\*\*depth = 8 .*or a lower depth"):
        ConvAutoencoder(base_channels=4, depth=3)(torch.rand(1, 3, 20, 16))


def test_l1_map_hand_value_and_registration() -> None:
    recon = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]).view(1, 3, 1, 2)
    target = torch.tensor([[0.3, 1.0], [0.6, 0.5], [0.9, 0.0]]).view(1, 3, 1, 2)
    expected = torch.tensor([0.6, 0.5]).view(1, 1, 1, 2)  # (0.3+0.6+0.9)/3, (0+0.5+1)/3
    torch.testing.assert_close(l1_map(recon, target), expected)
    load_builtin_parts()
    assert PIXEL_MAPS["l1"] is l1_map
    torch.testing.assert_close(AnomalyMap(l1=1.0).maps([recon], target)[0], expected)
    torch.testing.assert_close(ReconstructionLoss(l1=2.0)(recon, target), torch.tensor(1.1))
    assert float(l1_map(target, target).max()) == 0.0
