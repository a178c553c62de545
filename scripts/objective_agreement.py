"""Does a sweep's validation objective rank trials as the real test anomalies do?

With no defect image, a sweep optimises separation on synthetic validation anomalies; whether that picks good
models is a measurement, not an assumption. Train the sweep with `validation_anomalies=both` and several
generators (`dataset.validation_anomalies.generator=[perlin,cutpaste]`): each trial then logs the objective on
each kind of validation anomaly (`val/real/wasserstein`, `val/synthetic_perlin/wasserstein`, ...) beside its
held-out test image AUROC. For each objective this prints the Spearman rank correlation with the test AUROC over
the complete trials and the test AUROC of the trial it picks. `--rescore OPTION ...` adds one more objective: each
trial's checkpoint scored again on the validation its own options plus these compose (e.g. `validation_anomalies=
synthetic "dataset.validation_anomalies.generator=[perlin,cutpaste]"`, a pool of synthetic kinds no trial logged).

    python scripts/objective_agreement.py outputs/sweeps/<study>/<date>   # or run folders, or --study
    python scripts/objective_agreement.py --study NAME --rescore validation_anomalies=synthetic
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import optuna
import torch
from hydra.utils import instantiate
from optuna.trial import TrialState
from scipy.stats import spearmanr

from anomaly_lab.checkpoint_loading import load_model
from anomaly_lab.metrics import wasserstein_separation
from anomaly_lab.tools.rescoring import compose_run

TEST_METRIC = "test/image_auroc"
RESCORED = "rescored/val/wasserstein"
# the objectives compared: validation separation over all anomalies and over each kind on its own
OBJECTIVE_PATTERN = re.compile(r"^(?:rescored/)?val/(?:[a-z0-9_]+/)?wasserstein$")


def load_runs(folders: Sequence[Path]) -> dict[str, dict[str, float]]:
    """metrics.json of each run folder (a sweep folder stands for its numbered trial folders), by folder."""
    runs = {}
    for folder in folders:
        paths = (
            [folder / "metrics.json"] if (folder / "metrics.json").is_file() else sorted(folder.glob("*/metrics.json"))
        )
        if not paths:
            raise FileNotFoundError(f"{folder}: no metrics.json in it or in its trial folders")
        for path in paths:
            metrics = json.loads(path.read_text())
            runs[str(path.parent)] = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    return runs


def rescored_objective(folder: Path, options: Sequence[str]) -> float:
    """The validation objective of a run's checkpoint, scored again on the validation that the run's own
    command-line options (.hydra/overrides.yaml, read as plain data: anomaly_lab.tools.rescoring.run_options)
    plus `options` compose, from this project's config files; the model is the checkpoint's (load_model). Nothing
    in the run folder chooses what is instantiated."""
    cfg = compose_run(folder, options)
    model = load_model(folder / "checkpoints" / "best.ckpt")
    datamodule = instantiate(cfg.dataset, preprocessing=model.preprocessing)
    datamodule.setup("fit")
    scores, labels = [], []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            scores.append(model(batch["image"])[1].double())  # (B,)
            labels.append(batch["label"])
    score, label = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    return wasserstein_separation(score[label == 0], score[label == 1], normalise=cfg.objective.normalise, signed=True)


def study_runs(storage: str, name: str) -> dict[str, dict[str, float]]:
    """The run folders of a stored study's complete trials (their output_dir attribute); a trial told a twin's
    value (a point drawn again) trained nothing of its own and is left out."""
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    folders = [Path(t.user_attrs.get("output_dir", "")) for t in trials if "duplicate_of" not in t.user_attrs]
    return load_runs([folder for folder in folders if (folder / "metrics.json").is_file()])


def agreement_rows(runs: dict[str, dict[str, float]]) -> list[dict[str, object]]:
    """One row per objective found in every run with a finite test AUROC."""
    tested = {name: m for name, m in runs.items() if math.isfinite(m.get(TEST_METRIC, math.nan))}
    if len(tested) < 3:
        raise ValueError(f"{len(tested)} runs have {TEST_METRIC}: a rank correlation needs at least 3")
    objectives = sorted(set.intersection(*({k for k in m if OBJECTIVE_PATTERN.match(k)} for m in tested.values())))
    test = [m[TEST_METRIC] for m in tested.values()]
    best_test = max(test)
    rows: list[dict[str, object]] = []
    for objective in objectives:
        values = [m[objective] for m in tested.values()]
        picked = max(range(len(values)), key=values.__getitem__)  # the highest objective (mode max)
        rho = float(spearmanr(values, test).statistic)
        rows.append(
            {
                "objective": objective,
                "trials": len(values),
                "spearman": rho,
                "picked": list(tested)[picked],
                "picked_test_auroc": test[picked],
                "best_test_auroc": best_test,
            }
        )
    return rows


def markdown(rows: Sequence[dict[str, object]]) -> str:
    lines = [
        f"| objective | trials | Spearman with {TEST_METRIC} | {TEST_METRIC} of its pick | best {TEST_METRIC} |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['objective']} | {row['trials']} | {row['spearman']:.2f} | {row['picked_test_auroc']:.3f} "
            f"({'/'.join(Path(str(row['picked'])).parts[-2:])}) | {row['best_test_auroc']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="a sweep folder or run folders")
    parser.add_argument("--study", help="a stored study's name instead of folders")
    parser.add_argument("--storage", default="sqlite:///outputs/sweeps/optuna.db")
    parser.add_argument("--rescore", nargs="+", metavar="OPTION", help="options composing another validation")
    args = parser.parse_args(argv)
    if bool(args.folders) == bool(args.study):
        parser.error("give a sweep folder (or run folders) or --study, not both")
    try:
        runs = study_runs(args.storage, args.study) if args.study else load_runs(args.folders)
        if args.rescore:
            print(f"{RESCORED}: {' '.join(args.rescore)}")
            for name, metrics in runs.items():
                metrics[RESCORED] = rescored_objective(Path(name), args.rescore)
        print(markdown(agreement_rows(runs)))
    except (FileNotFoundError, KeyError, ValueError) as error:  # a wrong folder or study: one line, exit 2
        parser.exit(2, f"objective_agreement: {error}\n")


if __name__ == "__main__":
    main()
