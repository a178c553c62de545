"""A dataset layout and a backbone added from tests/, without touching the package: one class and one YAML each.

tests/extensions/ holds them: good_bad_lists.py + conf/dataset/good_bad_lists.yaml (a layout that only lists its
files: decoding, bad-file skipping and the splits are the base class's) and encoder_net.py +
conf/model/encoder_decoder.yaml (an encoder at its own learning rate, and the normalisation a pretrained encoder
expects, set in the preprocessing). Hydra finds the YAML through `hydra.searchpath`; a checkpoint may name the
backbone because its module, imported, put it on the registry's list (`@checkpoint_class`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from anomaly_lab.checkpoint_loading import load_model
from anomaly_lab.configs import CONFIG_DIR, data_digest
from anomaly_lab.errors import ConfigError
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.train import build_module, run
from tests.conftest import TINY, ComposeFn
from tests.extensions.encoder_net import EncoderDecoderNet

SEARCH_PATH = f"hydra.searchpath=[file://{Path(__file__).resolve().parent / 'extensions' / 'conf'}]"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def lists_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """good.txt and bad.txt over generated 32px bottles (MVTec layout): the good ones of train/ and test/, every
    anomalous one with its mask."""
    from anomaly_lab.data.synthetic import write_synthetic_bottles

    root = write_synthetic_bottles(
        tmp_path_factory.mktemp("lists") / "bottles", size=32, n_train=8, n_test_good=3, n_test_per_defect=2
    )
    good = sorted(root.glob("t*/good/*.png"))
    bad = [p for p in sorted(root.glob("test/*/*.png")) if p.parent.name != "good"]
    (root / "good.txt").write_text("".join(f"{p.relative_to(root)}\n" for p in good))
    masks = [root / "ground_truth" / p.parent.name / f"{p.stem}_mask.png" for p in bad]
    (root / "bad.txt").write_text(
        "".join(f"{p.relative_to(root)},{m.relative_to(root)}\n" for p, m in zip(bad, masks, strict=True))
    )
    return root


def with_extensions(compose_tiny: ComposeFn, overrides: list[str]) -> DictConfig:
    return compose_tiny([SEARCH_PATH, *overrides])


def test_a_layout_from_tests_lists_its_files_and_the_base_class_splits_them(
    compose_tiny: ComposeFn, lists_folder: Path
) -> None:
    cfg = with_extensions(compose_tiny, ["dataset=good_bad_lists", f"dataset.lists={lists_folder}"])
    data = instantiate(cfg.dataset, preprocessing=Preprocessing(image_size=32))
    data.setup()
    labels = {name: sorted(s.label for s in split.samples) for name, split in data.splits.items()}
    # 11 good: 3 held out for testing (test_fraction=0.25), 1 of the 8 left validates; 6 bad (one defect type "bad"):
    # a quarter, rounded, validates
    assert labels["train"] == [0] * 7
    assert labels["val"] == [0, 1, 1] and labels["test"] == [0] * 3 + [1] * 4
    anomalous = [i for i, s in enumerate(data.splits["test"].samples) if s.label]
    assert data.splits["test"].masks[anomalous].any() and not data.splits["test"].masks[anomalous].all()


def test_a_layout_from_tests_skips_bad_files_as_every_layout_does(
    compose_tiny: ComposeFn, lists_folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    listed = [f"{lists_folder / line}\n" for line in (lists_folder / "good.txt").read_text().split()]  # absolute
    (tmp_path / "good.txt").write_text("".join(listed) + "broken.png\n")
    (tmp_path / "bad.txt").write_text("")
    cfg = with_extensions(
        compose_tiny, ["dataset=good_bad_lists", f"dataset.lists={tmp_path}", "dataset.skip_bad_files=true"]
    )
    data = instantiate(cfg.dataset, preprocessing=Preprocessing(image_size=32))
    with pytest.warns(UserWarning, match=r"skipped 1 bad files:\n.*broken\.png"):
        data.setup()
    assert sum(s.label == 0 for split in data.splits.values() for s in split.samples) == 11  # the 11 good ones


def test_data_sets_differing_in_a_key_of_any_name_are_different_studies(compose_tiny: ComposeFn) -> None:
    """`lists` ends in none of root, csv, _dir, _path, _file: the layout's data_paths declare it the data."""

    def study_name(lists: str) -> str:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(
                "train",
                [
                    SEARCH_PATH,
                    "hparams_search=bottles_thesis",
                    *TINY,
                    "dataset=good_bad_lists",
                    f"dataset.lists={lists}",
                ],
                return_hydra_config=True,
            )
        return str(cfg.hydra.sweeper.study_name)

    assert study_name("/no_such_dir/a") != study_name("/no_such_dir/b")
    assert study_name("/no_such_dir/a") == study_name("/no_such_dir/a")
    # loader and split keys are no data
    one = with_extensions(compose_tiny, ["dataset=good_bad_lists", "dataset.lists=/x"]).dataset
    other = with_extensions(
        compose_tiny, ["dataset=good_bad_lists", "dataset.lists=/x", "dataset.batch_size=2"]
    ).dataset
    assert data_digest(one, "/") == data_digest(other, "/")


