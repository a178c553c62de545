"""How fast does predict score? Images per second through predict's own pipeline, no file written.

`python -m anomaly_lab.tools.bench_predict ckpt_path=... input=... [backend=onnxruntime | backends=all]
[batch_size=8] [threads=2] [workers=2] [stack_passes=true] [repeats=3] [warmup=1]` (`make bench-predict CKPT=...
[INPUT=...] [ARGS=...]`, which measures backends=all unless ARGS names a backend): any predict setting
(anomaly_lab/conf/predict.yaml) plus `repeats`, `warmup` and `backends` (a comma list of predict's backends, or
all: torch, onnxruntime, openvino; one not installed is left out, logged). The inputs go through predict's scoring
as predict runs it (decode, prepare, batches across files on the chosen backend, anomaly maps brought to each
input's size), first `warmup` times untimed over the first batch of files, then `repeats` times over all of them,
timed; heatmaps, masks and tables are not drawn or written. With several backends the timed passes take turns
(torch, onnxruntime, openvino, torch, ...), so every row's median comes from the same window of a shared machine.
Printed: a markdown table header and one row per backend with the settings, the machine, the load average when it
started (the numbers of a shared CPU are lower), and
- img/s: images / the median seconds of a whole pass (decoding, preparing, scoring, maps at the input size);
- forward img/s: images / the median seconds spent in the backend's forward passes alone ("-" with workers > 1:
  their forwards overlap);
- image AUROC: of the scores on the inputs, where their folders tell good from defective (an MVTec test folder,
  good/ and defect/ folders: anomaly_lab.report_page's rule), else "-".
"""

from __future__ import annotations

import importlib.util
import logging
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from anomaly_lab.cli import user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import ConfigError, UserError
from anomaly_lab.metrics import image_auroc
from anomaly_lab.predict import (
    BACKENDS,
    Scorer,
    Settings,
    Skipped,
    checked_settings,
    find_inputs,
    load_predict_model,
    make_scorer,
    score_stream,
    torch_threads,
)
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.report_page import folders_of, truth_from_folders
from anomaly_lab.tools.benchmark import machine_description, markdown_row

log = logging.getLogger(__name__)
BENCH_KEYS = {"repeats": 3, "warmup": 1}  # this tool's own settings and their defaults; the rest are predict's
BACKENDS_KEY = "backends"  # this tool's: several backends in one table (a comma list, or all)
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # a backend's package: not installed, left out
COLUMNS = [
    "checkpoint",
    "px",
    "passes",
    "backend",
    "batch",
    "threads",
    "workers",
    "stack passes",
    "images",
    "repeats",
    "img/s",
    "forward img/s",
    "image AUROC",
    "load",
    "machine",
]


class TimedScorer:
    """A scorer that adds up the seconds its calls take."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.seconds = 0.0
        self.adding = threading.Lock()  # predict's workers call it from several threads

    def __call__(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start = time.perf_counter()
        result = self.scorer(units)
        with self.adding:
            self.seconds += time.perf_counter() - start
        return result


def scored_pass(
    files: list[Path], preprocessing: Preprocessing, scorer: Scorer, settings: Settings
) -> tuple[dict[Path, float], float, float]:
    """Score files as predict does with settings (batch_size, max_image_pixels, workers), writing nothing: (score by
    scored file, seconds in all, seconds in the forward, added up over workers)."""
    timed = TimedScorer(scorer)
    start = time.perf_counter()
    stream = score_stream(files, preprocessing, timed, settings.batch_size, settings.max_image_pixels, settings.workers)
    scores = {result[0].path: result[0].score for result in stream if not isinstance(result, Skipped)}
    return scores, time.perf_counter() - start, timed.seconds


def split_args(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """This tool's settings (repeats, warmup, backends) and the predict overrides among key=value arguments."""
    bench: dict[str, Any] = dict(BENCH_KEYS)
    overrides = []
    for arg in argv:
        key, equals, value = arg.partition("=")
        if equals and key == BACKENDS_KEY:
            bench[key] = backends_setting(value)
            continue
        if not equals or key not in bench:
            overrides.append(arg)
            continue
        least = 1 if key == "repeats" else 0
        if not value.isdigit() or int(value) < least:
            raise ConfigError(f"{key}={value!r} is not valid: use a whole number >= {least}")
        bench[key] = int(value)
    if BACKENDS_KEY in bench and any(arg.startswith("backend=") for arg in overrides):
        raise ConfigError(f"backend= and {BACKENDS_KEY}= together: pass one (backends=all: {', '.join(BACKENDS)})")
    return bench, overrides


