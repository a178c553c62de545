"""How much quality do fewer masked passes cost, and how much speed do they buy?

Full-coverage scoring runs ceil(1/ratio) masked passes per grid size (16 for multiscale_grid's 4 sizes at ratio
0.25), so inference time is mostly the number of passes. For each set of grid sizes given, the run's checkpoint
is scored with `masking.score_grid_sizes` set to it (anomaly_lab.tools.rescoring: validation chooses the
threshold again, then the test), written as a checkpoint of its own, and timed through predict's own pipeline
on `--input` (anomaly_lab.tools.bench_predict). One markdown row per set: passes, test image AUROC, pixel AUROC
and AUPRO at the masks' resolution, F1 and recall at the threshold validation chose, img/s.

    python scripts/passes_table.py <run folder> --grids 8,16,32,64 16,32 16 \\
        --input ../shared/data/mvtec_bottle/test [--backend onnxruntime] [--threads 1] [--save DIR]

A faster model for a production line is one of these checkpoints (`--save DIR` keeps them: DIR/grids-16.ckpt,
...), or a training run with `masking.score_grid_sizes=[16]` from the start.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anomaly_lab.cli import user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import UserError
from anomaly_lab.predict import find_inputs
from anomaly_lab.tools.bench_predict import measure
from anomaly_lab.tools.benchmark import markdown_table
from anomaly_lab.tools.rescoring import compose_run, rescore

COLUMNS = [
    "score grid sizes",
    "passes",
    "image AUROC",
    "pixel AUROC",
    "AUPRO",
    "F1-max",
    "F1 at threshold",
    "recall at threshold",
    "img/s",
    "forward img/s",
]


def grid_sets(values: Sequence[str]) -> list[list[int]]:
    """'8,16,32,64' -> [8, 16, 32, 64], each a positive integer."""
    sets = []
    for value in values:
        try:
            grids = [int(part) for part in value.split(",")]
        except ValueError:
            raise UserError(f"--grids {value!r}: expected grid sizes separated by commas, e.g. 16,32") from None
        if not grids or min(grids) < 1:
            raise UserError(f"--grids {value!r}: grid sizes are positive integers")
        sets.append(grids)
    return sets


def check_grid_masked(folder: Path) -> None:
    """A one-line UserError unless the run was trained with grid masking (there are passes to leave out)."""
    if OmegaConf.select(compose_run(folder, []), "masking.grid_sizes") is None:
        raise UserError(f"{folder}: trained without grid masking (masking=none): no masked passes to leave out")


def passes_row(
    folder: Path, grids: list[int], input_path: str, predict_options: Sequence[str], save_to: Path
) -> dict[str, Any]:
    """One set of score grid sizes: the rescored run's test metrics and predict's throughput on its checkpoint."""
    rescored = rescore(folder, [f"masking.score_grid_sizes=[{','.join(map(str, grids))}]"])
    checkpoint = save_to / f"grids-{'-'.join(map(str, grids))}.ckpt"
    save_to.mkdir(parents=True, exist_ok=True)
    rescored.trainer.save_checkpoint(checkpoint, weights_only=True)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="predict",
            overrides=["progress=false", f"ckpt_path={checkpoint}", f"input={input_path}", *predict_options],
        )
    speed = measure(cfg)
    metrics = rescored.test_metrics
    return {
        "score grid sizes": ",".join(map(str, grids)),
        "passes": speed["passes"],
        "image AUROC": metrics.get("test/image_auroc", float("nan")),
        "pixel AUROC": metrics.get("test/pixel_auroc", float("nan")),
        "AUPRO": metrics.get("test/aupro", float("nan")),
        "F1-max": metrics.get("test/f1_max", float("nan")),
        "F1 at threshold": metrics.get("test/f1", float("nan")),
        "recall at threshold": metrics.get("test/recall", float("nan")),
        "img/s": speed["img/s"],
        "forward img/s": speed["forward img/s"],
        "_speed": speed,
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    def cell(value: Any, column: str) -> str:
        if isinstance(value, float):
            return f"{value:.1f}" if "img/s" in column else f"{value:.3f}"
        return str(value)

    return markdown_table(COLUMNS, ([cell(row[c], c) for c in COLUMNS] for row in rows))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder of python -m anomaly_lab.train (masking with a grid)")
    parser.add_argument("--grids", nargs="+", required=True, help="sets of grid sizes, e.g. 8,16,32,64 16")
    parser.add_argument("--input", required=True, help="images predict is timed on (a folder, file or glob)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=None, help="the backend's threads (default: its own)")
    parser.add_argument("--save", type=Path, help="keep the checkpoints here (a new folder), one per set")
    args = parser.parse_args(argv)
    sets = grid_sets(args.grids)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: a whole number >= 1 (or leave it out: the backend's default)")
    find_inputs(args.input)  # a missing input or one without images: one line now, not after the rescoring
    input_path = str(Path(args.input).resolve()) if Path(args.input).exists() else args.input
    if args.save is not None and args.save.exists():
        raise UserError(f"--save {args.save}: already exists; give a new folder (nothing is overwritten)")
    check_grid_masked(args.run)
    predict_options = [f"backend={args.backend}"] + ([f"threads={args.threads}"] if args.threads else [])
    with tempfile.TemporaryDirectory(prefix="anomaly_lab_passes_") as temporary:
        save_to = Path(temporary) if args.save is None else args.save.resolve()
        try:
            rows = [passes_row(args.run, grids, input_path, predict_options, save_to) for grids in sets]
        except BaseException:
            if args.save is not None and save_to.is_dir():  # the folder this run made: no half set left behind
                shutil.rmtree(save_to)
            raise
    speed = rows[0]["_speed"]
    print(
        f"run: {args.run}; predict: {speed['backend']}, threads {speed['threads']}, batch {speed['batch']}, "
        f"{speed['images']} images of {args.input}, load {speed['load']:.2f}; {speed['machine']}"
    )
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors_exit():
        main()
