"""What does Lightning cost? The same training steps through a plain PyTorch loop and through the Trainer.

`python scripts/overhead.py [train.py overrides] overhead.steps=50` builds one configured module
(net, masking, loss, optimizer, scheduler: `train.build_module`), draws `warmup + steps` training
batches once and keeps them on the device, then trains a fresh copy of the same initial weights on
those batches, with the same random masks (same seed), twice:

- plain: a hand-written loop of `inpaint_for_training`, the loss on the normal images, zero_grad,
  backward, optimizer step, scheduler step; under `torch.autocast` when the trainer's precision is
  bf16-mixed.
- lightning: `InpaintingModule` under a Trainer made from `cfg.trainer` as in a normal run (precision,
  deterministic, benchmark), with logger, checkpointing, progress bar, model summary and validation off.
  So the difference also holds the module's own per-step work (the NaN check, `self.log`).

Both clocks run from the end of the last warm-up step to the end of the last step (the device
synchronised at both points); data loading is excluded from both. Each pair is run `repeats` times,
alternating; the medians are reported. Goal: lightning / plain >= 0.95.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Iterator
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from anomaly_lab.lightning_model import InpaintingModule
from anomaly_lab.train import build_module

log = logging.getLogger(__name__)
Batch = dict[str, Any]


def device_of(trainer_cfg: DictConfig) -> torch.device:
    """The one device a single-process trainer config trains on."""
    accelerator = str(trainer_cfg.accelerator)
    if trainer_cfg.get("strategy") not in (None, "auto") or trainer_cfg.get("devices") not in (1, "1"):
        raise ValueError("overhead: measures one device in one process; use trainer=cpu or trainer=gpu (devices=1)")
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    if accelerator in ("cpu", "auto"):
        return torch.device("cpu")
    raise ValueError(f"overhead: accelerator {accelerator!r} is not supported (cpu, gpu)")


def autocast_of(precision: Any, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """What Lightning's precision setting does to the forward pass, for the plain loop."""
    if str(precision) in ("32-true", "32"):
        return contextlib.nullcontext()
    if str(precision) == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"overhead: precision {precision!r} is not supported (32-true, bf16-mixed)")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def draw_batches(datamodule: L.LightningDataModule, count: int, device: torch.device) -> list[Batch]:
    """`count` training batches (the loader repeated as needed), tensors moved to the device once."""
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches: list[Batch] = []
    while len(batches) < count:
        for batch in loader:
            batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            if len(batches) == count:
                break
    return batches


def images_in(batches: list[Batch]) -> int:
    return sum(int(batch["image"].shape[0]) for batch in batches)


def plain_loop(
    module: InpaintingModule, batches: list[Batch], warmup: int, device: torch.device, precision: Any
) -> float:
    """Images per second of the timed steps (after `warmup` steps) of a hand-written training loop."""
    module.to(device).train()
    model, loss_fn = module.model, module.loss
    optimizer = module.optimizer_factory(params=module.parameters())
    scheduler = module.scheduler_factory(optimizer=optimizer) if module.scheduler_factory is not None else None
    start = time.perf_counter()
    for step, batch in enumerate(batches):
        images = batch["image"]  # (B,3,H,W)
        normal = batch["label"] == 0  # (B,)
        with autocast_of(precision, device):
            recon = model.training_reconstruction(images)  # (B,3,H,W)
            loss = loss_fn(recon[normal], images[normal])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if step == warmup - 1:
            synchronize(device)
            start = time.perf_counter()
    synchronize(device)
    return images_in(batches[warmup:]) / (time.perf_counter() - start)


class Replay:
    """The drawn batches as one iterable (a bare list would be read by Lightning as a list of loaders)."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StepClock(L.Callback):
    """Wall time from the end of the last warm-up step to the end of the last step, device synchronised."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total
        self.start = self.end = 0.0

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx in (self.warmup - 1, self.total - 1):
            synchronize(module.device)
            if batch_idx == self.warmup - 1:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()


