"""Is scoring=auto no worse than a recipe's own scoring? Trained runs scored both ways, without training again.

For each run folder: its checkpoint scored with the recipe's scoring (threshold on validation, then the test), and
with the scoring scoring=auto chooses on the same validation split from the same weights (then the test, once).
Prints one markdown row per run (docs/benchmarks.md, "Scoring chosen on validation").

    python scripts/auto_scoring_table.py outputs/benchmark/<date>/bottles_cpu ...
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.scoring_choice import MapRule, ScoringSearch, apply_validation_choice, choose_on_validation
from anomaly_lab.tools.rescoring import rescore, run_working_directory

HEADER = (
    "| run | recipe's scoring: val image AUROC | test image AUROC | test pixel AUROC | scoring=auto chose | "
    "val image AUROC | test image AUROC | test pixel AUROC |\n|---|---|---|---|---|---|---|---|"
)


def auto_search(seed: int) -> ScoringSearch:
    """The candidates of conf/scoring/auto.yaml."""
    node = OmegaConf.load(Path(CONFIG_DIR) / "scoring" / "auto.yaml").choose
    node.seed = seed
    search: ScoringSearch = instantiate(node)
    return search


def row(folder: Path, options: list[str]) -> str:
    before = rescore(folder, options)
    module, trainer = before.module, before.trainer
    search = auto_search(int(before.cfg.seed))
    with run_working_directory(folder.resolve()):
        datamodule = instantiate(before.cfg.dataset, preprocessing=module.model.preprocessing)
        datamodule.setup("fit")
        recipe_map = MapRule.of(instantiate(before.cfg.scoring.anomaly_map))  # the recipe's, not a stored choice
        chosen = choose_on_validation(module.model, datamodule.val_dataloader(), search, recipe_map=recipe_map)
        choice = chosen.choice
        apply_validation_choice(module.model, chosen, module.threshold_rule)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            trainer.test(module, datamodule=datamodule, verbose=False)
    after = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    def cell(metrics: dict[str, float], key: str) -> str:
        return f"{metrics[key]:.3f}" if key in metrics else "-"

    rule = choice.score_rule
    pooling = f"top {rule.topk_fraction:g}" if rule.reduce == "topk" else rule.reduce
    chose = (
        f"{pooling} of {rule.score_map} sigma {rule.score_blur_sigma:g}{' normalised' if rule.normalise else ''}; "
        f"map {choice.map_rule.map} sigma {choice.map_rule.blur_sigma:g}"
    )
    recipe = before.test_metrics
    return (
        f"| {folder.name} | {cell(before.val_metrics, 'val/image_auroc')} | {cell(recipe, 'test/image_auroc')} "
        f"| {cell(recipe, 'test/pixel_auroc')} | {chose} | {choice.image_table[0]['image_auroc']:.3f} "
        f"| {cell(after, 'test/image_auroc')} | {cell(after, 'test/pixel_auroc')} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with checkpoints/best.ckpt)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        help="a key=value the runs are scored with (e.g. dataset.validation_anomalies.placement=part); repeatable",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(HEADER)
    for folder in args.runs:
        print(row(folder, args.option), flush=True)


if __name__ == "__main__":
    main()
