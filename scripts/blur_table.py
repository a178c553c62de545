"""Which blur should the anomaly map get, and which the image score? Chosen on validation, read on the test.

The anomaly map's Gaussian blur (`scoring.anomaly_map.blur_sigma`) trades two things: a wide blur fills the
interior of a large defect, which an inpainting error marks only at its edges (pixel AUROC rises), and it
flattens the peak of a small one (the image score, the map's max, falls). So the image score may pool a blur of
its own (`scoring.anomaly_map.score_blur_sigma`). Pixel metrics depend on the map's blur only and image metrics
on the score's only, so one rescoring per sigma (anomaly_lab.tools.rescoring: validation, then the test) gives
both columns; the map's sigma is the one with the best validation pixel AUROC (model resolution, masks of the
validation defects; ties to 3 decimals: AUPRO), the score's the one with the best validation image AUROC
(ties: F1-max); then the narrower blur. The test columns are read, never chosen on. --options rescore with
other settings too, e.g. another pixel map, so one table per map compares maps on validation:

    python scripts/blur_table.py <run folder> --sigmas 2 4 6 8 10 12 16
    python scripts/blur_table.py <run folder> --sigmas 4 8 --options scoring.anomaly_map.msgms=0 \
        scoring.anomaly_map.l2=1
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomaly_lab.cli import user_errors_exit
from anomaly_lab.errors import UserError
from anomaly_lab.tools.benchmark import markdown_table
from anomaly_lab.tools.rescoring import rescore

COLUMNS = [
    "sigma",
    "val pixel AUROC, model res.",
    "val AUPRO, model res.",
    "val image AUROC",
    "val F1-max",
    "test pixel AUROC",
    "test AUPRO",
    "test image AUROC",
]
METRICS = {
    "val pixel AUROC, model res.": "val/pixel_auroc_model_res",
    "val AUPRO, model res.": "val/aupro_model_res",
    "val image AUROC": "val/image_auroc",
    "val F1-max": "val/f1_max",
    "test pixel AUROC": "test/pixel_auroc",
    "test AUPRO": "test/aupro",
    "test image AUROC": "test/image_auroc",
}


def sigma_list(values: Sequence[str]) -> list[float]:
    sigmas = []
    for value in values:
        try:
            sigma = float(value)
        except ValueError:
            raise UserError(f"--sigmas {value!r}: expected a number >= 0 (0: no blur)") from None
        if not math.isfinite(sigma) or sigma < 0:
            raise UserError(f"--sigmas {value!r}: expected a number >= 0 (0: no blur)")
        sigmas.append(sigma)
    if len(set(sigmas)) != len(sigmas):
        raise UserError(f"--sigmas {' '.join(values)}: each sigma once")
    return sigmas


def sigma_row(folder: Path, sigma: float, checkpoint: str, options: Sequence[str] = ()) -> dict[str, Any]:
    blur = [f"scoring.anomaly_map.blur_sigma={sigma}", "scoring.anomaly_map.score_blur_sigma=null"]
    rescored = rescore(folder, [*options, *blur], checkpoint)
    metrics = rescored.val_metrics | rescored.test_metrics
    return {"sigma": sigma} | {column: metrics.get(key, math.nan) for column, key in METRICS.items()}


def chosen(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(map sigma, score sigma) by validation alone; NaN where validation cannot tell (no masks, one class)."""

    def best(key: tuple[str, ...]) -> float:
        usable = [row for row in rows if all(math.isfinite(row[k]) for k in key)]
        if not usable:
            return math.nan
        # equal to the table's 3 decimals: the next metric decides, then the narrower blur
        return max(usable, key=lambda row: (*(round(row[k], 3) for k in key), -row["sigma"]))["sigma"]

    map_sigma = best(("val pixel AUROC, model res.", "val AUPRO, model res."))
    return map_sigma, best(("val image AUROC", "val F1-max"))


def table(rows: Sequence[dict[str, Any]]) -> str:
    return markdown_table(COLUMNS, ([f"{row['sigma']:g}"] + [f"{row[c]:.3f}" for c in COLUMNS[1:]] for row in rows))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder of python -m anomaly_lab.train")
    parser.add_argument("--sigmas", nargs="+", required=True, help="Gaussian blur sigmas in pixels of the model")
    parser.add_argument("--checkpoint", default="best.ckpt", help="a file in the run's checkpoints/ folder")
    parser.add_argument("--options", nargs="*", default=[], help="options added to the run's own when rescoring")
    args = parser.parse_args(argv)
    sigmas = sigma_list(args.sigmas)
    if not (args.run / "checkpoints" / args.checkpoint).is_file():
        raise UserError(f"{args.run / 'checkpoints' / args.checkpoint}: no such checkpoint")
    if any(
        option.lstrip("+~").startswith(("scoring.anomaly_map.blur_sigma", "scoring.anomaly_map.score_blur_sigma"))
        for option in args.options
    ):
        raise UserError(f"--options {' '.join(args.options)}: the blurs are the table's rows; set them with --sigmas")
    rows = [sigma_row(args.run, sigma, args.checkpoint, args.options) for sigma in sigmas]
    map_sigma, score_sigma = chosen(rows)
    print(f"run: {args.run} ({args.checkpoint}){' with ' + ' '.join(args.options) if args.options else ''}")
    print(table(rows))
    choices = [
        f"scoring.anomaly_map.blur_sigma={map_sigma:g}"
        if math.isfinite(map_sigma)
        else "map blur: validation cannot choose it (no anomalous validation image with a mask)",
        f"scoring.anomaly_map.score_blur_sigma={score_sigma:g}"
        if math.isfinite(score_sigma)
        else "score blur: validation cannot choose it (no anomalous validation image)",
    ]
    print(f"chosen on validation: {' '.join(choices)}", flush=True)
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors_exit():
        main()