def lightning_loop(cfg: DictConfig, module: InpaintingModule, batches: list[Batch], warmup: int) -> float:
    """Images per second of the same timed steps through `trainer.fit` (config as a run, extras off)."""
    clock = StepClock(warmup, len(batches))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        max_epochs=1,
        max_steps=len(batches),
        max_time=None,
        fast_dev_run=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    with warnings.catch_warnings():  # training steps only, by design: no validation loader
        warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
        trainer.fit(module, train_dataloaders=Replay(batches))
    if clock.end <= clock.start:
        raise RuntimeError(f"overhead: the trainer ran {trainer.global_step} of {len(batches)} steps")
    return images_in(batches[warmup:]) / (clock.end - clock.start)


def measure(cfg: DictConfig, steps: int = 50, warmup: int = 10, repeats: int = 3) -> dict[str, float]:
    """Median images/s of the plain loop and of Lightning over `repeats` alternating runs, and their ratio."""
    if steps < 1 or warmup < 1 or repeats < 1:
        raise ValueError(f"overhead: steps, warmup and repeats must be >= 1, got {steps}, {warmup}, {repeats}")
    device = device_of(cfg.trainer)
    autocast_of(cfg.trainer.precision, device)  # an unsupported precision fails before any work
    L.seed_everything(cfg.seed, workers=True)
    batches = draw_batches(instantiate(cfg.dataset), warmup + steps, device)
    # The flags Lightning sets from the trainer config, for the plain loop too.
    torch.use_deterministic_algorithms(bool(cfg.trainer.get("deterministic", False)))
    torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark", False))
    plain, lightning = [], []
    for _ in range(repeats):
        L.seed_everything(cfg.seed)  # the same initial weights and the same masks in both loops
        plain.append(plain_loop(build_module(cfg), batches, warmup, device, cfg.trainer.precision))
        L.seed_everything(cfg.seed)
        lightning.append(lightning_loop(cfg, build_module(cfg), batches, warmup))
    log.info("img/s per run: plain %s, lightning %s", [round(x, 1) for x in plain], [round(x, 1) for x in lightning])
    plain_per_s, lightning_per_s = statistics.median(plain), statistics.median(lightning)
    return {"plain_per_s": plain_per_s, "lightning_per_s": lightning_per_s, "ratio": lightning_per_s / plain_per_s}


def describe(cfg: DictConfig, result: dict[str, float], steps: int, warmup: int, repeats: int) -> str:
    ratio = result["ratio"]
    verdict = "ok" if ratio >= 0.95 else "LIGHTNING MORE THAN 5% SLOWER"
    return (
        f"plain     {result['plain_per_s']:9.1f} img/s\n"
        f"lightning {result['lightning_per_s']:9.1f} img/s\n"
        f"ratio     {ratio:9.3f}  lightning / plain ({verdict}: want >= 0.95)\n"
        f"settings: net {cfg.model.net._target_.rsplit('.', 1)[-1]} {cfg.model.image_size}px, "
        f"batch {cfg.dataset.batch_size}, masking {cfg.masking._target_.rsplit('.', 1)[-1]}, "
        f"{steps} steps after {warmup} warm-up, median of {repeats}, device {device_of(cfg.trainer)}, "
        f"precision {cfg.trainer.precision}, channels_last {cfg.model.get('channels_last', False)}, "
        f"compile {cfg.model.get('compile', False)}, {torch.get_num_threads()} CPU threads"
    )


@hydra.main(version_base="1.3", config_path=".", config_name="overhead")  # scripts/overhead.yaml
def main(cfg: DictConfig) -> float:
    torch.set_float32_matmul_precision("high")
    settings = cfg.overhead
    result = measure(cfg, settings.steps, settings.warmup, settings.repeats)
    print(describe(cfg, result, settings.steps, settings.warmup, settings.repeats))
    return result["ratio"]


if __name__ == "__main__":
    main()
