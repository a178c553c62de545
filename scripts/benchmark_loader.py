"""Does data loading keep up with training? Loader throughput beside the model's training throughput.

`python scripts/benchmark_loader.py dataset=synthetic_notes model=unet64` (any train.py overrides,
e.g. dataset.num_workers=2 augmentation=flip_jitter). Both numbers are samples per second on the
training split of the configured dataset; the loader should be several times faster (`make bench-loader`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from anomaly_lab.callbacks import ImagesPerSecond
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.train import build_module

log = logging.getLogger(__name__)


def loader_throughput(loader: DataLoader[dict[str, Any]], epochs: int = 2) -> float:
    """Samples per second the loader delivers (transforms, collation, workers), after one warm-up batch."""
    next(iter(loader))
    samples, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            samples += int(batch["image"].shape[0])
    return samples / (time.perf_counter() - start)


def training_throughput(cfg: DictConfig, datamodule: L.LightningDataModule, steps: int) -> float:
    """Samples per second of optimizer steps alone (loading excluded), as train.run's trainer measures them."""
    meter = ImagesPerSecond()
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        max_steps=steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[meter],
    )
    trainer.fit(build_module(cfg), datamodule=datamodule)
    return meter.images / meter.seconds


def benchmark(cfg: DictConfig, steps: int = 20, loader_epochs: int = 2) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.dataset)
    datamodule.setup("fit")
    loader = loader_throughput(datamodule.train_dataloader(), loader_epochs)
    training = training_throughput(cfg, datamodule, steps)
    return {"loader_per_s": loader, "training_per_s": training, "ratio": loader / training}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    result = benchmark(cfg)
    print(
        f"loader   {result['loader_per_s']:10.1f} samples/s  (dataset={cfg.dataset._target_.rsplit('.', 1)[-1]}, "
        f"num_workers={cfg.dataset.num_workers}, pin_memory={cfg.dataset.pin_memory})\n"
        f"training {result['training_per_s']:10.1f} samples/s  (net {cfg.model.net._target_.rsplit('.', 1)[-1]}, "
        f"{cfg.model.image_size}px, batch {cfg.dataset.batch_size})\n"
        f"ratio    {result['ratio']:10.1f}x  ({'ok' if result['ratio'] >= 5 else 'LOADER TOO SLOW'}: want >= 5x)"
    )
    return result["ratio"]


if __name__ == "__main__":
    main()
