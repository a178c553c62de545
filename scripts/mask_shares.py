"""Do predict's masks mark what its verdicts say? A trained run's checkpoint, its scoring and pixel threshold chosen on
validation as training now does (scoring=auto where the run's recipe uses it, pixel_threshold_rule=auto), then
its test set read once: the share of images called anomalous whose mask is not empty, the share of good images
called normal whose mask is empty, and pixel F1 / IoU at the chosen pixel threshold against the best any threshold
gives (every test pixel at the model's resolution, pooled). Prints one markdown row (docs/benchmarks.md).

    .venv/bin/python scripts/mask_shares.py outputs/benchmark/<date>/bottles_cpu_fast [--image-threshold-rule ...]
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from anomaly_lab.metrics import PixelMetrics
from anomaly_lab.scoring import gaussian_blur
from anomaly_lab.scoring_choice import MapRule, apply_choice, validation_maps
from anomaly_lab.thresholds import AutoThreshold, PixelThreshold
from anomaly_lab.tools.rescoring import compose_run, rescored_module, run_options, run_working_directory

log = logging.getLogger("mask_shares")
HEADER = (
    "| run | scoring | pixel threshold (how) | called anomalous: mask not empty | called normal (good): mask empty "
    "| pixel F1 / IoU at it | best F1 (at) | best IoU |\n|---|---|---|---|---|---|---|---|"
)


def pooled_curves(metric: PixelMetrics) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel F1 and IoU at every bin edge of a PixelMetrics' histograms, and the edges.  # (K,) each"""
    normal, anomalous = metric.normal_hist.double(), metric.anomalous_hist.double()
    tp = anomalous.flip(0).cumsum(0).flip(0)
    fp = normal.flip(0).cumsum(0).flip(0)
    fn = anomalous.sum() - tp
    edges = torch.arange(len(normal), dtype=torch.float64) * float(metric.upper) / len(normal)
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn), edges


def row(folder: Path) -> str:
    folder = folder.resolve()
    run_options(folder)
    with run_working_directory(folder):
        cfg = compose_run(folder, [])
        module = rescored_module(folder, cfg, [], "best.ckpt")
        model = module.model.eval()
        datamodule = instantiate(cfg.dataset, preprocessing=model.preprocessing)
        datamodule.setup("fit")
        kind = str(getattr(datamodule, "validation_anomaly_kind", "real"))
        recipe_map = MapRule.of(instantiate(cfg.scoring.anomaly_map))  # the recipe's, not a stored choice
        maps, labels, masks, known, synthetic = validation_maps(
            model,
            datamodule.val_dataloader(),
            dict.fromkeys(["l2", "l1", "ssim", "msgms", *([recipe_map.map] if recipe_map else [])]),
        )
        if OmegaConf.select(cfg, "scoring.choose"):
            search = instantiate(cfg.scoring.choose)
            choice = search.choose(maps, labels, masks, known, model.image_size, recipe_map, synthetic)
            apply_choice(model, choice)
            chosen_map = gaussian_blur(maps[choice.map_rule.map].float(), choice.map_rule.blur_sigma)  # (N,1,H,W)
            val_scores = choice.val_scores.double()
            scoring = "auto"
        else:
            parts: list[tuple[torch.Tensor, torch.Tensor]] = []
            with torch.no_grad():
                for batch in datamodule.val_dataloader():
                    parts.append(model(batch["image"]))
            chosen_map = torch.cat([m for m, _ in parts])
            val_scores = torch.cat([s for _, s in parts]).double()
            scoring = "recipe's"
        rule = module.threshold_rule
        if isinstance(rule, AutoThreshold):
            rule = rule.for_validation(kind == "real")
        assert rule is not None
        threshold = rule(val_scores, labels)
        pixel_threshold, how = PixelThreshold().fit(chosen_map, labels, masks, known)
        datamodule.setup("test")
        called_anomalous = nonempty_of_called = called_normal_good = empty_of_good_normal = 0
        metric = PixelMetrics()
        tp = fp = fn = 0.0
        empty: list[str] = []
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for batch in datamodule.test_dataloader():
                test_maps, scores = model(batch["image"])  # (B,1,H,W), (B,)
                peak = test_maps.flatten(1).amax(dim=1)  # (B,)
                called = scores.double() >= threshold
                good = batch["label"] == 0
                called_anomalous += int(called.sum())
                nonempty_of_called += int((called & (peak >= pixel_threshold)).sum())
                for i in torch.nonzero(called & (peak < pixel_threshold)).flatten().tolist():
                    empty.append(
                        f"{batch['path'][i]} (label {int(batch['label'][i])}, score/threshold "
                        f"{float(scores[i]) / threshold:.2f}, map peak/pixel threshold "
                        f"{float(peak[i]) / pixel_threshold:.2f})"
                    )
                called_normal_good += int((~called & good).sum())
                empty_of_good_normal += int((~called & good & (peak < pixel_threshold)).sum())
                truth = batch["mask"] > 0.5
                metric.update(test_maps, truth)
                marked = test_maps >= pixel_threshold
                tp += float((marked & truth).sum())
                fp += float((marked & ~truth).sum())
                fn += float((~marked & truth).sum())
    f1, iou, edges = pooled_curves(metric)
    for line in empty:
        log.warning("called anomalous, empty mask: %s", line)
    best = int(torch.argmax(f1))
    return (
        f"| {folder.name} | {scoring} | {pixel_threshold:.4g} ({how}) "
        f"| {nonempty_of_called}/{called_anomalous} = {nonempty_of_called / max(called_anomalous, 1):.3f} "
        f"| {empty_of_good_normal}/{called_normal_good} = {empty_of_good_normal / max(called_normal_good, 1):.3f} "
        f"| {2 * tp / (2 * tp + fp + fn):.3f} / {tp / (tp + fp + fn):.3f} "
        f"| {float(f1[best]):.3f} ({float(edges[best]):.4g}) | {float(iou.max()):.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (with checkpoints/best.ckpt and .hydra/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(HEADER)
    for folder in args.runs:
        print(row(folder), flush=True)


if __name__ == "__main__":
    main()
