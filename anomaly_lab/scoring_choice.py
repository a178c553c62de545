"""Scoring chosen on validation at the end of training (scoring=auto), without retraining.

Which map, blur and pooling tell anomalies apart best differs by category: on a category nobody had tuned, the
bottle recipe's maps located the defects (test pixel AUROC 0.95) while its image score, the max of a blurred
MSGMS map, did not (0.62). Measuring a candidate needs only the trained net's inpaintings of the validation
images, computed once; every candidate is then arithmetic on those cached maps. Only validation is read here
(real anomalies where the data has some, synthetic ones otherwise): train.run tests once, after the choice.

Two choices, each on its own measure:
- the image score: pixel map, its blur, per-pixel normalisation against normal images, reduction (max, mean,
  top-k mean with its k), by validation image AUROC, ties by the normalised Wasserstein separation;
- the anomaly map (what predict draws): the recipe's own map, unless a pixel map and blur beats it on the data's
  own validation anomalies (masks) by more than `map_margin_sd` standard deviations of the difference over
  validation images resampled with replacement (a map's pixels are not independent samples, its images are).
  Synthetic anomalies choose no map (map_on_synthetic): on MVTec bottle and on generated sharks the map that found
  them best found the real defects far worse (test pixel AUROC 0.67 against 0.965, 0.835 against 0.973). Without
  masks: the image score's map and blur; a recipe whose map weighs several pixel maps: the best candidate.
Normal images are scored against statistics that leave themselves out (leave-one-out), so normalisation is not
flattered by the images its statistics came from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from anomaly_lab.masking import inpaint_full_coverage
from anomaly_lab.metrics import image_auroc, validation_rank, wasserstein_separation
from anomaly_lab.model import InpaintingModel
from anomaly_lab.registry import PIXEL_MAPS
from anomaly_lab.results import SYNTHETIC_DEFECT_PREFIX
from anomaly_lab.scoring import (
    REDUCTIONS,
    AnomalyMap,
    gaussian_blur,
    image_score,
    map_weights,
    mean_pixel_map,
)
from anomaly_lab.thresholds import PixelThreshold, ThresholdRule

# Why the anomaly map is what it is (scoring_choice.json, anomaly_map_against_recipe.reason)
REPLACED = "a candidate beat the recipe's map beyond the margin"
BEST = "the recipe's map is the best candidate"
SYNTHETIC = "synthetic anomalies choose no map"
UNMEASURED = "too few images to measure the lead's spread"
WITHIN = "the lead is within the margin"
STD_FLOOR = 0.1  # a pixel's std is at least this share of the mean std: a pixel constant on normals cannot explode


@dataclass(frozen=True)
class ScoreRule:
    """How the image score is made from the cached pixel maps."""

    score_map: str
    score_blur_sigma: float
    normalise: bool
    reduce: str
    topk_fraction: float


@dataclass(frozen=True)
class MapRule:
    """Which anomaly map predict draws."""

    map: str
    blur_sigma: float

    @classmethod
    def of(cls, anomaly_map: AnomalyMap) -> MapRule | None:
        """The rule of a configured anomaly map made of one pixel map; None for a weighted sum of several."""
        names = list(anomaly_map.weights)
        return cls(names[0], anomaly_map.blur_sigma) if len(names) == 1 else None


def pixel_auroc_of(pixel_table: list[dict[str, Any]], rule: MapRule) -> float | None:
    """The validation pixel AUROC of one (map, blur) in a table of pixel_candidates; None where it is not there."""
    return next((r["pixel_auroc"] for r in pixel_table if MapRule(r["map"], r["blur_sigma"]) == rule), None)


@dataclass
class ScoringChoice:
    map_rule: MapRule
    score_rule: ScoreRule
    image_table: list[dict[str, Any]]  # every image-score candidate, best first
    pixel_table: list[dict[str, Any]]  # every anomaly-map candidate, best first; empty without masks
    val_scores: torch.Tensor  # (N,) validation scores of the chosen rule (normal ones leave-one-out)
    normal_mean: torch.Tensor | None  # (1,1,H,W) statistics of the chosen score map, when it normalises
    normal_std: torch.Tensor | None
    # the recipe's map against the best candidate: their pixel AUROCs, the difference and its bootstrap standard
    # deviation, and whether the recipe's map was kept; empty without masks or without a one-map recipe map
    map_decision: dict[str, Any] = field(default_factory=dict)

    @property
    def map_pixel_auroc(self) -> float | None:
        """Validation pixel AUROC of the chosen anomaly map; None without validation masks."""
        return pixel_auroc_of(self.pixel_table, self.map_rule)

    def anomaly_map(self) -> AnomalyMap:
        """The chosen scoring as the model's AnomalyMap (normal statistics set)."""
        built = AnomalyMap(**self.anomaly_map_node())
        if self.normal_mean is not None and self.normal_std is not None:
            built.set_normal_statistics(self.normal_mean, self.normal_std)
        return built

    def anomaly_map_node(self) -> dict[str, Any]:
        """The keyword arguments of the chosen AnomalyMap: plain values, the checkpoint spec's node."""
        score = self.score_rule
        same_map = score.score_map == self.map_rule.map
        return {
            self.map_rule.map: 1.0,
            "blur_sigma": self.map_rule.blur_sigma,
            "score_blur_sigma": score.score_blur_sigma,
            "score_map": None if same_map else score.score_map,
            "score_normalise": score.normalise,
        }

    def summary(self) -> str:
        score, best = self.score_rule, self.image_table[0]
        pooling = f"top {score.topk_fraction:g} mean" if score.reduce == "topk" else score.reduce
        line = (
            f"image score: {pooling} of the {score.score_map} map blurred sigma {score.score_blur_sigma:g}"
            f"{', normalised per pixel' if score.normalise else ''} (val image AUROC {best['image_auroc']:.4f}, "
            f"wasserstein_normalised {best['wasserstein_normalised']:.3f}); anomaly map: {self.map_rule.map} "
            f"blurred sigma {self.map_rule.blur_sigma:g}"
        )
        decision = self.map_decision
        if decision:
            best, recipe, sd = decision["best"], decision["recipe"], decision["difference_sd"]
            lead = f"{decision['difference']:+.4f}" + ("" if sd is None else f" +- {sd:.4f}")
            candidate = f"the best candidate, {best['map']} sigma {best['blur_sigma']:g}, leads it by {lead}"
            why = {
                REPLACED: f"on {decision['on']} it leads the recipe's, {recipe['map']} sigma "
                f"{recipe['blur_sigma']:g}, by {lead}, beyond {decision['margin_sd']:g} sd",
                BEST: "the recipe's, the best candidate",
                SYNTHETIC: f"the recipe's: synthetic anomalies choose no map ({candidate} on them)",
                UNMEASURED: f"the recipe's, kept: {candidate}, too few images to measure its spread",
                WITHIN: f"the recipe's, kept: {candidate}, not beyond {decision['margin_sd']:g} sd",
            }[decision["reason"]]
            line += f" (val pixel AUROC {self.map_pixel_auroc:.4f}; {why})"
        elif self.pixel_table:
            line += f" (val pixel AUROC {self.pixel_table[0]['pixel_auroc']:.4f})"
        else:
            line += " (the image score's: no validation masks)"
        return line