def test_a_datamodule_that_declares_no_data_is_refused_for_a_study_name() -> None:
    from omegaconf import OmegaConf

    node = OmegaConf.create({"_target_": "anomaly_lab.data.datamodules.LayoutDataModule", "lists": "/x"})
    with pytest.raises(ConfigError, match=r"LayoutDataModule: declares no data identity"):
        data_digest(node, "/")


def test_a_backbone_from_tests_gets_its_encoder_learning_rate_and_normalisation(compose_tiny: ComposeFn) -> None:
    cfg = with_extensions(compose_tiny, ["model=encoder_decoder", "optimizer.lr=0.002"])
    module = build_module(cfg)
    assert isinstance(module.model.net, EncoderDecoderNet)
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    rates = [group["lr"] for group in optimizer.param_groups]
    assert rates == pytest.approx([0.0002, 0.002])
    encoder = {id(p) for p in module.model.net.encoder.parameters()}
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == encoder
    grouped = sum(len(group["params"]) for group in optimizer.param_groups)
    assert grouped == len(list(module.parameters()))  # every parameter trains, once
    preprocessing = module.model.preprocessing
    assert (preprocessing.mean, preprocessing.std) == tuple(tuple(values) for values in IMAGENET)
    white = preprocessing.to_tensor(np.full((2, 2, 3), 255, np.uint8))  # (3,2,2)
    expected = [(1 - m) / s for m, s in zip(*IMAGENET, strict=True)]
    assert white[:, 0, 0].tolist() == pytest.approx(expected)


def test_normalisation_settings_are_refused_by_name() -> None:
    as_yaml_gives: dict[str, Any] = {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0, 0.2]}  # lists
    with pytest.raises(ValueError, match=r"std=\[0\.2, 0, 0\.2\]: expected null or 3 positive numbers"):
        Preprocessing(image_size=8, **as_yaml_gives)
    with pytest.raises(ValueError, match=r"set both or neither"):
        Preprocessing(image_size=8, mean=(0.5, 0.5, 0.5))
    assert Preprocessing(image_size=8).to_tensor(np.full((1, 1, 3), 255, np.uint8)).flatten().tolist() == [1.0] * 3


@pytest.mark.slow
def test_both_extensions_train_one_epoch_and_the_checkpoint_keeps_them(
    compose_tiny: ComposeFn, lists_folder: Path
) -> None:
    cfg = with_extensions(
        compose_tiny, ["dataset=good_bad_lists", f"dataset.lists={lists_folder}", "model=encoder_decoder"]
    )
    assert math.isfinite(run(cfg))
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert math.isfinite(metrics["train/loss"]) and 0.0 <= metrics["test/image_auroc"] <= 1.0
    model = load_model(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    assert isinstance(model.net, EncoderDecoderNet) and model.net.encoder_lr_scale == 0.1
    assert (model.preprocessing.mean, model.preprocessing.std) == tuple(tuple(values) for values in IMAGENET)
    maps, scores = model(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert maps.shape == (2, 1, 32, 32) and torch.isfinite(scores).all()
