"""The benchmark command: one tiny experiment end to end, a failed run as a row, missing data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.tools.benchmark import COLUMNS, METRIC_COLUMNS, run_benchmark, table_row

TINY_RUN = [
    "model.image_size=64",  # bottles_cpu's 64x64 grid needs 64 pixels
    "dataset.batch_size=4",
    "dataset.eval_batch_size=8",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.max_time=null",
]


def compose_benchmark(overrides: list[str]):  # type: ignore[no-untyped-def]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="benchmark", overrides=overrides)


def test_benchmark_writes_a_row_of_numbers_and_marks_a_failed_run(tiny_bottles_root: Path, tmp_path: Path) -> None:
    report = tmp_path / "docs" / "benchmarks.md"
    cfg = compose_benchmark(
        [
            f"data_root={tiny_bottles_root}",
            "experiments=[bottles_cpu,no_such_experiment]",
            "overrides=[" + ",".join(f"'{o}'" for o in TINY_RUN) + "]",
            f"output_dir={tmp_path / 'bench'}",
            f"report={report}",
        ]
    )
    rows = run_benchmark(cfg)

    good, failed = rows
    assert len(good) == len(COLUMNS)
    assert good[:3] == ["bottles_cpu", "64x64", "1"]
    cells = dict(zip(COLUMNS, good, strict=True))
    for title, key, _ in METRIC_COLUMNS:  # numbers, not n/a (the whole test set's: where the run reports it)
        assert re.fullmatch(r"-?\d+\.\d+" + ("|n/a" if "/all/" in key else ""), cells[title]), (title, good)
    assert good[-1].endswith("MiB")
    assert failed[0] == "no_such_experiment" and failed[1].startswith("failed")
    text = report.read_text()
    assert "| bottles_cpu | 64x64 | 1 |" in text and "Machine:" in text
    assert (tmp_path / "bench" / "benchmarks.md").read_text() == text


def test_benchmark_without_data_names_the_path(tmp_path: Path) -> None:
    cfg = compose_benchmark([f"data_root={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'bench'}"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_benchmark(cfg)


def test_benchmark_row_shows_both_pixel_protocols_and_the_whole_test_set(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("model:\n  image_size: 128\n")
    metrics = {key: 0.5 + i / 100 for i, (_, key, _) in enumerate(METRIC_COLUMNS)}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    cells = dict(zip(COLUMNS, table_row("bottles_cpu", tmp_path, 0), strict=True))
    assert [cells[title] for title, _, _ in METRIC_COLUMNS] == [
        fmt.format(metrics[key]) for _, key, fmt in METRIC_COLUMNS
    ]
    assert {"test/pixel_auroc_model_res", "test/aupro_model_res", "test/all/image_auroc", "test/all/pixel_auroc"} <= {
        key for _, key, _ in METRIC_COLUMNS
    }
    del metrics["test/all/image_auroc"]  # a run that selected its checkpoint on validation: no whole-set figure
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert dict(zip(COLUMNS, table_row("x", tmp_path, 0), strict=True))["whole test set: image AUROC"] == "n/a"
