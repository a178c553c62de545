"""Fewer masked passes against quality: one trained run scored with other scoring masks, without training again.

For each variant (grid sizes, and the share of cells each scoring mask blanks): the run's weights scored with
those masks, the scoring chosen on validation as scoring=auto chooses it (with its pixel threshold), then the
test, read once; the checkpoint is saved for predict and `make bench-predict` (img/s). Prints one markdown row per
variant (docs/lab/2026-12-06-predict-speed.md).

    python scripts/speed_frontier.py outputs/benchmark/<date>/bottles_cpu_fast --save /tmp/frontier \
        --variants 16,32@0.25 16@0.25 16@0.5
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
from anomaly_lab.tools.benchmark import markdown_table
from anomaly_lab.tools.rescoring import rescore, run_working_directory

COLUMNS = ["grid sizes", "score ratio", "passes", "val image AUROC", "val pixel AUROC", "test image AUROC",
           "test pixel AUROC", "test AUPRO", "checkpoint"]  # fmt: skip


def variant_row(folder: Path, grids: str, ratio: str, save_to: Path) -> list[str]:
    """Score folder's run with the scoring masks of grids at ratio; choose on validation, test once, save."""
    rescored = rescore(folder, [f"masking.score_grid_sizes=[{grids}]", f"masking.score_ratio={ratio}"])
    module, trainer = rescored.module, rescored.trainer
    node = OmegaConf.load(Path(CONFIG_DIR) / "scoring" / "auto.yaml").choose  # scoring=auto's candidates
    node.seed = int(rescored.cfg.seed)
    search: ScoringSearch = instantiate(node)
    with run_working_directory(folder.resolve()):
        datamodule = instantiate(rescored.cfg.dataset, preprocessing=module.model.preprocessing)
        datamodule.setup("fit")
        recipe_map = MapRule.of(instantiate(rescored.cfg.scoring.anomaly_map))  # the recipe's, not a stored choice
        chosen = choose_on_validation(
            module.model, datamodule.val_dataloader(), search, module.pixel_threshold_rule, recipe_map
        )
        choice = chosen.choice
        assert module.spec is not None
        module.spec["model"].update(apply_validation_choice(module.model, chosen, module.threshold_rule))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            trainer.test(module, datamodule=datamodule, verbose=False)
    test = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
    checkpoint = save_to / f"grids-{grids.replace(',', '-')}-ratio-{ratio}.ckpt"
    trainer.save_checkpoint(checkpoint, weights_only=True)
    pixel = f"{choice.pixel_table[0]['pixel_auroc']:.4f}" if choice.pixel_table else "-"
    tested = [
        f"{test[key]:.4f}" if key in test else "-" for key in ("test/image_auroc", "test/pixel_auroc", "test/aupro")
    ]
    passes = str(module.model.masking.coverage_mask_count())
    return [grids, ratio, passes, f"{choice.image_table[0]['image_auroc']:.4f}", pixel, *tested, str(checkpoint)]


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (with checkpoints/best.ckpt)")
    parser.add_argument("--variants", nargs="+", required=True, help="grid sizes@score ratio, e.g. 16,32@0.25 16@0.5")
    parser.add_argument("--save", type=Path, required=True, help="a new folder for the checkpoints")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.save.mkdir(parents=True, exist_ok=False)  # nothing of an earlier frontier is overwritten
    rows = []
    for variant in args.variants:
        grids, _, ratio = variant.partition("@")
        rows.append(variant_row(args.run, grids, ratio or "null", args.save.resolve()))
    print(markdown_table(COLUMNS, rows))
    return rows


if __name__ == "__main__":
    main()
