"""How fast does predict score? Images per second through predict's own pipeline, no file written.

`python -m anomaly_lab.tools.bench_predict ckpt_path=... input=... [backend=onnxruntime] [batch_size=8]
[threads=2] [stack_passes=true] [repeats=3] [warmup=1]` (`make bench-predict CKPT=... [INPUT=...] [ARGS=...]`):
any predict setting (anomaly_lab/conf/predict.yaml) plus `repeats` and `warmup`. The inputs go through predict's
scoring as predict runs it (decode, prepare, batches across files on the chosen backend, anomaly maps brought to
each input's size), first `warmup` times untimed over the first batch of files, then `repeats` times over all of
them, timed; heatmaps, masks and tables are not drawn or written. Printed: a markdown table header and one row
with the settings, the machine, the load average when it started (the numbers of a shared CPU are lower), and
- img/s: images / the median seconds of a whole pass (decoding, preparing, scoring, maps at the input size);
- forward img/s: images / the median seconds spent in the backend's forward passes alone.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from anomaly_lab.cli import user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import ConfigError, UserError
from anomaly_lab.predict import (
    Scorer,
    Skipped,
    checked_settings,
    find_inputs,
    load_predict_model,
    make_scorer,
    score_stream,
    torch_threads,
)
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.tools.benchmark import machine_description

log = logging.getLogger(__name__)
BENCH_KEYS = {"repeats": 3, "warmup": 1}  # this tool's own settings and their defaults; the rest are predict's
COLUMNS = [
    "checkpoint",
    "px",
    "passes",
    "backend",
    "batch",
    "threads",
    "stack passes",
    "images",
    "repeats",
    "img/s",
    "forward img/s",
    "load",
    "machine",
]


class TimedScorer:
    """A scorer that adds up the seconds its calls take."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.seconds = 0.0

    def __call__(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        result = self.scorer(units)
        self.seconds += time.perf_counter() - start
        return result


def one_pass(
    files: list[Path], preprocessing: Preprocessing, scorer: Scorer, batch_size: int, max_pixels: int | None
) -> tuple[int, float, float]:
    """Score files as predict does, writing nothing: (images scored, seconds in all, seconds in the forward)."""
    timed = TimedScorer(scorer)
    start = time.perf_counter()
    stream = score_stream(files, preprocessing, timed, batch_size, max_pixels)
    images = sum(1 for result in stream if not isinstance(result, Skipped))
    return images, time.perf_counter() - start, timed.seconds


def split_args(argv: list[str]) -> tuple[dict[str, int], list[str]]:
    """This tool's settings (repeats, warmup) and the predict overrides among key=value arguments."""
    bench = dict(BENCH_KEYS)
    overrides = []
    for arg in argv:
        key, equals, value = arg.partition("=")
        if not equals or key not in bench:
            overrides.append(arg)
            continue
        least = 1 if key == "repeats" else 0
        if not value.isdigit() or int(value) < least:
            raise ConfigError(f"{key}={value!r} is not valid: use a whole number >= {least}")
        bench[key] = int(value)
    return bench, overrides


def measure(cfg: DictConfig, repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """The throughput of predict's scoring with cfg's settings: the table row's values by column."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    settings = checked_settings(cfg)
    model = load_predict_model(settings)
    if settings.input is None:
        raise ConfigError("input is not set: pass input=<an image, a folder or a quoted glob>")
    files, _ = find_inputs(settings.input)
    with torch_threads(settings.threads):
        scorer, _ = make_scorer(settings, model)

        def timed_pass(some: list[Path]) -> tuple[int, float, float]:
            return one_pass(some, model.preprocessing, scorer, settings.batch_size, settings.max_image_pixels)

        if settings.threads is not None:
            threads = str(settings.threads)
        else:
            threads = f"default ({torch.get_num_threads()})" if settings.backend == "torch" else "default"
        for _ in range(warmup):
            timed_pass(files[: settings.batch_size])
        passes = [timed_pass(files) for _ in range(repeats)]
    images = passes[0][0]
    if images == 0:
        raise UserError(f"input {settings.input}: nothing scored: all {len(files)} inputs were skipped")
    backend = settings.backend
    if backend == "onnxruntime":
        import onnxruntime

        backend = f"onnxruntime {onnxruntime.__version__}"
    return {
        "checkpoint": settings.ckpt_path,
        "px": model.image_size if model.input_shape[0] == model.image_size else "x".join(map(str, model.input_shape)),
        "passes": int(sum(model.set_sizes)),
        "backend": backend,
        "batch": settings.batch_size,
        "threads": threads,
        "stack passes": "yes" if settings.stack_passes else "no",
        "images": images,
        "repeats": repeats,
        "img/s": images / statistics.median(seconds for _, seconds, _ in passes),
        "forward img/s": images / statistics.median(forward for _, _, forward in passes),
        "load": load,
        "machine": machine_description(),
    }


def markdown_row(values: list[str]) -> str:
    return "| " + " | ".join(value.replace("|", "/") for value in values) + " |"


def table(result: dict[str, Any]) -> str:
    """A markdown table header and the one row of result."""
    cells = []
    for column in COLUMNS:
        value = result[column]
        cells.append(f"{value:.2f}" if isinstance(value, float) else str(value))
    return "\n".join([markdown_row(COLUMNS), markdown_row(["---"] * len(COLUMNS)), markdown_row(cells)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    bench, overrides = split_args(sys.argv[1:] if argv is None else argv)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="predict", overrides=["progress=false", *overrides])
    result = measure(cfg, bench["repeats"], bench["warmup"])
    print(table(result), flush=True)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors_exit():
        main()
