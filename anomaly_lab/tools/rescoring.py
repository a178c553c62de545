"""Score a trained run's checkpoint again on its validation and test sets, with other inference settings.

How many masked passes an image needs (passes_table) and which threshold rule holds on unseen images
(operating_point) are questions about one trained model scored several ways, not about training again. The
config is composed from the run's own command-line options (.hydra/overrides.yaml) plus the new ones, from this
project's config files, never from the run's stored config: a file does not choose what is instantiated. The
model is rebuilt from that config and gets the checkpoint's weights; validation then chooses its threshold with
the composed rule and the test measures it, as in training (anomaly_lab.train.run).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.inference import read_checkpoint
from anomaly_lab.lightning_model import InpaintingModule
from anomaly_lab.results import StageResults
from anomaly_lab.thresholds import AutoThreshold
from anomaly_lab.train import build_module

# recorded options that say where a run wrote or how it was resumed, not what it is
NOT_CARRIED = ("hydra.", "hydra/", "sweep_trial", "paths.output_dir", "paths.root_dir", "resume", "overwrite")


@dataclass
class Rescored:
    cfg: DictConfig
    module: InpaintingModule
    trainer: L.Trainer
    val: StageResults
    test: StageResults
    test_metrics: dict[str, float]
    test_seconds: float  # wall time of the test pass (scoring and metrics)
    validation_anomalies: str  # real | synthetic | both (the datamodule's validation_anomaly_kind)


def run_options(folder: Path) -> list[str]:
    """The command-line options a run was started with, less those that place it (paths, hydra, sweep)."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; give the folder of a run of python -m anomaly_lab.train")
    recorded = [str(option) for option in OmegaConf.load(path)]
    return [o for o in recorded if not o.lstrip("+~").startswith(NOT_CARRIED)]


def compose_run(folder: Path, options: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[*run_options(folder), *options])


def rescore(folder: Path, options: Sequence[str] = (), checkpoint: str = "best.ckpt") -> Rescored:
    """The run's checkpoint (checkpoints/<checkpoint>) in the model `options` compose, validated (threshold
    chosen) and tested."""
    cfg = compose_run(folder, options)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    _, state_dict = read_checkpoint(folder / "checkpoints" / checkpoint)
    module.load_state_dict(state_dict)  # strict: the composed model must be the trained one
    datamodule: L.LightningDataModule = instantiate(cfg.dataset, preprocessing=module.model.preprocessing)
    datamodule.setup("fit")
    kind = str(getattr(datamodule, "validation_anomaly_kind", "real"))
    if isinstance(module.threshold_rule, AutoThreshold):
        module.threshold_rule.real_anomalies = kind == "real"
    quiet = logging.getLogger("lightning.pytorch")
    level, quiet.level = quiet.level, logging.WARNING
    try:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            trainer.validate(module, datamodule=datamodule, verbose=False)
            start = time.perf_counter()
            trainer.test(module, datamodule=datamodule, verbose=False)
            seconds = time.perf_counter() - start
    finally:
        quiet.level = level
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return Rescored(cfg, module, trainer, module.results["val"], module.results["test"], metrics, seconds, kind)
