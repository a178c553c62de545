"""Renamed options: each old name composes to exactly its new option's config and is reported as deprecated."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.deprecations import DEPRECATED_OPTIONS, moved_key_hint, warn_deprecated_options

CONF = Path(CONFIG_DIR)
RENAMES = [(group, old, new.split("=", 1)[1]) for (group, old), new in DEPRECATED_OPTIONS.items()]
IDS = [f"{group}={old}" for group, old, _ in RENAMES]


def new_names_elsewhere(group: str) -> list[str]:
    """The other renamed groups set to their new names, so one test sees one group's name only."""
    return [f"{other}={new}" for other, _, new in RENAMES if other != group]


def compose_train(overrides: list[str], hydra: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=hydra)


@pytest.mark.parametrize(("group", "old", "new"), RENAMES, ids=IDS)
def test_old_name_composes_to_the_new_option(group: str, old: str, new: str) -> None:
    assert (CONF / group / f"{new}.yaml").is_file()
    assert (CONF / group / f"{old}.yaml").read_text().startswith("# DEPRECATED alias of ")
    old_cfg = OmegaConf.to_container(compose_train([f"{group}={old}"]), resolve=False)
    new_cfg = OmegaConf.to_container(compose_train([f"{group}={new}"]), resolve=False)
    assert old_cfg == new_cfg


@pytest.mark.parametrize(("group", "old", "new"), RENAMES, ids=IDS)
def test_old_name_is_reported(group: str, old: str, new: str, caplog: pytest.LogCaptureFixture) -> None:
    choices = compose_train([f"{group}={old}", *new_names_elsewhere(group)], hydra=True).hydra.runtime.choices
    with caplog.at_level(logging.WARNING, logger="anomaly_lab.deprecations"):
        messages = warn_deprecated_options(choices)
    assert len(messages) == 1
    assert messages[0].startswith(f"{group}={old} is deprecated (")
    assert f"use {group}={new}; the old name goes in the next release" in messages[0]
    assert [record.getMessage() for record in caplog.records] == messages


def test_every_old_name_at_once_one_line_each() -> None:
    choices = {"scheduler": "exponential", "dataset": "bottles", "masking": "riad", "scoring": "riad", "logger": None}
    messages = warn_deprecated_options(choices)
    assert [m.split(" ", 1)[0] for m in messages] == ["scheduler=exponential", "masking=riad"]


@pytest.mark.parametrize(("group", "old", "new"), RENAMES, ids=IDS)
def test_new_name_is_not_reported(group: str, old: str, new: str, caplog: pytest.LogCaptureFixture) -> None:
    choices = compose_train([f"{group}={new}", *new_names_elsewhere(group)], hydra=True).hydra.runtime.choices
    with caplog.at_level(logging.WARNING, logger="anomaly_lab.deprecations"):
        assert warn_deprecated_options(choices) == []
    assert not caplog.records


def test_scoring_riad_is_not_the_deprecated_masking_riad() -> None:
    assert warn_deprecated_options({"scoring": "riad"}) == []


@pytest.mark.parametrize(
    "overrides",
    [[]]  # the defaults in `make test`, each experiment and search in `make test-all`
    + [
        pytest.param([f"{group}={p.stem}"], marks=pytest.mark.slow)
        for group in ("experiment", "hparams_search")
        for p in sorted((CONF / group).glob("*.yaml"))
    ],
    ids=lambda overrides: overrides[0] if overrides else "defaults",
)
def test_defaults_experiments_and_searches_use_no_old_name(overrides: list[str]) -> None:
    assert warn_deprecated_options(compose_train(overrides, hydra=True).hydra.runtime.choices) == []


@pytest.mark.slow
def test_a_moved_dataset_key_names_its_new_place(tmp_path: Path) -> None:
    """dataset.grayscale (and the other preprocessing keys) moved: the one-line error says where to."""
    result = subprocess.run(
        [sys.executable, "-m", "anomaly_lab.train", "dataset.grayscale=true", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "(dataset.grayscale is now dataset.preprocessing.grayscale)" in line
    assert not (tmp_path / "run").exists()
    assert moved_key_hint("unexpected keyword argument 'page_width'").endswith("dataset.preprocessing.page_width)")
    assert moved_key_hint("Key 'batch_size' is not in struct") == ""
