"""What a stored Optuna sweep found: `python -m anomaly_lab.tools.sweep_report [study=NAME] [storage=URL] [out=DIR]`.

Reads the study from its storage (no run needs to be alive), prints every trial (params, objective,
state, epochs trained (for a pruned trial: the epoch it was stopped after), run time or time until it failed,
and why), the best parameters and the best trial's test metrics (measured on the held-out anomalies only,
from its metrics.json), and writes optimisation-history and parameter-importance plots.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import optuna
from hydra import compose, initialize_config_dir
from matplotlib.axes import Axes
from optuna.trial import FrozenTrial, TrialState

from anomaly_lab.cli import user_errors_exit
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import UserError
from anomaly_lab.results import validation_key

matplotlib.use("Agg")  # files only, no display


def pick_study(storage: str, name: str | None) -> optuna.Study:
    """The named study, or the only study in the storage; a clear error listing the names otherwise."""
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no sweep storage at {storage}; run `make sweep` first or pass storage=URL")
    names = sorted(summary.study_name for summary in optuna.get_all_study_summaries(storage))
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        found = f"no study {name!r}" if name is not None else f"{len(names)} studies"
        raise UserError(f"{found} in {storage}; pass study=NAME, one of {names}")
    return optuna.load_study(study_name=name, storage=storage)


def format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def state_label(trial: FrozenTrial) -> str:
    """The state; a trial told a twin's outcome names it (and says PRUNED for a pruned twin's), a collapsed run
    says so."""
    twin = trial.user_attrs.get("duplicate_of")
    if twin is not None:
        return f"= #{twin}" if trial.state == TrialState.COMPLETE else f"= #{twin} ({trial.state.name})"
    return f"{trial.state.name} (collapsed)" if "collapsed" in trial.user_attrs else trial.state.name


def epochs_label(trial: FrozenTrial) -> str:
    """The epochs the trial's run reported up to (step = epochs trained): for a PRUNED trial the epoch it was
    stopped after; `-` for a run that reported nothing (a sweep without a storage, or one from before reports)."""
    return "-" if trial.last_step is None else str(trial.last_step)


def trials_table(trials: Sequence[FrozenTrial]) -> str:
    """A fixed-width table: number, state, objective, the run's validation image AUROC (the chosen scoring's; a check
    on the objective), epochs trained (a pruned trial's: where it was stopped), run time of a complete or pruned trial,
    time until a failed one was failed (for a killed worker's trial that is when a later run noticed, not a run
    time), and one column per parameter."""
    params = sorted({name for trial in trials for name in trial.params})
    header = ["#", "state", "objective", "val AUROC", "epochs", "seconds", "failed after", *params]
    rows = [header]
    for trial in trials:
        seconds = round(trial.duration.total_seconds(), 1) if trial.duration is not None else None
        rows.append(
            [
                str(trial.number),
                state_label(trial),
                format_value(trial.value),
                format_value(validation_auroc(run_metrics(trained_trial(trial, trials)))),
                epochs_label(trial),
                format_value(seconds if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) else None),
                format_value(seconds if trial.state == TrialState.FAIL else None),
                *(format_value(trial.params.get(name)) for name in params),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def validation_auroc(metrics: dict[str, float]) -> float | None:
    """A run's validation image AUROC: the chosen scoring's under scoring=auto (what make tune ranks trials by)."""
    return metrics.get(validation_key(metrics, "val/image_auroc"))


def trained_trial(trial: FrozenTrial, trials: Sequence[FrozenTrial]) -> FrozenTrial:
    """The trial whose run gave `trial` its value: itself, or the twin a redrawn trial was told about."""
    twin = trial.user_attrs.get("duplicate_of")
    return trial if twin is None else next(t for t in trials if t.number == twin)


def run_metrics(trial: FrozenTrial) -> dict[str, float]:
    """The metrics.json of a trial's run (empty when it has none: failed early, or told a twin's value)."""
    output_dir = trial.user_attrs.get("output_dir")
    path = Path(str(output_dir)) / "metrics.json" if output_dir else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def best_test_metrics(trial: FrozenTrial) -> dict[str, float]:
    """The test/* metrics of a trial's run."""
    return {name: value for name, value in sorted(run_metrics(trial).items()) if name.startswith("test/")}


def plot_param_importances(study: optuna.Study, axes: Axes) -> None:
    """Horizontal bars of optuna's mean-decrease-impurity importances (optuna 2.10's own importance plot
    needs matplotlib < 3.9, and its default fANOVA evaluator scikit-learn < 1.3)."""
    evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    names = list(importances)[::-1]
    axes.barh(names, [importances[name] for name in names])
    axes.set_xlabel("importance for the objective")
    axes.set_title("Hyperparameter importances")


def write_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimisation history and (with two or more distinct complete trials) parameter importances as PNGs; none
    before a trial completed (optuna plots complete trials only)."""
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    history = plot_optimization_history(study).figure
    written = {out_dir / "optimization_history.png": history}
    if len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        importance, axes = plt.subplots(figsize=(6, 3))
        plot_param_importances(study, axes)
        written[out_dir / "param_importances.png"] = importance
    for path, figure in written.items():
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return list(written)


def report(study: optuna.Study, out_dir: Path) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(trial.state for trial in trials)
    states = ", ".join(f"{n} {state.name.lower()}" for state, n in sorted(counts.items(), key=lambda kv: kv[0].value))
    lines = [f"study {study.study_name}: {len(trials)} trials ({states or 'none yet'})", trials_table(trials)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if complete:
        best = trained_trial(study.best_trial, trials)
        lines.append(f"best trial {best.number}: objective {best.value:.6g}")
        lines += [f"  {name} = {value}" for name, value in sorted(best.params.items())]
        test = best_test_metrics(best)
        if test:
            lines.append("its test metrics (held-out anomalies, never used by the search):")
            lines += [f"  {name} = {value:.4f}" for name, value in test.items() if math.isfinite(value)]
    else:
        lines.append("no complete trial yet")
    lines += trial_notes(trials)
    lines += [f"wrote {path}" for path in write_plots(study, out_dir)]
    return "\n".join(lines)


def trial_notes(trials: Sequence[FrozenTrial]) -> list[str]:
    """Why each failed trial failed (its error, or why a later run failed it), after which epoch and with which
    report each pruned trial was stopped, and why a collapsed run collapsed."""
    notes = []
    for trial in trials:
        attrs = trial.user_attrs
        if trial.state == TrialState.FAIL:
            reason = attrs.get("error") or attrs.get("failed_because") or "no reason recorded"
            notes.append(f"trial {trial.number} failed: {reason}")
        if trial.state == TrialState.PRUNED and "duplicate_of" not in attrs:
            settings = attrs.get("pruner")
            pruner = str(settings.get("_target_") if isinstance(settings, dict) else "the pruner").rpartition(".")[2]
            notes.append(
                f"trial {trial.number} pruned after epoch {epochs_label(trial)} by {pruner}: objective so far "
                f"{format_value(trial.value)}"
            )
        if "collapsed" in attrs:
            notes.append(f"trial {trial.number} collapsed: {attrs['collapsed']}")
    return notes


def main(argv: Sequence[str] | None = None) -> None:
    """key=value settings of conf/sweep_report.yaml, as every other command of the package takes them."""
    args = list(sys.argv[1:] if argv is None else argv)
    flags = [arg for arg in args if arg.startswith("-")]
    if flags:
        raise UserError(f"{flags[0]}: the settings are key=value: [study=NAME] [storage=URL] [out=DIR]")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="sweep_report", overrides=args)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # 2.10's plots are "experimental"
    study = pick_study(str(cfg.storage), None if cfg.study is None else str(cfg.study))
    print(report(study, Path(str(cfg.out)) if cfg.out else Path("outputs") / "sweeps" / study.study_name))


if __name__ == "__main__":
    with user_errors_exit():
        main()
