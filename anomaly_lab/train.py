"""Entry point: `python -m anomaly_lab.train dataset=... model=... masking=...`.

run(cfg) is the one place where config becomes objects; it trains, tests and returns the
validation objective that Optuna sweeps maximise.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from torch import nn

from anomaly_lab.checkpointing import AtomicCheckpointIO, RandomState, resume_checkpoint
from anomaly_lab.cli import one_line, run_cli, user_errors_exit
from anomaly_lab.config_checks import check_train_config, needs_validation_anomalies
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import ConfigError, SplitError, UserError
from anomaly_lab.health import TrainingHealth, ValidateLastEpoch, collapse_reasons
from anomaly_lab.inference import FORMAT_VERSION
from anomaly_lab.models.module import InpaintingModule
from anomaly_lab.models.unet import UNet

log = logging.getLogger(__name__)


def inference_spec(cfg: DictConfig) -> dict[str, Any]:
    """What predict and export rebuild the scorer from, as plain values (kept in every checkpoint)."""

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True)

    try:
        package_version = version("anomaly_lab")
    except PackageNotFoundError:
        package_version = "unknown"
    dataset = cfg.dataset
    tiled = bool(dataset.get("tiled", False))
    return {
        "format_version": FORMAT_VERSION,
        "anomaly_lab_version": package_version,
        "net": plain(cfg.model.net),
        "image_size": int(cfg.model.image_size),
        # pixels are 8-bit RGB divided by 255; grayscale: luminance replicated over 3 channels first
        "normalisation": {"divide_by": 255.0, "grayscale": bool(dataset.get("grayscale", False))},
        "masking": plain(cfg.masking),
        "scoring": {
            "anomaly_map": plain(cfg.scoring.anomaly_map),
            "reduce": str(cfg.scoring.reduce),
            "topk_fraction": float(cfg.scoring.topk_fraction),
        },
        "tiling": {"stride": dataset.stride, "border": dataset.border, "page_width": dataset.page_width}
        if tiled
        else None,
    }


def build_module(cfg: DictConfig) -> InpaintingModule:
    net: UNet = instantiate(cfg.model.net)
    net.check_size(cfg.model.image_size, cfg.model.image_size)
    if cfg.model.get("compile", False):
        net.compile()  # in place: parameter names and checkpoints stay those of the plain net
    return InpaintingModule(
        net=net,
        masking=instantiate(cfg.masking),
        loss=instantiate(cfg.scoring.loss),
        anomaly_map=instantiate(cfg.scoring.anomaly_map),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        score_reduce=cfg.scoring.reduce,
        topk_fraction=cfg.scoring.topk_fraction,
        normalise_wasserstein=cfg.objective.normalise,
        threshold_rule=instantiate(cfg.threshold) if cfg.get("threshold") else None,
        channels_last=cfg.model.get("channels_last", False),
        inference_spec=inference_spec(cfg),
    )


@contextmanager
def config_group(name: str) -> Iterator[None]:
    """An error while building `name` from its config becomes a ConfigError naming the group."""
    try:
        yield
    except (ValueError, TypeError, RuntimeError, KeyError, HydraException, MisconfigurationException) as error:
        if isinstance(error, UserError):
            raise
        raise ConfigError(f"{name}: {one_line(error)}") from error


def check_buildable(cfg: DictConfig) -> None:
    """Build what the config describes, without data, and run the net once: a ConfigError naming the group
    for a value only the class itself refuses (a norm, a weight decay, an accelerator, ...)."""
    quiet = logging.getLogger("lightning.pytorch")
    level, quiet.level = quiet.level, logging.WARNING  # no "GPU available" lines for a check
    try:
        with warnings.catch_warnings():  # torch's warnings about an odd net are not the point here
            warnings.simplefilter("ignore")
            size = int(cfg.model.image_size)
            with config_group("model.net"):
                net: nn.Module = instantiate(cfg.model.net).eval()
                with torch.no_grad():
                    out = net(torch.zeros(1, 3, size, size))
                if tuple(out.shape) != (1, 3, size, size):
                    raise ConfigError(
                        f"model.net maps (1,3,{size},{size}) images to {tuple(out.shape)}, not the same shape"
                    )
            with config_group("masking"):
                instantiate(cfg.masking)
            with config_group("scoring"):
                instantiate(cfg.scoring.loss)
                instantiate(cfg.scoring.anomaly_map)
            if cfg.get("threshold"):
                with config_group("threshold"):
                    instantiate(cfg.threshold)
            with config_group("optimizer"):
                optimizer = instantiate(cfg.optimizer)(params=net.parameters())
            if cfg.get("scheduler"):
                with config_group("scheduler"):
                    instantiate(cfg.scheduler)(optimizer=optimizer)
            with config_group("trainer"):
                instantiate(cfg.trainer, default_root_dir=None, logger=False, callbacks=[], enable_checkpointing=False)
    finally:
        quiet.level = level


def check_splits(datamodule: L.LightningDataModule, cfg: DictConfig) -> None:
    """Every split the run will use holds what it needs, checked before the first training step."""
    splits = getattr(datamodule, "splits", None)
    if not splits:
        return  # a datamodule of another kind: Lightning's own checks apply
    counts = {name: [s.label for s in split.samples] for name, split in splits.items()}
    if not counts["train"]:
        raise SplitError("the training split is empty; lower dataset.val_fraction (or dataset.test_fraction)")
    if counts["val"].count(0) == 0:
        raise SplitError(
            f"dataset.val_fraction={cfg.dataset.get('val_fraction')} leaves no normal validation image; "
            f"validation needs some (threshold, objective): raise it (e.g. 0.1)"
        )
    if needs_validation_anomalies(cfg) and counts["val"].count(1) == 0:
        raise SplitError(
            f"dataset.val_anomalous={cfg.dataset.get('val_anomalous')} leaves no anomalous validation image; "
            f"objective.metric={cfg.objective.metric} needs some: raise it (a share or a count), "
            f"or set objective.metric=val/loss"
        )
    if cfg.test and not counts["test"]:
        raise SplitError("the test split is empty; lower dataset.val_anomalous or set test=false")


def run(cfg: DictConfig) -> float:
    """Train, test, and return the validation objective (cfg.objective.metric) as a float."""
    check_train_config(cfg)
    check_buildable(cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resume_checkpoint(cfg.resume, output_dir)
    datamodule: L.LightningDataModule = instantiate(cfg.dataset)
    datamodule.setup("fit")  # decode and split now: bad data and empty splits fail before training
    check_splits(datamodule, cfg)
    module = build_module(cfg)
    health = TrainingHealth()
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    callbacks += [RandomState(), ValidateLastEpoch(), health]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit(1) after its own clean-up
        log.error(
            "training interrupted; last.ckpt holds the last finished epoch: continue with "
            "`python -m anomaly_lab.train <the same options> resume=true hydra.run.dir=%s`",
            output_dir,
        )
        raise

    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.test:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None  # none under fast_dev_run
        trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    metrics_path = output_dir / "metrics.json"
    if ckpt_path is not None and metrics_path.is_file():  # a resumed run keeps what the run recorded before
        metrics = {**json.loads(metrics_path.read_text()), **metrics}
    reasons = collapse_reasons(metrics, health.epoch_losses)
    metrics.update(collapsed=bool(reasons), collapse_reasons=reasons)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        for name in sorted(metrics):
            if name.startswith("test/"):
                log.info("%s = %.4f", name, metrics[name])
        if reasons:
            log.warning(
                "THE MODEL LOOKS COLLAPSED (metrics.json: collapsed=true): %s. Lower optimizer.lr or check the data.",
                "; ".join(reasons),
            )
    name = cfg.objective.metric
    if name not in metrics:
        raise KeyError(f"objective.metric={name!r} was not logged (logged: {sorted(metrics)})")
    value = metrics[name]
    return value if math.isfinite(value) else -math.inf


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    torch.set_float32_matmul_precision("high")
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=False))
    with user_errors_exit(enabled=HydraConfig.get().mode == RunMode.RUN):
        objective = run(cfg)
    return objective


if __name__ == "__main__":
    run_cli(main)
