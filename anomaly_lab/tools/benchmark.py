"""Benchmark: train and test a list of experiments on MVTec AD bottle and write one markdown table.

Each experiment runs `python -m anomaly_lab.train experiment=<name>` in its own process (a failed run
becomes a row saying so, peak memory is that process's own); the table is built from each run's
metrics.json and resolved config. The report names the commit it ran at (and whether the working tree held
uncommitted changes), and each row the epochs trained of those planned: a row is the recipe's model only when
they agree (a time cap or another stop names itself there).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from anomaly_lab.configs import CONFIG_DIR

log = logging.getLogger(__name__)

# In the report file (docs/benchmarks.md), what follows this marker is written by hand and kept on a rerun.
KEEP_MARKER = "<!-- Not generated: make benchmark keeps everything below this line. -->"
# (column title, metrics.json key, format)
METRIC_COLUMNS = [
    ("image AUROC", "test/image_auroc", "{:.3f}"),
    ("pixel AUROC", "test/pixel_auroc", "{:.3f}"),
    ("AUPRO", "test/aupro", "{:.3f}"),
    ("pixel AUROC, model res.", "test/pixel_auroc_model_res", "{:.3f}"),
    ("AUPRO, model res.", "test/aupro_model_res", "{:.3f}"),
    ("F1-max", "test/f1_max", "{:.3f}"),
    ("F1 at threshold", "test/f1", "{:.3f}"),  # the threshold the checkpoint ships with (chosen on validation)
    ("recall at threshold", "test/recall", "{:.3f}"),
    ("norm. Wasserstein", "test/wasserstein_normalised", "{:.2f}"),
    ("whole test set: image AUROC", "test/all/image_auroc", "{:.3f}"),
    ("whole test set: pixel AUROC", "test/all/pixel_auroc", "{:.3f}"),
]
COLUMNS = [
    "config",
    "resolution",
    "epochs trained / planned",
    *(title for title, _, _ in METRIC_COLUMNS),
    "train time",
    "train img/s",
    "test img/s",
    "peak memory",
]


def machine_description() -> str:
    """CPU model and cores, GPU if any, torch version: where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores, {gpu}; torch {torch.__version__}, Python {platform.python_version()}"


REPO = Path(__file__).resolve().parents[2]  # the checkout this module runs from


def code_version(repo: Path = REPO) -> str:
    """The commit the code ran at, e.g. `1a2b3c4d5e6f`, with "+ uncommitted changes" when tracked files differ from
    it; "an unknown commit" outside a git checkout."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except OSError:  # no git
        return "an unknown commit"
    if head.returncode != 0:
        return "an unknown commit"
    dirty = " + uncommitted changes" if changed.returncode != 0 or changed.stdout.strip() else ""
    return f"commit `{head.stdout.strip()}`{dirty}"


def epochs_cell(metrics: dict[str, Any]) -> str:
    """`40 / 40`; `31 / 40, stopped by max_time` for a run stopped before its planned epochs; a metrics.json from
    before these were recorded: the epochs trained only."""
    trained = metrics.get("epochs_trained", metrics.get("train/epochs"))
    if trained is None:
        return "n/a"
    planned = metrics.get("epochs_planned")
    cell = f"{trained:.0f}" if planned is None else f"{trained:.0f} / {planned}"
    stopped_by = metrics.get("stopped_early_by")
    return f"{cell}, stopped by {stopped_by}" if stopped_by else cell


def log_path(run_dir: Path) -> Path:
    """Where a benchmark run's console output goes: beside its run folder, which must start empty."""
    return run_dir.with_name(f"{run_dir.name}.log")


def run_experiment(name: str, data_root: Path, overrides: list[str], run_dir: Path) -> tuple[int, float]:
    """Train + test one experiment in a child process; its output goes to <run_dir>.log beside the run folder."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "anomaly_lab.train",
        f"experiment={name}",
        f"dataset.root={data_root}",
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
        *overrides,
    ]
    log.info("%s: %s", name, " ".join(command[2:]))
    start = time.perf_counter()
    with log_path(run_dir).open("w") as out:
        returncode = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    return returncode, time.perf_counter() - start


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def table_row(name: str, run_dir: Path, returncode: int) -> list[str]:
    """One table row from a run's metrics.json and resolved config; a failed run says where its log is."""
    metrics_file = run_dir / "metrics.json"
    config_file = run_dir / ".hydra" / "config.yaml"
    if returncode != 0 or not metrics_file.is_file() or not config_file.is_file():
        return [name, f"failed (exit {returncode}, see {log_path(run_dir)})", *[""] * (len(COLUMNS) - 2)]
    metrics: dict[str, Any] = json.loads(metrics_file.read_text())
    cfg = OmegaConf.load(config_file)
    size = cfg.model.image_size
    height = OmegaConf.select(cfg, "dataset.preprocessing.crop_height") or size  # a band of rows, else the square

    def value(key: str, fmt: str) -> str:
        number = metrics.get(key)
        return fmt.format(number) if number is not None and math.isfinite(number) else "n/a"

    return [
        name,
        f"{height}x{size}",
        epochs_cell(metrics),
        *(value(key, fmt) for _, key, fmt in METRIC_COLUMNS),
        _minutes(metrics["train/seconds"]) if "train/seconds" in metrics else "n/a",
        value("train/images_per_s", "{:.1f}"),
        value("test/images_per_s", "{:.1f}"),
        value("peak_memory_mb", "{:.0f} MiB"),
    ]


