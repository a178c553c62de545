"""Decision thresholds on image scores: a fixed number (the thesis), a percentile of normal scores, F1-optimal,
or auto (F1 on real validation anomalies, else the percentile).

A rule turns the validation scores into one number; the module keeps that number in a buffer so it
travels with the checkpoint and test predictions use the threshold chosen on validation, never on test.
A score >= threshold is called anomalous (the convention of `metrics.f1_max`).
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import torch
from torchmetrics.functional.classification import binary_f1_score, binary_precision, binary_recall

from anomaly_lab.errors import ConfigError, as_typed
from anomaly_lab.metrics import PixelMetrics, f1_max

log = logging.getLogger(__name__)


class ThresholdRule(Protocol):
    def __call__(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        """The threshold from validation scores (N,) and labels (N,) (0 normal, 1 anomalous)."""
        ...


class FixedThreshold:
    """A given value, whatever the scores (the thesis: 0.002 for notes, 0.005 for sharks, on mean L2).

    A value that is not a finite number is refused: NaN would call no image anomalous and leave every metric at
    the threshold undefined. A value at or below every validation score calls every image anomalous, one above
    them all none: legal (the scores of another model or scoring may differ), so it is only logged, once each time
    a validation puts it on the other side.
    """

    def __init__(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(
                f"threshold.value={as_typed(value)}: expected a finite number (an image score, e.g. 0.002)"
            )
        self.value = float(value)
        self.outside: str | None = None  # where the last validation's scores put the value: "below", "above", None

    def __call__(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        scores = torch.as_tensor(scores).flatten()  # (N,) compared in their own dtype, as metrics_at_threshold does
        outside = None
        if scores.numel() and bool(scores.min() >= self.value):
            outside = "below"
        elif scores.numel() and bool(scores.max() < self.value):
            outside = "above"
        if outside is not None and outside != self.outside:
            log.warning(
                "threshold.value=%s is %s every validation score (%.6g to %.6g): %s",
                as_typed(self.value),
                "at or below" if outside == "below" else "above",
                float(scores.min()),
                float(scores.max()),
                "every image is called anomalous" if outside == "below" else "no image is called anomalous",
            )
        self.outside = outside
        return self.value


class PercentileThreshold:
    """The q-th percentile of the normal validation scores (linear interpolation, as numpy's default).

    Needs no anomalous image: q=99 calls about 1% of normal images anomalous.
    """

    def __init__(self, percentile: float = 99.0) -> None:
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        self.percentile = float(percentile)

    def __call__(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        normal = torch.as_tensor(scores).flatten().double()[torch.as_tensor(labels).flatten() == 0]  # (N0,)
        if normal.numel() == 0:
            raise ValueError("threshold=percentile needs normal validation images (dataset.val_fraction > 0)")
        return float(torch.quantile(normal, self.percentile / 100.0))


class F1Threshold:
    """The threshold of best F1 on validation (needs normal and anomalous validation images).

    Every threshold between the lowest validation score called anomalous at best F1 and the next lower
    validation score gives that F1. position="edge" returns the first (the tightest fit to validation: any
    unseen defect scoring a little lower is missed); "midpoint" the middle of that gap, a margin on both sides.
    cap_percentile: never above that percentile of the normal validation scores. With few, well-separated
    validation anomalies best F1 is reached far above every normal score, and unseen defects scoring between
    the two are missed; the cap puts the threshold just above the normal tail instead (threshold=f1_capped).
    """

    def __init__(self, position: str = "edge", cap_percentile: float | None = None) -> None:
        if position not in ("edge", "midpoint"):
            raise ValueError(f"position={as_typed(position)}: choose edge or midpoint")
        self.position = position
        if cap_percentile is not None and (
            isinstance(cap_percentile, bool) or not isinstance(cap_percentile, int | float)
        ):
            raise ValueError(f"cap_percentile={as_typed(cap_percentile)}: expected a number in [0, 100] or null")
        self.cap = None if cap_percentile is None else PercentileThreshold(cap_percentile)

    def __call__(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        try:
            edge = f1_max(scores, labels)[1]
        except ValueError as error:
            raise ValueError(
                f"threshold=f1 needs normal and anomalous validation images ({error}); "
                f"set dataset.val_anomalous > 0 or use threshold=percentile"
            ) from error
        threshold = edge
        if self.position == "midpoint":  # halfway down to the highest score below the edge, if any
            below = torch.as_tensor(scores).flatten().double()  # (N,)
            below = below[below < edge]
            threshold = edge if below.numel() == 0 else (edge + float(below.max())) / 2.0
        return threshold if self.cap is None else min(threshold, self.cap(scores, labels))


class NormalSigmaThreshold:
    """Mean + `sigmas` standard deviations of the normal validation scores; needs no anomalous image. Unlike a
    high percentile of a few dozen normal images (about their maximum), it does not hinge on one image."""

    def __init__(self, sigmas: float = 3.0) -> None:
        if isinstance(sigmas, bool) or not isinstance(sigmas, int | float) or not math.isfinite(sigmas) or sigmas < 0:
            raise ValueError(f"sigmas={as_typed(sigmas)}: expected a number >= 0 (e.g. 3)")
        self.sigmas = float(sigmas)

    def __call__(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        normal = torch.as_tensor(scores).flatten().double()[torch.as_tensor(labels).flatten() == 0]  # (N0,)
        if normal.numel() < 2:
            raise ValueError("threshold=normal_sigma needs at least 2 normal validation images")
        return float(normal.mean() + self.sigmas * normal.std())


class AutoThreshold:
    """F1-optimal on real validation anomalies (with cap: never above the percentile of the normal validation
    scores), else that percentile: a threshold tuned on synthetic anomalies would fit their look, not the defects
    to come. `for_validation` is the rule for a validation set (train.run: from data.validation_anomalies); called
    as it is, the rule takes validation's anomalies for real."""

    def __init__(self, percentile: float = 99.0, position: str = "edge", cap: bool = True) -> None:
        self.f1 = F1Threshold(position, cap_percentile=percentile if cap else None)
        self.percentile = PercentileThreshold(percentile)

    def for_validation(self, real_anomalies: bool) -> ThresholdRule:
        """This rule where validation's anomalous images are real defects, else the percentile rule alone."""
        return self if real_anomalies else self.percentile

    def __call__(self, scores: torch.Tensor, labels: torch.Tensor) -> float:
        has_anomalies = bool((torch.as_tensor(labels) == 1).any())
        return self.f1(scores, labels) if has_anomalies else self.percentile(scores, labels)


class PixelThreshold:
    """The anomaly-map value from which predict marks a pixel, chosen on validation. The image threshold is a
    poor one: the image score pools another blur (or map) than the drawn map, so the map of an image called
    anomalous rarely reaches it and its mask stays empty.

    Where anomalous validation images have masks (real, or the synthetic anomalies' own), the value of best pixel
    F1 over every validation pixel; else the `percentile` of the normal validation pixels. Computed from the
    pixel histograms of `metrics.PixelMetrics` (exact at its bin edges), so it streams over any validation size.
    """

    def __init__(self, percentile: float = 99.9) -> None:
        if isinstance(percentile, bool) or not isinstance(percentile, int | float) or not 0 < percentile < 100:
            raise ValueError(f"percentile={as_typed(percentile)}: expected a number in (0, 100), e.g. 99.9")
        self.percentile = float(percentile)

    def __call__(self, normal_hist: torch.Tensor, anomalous_hist: torch.Tensor, upper: float) -> tuple[float, str]:
        """(threshold, how it was chosen) from the histograms (num_bins,) of normal and anomalous pixels on
        [0, upper]; bin k's lower edge is the k-th candidate. anomalous_hist all zero: no masks to fit on."""
        normal, anomalous = normal_hist.double(), anomalous_hist.double()  # (K,), (K,)
        edges = torch.arange(len(normal), dtype=torch.float64) * upper / len(normal)  # (K,) lower bin edges
        if float(normal.sum()) == 0:
            raise ValueError("pixel threshold: no normal validation pixel")
        if float(anomalous.sum()) > 0:
            tp = anomalous.flip(0).cumsum(0).flip(0)  # (K,) anomalous pixels >= edge
            fp = normal.flip(0).cumsum(0).flip(0)  # (K,)
            fn = anomalous.sum() - tp
            f1 = 2 * tp / (2 * tp + fp + fn)  # (K,)
            best = int(torch.argmax(f1))  # the lowest edge of best F1
            return float(edges[best]), f"best validation pixel F1 {float(f1[best]):.3f}"
        below = normal.cumsum(0) / normal.sum()  # (K,) share of normal pixels in bins <= k
        k = int(torch.searchsorted(below, torch.tensor([self.percentile / 100.0], dtype=torch.float64))[0])
        k = min(k + 1, len(normal) - 1)  # the upper edge of the bin that holds the percentile
        return float(edges[k]), f"{self.percentile:g}th percentile of the normal validation pixels (no masks)"

    def fit(
        self, maps: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, mask_known: torch.Tensor
    ) -> tuple[float, str]:
        """The threshold of validation maps (N,1,H,W), labels (N,), masks (N,1,H,W) bool and mask_known (N,) bool;
        anomalous images whose mask is unknown are left out."""
        keep = (labels == 0) | mask_known.bool()  # (N,)
        if not bool((labels == 0).any()):
            raise ValueError("pixel threshold: no normal validation pixel")
        # the bin range of these maps alone: under DDP only process 0 fits (train.choose_scoring), so agreeing
        # the range with the other processes would wait for them forever
        metric = PixelMetrics(sync_range=False)
        metric.update(maps[keep], masks[keep].bool())
        return self(metric.normal_hist, metric.anomalous_hist, float(metric.upper))


def metrics_at_threshold(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of calling score >= threshold anomalous; 0 where undefined (no positives).

    Also the counts behind them (tp, fp, fn, tn), as the thesis reports its notes result: marked tiles
    found and false positives at a fixed threshold.
    """
    predictions = (torch.as_tensor(scores).flatten() >= threshold).long()  # (N,) 0/1 labels, not probabilities
    target = torch.as_tensor(labels).flatten().long()  # (N,)
    called, anomalous = predictions == 1, target == 1  # (N,), (N,)
    return {
        "precision": float(binary_precision(predictions, target)),
        "recall": float(binary_recall(predictions, target)),
        "f1": float(binary_f1_score(predictions, target)),
        "tp": float((called & anomalous).sum()),
        "fp": float((called & ~anomalous).sum()),
        "fn": float((~called & anomalous).sum()),
        "tn": float((~called & ~anomalous).sum()),
    }
