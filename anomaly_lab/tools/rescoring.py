"""Score a trained run's checkpoint again on its validation and test sets, with other inference settings.

How many masked passes an image needs (passes_table) and which threshold rule holds on unseen images
(operating_point) are questions about one trained model scored several ways, not about training again. The
config is composed from the run's own command-line options (.hydra/overrides.yaml) plus the new ones, from this
project's config files, never from the run's stored config: a file does not choose what is instantiated. The
model is rebuilt from that config and gets the checkpoint's weights; validation then chooses its threshold with
the composed rule and the test measures it, as in training (anomaly_lab.train.run). Relative paths in the options
(data, cache) are read from the folder the run was started in (.hydra/hydra.yaml, hydra.runtime.cwd), as the
run read them. A model that these options compose differently from the run's own (config files changed since)
is named in a warning, or, where the weights do not fit, refused in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_lab.config_checks import check_train_config
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import UserError
from anomaly_lab.inference import read_checkpoint
from anomaly_lab.lightning_model import InpaintingModule
from anomaly_lab.results import StageResults
from anomaly_lab.thresholds import AutoThreshold
from anomaly_lab.train import build_module

log = logging.getLogger(__name__)

# recorded options that say where a run wrote or how it was resumed, not what it is
NOT_CARRIED = ("hydra.", "hydra/", "sweep_trial", "paths.output_dir", "resume", "overwrite")


@dataclass
class Rescored:
    cfg: DictConfig
    module: InpaintingModule
    trainer: L.Trainer
    val: StageResults
    test: StageResults
    test_metrics: dict[str, float]
    val_metrics: dict[str, float]
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


@contextlib.contextmanager
def run_working_directory(folder: Path) -> Iterator[None]:
    """The folder the run was started in, as the current directory (relative data paths resolve as they did)."""
    recorded = (
        OmegaConf.select(OmegaConf.load(folder / ".hydra" / "hydra.yaml"), "hydra.runtime.cwd")
        if (folder / ".hydra" / "hydra.yaml").is_file()
        else None
    )
    if not isinstance(recorded, str) or not Path(recorded).is_dir():
        log.warning("%s: the folder the run started in is not known or gone; relative paths resolve here", folder)
        yield
        return
    before = os.getcwd()
    os.chdir(recorded)
    try:
        yield
    finally:
        os.chdir(before)


def model_differences(folder: Path) -> list[str]:
    """Keys of `model` whose value the current config files give differently from the run's stored config
    (values compared as plain data; nothing in the stored file is built). The run's own options compose both,
    so what a rescoring's options change (directly or through an interpolation, e.g. scoring.*) is not listed."""
    stored_path = folder / ".hydra" / "config.yaml"
    if not stored_path.is_file():
        return []

    def flat(node: object, prefix: str) -> dict[str, object]:
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}.{key}").items()}
        return {prefix: node}

    try:
        stored = flat(OmegaConf.to_container(OmegaConf.load(stored_path).model, resolve=True), "model")
        now = flat(OmegaConf.to_container(compose_run(folder, []).model, resolve=True), "model")
    except Exception:  # an unreadable stored config: nothing to compare (the weights must still fit)
        return []
    return sorted(k for k in stored.keys() | now.keys() if stored.get(k) != now.get(k))


def rescore(folder: Path, options: Sequence[str] = (), checkpoint: str = "best.ckpt") -> Rescored:
    """The run's checkpoint (checkpoints/<checkpoint>) in the model `options` compose, validated (threshold
    chosen) and tested."""
    folder = folder.resolve()
    with run_working_directory(folder):
        return _rescore(folder, options, checkpoint)


def _rescore(folder: Path, options: Sequence[str], checkpoint: str) -> Rescored:
    cfg = compose_run(folder, options)
    check_train_config(cfg)
    changed = model_differences(folder)
    if changed:
        log.warning(
            "%s: the run's options now compose another model than it trained (%s); the config files changed since",
            folder,
            ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else ""),
        )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    path = folder / "checkpoints" / checkpoint
    _, state_dict = read_checkpoint(path)
    try:
        module.load_state_dict(state_dict)  # strict: the composed model must be the trained one
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise UserError(
            f"{path}: its weights do not fit the model the run's options compose now "
            f"({lines[0] if lines else 'state dict mismatch'})"
        ) from None
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
            val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            start = time.perf_counter()
            trainer.test(module, datamodule=datamodule, verbose=False)
            seconds = time.perf_counter() - start
    finally:
        quiet.level = level
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    val, test = module.results["val"], module.results["test"]
    return Rescored(cfg, module, trainer, val, test, metrics, val_metrics, seconds, kind)
