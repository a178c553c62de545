"""The README's headline command, `python -m anomaly_lab.train dataset=bottles model=unet512 masking=grid`: the
bottle-bottom domain is an option of its own (no warning), and the trainer follows the machine (a GPU when there
is one, else the CPU) unless trainer=cpu / trainer=gpu forces either."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from anomaly_lab.configs import data_digest
from tests.conftest import compose_config

HEADLINE = ["dataset=bottles", "model=unet512", "masking=grid"]


def test_bottles_reads_the_bottle_category_and_names_other_categories() -> None:
    cfg = compose_config(HEADLINE)
    assert cfg.dataset._target_ == "anomaly_lab.data.datamodules.MVTecDataModule"
    assert Path(cfg.dataset.root).name == "mvtec_bottle"
    screw = compose_config([*HEADLINE, "dataset.category=screw"])
    assert Path(screw.dataset.root).name == "mvtec_screw"
    assert screw.dataset.category == "screw"


def test_bottles_keeps_its_study_name() -> None:
    """The sweep's study name digests the data's paths: dataset=bottles still reads data/mvtec_bottle, so the
    studies made when it was an alias of mvtec are resumed, and the category key does not enter the digest."""
    bottles = compose_config(HEADLINE).dataset
    mvtec = compose_config(["dataset=mvtec", "dataset.root=${paths.data_dir}/mvtec_bottle"]).dataset
    assert data_digest(bottles, "/somewhere") == data_digest(mvtec, "/somewhere")
    assert data_digest(compose_config([*HEADLINE, "dataset.category=screw"]).dataset, "/somewhere") != data_digest(
        bottles, "/somewhere"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default; the GPU one is test_default_trainer_on_a_gpu")
def test_default_trainer_is_the_cpu_without_a_gpu() -> None:
    def resolved(overrides: list[str]) -> dict:
        trainer = compose_config(overrides).trainer
        return {str(key): OmegaConf.select(trainer, str(key)) for key in trainer if key != "default_root_dir"}

    trainer, cpu = resolved([]), resolved(["trainer=cpu"])
    assert trainer["accelerator"] == "cpu" and trainer["precision"] == "32-true" and trainer["deterministic"]
    assert trainer == cpu


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_default_trainer_on_a_gpu() -> None:
    trainer = compose_config([]).trainer
    assert trainer.accelerator == "gpu" and trainer.precision in ("bf16-mixed", "16-mixed")
    assert compose_config(["trainer=cpu"]).trainer.accelerator == "cpu"


@pytest.mark.slow
def test_headline_command_runs_with_no_warning(tiny_bottles_root: Path, tmp_path: Path) -> None:
    """The README's command as a user types it, checked with fast_dev_run (at 128 px and a quarter of the width:
    512 px takes minutes on a busy CPU; the full-size command is the same code)."""
    command = [
        sys.executable,
        "-m",
        "anomaly_lab.train",
        *HEADLINE,
        f"dataset.root={tiny_bottles_root}",
        "trainer.fast_dev_run=true",
        "model.image_size=128",
        "model.net.base_channels=16",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "deprecated" not in output
    warnings = [line for line in output.splitlines() if "WARNING" in line or "Warning:" in line]
    assert warnings == [], output[-3000:]
