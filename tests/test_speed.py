"""Speed options (channels_last, torch.compile) run and keep results; the overhead measurement runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from anomaly_lab.train import build_module, run
from scripts.overhead import describe, draw_batches, lightning_loop, measure, plain_loop
from tests.conftest import ComposeFn


@pytest.mark.slow
def test_channels_last_runs_and_converts_net_and_inputs(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["model.channels_last=true", "trainer.fast_dev_run=true"])
    module = build_module(cfg)
    weight = module.model.net.stem[0].weight  # (C,3,3,3)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    images = torch.rand(2, 3, 32, 32)
    module.eval()
    maps, scores = module(images)
    plain = build_module(compose_tiny(["trainer.fast_dev_run=true"]))
    plain.load_state_dict(module.state_dict())  # the same parameter names either way
    plain.eval()
    plain_maps, plain_scores = plain(images)
    torch.testing.assert_close(plain_maps, maps, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain_scores, scores, rtol=1e-4, atol=1e-6)
    run(cfg)
    assert "train/loss" in json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


@pytest.mark.slow  # torch.compile on CPU builds C++ kernels: tens of seconds on two cores
def test_compile_runs_one_step(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["model.compile=true", "model.channels_last=true", "trainer.fast_dev_run=true"])
    assert "_orig_mod" not in "".join(build_module(cfg).state_dict())  # checkpoints load into a plain net
    run(cfg)
    assert "train/loss" in json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_speed_options_run(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(
        ["trainer=gpu", "model.channels_last=true", "model.compile=true", "trainer.fast_dev_run=true", "test=false"]
    )
    assert isinstance(run(cfg), float)


@pytest.mark.slow
def test_overhead_measures_both_loops(compose_tiny: ComposeFn) -> None:
    cfg = compose_tiny(["model=unet64", "masking=multiscale_grid", "masking.grid_sizes=[2,4]"])
    result = measure(cfg, steps=2, warmup=1, repeats=1)
    for key in ("plain_per_s", "lightning_per_s", "ratio"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    text = describe(cfg, result, steps=2, warmup=1, repeats=1)
    assert "ratio" in text and "2 steps after 1 warm-up" in text


@pytest.mark.slow
def test_overhead_loops_do_the_same_work(compose_tiny: ComposeFn) -> None:
    """Same initial weights, batches and masks: both loops end with the same parameters."""
    cfg = compose_tiny(["model=unet64", "masking=multiscale_grid", "masking.grid_sizes=[2,4]"])
    device = torch.device("cpu")
    L.seed_everything(0)
    batches = draw_batches(instantiate(cfg.dataset), 4, device)
    L.seed_everything(0)
    plain = build_module(cfg)
    plain_loop(plain, batches, 1, device, "32-true")
    L.seed_everything(0)
    lightning = build_module(cfg)
    lightning_loop(cfg, lightning, batches, 1)
    assert lightning.trainer.global_step == 4
    for a, b in zip(plain.model.net.parameters(), lightning.model.net.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_overhead_refuses_what_it_cannot_compare(compose_tiny: ComposeFn) -> None:
    with pytest.raises(ValueError, match="one device in one process"):
        measure(compose_tiny(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]), steps=1, warmup=1)
    with pytest.raises(ValueError, match="precision '16-mixed' is not supported"):
        measure(compose_tiny(["trainer.precision=16-mixed"]), steps=1, warmup=1, repeats=1)
