"""Evaluation metrics: image AUROC, F1-max, Wasserstein separation, and streaming pixel AUROC / AUPRO.

Image-level metrics take the (small) vectors of per-image scores. Pixel-level metrics are binned
(`PixelMetrics`): a 512x512 test set never sits in memory, and histograms from several DDP processes
simply add up. AUPRO follows MVTec AD / anomalib: per-region overlap vs. FPR, integrated up to an
FPR limit and divided by it. The published protocol measures the anomaly map brought (bilinear) to the
ground-truth mask's own resolution: give PixelMetrics the masks at that resolution and it resizes each map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.stats import wasserstein_distance
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_precision_recall_curve
from torchmetrics.utilities.data import dim_zero_cat

ArrayLike = torch.Tensor | np.ndarray | list[float]


def _scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat float64 scores and long labels, checked for length, finiteness and both classes present."""
    scores = torch.as_tensor(scores).detach().cpu().flatten().double()  # (N,)
    labels = torch.as_tensor(labels).detach().cpu().flatten().long()  # (N,)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    if labels.numel() == 0 or bool((labels == labels[0]).all()):
        raise ValueError("needs both normal (0) and anomalous (1) samples")
    return scores, labels


def _ranks(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores mapped monotonically onto [0, 1] by dense rank, and the sorted unique scores.

    torchmetrics treats values outside [0, 1] as logits and applies a sigmoid, which in float32 merges
    large scores into ties; dense ranks keep every distinct score distinct and map back exactly.
    """
    unique = torch.unique(scores)  # sorted ascending
    return torch.searchsorted(unique, scores).double() / max(len(unique) - 1, 1), unique  # (N,), (U,)


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Image-level ROC AUC; labels 1 = anomalous. Raises ValueError if only one class is present."""
    scores, labels = _scores_and_labels(scores, labels)
    return float(binary_auroc(_ranks(scores)[0], labels))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds and that threshold: a score >= threshold is called anomalous."""
    scores, labels = _scores_and_labels(scores, labels)
    ranks, unique = _ranks(scores)
    precision, recall, thresholds = binary_precision_recall_curve(ranks, labels)  # (T+1,), (T+1,), (T,)
    f1 = 2 * precision[:-1] * recall[:-1] / (precision[:-1] + recall[:-1]).clamp_min(1e-12)  # (T,)
    best = int(f1.argmax())
    index = round(float(thresholds[best]) * max(len(unique) - 1, 1))
    return float(f1[best]), float(unique[index])


def wasserstein_separation(
    normal_scores: ArrayLike, anomalous_scores: ArrayLike, normalise: bool = False, signed: bool = False
) -> float:
    """1-Wasserstein (earth mover's) distance between the normal and the anomalous score samples.

    With normalise=True it is divided by the standard deviation of both samples pooled together
    (population std of their concatenation), so runs whose scores differ in scale compare; 0.0
    when that std is 0 (all scores equal, so the distance is 0 too). With signed=True it is negative when the
    anomalous scores are lower on average: separated the wrong way round, which an objective must not reward.
    """
    normal = np.asarray(torch.as_tensor(normal_scores).detach().cpu(), dtype=np.float64).ravel()
    anomalous = np.asarray(torch.as_tensor(anomalous_scores).detach().cpu(), dtype=np.float64).ravel()
    if normal.size == 0 or anomalous.size == 0:
        raise ValueError("wasserstein_separation needs at least one normal and one anomalous score")
    if not (np.isfinite(normal).all() and np.isfinite(anomalous).all()):
        raise ValueError("wasserstein_separation got non-finite scores")
    distance = float(wasserstein_distance(normal, anomalous))
    if signed and anomalous.mean() < normal.mean():
        distance = -distance
    if not normalise:
        return distance
    pooled_std = float(np.concatenate([normal, anomalous]).std())
    return distance / pooled_std if pooled_std > 0 else 0.0


def validation_rank(image_auroc: float, separation: float) -> tuple[float, float]:
    """The project's order of validation results, larger is better: image AUROC first (rounded to 9 digits, so float
    noise ties), the separation (Wasserstein) for ties. AUROC counts the normal-anomalous pairs in the wrong order, the
    distance is carried by how far the anomalies score, often a few easy ones; with synthetic anomalies AUROC saturates
    at 1.0 and the distance decides. scoring=auto ranks its scorings, make tune its trials, by it."""
    return (round(image_auroc, 9), separation)


def _count_at_or_above(hist: torch.Tensor) -> torch.Tensor:
    """Counts with bin >= k for k = 0..K (the last, k = K, is 0: a threshold above every score).  # (...,K+1)"""
    above = hist.flip(-1).cumsum(-1).flip(-1)  # (...,K)
    return torch.cat([above, torch.zeros_like(above[..., :1])], dim=-1)


def _truncated_auc(fpr: torch.Tensor, y: torch.Tensor, limit: float) -> torch.Tensor:
    """Trapezoid area under y(fpr) for fpr in [0, limit], y interpolated linearly at the limit.

    fpr must be non-decreasing and start at 0; repeated fpr values (vertical steps) are fine.
    """
    beyond = torch.nonzero(fpr > limit)
    if len(beyond):
        i = int(beyond[0])  # fpr[i-1] <= limit < fpr[i]; i >= 1 since fpr[0] = 0
        t = (limit - fpr[i - 1]) / (fpr[i] - fpr[i - 1])
        fpr = torch.cat([fpr[:i], fpr.new_tensor([limit])])
        y = torch.cat([y[:i], (y[i - 1] + t * (y[i] - y[i - 1])).reshape(1)])
    return torch.trapezoid(y, fpr)


class PixelMetrics(Metric):
    """Streaming pixel AUROC and AUPRO from score histograms.

    Scores go into `num_bins` equal bins on [0, max_value]; values above max_value land in the last bin
    (below 0, in the first). Bin k's lower edge t_k = k * max_value / num_bins is the k-th threshold, so
    both curves are exact at those thresholds and only ties within a bin are approximated (linearly).
    If max_value is None it is fixed at the first update as 2x that batch's max score (max over all
    processes under DDP, so every process bins alike; every process must then call the first update;
    sync_range=False: this process's own, for a metric only one process updates) and cleared again by
    reset(). Pass max_value when the score range is known for exact reproducibility.

    States: a histogram of normal-pixel and of anomalous-pixel scores (AUROC; FPR for PRO), and one
    histogram per ground-truth region (8-connected components of each mask) for PRO: a region's overlap
    at t_k is the fraction of its pixels scoring >= t_k. Memory: 2 + (number of regions) histograms.
    compute() gives NaN for a metric whose pixels are missing (e.g. a test set with no anomalies).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    normal_hist: torch.Tensor
    anomalous_hist: torch.Tensor
    region_hists: list[torch.Tensor]  # a single cat tensor after a DDP sync
    upper: torch.Tensor

    def __init__(
        self,
        num_bins: int = 1000,
        max_value: float | None = None,
        fpr_limit: float = 0.3,
        sync_range: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        if max_value is not None and not max_value > 0:
            raise ValueError(f"max_value must be positive or None, got {max_value}")
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.num_bins = int(num_bins)
        self.max_value = max_value
        self.fpr_limit = float(fpr_limit)
        self.sync_range = sync_range
        self.add_state("normal_hist", torch.zeros(self.num_bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("anomalous_hist", torch.zeros(self.num_bins, dtype=torch.long), dist_reduce_fx="sum")
        # flat (R*num_bins,) per update: 1-D so an empty rank's placeholder concatenates under DDP
        self.add_state("region_hists", [], dist_reduce_fx="cat")
        # upper bin edge; -1 = not fixed yet. Equal on every rank, so "max" keeps it through a sync.
        upper = -1.0 if max_value is None else float(max_value)
        self.add_state("upper", torch.tensor(upper, dtype=torch.float64), dist_reduce_fx="max")

    def _fix_upper(self, maps: torch.Tensor) -> None:
        peak = 2.0 * maps.max().double()
        if self.sync_range and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX, group=self.process_group)
        self.upper = peak if peak > 0 else torch.ones_like(peak)  # an all-zero first batch: fall back to 1

    def update(self, anomaly_maps: torch.Tensor, gt_masks: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Add a batch: anomaly_maps (B,1,H,W) float and the ground truth (True = anomalous), either masks
        (B,1,H,W) bool, or a sequence (not a tensor) of B masks (1,h,w) or (h,w) of any sizes, e.g. each image's
        own resolution: each map is then resized bilinearly (align_corners=False) to its mask's size and binned one
        image at a time (memory: one image at its mask's size). The bin range is fixed from the maps as given
        (bilinear resizing never leaves it), so two metrics fed one batch at two resolutions bin alike."""
        maps = anomaly_maps.detach()
        if maps.ndim != 4 or maps.shape[1] != 1:
            raise ValueError(f"expected anomaly maps (B,1,H,W), got {tuple(maps.shape)}")
        if isinstance(gt_masks, torch.Tensor):
            if gt_masks.numel() != maps.numel():
                raise ValueError(
                    f"expected maps and masks (B,1,H,W), got {tuple(maps.shape)} and {tuple(gt_masks.shape)}"
                )
            self._check_and_fix_range(maps)
            self._add(maps, gt_masks.detach().reshape(maps.shape).bool())
            return
        masks = [mask.detach() for mask in gt_masks]
        if len(masks) != len(maps) or any(mask.ndim not in (2, 3) or mask.numel() == 0 for mask in masks):
            raise ValueError(
                f"expected {len(maps)} masks (1,h,w) or (h,w) for maps {tuple(maps.shape)}, "
                f"got {[tuple(mask.shape) for mask in masks]}"
            )
        self._check_and_fix_range(maps)
        if all(mask.shape[-2:] == maps.shape[-2:] for mask in masks):  # at the maps' size already: one batch
            self._add(maps, torch.stack([mask.reshape(maps.shape[1:]).bool() for mask in masks]).to(maps.device))
            return
        for amap, mask in zip(maps, masks, strict=True):
            size = (int(mask.shape[-2]), int(mask.shape[-1]))
            resized = F.interpolate(amap[None].float(), size=size, mode="bilinear", align_corners=False)  # (1,1,h,w)
            self._add(resized, mask.reshape(1, 1, *size).bool().to(maps.device))

    def _check_and_fix_range(self, maps: torch.Tensor) -> None:
        if not bool(torch.isfinite(maps).all()):
            raise ValueError("anomaly maps must be finite")
        if self.upper < 0:
            self._fix_upper(maps)

    def _add(self, maps: torch.Tensor, masks: torch.Tensor) -> None:
        """Bin maps (B,1,H,W) against masks (B,1,H,W) bool of the same size."""
        bins = (maps.double() * (self.num_bins / self.upper)).floor().clamp(0, self.num_bins - 1).long()  # (B,1,H,W)
        # one pass over the pixels: normal ones count into bins 0..K-1, anomalous ones into K..2K-1
        counts = torch.bincount((bins + masks.long() * self.num_bins).flatten(), minlength=2 * self.num_bins)
        self.normal_hist += counts[: self.num_bins]
        self.anomalous_hist += counts[self.num_bins :]

        # regions: 8-connected within an image, never across images of the batch
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = True
        labels, count = ndimage.label(masks[:, 0].cpu().numpy(), structure=structure)  # (B,H,W), 0 = background
        if count == 0:
            return
        labels = torch.from_numpy(labels).to(maps.device).reshape(bins.shape)  # (B,1,H,W)
        inside = labels > 0
        flat = (labels[inside] - 1) * self.num_bins + bins[inside]  # region-major index into (R,K)
        self.region_hists.append(torch.bincount(flat, minlength=count * self.num_bins))  # (R*K,)

    def compute(self) -> dict[str, torch.Tensor]:
        """{"pixel_auroc", "aupro"} as 0-d float tensors (NaN where the needed pixels are missing)."""
        nan = torch.tensor(float("nan"), device=self.device)
        normal = _count_at_or_above(self.normal_hist.double().cpu())  # (K+1,)
        anomalous = _count_at_or_above(self.anomalous_hist.double().cpu())  # (K+1,)
        if normal[0] == 0:
            return {"pixel_auroc": nan, "aupro": nan.clone()}
        fpr = (normal / normal[0]).flip(0)  # (K+1,) ascending from 0 to 1
        result = {"pixel_auroc": nan, "aupro": nan.clone()}
        if anomalous[0] > 0:
            tpr = (anomalous / anomalous[0]).flip(0)
            result["pixel_auroc"] = torch.trapezoid(tpr, fpr).float().to(self.device)
        regions: Any = self.region_hists
        regions = dim_zero_cat(regions) if isinstance(regions, list) and regions else regions
        if isinstance(regions, torch.Tensor) and regions.numel():
            region_counts = _count_at_or_above(regions.double().cpu().reshape(-1, self.num_bins))  # (R,K+1)
            pro = (region_counts / region_counts[:, :1]).mean(dim=0).flip(0)  # (K+1,) mean overlap, ascending
            aupro = _truncated_auc(fpr, pro, self.fpr_limit) / self.fpr_limit
            result["aupro"] = aupro.float().to(self.device)
        return result
