"""The benchmark command: one tiny experiment end to end, a failed run as a row, missing data."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.tools.benchmark import COLUMNS, METRIC_COLUMNS, code_version, run_benchmark, table_row

REPO = Path(__file__).resolve().parents[1]

TINY_RUN = [
    "model.image_size=64",  # bottles_cpu's 64x64 grid needs 64 pixels
    "dataset.batch_size=4",
    "dataset.eval_batch_size=8",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
]


def compose_benchmark(overrides: list[str]):  # type: ignore[no-untyped-def]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="benchmark", overrides=overrides)


@pytest.mark.slow
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
    assert good[:3] == ["bottles_cpu", "64x64", "1 / 1"]  # epochs trained / planned
    cells = dict(zip(COLUMNS, good, strict=True))
    for title, key, _ in METRIC_COLUMNS:  # numbers, not n/a (the whole test set's: where the run reports it)
        assert re.fullmatch(r"-?\d+\.\d+" + ("|n/a" if "/all/" in key else ""), cells[title]), (title, good)
    assert good[-1].endswith("MiB")
    assert failed[0] == "no_such_experiment" and failed[1].startswith("failed")
    text = report.read_text()
    assert "| bottles_cpu | 64x64 | 1 / 1 |" in text and "Machine:" in text
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert f"at commit `{head.stdout.strip()}`" in text.splitlines()[2]  # the code the numbers came from
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


def test_a_row_says_how_many_of_its_planned_epochs_ran_and_what_stopped_it(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("model:\n  image_size: 128\n")

    def epochs(metrics: dict[str, object]) -> str:
        (tmp_path / "metrics.json").write_text(json.dumps(metrics))
        return dict(zip(COLUMNS, table_row("bottles_cpu_fast", tmp_path, 0), strict=True))["epochs trained / planned"]

    assert epochs({"epochs_trained": 40, "epochs_planned": 40, "stopped_early_by": None}) == "40 / 40"
    stopped = {"epochs_trained": 31, "epochs_planned": 40, "stopped_early_by": "max_time", "train/epochs": 31.0}
    assert epochs(stopped) == "31 / 40, stopped by max_time"
    assert epochs({"train/epochs": 40.0}) == "40"  # a run from before epochs_planned was recorded


def test_the_report_names_the_commit_and_uncommitted_changes(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        command = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    assert code_version(tmp_path) == "an unknown commit"  # not a checkout
    git("init", "-q")
    (tmp_path / "model.py").write_text("a = 1\n")
    git("add", "model.py")
    git("commit", "-q", "-m", "first")
    commit = git("rev-parse", "--short=12", "HEAD")
    (tmp_path / "notes.txt").write_text("untracked files are not the code\n")
    assert code_version(tmp_path) == f"commit `{commit}`"
    (tmp_path / "model.py").write_text("a = 2\n")
    assert code_version(tmp_path) == f"commit `{commit}` + uncommitted changes"