def markdown_row(values: Sequence[str]) -> str:
    """One line of a markdown table; a `|` in a value would split its cell, so it becomes `/`."""
    return "| " + " | ".join(value.replace("|", "/") for value in values) + " |"


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """The header, its rule and one line per row: the tables this project's commands and scripts print."""
    return "\n".join([markdown_row(columns), markdown_row(["---"] * len(columns)), *map(markdown_row, rows)])


def report(table: str, cfg: DictConfig, data_root: str, wall_seconds: float, version: str) -> str:
    """The generated page; `data_root` as the user gave it (a relative path stays relative: no machine's paths);
    `version`: the code's (code_version)."""
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    overrides = " ".join(cfg.overrides) or "none"
    return f"""# Benchmarks: MVTec AD bottle

Generated by `{cfg.command}` at {version} on {date} ({_minutes(wall_seconds)} in all).

- Machine: {machine_description()}
- Data: `{data_root}` (MVTec AD `bottle`); overrides on every run: {overrides}
- Test set: the anomalous test images not held out for validation (`dataset.val_anomalous`) and the
  good test images; the metrics are those of the checkpoint each experiment tests (`best.ckpt`: the
  last epoch for the `_cpu` recipes, the best `val/wasserstein` otherwise). "Whole test set": every
  image of `test/` (the anomalous ones validation took included), as published tables measure; reported
  only by runs that select no checkpoint on validation (the `_cpu` recipes), else n/a.
- Columns: epochs trained of those the recipe plans (`trainer.max_epochs`; a run stopped before them says by
  what, e.g. `max_time`, and is not the recipe's model); pixel AUROC and AUPRO (to FPR 0.3) are computed as
  the published tables do, with the anomaly map resized (bilinear) to each ground-truth mask's own
  resolution; "model res." is the map at the model's resolution against masks shrunk to it (nearest);
  F1 and recall at threshold are the test's at the image-score threshold the checkpoint ships with (chosen on
  validation by the recipe's threshold rule), against F1-max, the best any threshold could give on the test;
  norm. Wasserstein is the distance between normal and anomalous test-score distributions divided by
  their pooled standard deviation; train time is wall time of `fit` (validation included); test img/s is
  full-coverage masked scoring with metrics; peak memory is the GPU allocator's peak on a GPU, else the
  process's peak resident set size.

{table}
"""


def kept_part(path: Path) -> str:
    """What follows KEEP_MARKER in an existing report (measurements recorded by hand), to write back after
    the regenerated table; empty when there is none."""
    text = path.read_text() if path.is_file() else ""
    start = text.find(KEEP_MARKER)
    return "" if start < 0 else "\n" + text[start:]


def run_benchmark(cfg: DictConfig) -> list[list[str]]:
    """Run every experiment, write benchmarks.md (and cfg.report); the table's rows."""
    given_root = str(cfg.data_root)  # recorded in the report as given
    data_root = Path(given_root).resolve()
    if not (data_root / "train").is_dir():
        raise FileNotFoundError(
            f"benchmark: no MVTec AD category at {data_root} (expected train/, test/, ground_truth/); "
            f"pass data_root=/path/to/mvtec_bottle (or DATA=... to make benchmark)"
        )
    output_dir = Path(cfg.output_dir)
    version = code_version()  # before the runs: the code they run
    start = time.perf_counter()
    rows = []
    for name in cfg.experiments:
        run_dir = output_dir / name
        returncode, seconds = run_experiment(name, data_root, list(cfg.overrides), run_dir)
        rows.append(table_row(name, run_dir, returncode))
        log.info("%s finished in %s (exit %d)", name, _minutes(seconds), returncode)
    text = report(markdown_table(COLUMNS, rows), cfg, given_root, time.perf_counter() - start, version)
    (output_dir / "benchmarks.md").write_text(text)
    if cfg.report:
        Path(cfg.report).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.report).write_text(text + kept_part(Path(cfg.report)))
    print(text)
    return rows


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="benchmark")
def main(cfg: DictConfig) -> None:
    failed = [row[0] for row in run_benchmark(cfg) if row[1].startswith("failed")]
    if failed:
        raise SystemExit(f"benchmark: {len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