class ScoringSearch:
    """The candidates scoring=auto measures on validation (`scoring.choose.*`).

    Sigmas are in pixels at `sigma_reference_size` px and scale with the model's image_size, so one list serves
    every size a search tries.
    """

    def __init__(
        self,
        maps: Sequence[str] = ("l2", "l1", "ssim", "msgms"),
        blur_sigmas: Sequence[float] = (0.0, 2.0, 4.0, 8.0, 12.0),
        score_blur_sigmas: Sequence[float] = (0.0, 2.0, 4.0, 8.0),
        reductions: Sequence[str] = ("max", "topk", "mean"),
        topk_fractions: Sequence[float] = (0.001, 0.01, 0.05),
        normalise: Sequence[bool] = (False, True),
        sigma_reference_size: int = 128,
        max_pixels: int = 2_000_000,
        map_margin_sd: float = 2.0,
        map_on_synthetic: bool = False,
        bootstrap_samples: int = 100,
        bootstrap_pixels: int = 100_000,
        seed: int = 0,
    ) -> None:
        self.maps = list(map_weights({name: 1.0 for name in maps}))
        for key, values in (("blur_sigmas", blur_sigmas), ("score_blur_sigmas", score_blur_sigmas)):
            if not values or any(isinstance(v, bool) or not math.isfinite(float(v)) or v < 0 for v in values):
                raise ValueError(f"scoring.choose.{key}={list(values)}: expected numbers >= 0")
        unknown = sorted(set(reductions) - set(REDUCTIONS))
        if not reductions or unknown:
            raise ValueError(f"scoring.choose.reductions={list(reductions)}: each one of {', '.join(REDUCTIONS)}")
        if "topk" in reductions and (not topk_fractions or any(not 0 < k <= 1 for k in topk_fractions)):
            raise ValueError(f"scoring.choose.topk_fractions={list(topk_fractions)}: expected numbers in (0, 1]")
        if not normalise or any(not isinstance(n, bool) for n in normalise):
            raise ValueError(f"scoring.choose.normalise={list(normalise)}: expected a list of true/false")
        if sigma_reference_size < 1 or max_pixels < 1:
            raise ValueError("scoring.choose.sigma_reference_size and max_pixels must be positive")
        if isinstance(map_margin_sd, bool) or not math.isfinite(float(map_margin_sd)) or map_margin_sd < 0:
            raise ValueError(f"scoring.choose.map_margin_sd={map_margin_sd!r}: expected a number >= 0")
        if not isinstance(map_on_synthetic, bool):
            raise ValueError(f"scoring.choose.map_on_synthetic={map_on_synthetic!r}: expected true or false")
        if bootstrap_samples < 2 or bootstrap_pixels < 1:
            raise ValueError("scoring.choose.bootstrap_samples must be >= 2 and bootstrap_pixels positive")
        self.blur_sigmas = [float(s) for s in blur_sigmas]
        self.score_blur_sigmas = [float(s) for s in score_blur_sigmas]
        self.reductions = list(reductions)
        self.topk_fractions = [float(k) for k in topk_fractions]
        self.normalise = list(normalise)
        self.sigma_reference_size = sigma_reference_size
        self.max_pixels = max_pixels
        self.map_margin_sd = float(map_margin_sd)
        self.map_on_synthetic = map_on_synthetic
        self.bootstrap_samples = bootstrap_samples
        self.bootstrap_pixels = bootstrap_pixels
        self.seed = seed

    def pooling_rules(self) -> list[tuple[str, float]]:
        """(reduce, topk_fraction) pairs; topk_fraction is unused (0.01) for max and mean."""
        rules: list[tuple[str, float]] = []
        for reduce in self.reductions:
            rules += [(reduce, k) for k in self.topk_fractions] if reduce == "topk" else [(reduce, 0.01)]
        return rules

    def choose(
        self,
        pixel_maps: dict[str, torch.Tensor],
        labels: torch.Tensor,
        masks: torch.Tensor,
        mask_known: torch.Tensor,
        image_size: int,
        recipe_map: MapRule | None = None,
        synthetic: torch.Tensor | None = None,
    ) -> ScoringChoice:
        """The best scoring on validation.

        pixel_maps: each candidate map's unblurred validation maps, name -> (N,1,H,W), averaged over the
        full-coverage inpaintings (and the recipe map's); labels (N,) 1 = anomalous; masks (N,1,H,W) bool;
        mask_known (N,) bool (False: an anomalous image whose true mask is unknown); recipe_map: the anomaly map the
        recipe configures (blur in pixels of image_size), kept unless a candidate beats it clearly on the data's own
        anomalies (on synthetic ones only with map_on_synthetic); None: the best; without masks the image score's
        map either way; synthetic (N,) bool: the anomalous images a generator made (None: none).
        """
        labels = labels.long()
        if not bool((labels == 0).any()) or not bool((labels == 1).any()):
            raise ValueError("scoring=auto needs normal and anomalous validation images")
        needed = {*self.maps, *([recipe_map.map] if recipe_map else [])}
        missing = sorted(needed - set(pixel_maps))
        if missing:
            raise ValueError(f"no validation maps for {', '.join(missing)}")
        scale = image_size / self.sigma_reference_size
        normal = labels == 0
        image_rows: list[tuple[ScoreRule, float, float, torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
        # leave-one-out statistics need at least 3 normal images; without them only the plain maps are tried
        normalise_options = [n for n in self.normalise if not n or int(normal.sum()) >= 3] or [False]
        for name, sigma in itertools.product(self.maps, self.score_blur_sigmas):
            blurred = gaussian_blur(pixel_maps[name].float(), sigma * scale)  # (N,1,H,W)
            for normalise in normalise_options:
                scored, mean, std = normalised(blurred, normal) if normalise else (blurred, None, None)
                for reduce, k in self.pooling_rules():
                    scores = image_score(scored, reduce, k).double()  # (N,)
                    auroc = image_auroc(scores, labels)
                    separation = wasserstein_separation(
                        scores[normal].numpy(), scores[~normal].numpy(), normalise=True, signed=True
                    )
                    rule = ScoreRule(name, sigma * scale, normalise, reduce, k)
                    image_rows.append((rule, auroc, separation, scores, mean, std))
        # best first; ties keep the order of the lists (plainer rules first): a reversed sort is stable too
        image_rows.sort(key=lambda row: validation_rank(row[1], row[2]), reverse=True)
        rule, _, _, val_scores, mean, std = image_rows[0]
        image_table = [
            {**asdict(r), "image_auroc": auroc, "wasserstein_normalised": sep} for r, auroc, sep, *_ in image_rows
        ]
        synthetic = torch.zeros_like(labels, dtype=torch.bool) if synthetic is None else synthetic.bool()
        real = (labels == 1) & mask_known.bool() & ~synthetic  # (N,) the data's own anomalies with masks
        measured_on = mask_known.bool() & ~synthetic if bool(real.any()) else mask_known.bool()  # (N,)
        pixel_table = self.pixel_candidates(pixel_maps, labels, masks, measured_on, scale, recipe_map)
        decision: dict[str, Any] = {}
        if not pixel_table:
            map_rule = MapRule(rule.score_map, rule.score_blur_sigma)
        elif recipe_map is None:
            map_rule = MapRule(pixel_table[0]["map"], pixel_table[0]["blur_sigma"])
        elif not bool(real.any()) and not self.map_on_synthetic:
            map_rule = recipe_map
            decision = self.decision(pixel_table, recipe_map, None, None, SYNTHETIC, "synthetic anomalies")
        else:
            on = "the data's own anomalies" if bool(real.any()) else "synthetic anomalies"
            map_rule, decision = self.against_recipe(
                pixel_table, recipe_map, pixel_maps, labels, masks, measured_on, on
            )
        return ScoringChoice(map_rule, rule, image_table, pixel_table, val_scores, mean, std, decision)

    def against_recipe(
        self,
        pixel_table: list[dict[str, Any]],
        recipe_map: MapRule,
        pixel_maps: dict[str, torch.Tensor],
        labels: torch.Tensor,
        masks: torch.Tensor,
        measured_on: torch.Tensor,
        on: str,
    ) -> tuple[MapRule, dict[str, Any]]:
        """The best candidate where its lead over the recipe's map exceeds map_margin_sd bootstrap standard
        deviations (both measured on the same pixels), else the recipe's map; and the figures of that decision."""
        best = MapRule(pixel_table[0]["map"], pixel_table[0]["blur_sigma"])
        if best == recipe_map:
            return recipe_map, self.decision(pixel_table, recipe_map, 0.0, 0.0, BEST, on)
        keep = (labels == 0) | ((labels == 1) & measured_on.bool())  # (N,)
        lead, sd = self.lead_and_sd(
            gaussian_blur(pixel_maps[best.map][keep].float(), best.blur_sigma),
            gaussian_blur(pixel_maps[recipe_map.map][keep].float(), recipe_map.blur_sigma),
            masks[keep].bool(),
        )
        replaced = sd is not None and lead > 0 and lead > self.map_margin_sd * sd
        reason = REPLACED if replaced else UNMEASURED if sd is None else WITHIN
        return (best if replaced else recipe_map), self.decision(pixel_table, recipe_map, lead, sd, reason, on)

    def decision(
        self,
        pixel_table: list[dict[str, Any]],
        recipe_map: MapRule,
        lead: float | None,
        sd: float | None,
        reason: str,
        on: str,
    ) -> dict[str, Any]:
        """The figures of the anomaly map's decision: lead, the best candidate's pixel AUROC minus the recipe map's
        on the bootstrap's pixels (None: the table's); sd None: not measured (synthetic anomalies choose no map, or
        too few resamples held both classes)."""
        best_row = pixel_table[0]
        recipe_auroc = pixel_auroc_of(pixel_table, recipe_map)
        assert recipe_auroc is not None  # pixel_candidates lists the recipe's map
        return {
            "recipe": {**asdict(recipe_map), "pixel_auroc": recipe_auroc},
            "best": {key: best_row[key] for key in ("map", "blur_sigma", "pixel_auroc")},
            "difference": best_row["pixel_auroc"] - recipe_auroc if lead is None else lead,
            "difference_sd": sd,
            "margin_sd": self.map_margin_sd,
            "on": on,
            "kept_recipe": reason != REPLACED,
            "reason": reason,
        }

    def lead_and_sd(
        self, better: torch.Tensor, recipe: torch.Tensor, truth: torch.Tensor
    ) -> tuple[float, float | None]:
        """Pixel AUROC(better) - pixel AUROC(recipe), and its standard deviation over the validation images
        resampled with replacement (the image is the unit: its pixels go together); None where fewer than two
        resamples hold both classes. Both on the same pixels: up to bootstrap_pixels / 2 anomalous and as many
        normal ones, each class drawn uniformly (AUROC does not depend on the classes' shares), so a small
        defect's pixels are in. better, recipe (n,1,H,W) maps; truth (n,1,H,W) bool."""
        generator = torch.Generator().manual_seed(self.seed)
        truth_flat = truth.flatten()  # (P,)
        picked = []
        for cls in (True, False):
            where = (truth_flat == cls).nonzero().squeeze(1)
            picked.append(where[torch.randperm(len(where), generator=generator)[: self.bootstrap_pixels // 2]])
        pixels = torch.cat(picked)  # (p,)
        a, b, labels = better.flatten()[pixels], recipe.flatten()[pixels], truth_flat[pixels]  # (p,)
        image = pixels // truth[0].numel()  # (p,) the validation image each pixel is of
        lead = image_auroc(a, labels) - image_auroc(b, labels)
        differences = []
        for _ in range(self.bootstrap_samples):
            copies = torch.bincount(torch.randint(len(truth), (len(truth),), generator=generator), minlength=len(truth))
            drawn = torch.arange(len(pixels)).repeat_interleave(copies[image])  # each pixel as often as its image
            if bool(labels[drawn].any()) and not bool(labels[drawn].all()):
                differences.append(image_auroc(a[drawn], labels[drawn]) - image_auroc(b[drawn], labels[drawn]))
        return lead, (float(torch.tensor(differences).std()) if len(differences) >= 2 else None)

    def pixel_candidates(
        self,
        pixel_maps: dict[str, torch.Tensor],
        labels: torch.Tensor,
        masks: torch.Tensor,
        mask_known: torch.Tensor,
        scale: float,
        recipe_map: MapRule | None = None,
    ) -> list[dict[str, Any]]:
        """Each (map, blur) by validation pixel AUROC, best first, the recipe's map among them: normal images and
        anomalous ones with known masks, at most max_pixels pixels drawn at random (seeded); [] when no anomalous
        image has a mask."""
        keep = (labels == 0) | ((labels == 1) & mask_known.bool())  # (N,)
        truth = masks[keep].bool().flatten()  # (P,)
        if not bool(truth.any()) or bool(truth.all()):
            return []
        generator = torch.Generator().manual_seed(self.seed)
        picked = torch.randperm(truth.numel(), generator=generator)[: self.max_pixels]  # (p,)
        candidates = [(name, sigma * scale) for name, sigma in itertools.product(self.maps, self.blur_sigmas)]
        if recipe_map is not None and (recipe_map.map, recipe_map.blur_sigma) not in candidates:
            candidates.append((recipe_map.map, recipe_map.blur_sigma))
        rows: list[dict[str, Any]] = []
        for name, sigma in candidates:
            values = gaussian_blur(pixel_maps[name][keep].float(), sigma).flatten()  # (P,)
            rows.append({"map": name, "blur_sigma": sigma, "pixel_auroc": image_auroc(values[picked], truth[picked])})
        rows.sort(key=lambda row: -round(row["pixel_auroc"], 9))
        return rows


def normalised(maps: torch.Tensor, normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel z-scores of maps (N,1,H,W) against the normal ones, each normal map against the others
    (leave-one-out); and the statistics of all normal maps, mean and floored std (1,1,H,W), for the model."""
    normal_maps = maps[normal].double()  # (n,1,H,W)
    count = len(normal_maps)
    total, squares = normal_maps.sum(dim=0, keepdim=True), (normal_maps**2).sum(dim=0, keepdim=True)  # (1,1,H,W)
    mean = total / count
    std = (squares / count - mean**2).clamp_min(0).sqrt()
    floor = max(STD_FLOOR * float(std.mean()), 1e-12)
    std = std.clamp_min(floor)
    out = (maps.double() - mean) / std  # (N,1,H,W): anomalous ones against every normal map
    loo_mean = (total - normal_maps) / (count - 1)  # (n,1,H,W)
    loo_std = ((squares - normal_maps**2) / (count - 1) - loo_mean**2).clamp_min(0).sqrt().clamp_min(floor)
    out[normal] = (normal_maps - loo_mean) / loo_std
    return out.float(), mean.float(), std.float()


@torch.no_grad()
def validation_maps(
    model: InpaintingModel, batches: Iterable[dict[str, Any]], names: Iterable[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each named pixel map of the model's full-coverage inpaintings of the batches (one pass of the net), on the
    CPU: maps name -> (N,1,H,W) unblurred, labels (N,), masks (N,1,H,W) bool, mask_known (N,) bool, synthetic
    (N,) bool (an anomaly a generator made: data.validation_anomalies)."""
    was_training = model.training
    model.eval()
    device = model.coverage_masks.device
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    labels, masks, known, synthetic = [], [], [], []
    try:
        mask_sets = model.coverage_masks.split(model.set_sizes)
        for batch in batches:
            images = batch["image"].to(device).contiguous(memory_format=model.memory_format)  # (B,3,H,W)
            recons = inpaint_full_coverage(model.net, images, model.masking, mask_sets)
            for name in names:
                maps[name].append(mean_pixel_map(PIXEL_MAPS[name], recons, images).cpu())
            labels.append(batch["label"].cpu())
            masks.append(batch["mask"].cpu() > 0.5)
            known.append(torch.as_tensor(batch["mask_known"]).cpu())
            synthetic.append(torch.tensor([str(d).startswith(SYNTHETIC_DEFECT_PREFIX) for d in batch["defect"]]))
    finally:
        model.train(was_training)
    return (
        {name: torch.cat(parts) for name, parts in maps.items()},
        torch.cat(labels),
        torch.cat(masks),
        torch.cat(known).bool(),
        torch.cat(synthetic).bool(),
    )


def apply_choice(model: InpaintingModel, choice: ScoringChoice) -> dict[str, Any]:
    """Set the chosen scoring on the model; return the model spec's changed entries (plain values)."""
    model.anomaly_map = choice.anomaly_map().to(model.coverage_masks.device)
    model.reduce = choice.score_rule.reduce
    model.topk_fraction = choice.score_rule.topk_fraction
    return {
        "anomaly_map": {"_target_": f"{AnomalyMap.__module__}.{AnomalyMap.__qualname__}", **choice.anomaly_map_node()},
        "reduce": choice.score_rule.reduce,
        "topk_fraction": choice.score_rule.topk_fraction,
    }


@dataclass(frozen=True)
class ValidationChoice:
    """The scoring chosen on validation with what its thresholds need: the validation labels (N,) and the pixel
    threshold (value, how it was chosen) on the chosen anomaly map, None without a pixel threshold rule."""

    choice: ScoringChoice
    labels: torch.Tensor
    pixel_threshold: tuple[float, str] | None


def choose_on_validation(
    model: InpaintingModel,
    batches: Iterable[dict[str, Any]],
    search: ScoringSearch,
    pixel_threshold_rule: PixelThreshold | None = None,
    recipe_map: MapRule | None = None,
) -> ValidationChoice:
    """The search's choice on the model's inpaintings of the validation batches, and the pixel threshold on the
    chosen anomaly map as predict draws it. recipe_map: the anomaly map the recipe configures (MapRule.of), kept
    unless a candidate beats it clearly. Reads the batches only (train.choose_scoring: process 0 alone)."""
    names = dict.fromkeys([*search.maps, *([recipe_map.map] if recipe_map else [])])
    maps, labels, masks, known, synthetic = validation_maps(model, batches, names)
    choice = search.choose(maps, labels, masks, known, model.image_size, recipe_map, synthetic)
    pixel = None
    if pixel_threshold_rule is not None:
        chosen_map = gaussian_blur(maps[choice.map_rule.map].float(), choice.map_rule.blur_sigma)  # (N,1,H,W)
        pixel = pixel_threshold_rule.fit(chosen_map, labels, masks, known)
    return ValidationChoice(choice, labels, pixel)


def apply_validation_choice(
    model: InpaintingModel, chosen: ValidationChoice, threshold_rule: ThresholdRule | None
) -> dict[str, Any]:
    """Set the chosen scoring on the model, its image threshold (threshold_rule on the chosen validation scores)
    and its pixel threshold; return the model spec's changed entries (apply_choice)."""
    changed = apply_choice(model, chosen.choice)
    if threshold_rule is not None:
        model.threshold.fill_(threshold_rule(chosen.choice.val_scores.double(), chosen.labels))
    if chosen.pixel_threshold is not None:
        model.pixel_threshold.fill_(chosen.pixel_threshold[0])
    return changed
