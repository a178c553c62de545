"""Which threshold rule holds on images it was not chosen on?

An operator sees the threshold, not the AUROC. For each run and each threshold rule (the names of
anomaly_lab/conf/threshold/, e.g. f1 f1_midpoint percentile normal_sigma), the run's checkpoint is scored on its
validation and test sets (anomaly_lab.tools.rescoring), the rule chooses a threshold on validation, and the test
is measured at it: F1 against the test's own best F1 (F1-max, the most any threshold could give), recall,
precision and the counts. One markdown row per run and rule.

    python scripts/operating_point.py <run folder> [<run folder> ...] --rules f1 f1_capped \\
        percentile:percentile=95 normal_sigma:sigmas=2

A rule is an option name, optionally with its settings after a colon (`name:key=value,key=value`); the table
shows each rule as given, so the settings used are on every row.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from anomaly_lab.cli import user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import ConfigError, UserError
from anomaly_lab.metrics import f1_max
from anomaly_lab.thresholds import AutoThreshold, metrics_at_threshold
from anomaly_lab.tools.benchmark import markdown_table
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


RULE_NAME = re.compile(r"^[a-z0-9_]+$")


def rule_config(spec: str) -> DictConfig:
    """The threshold node of `name` or `name:key=value,key=value` (conf/threshold/<name>.yaml and its settings;
    this project's own option files only), checked before any scoring: a ConfigError naming --rules."""
    name, _, settings = spec.partition(":")
    if not RULE_NAME.match(name) or not (Path(CONFIG_DIR) / "threshold" / f"{name}.yaml").is_file():
        options = ", ".join(sorted(p.stem for p in (Path(CONFIG_DIR) / "threshold").glob("*.yaml")))
        raise ConfigError(f"--rules {spec}: no threshold option {name!r}; one of {options}")
    overrides = [f"threshold.{setting}" for setting in settings.split(",") if setting]
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"threshold={name}", *overrides])
        instantiate(cfg.threshold)
    except Exception as error:  # a key the rule has not, or a value it refuses
        raise ConfigError(f"--rules {spec}: {str(error).splitlines()[0]}") from None
    return cfg.threshold


def rule_rows(
    run: str,
    val_scores: np.ndarray,
    val_labels: np.ndarray,
    test_scores: np.ndarray,
    test_labels: np.ndarray,
    rules: Sequence[str],
    real_anomalies: bool,
) -> list[dict[str, Any]]:
    """Each rule's threshold on the validation scores, measured on the test scores; a rule the validation set
    cannot serve (e.g. F1 without validation defects) gets a row saying why."""
    best = f1_max(test_scores, test_labels)[0]
    rows = []
    for spec in rules:
        rule = instantiate(rule_config(spec))
        if isinstance(rule, AutoThreshold):
            rule = rule.for_validation(real_anomalies)
        try:
            threshold = rule(torch.from_numpy(val_scores), torch.from_numpy(val_labels))
        except ValueError as error:
            rows.append(
                {"run": run, "rule": spec, "threshold": f"n/a: {str(error).split(' (')[0]}", "test F1-max": best}
            )
            continue
        at = metrics_at_threshold(torch.from_numpy(test_scores), torch.from_numpy(test_labels), threshold)
        counts = f"{at['tp']:.0f} / {at['fn']:.0f} / {at['fp']:.0f} of {at['fp'] + at['tn']:.0f}"
        rows.append(
            {
                "run": run,
                "rule": spec,
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
    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column, "")
        if isinstance(value, float):
            return f"{value:.4g}" if column == "threshold" else f"{value:.3f}"
        return str(value)

    return markdown_table(COLUMNS, ([cell(row, c) for c in COLUMNS] for row in rows))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of python -m anomaly_lab.train")
    parser.add_argument("--rules", nargs="+", default=["f1", "f1_midpoint", "percentile", "normal_sigma"])
    parser.add_argument("--options", nargs="*", default=[], help="options added to each run's own when rescoring")
    args = parser.parse_args(argv)
    for spec in args.rules:  # every rule checked before the (minutes long) rescoring
        rule_config(spec)
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
