"""Entry point: `python -m anomaly_lab.train dataset=... model=... masking=...`.

run(cfg) is the one place where config becomes objects; it trains, tests and returns the
validation objective that Optuna sweeps maximise.
"""

from __future__ import annotations

import json
import logging
import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_lab.inference import FORMAT_VERSION
from anomaly_lab.models.module import InpaintingModule
from anomaly_lab.models.unet import UNet

log = logging.getLogger(__name__)
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def resume_checkpoint(resume: bool | str, output_dir: Path) -> str | None:
    """The checkpoint to continue from: none, the run dir's last.ckpt (resume=true), or a given path."""
    if resume is False or resume is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if resume is True else Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(
            f"resume: no checkpoint at {path}; pass resume=<path/to/last.ckpt> or "
            f"resume=true hydra.run.dir=<the run dir to continue>"
        )
    return str(path)


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


def run(cfg: DictConfig) -> float:
    """Train, test, and return the validation objective (cfg.objective.metric) as a float."""
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule: L.LightningDataModule = instantiate(cfg.dataset)
    module = build_module(cfg)
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    ckpt_path = resume_checkpoint(cfg.resume, output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.test:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") or None  # none under fast_dev_run
        trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        for name in sorted(metrics):
            if name.startswith("test/"):
                log.info("%s = %.4f", name, metrics[name])
    name = cfg.objective.metric
    if name not in metrics:
        raise KeyError(
            f"objective {name!r} was not logged (logged: {sorted(metrics)}); "
            f"validation needs anomalous images for val/wasserstein (dataset.val_anomalous>0)"
        )
    value = metrics[name]
    return value if math.isfinite(value) else -math.inf


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    torch.set_float32_matmul_precision("high")
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=False))
    return run(cfg)


if __name__ == "__main__":
    main()
