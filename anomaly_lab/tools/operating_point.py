"""Which threshold rule holds on images it was not chosen on?

An operator sees the threshold, not the AUROC. For each run and each threshold rule (the names of
anomaly_lab/conf/threshold/, e.g. f1 f1_midpoint percentile normal_sigma), the run's checkpoint is scored on its
validation and test sets (anomaly_lab.tools.rescoring), the rule chooses a threshold on validation, and the test
is measured at it: F1 against the test's own best F1 (F1-max, the most any threshold could give), recall,
precision and the counts. One markdown row per run and rule.

    python -m anomaly_lab.tools.operating_point <run folder> [<run folder> ...] --rules f1 f1_midpoint normal_sigma
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from anomaly_lab.cli import user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import UserError
from anomaly_lab.metrics import f1_max
from anomaly_lab.thresholds import AutoThreshold, metrics_at_threshold
from anomaly_lab.tools.bench_predict import markdown_row
from anomaly_lab.tools.rescoring import rescore

COLUMNS = [
    "run",
    "rule",
    "threshold",
    "test F1",
    "test F1-max",
    "F1-max - F1",
    "recall",
    "precision",
    "found / missed / false alarms",
]


def rule_named(name: str, real_anomalies: bool) -> Any:
    """The threshold rule of conf/threshold/<name>.yaml (this project's own option files only)."""
    if not (Path(CONFIG_DIR) / "threshold" / f"{name}.yaml").is_file():
        raise UserError(f"--rules {name}: no such threshold option (anomaly_lab/conf/threshold/{name}.yaml)")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"threshold={name}"])
    rule = instantiate(cfg.threshold)
    if isinstance(rule, AutoThreshold):
        rule.real_anomalies = real_anomalies
    return rule


def rule_rows(
    run: str,
    val_scores: np.ndarray,
    val_labels: np.ndarray,
    test_scores: np.ndarray,
    test_labels: np.ndarray,
    rules: Sequence[str],
    real_anomalies: bool,
) -> list[dict[str, Any]]:
    """Each rule's threshold on the validation scores, measured on the test scores."""
    best = f1_max(test_scores, test_labels)[0]
    rows = []
    for name in rules:
        threshold = rule_named(name, real_anomalies)(torch.from_numpy(val_scores), torch.from_numpy(val_labels))
        at = metrics_at_threshold(torch.from_numpy(test_scores), torch.from_numpy(test_labels), threshold)
        counts = f"{at['tp']:.0f} / {at['fn']:.0f} / {at['fp']:.0f} of {at['fp'] + at['tn']:.0f}"
        rows.append(
            {
                "run": run,
                "rule": name,
                "threshold": threshold,
                "test F1": at["f1"],
                "test F1-max": best,
                "F1-max - F1": best - at["f1"],
                "recall": at["recall"],
                "precision": at["precision"],
                "found / missed / false alarms": counts,
            }
        )
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [markdown_row(COLUMNS), markdown_row(["---"] * len(COLUMNS))]
    for row in rows:
        cells = [
            f"{row[c]:.4g}" if c == "threshold" else f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
            for c in COLUMNS
        ]
        lines.append(markdown_row(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of python -m anomaly_lab.train")
    parser.add_argument("--rules", nargs="+", default=["f1", "f1_midpoint", "percentile", "normal_sigma"])
    parser.add_argument("--options", nargs="*", default=[], help="options added to each run's own when rescoring")
    args = parser.parse_args(argv)
    rows = []
    for folder in args.runs:
        rescored = rescore(folder, args.options)
        real = rescored.validation_anomalies == "real"
        val, test = rescored.val, rescored.test
        if len(set(test.labels.tolist())) < 2:
            raise UserError(f"{folder}: its test set holds one class only; no F1 to measure")
        rows += rule_rows(str(folder), val.scores, val.labels, test.scores, test.labels, args.rules, real)
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors_exit():
        main()