def backends_setting(value: str) -> list[str]:
    """backends=all or a comma list of predict's backends, as a list; ConfigError naming an unknown one."""
    names = list(BACKENDS) if value == "all" else [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise ConfigError(f"{BACKENDS_KEY}={value!r} is not valid: use all or a comma list of {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def installed(backends: list[str]) -> list[str]:
    """backends whose package is installed; each one left out is logged."""
    kept = []
    for backend in backends:
        module = MODULES.get(backend)
        if module is not None and importlib.util.find_spec(module) is None:
            log.warning("%s is not installed: left out of the table (pip install -e '.[%s]')", backend, module)
            continue
        kept.append(backend)
    return kept


def known_truth(files: list[Path], root: Path) -> dict[Path, int] | None:
    """Each file's truth (1 defective, 0 good) from its folders, when every file has one and both kinds occur."""
    truths = {path: truth_from_folders(folders_of(path, root)[1]) for path in files}
    if any(truth is None for truth in truths.values()) or len(set(truths.values())) < 2:
        return None
    return {path: int(truth) for path, truth in truths.items() if truth is not None}


@dataclass
class Bench:
    """One backend's scorer, ready to time, and its passes so far: (images, seconds, forward seconds)."""

    settings: Settings
    scorer: Scorer
    threads: str
    scores: dict[Path, float]
    passes: list[tuple[int, float, float]]


def backend_config(cfg: DictConfig, backend: str) -> DictConfig:
    """cfg with backend=backend (onnx= kept for onnxruntime only, stack_passes for torch only)."""
    config = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(config, dict)
    config.update(backend=backend)
    if backend != "onnxruntime":
        config.update(onnx=None)
    if backend != "torch":
        config.update(stack_passes=False)
    return OmegaConf.create(config)


def measure_backends(cfg: DictConfig, backends: list[str], repeats: int = 3, warmup: int = 1) -> list[dict[str, Any]]:
    """The throughput of predict's scoring with cfg's settings on each of backends, their timed passes taking
    turns: one table row's values by column per backend."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    every = [checked_settings(backend_config(cfg, backend)) for backend in backends]
    first = every[0]
    model = load_predict_model(first)
    if first.input is None:
        raise ConfigError("input is not set: pass input=<an image, a folder or a quoted glob>")
    files, root = find_inputs(first.input)
    benches = []
    with torch_threads(first.backend_threads):
        for settings in every:
            backend_model = model if settings.device == first.device else load_predict_model(settings)
            scorer, _ = make_scorer(settings, backend_model)
            if settings.threads is not None:
                threads = str(settings.threads)
            elif settings.backend_threads is not None and settings.backend != "openvino":
                threads = f"{settings.backend_threads} per worker"
            else:
                threads = f"default ({torch.get_num_threads()})" if settings.backend == "torch" else "default"
            benches.append(Bench(settings, scorer, threads, {}, []))
        for bench in benches:
            for _ in range(warmup):
                scored_pass(files[: first.batch_size], model.preprocessing, bench.scorer, first)
        for _ in range(repeats):
            for bench in benches:  # in turns: a change of load falls on every backend alike
                scores, seconds, forward = scored_pass(files, model.preprocessing, bench.scorer, first)
                bench.scores = scores
                bench.passes.append((len(scores), seconds, forward))
    images = benches[0].passes[0][0]
    if images == 0:
        raise UserError(f"input {first.input}: nothing scored: all {len(files)} inputs were skipped")
    truth = known_truth(list(benches[0].scores), root)
    return [row_values(bench, model, load, truth, repeats) for bench in benches]


def backend_label(backend: str) -> str:
    """The backend with its package's version (onnxruntime 1.32.0, openvino 2026.4.1)."""
    if backend == "onnxruntime":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    if backend == "openvino":
        import openvino

        return f"openvino {openvino.__version__.split('-')[0]}"
    return backend


def row_values(bench: Bench, model: Any, load: float, truth: dict[Path, int] | None, repeats: int) -> dict[str, Any]:
    """One table row: bench's settings and the medians of its passes."""
    settings, passes = bench.settings, bench.passes
    images = passes[0][0]
    auroc: float | str = "-"
    if truth is not None:
        paths = sorted(bench.scores)
        auroc = image_auroc(np.array([bench.scores[path] for path in paths]), np.array([truth[p] for p in paths]))
    return {
        "checkpoint": settings.ckpt_path,
        "px": model.image_size if model.input_shape[0] == model.image_size else "x".join(map(str, model.input_shape)),
        "passes": int(sum(model.set_sizes)),
        "backend": backend_label(settings.backend),
        "batch": settings.batch_size,
        "threads": bench.threads,
        "workers": settings.workers,
        "stack passes": "yes" if settings.stack_passes else "no",
        "images": images,
        "repeats": repeats,
        "img/s": images / statistics.median(seconds for _, seconds, _ in passes),
        # several workers' forwards overlap: their added-up seconds are not the forward's share of the wall time
        "forward img/s": images / statistics.median(forward for _, _, forward in passes)
        if settings.workers == 1
        else "-",
        "image AUROC": auroc,
        "load": load,
        "machine": machine_description(),
    }


def measure(cfg: DictConfig, repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """The throughput of predict's scoring with cfg's settings (its backend): the table row's values by column."""
    return measure_backends(cfg, [str(cfg.backend)], repeats, warmup)[0]


def cell(value: Any, column: str) -> str:
    if column == "image AUROC" and isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def table(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A markdown table header and one row per result."""
    rows = [results] if isinstance(results, dict) else results
    lines = [markdown_row(COLUMNS), markdown_row(["---"] * len(COLUMNS))]
    lines += [markdown_row([cell(result[column], column) for column in COLUMNS]) for result in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """One row (backend=..., predict's default torch) or, with backends=..., one row per installed backend."""
    bench, overrides = split_args(sys.argv[1:] if argv is None else argv)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="predict", overrides=["progress=false", *overrides])
    if BACKENDS_KEY not in bench:
        result = measure(cfg, bench["repeats"], bench["warmup"])
        print(table(result), flush=True)
        return result
    backends = installed(bench[BACKENDS_KEY])
    if not backends:
        raise ConfigError(f"{BACKENDS_KEY}: none of {', '.join(bench[BACKENDS_KEY])} is installed")
    results = measure_backends(cfg, backends, bench["repeats"], bench["warmup"])
    print(table(results), flush=True)
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors_exit():
        main()
