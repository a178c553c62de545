"""Anomaly maps and reconstruction losses, shared by training (loss) and inference (maps, image scores).

One set of per-pixel error maps (anomaly_lab.pixel_maps: L2, SSIM, MSGMS, ... by name) serves both purposes:
the training loss is a weighted sum of map means (so maps are swappable from config), and the anomaly map is a
weighted sum of the maps themselves, optionally blurred, as in RIAD (Zavrtanik et al. 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_lab.errors import as_typed
from anomaly_lab.masking import Masking, inpaint_full_coverage
from anomaly_lab.registry import PIXEL_MAPS, checkpoint_class, load_builtin_parts

REDUCTIONS = ("mean", "max", "topk")


def gaussian_blur(anomaly_map: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, radius round(4 sigma); sigma <= 0 is the identity.

    Works on any (B,C,H,W); the radius is cut to H-1 / W-1 on small maps (reflect padding's limit),
    with the truncated kernel renormalised.
    """
    if sigma <= 0:
        return anomaly_map
    channels, height, width = anomaly_map.shape[-3:]
    out = anomaly_map
    for dim, size in ((-1, width), (-2, height)):
        radius = min(max(1, int(4 * sigma + 0.5)), size - 1)
        if radius < 1:
            continue  # a 1-pixel axis: nothing to blur
        offsets = torch.arange(-radius, radius + 1, dtype=anomaly_map.dtype, device=anomaly_map.device)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        kernel = kernel / kernel.sum()  # (2r+1,)
        if dim == -1:
            weight = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)  # (C,1,1,2r+1)
            out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), weight, groups=channels)
        else:
            weight = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)  # (C,1,2r+1,1)
            out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), weight, groups=channels)
    return out


def map_weights(weights: dict[str, float]) -> dict[str, float]:
    """The positive weights of registered pixel maps (anomaly_lab.pixel_maps); none given: l2 alone."""
    load_builtin_parts()
    weights = weights or {"l2": 1.0}
    unknown = sorted(set(weights) - set(PIXEL_MAPS))
    if unknown:
        raise ValueError(f"unknown pixel map {', '.join(unknown)}; registered maps: {', '.join(sorted(PIXEL_MAPS))}")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
            raise ValueError(f"{name}={as_typed(weight)}: must be a number >= 0")
    values = {name: float(w) for name, w in weights.items()}
    if not any(w > 0 for w in values.values()):
        raise ValueError(f"at least one map weight must be positive, got {weights}")
    return {name: w for name, w in values.items() if w > 0}


@checkpoint_class
class AnomalyMap(nn.Module):
    """Weighted sum of pixel maps by name (l2=, ssim=, msgms=, ... any registered map), then a Gaussian blur
    (blur_sigma 0 = none).

    The image score pools a map of its own, since locating a defect and deciding whether an image has one want
    different maps (docs/benchmarks.md, "Blur of the anomaly map and of the image score"):
    - score_blur_sigma: its blur (None: the anomaly map's). A wide blur fills a large defect's interior, which only
      an edge error marks; a narrow one keeps a small defect's peak.
    - score_map: one registered pixel map it pools instead of the weighted sum (None: the anomaly map's weights).
    - score_normalise: the score map as z-scores against normal validation images, per pixel (buffers
      normal_mean, normal_std (1,1,H,W), set by set_normal_statistics): a pixel that errs on every normal image
      (an edge, a glint) stops deciding the max. scoring=auto (anomaly_lab.scoring_choice) sets these on validation.
    """

    def __init__(
        self,
        blur_sigma: float = 0.0,
        score_blur_sigma: float | None = None,
        score_map: str | None = None,
        score_normalise: bool = False,
        **weights: float,
    ) -> None:
        super().__init__()
        self.weights = map_weights(weights)
        for name, sigma in (("blur_sigma", blur_sigma), ("score_blur_sigma", score_blur_sigma)):
            if sigma is None and name == "score_blur_sigma":
                continue  # the anomaly map's blur
            if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma < 0:
                raise ValueError(f"{name}={as_typed(sigma)}: must be a number >= 0 (0: no blur)")
        if score_map is not None:
            map_weights({score_map: 1.0})  # a registered map, or ValueError naming the registered ones
        if not isinstance(score_normalise, bool):
            raise ValueError(f"score_normalise={as_typed(score_normalise)}: expected true or false")
        self.blur_sigma = float(blur_sigma)
        self.score_blur_sigma = None if score_blur_sigma is None else float(score_blur_sigma)
        self.score_map = score_map
        self.score_normalise = score_normalise
        # saved only where used, so the checkpoints of models that do not normalise keep their keys
        self.normal_mean: torch.Tensor
        self.normal_std: torch.Tensor
        self.register_buffer("normal_mean", torch.zeros(0), persistent=score_normalise)
        self.register_buffer("normal_std", torch.zeros(0), persistent=score_normalise)

    def set_normal_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The per-pixel mean and std (1,1,H,W) of the score map on normal images; std must be > 0."""
        problem = statistics_problem(mean, std)
        if problem is not None:
            raise ValueError(problem)
        self.normal_mean, self.normal_std = mean.clone(), std.clone()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        mean, std = state_dict.get(prefix + "normal_mean"), state_dict.get(prefix + "normal_std")
        if self.score_normalise and isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor):
            # a file's statistics are checked as set_normal_statistics checks: a zero std or a NaN would score inf/NaN
            problem = None if "meta" in (mean.device.type, std.device.type) else statistics_problem(mean, std)
            if problem is not None:
                error_msgs.append(f"{prefix}normal_mean, {prefix}normal_std: {problem}")
                return
            # their shape is the input's, known only from the weights
            self.normal_mean = torch.empty_like(mean, device=self.normal_mean.device)
            self.normal_std = torch.empty_like(std, device=self.normal_std.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def unblurred(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack([w * PIXEL_MAPS[name](recon, target) for name, w in self.weights.items()]).sum(dim=0)

    def maps(self, recons: Sequence[torch.Tensor], target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The anomaly map and the map the image score pools, from the inpaintings of one target.  # (B,1,H,W) each

        Each is the mean over the inpaintings, then blurred (the blur is linear: blurring the mean = the mean of
        the blurs).
        """
        unblurred = mean_pixel_map(self.unblurred, recons, target)  # (B,1,H,W)
        anomaly_map = gaussian_blur(unblurred, self.blur_sigma)
        score_sigma = self.blur_sigma if self.score_blur_sigma is None else self.score_blur_sigma
        if self.score_map is not None:
            score_map = gaussian_blur(mean_pixel_map(PIXEL_MAPS[self.score_map], recons, target), score_sigma)
        elif score_sigma == self.blur_sigma:
            score_map = anomaly_map
        else:
            score_map = gaussian_blur(unblurred, score_sigma)
        if self.score_normalise:
            if self.normal_mean.ndim != 4 or self.normal_mean.shape[-2:] != score_map.shape[-2:]:
                raise ValueError(
                    f"score_normalise: normal statistics of {tuple(self.normal_mean.shape)} for maps of "
                    f"{tuple(score_map.shape)} (set_normal_statistics was not called for this input size)"
                )
            score_map = (score_map - self.normal_mean) / self.normal_std
        return anomaly_map, score_map

    def extra_repr(self) -> str:
        return (
            f"weights={self.weights}, blur_sigma={self.blur_sigma}, score_blur_sigma={self.score_blur_sigma}, "
            f"score_map={self.score_map}, score_normalise={self.score_normalise}"
        )


def mean_pixel_map(
    pixel_map: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    recons: Sequence[torch.Tensor],
    target: torch.Tensor,
) -> torch.Tensor:
    """A pixel map of each inpainting of target, averaged over the inpaintings.  # (B,1,H,W)"""
    return torch.stack([pixel_map(recon, target) for recon in recons]).mean(dim=0)


def statistics_problem(mean: torch.Tensor, std: torch.Tensor) -> str | None:
    """Why mean and std (1,1,H,W) cannot normalise a score map (None: they can): shapes, dtype, finite, std > 0."""
    if mean.shape != std.shape or mean.ndim != 4 or mean.shape[:2] != (1, 1):
        return f"normal statistics must be two (1,1,H,W) tensors; got {tuple(mean.shape)} and {tuple(std.shape)}"
    if not (mean.is_floating_point() and std.is_floating_point()):
        return f"normal statistics must be floating point; got {mean.dtype} and {std.dtype}"
    if not bool(mean.isfinite().all()) or not bool(std.isfinite().all()) or not bool((std > 0).all()):
        return "normal statistics must be finite, with std > 0 everywhere"
    return None


class ReconstructionLoss(nn.Module):
    """Training loss: weighted sum of the means of pixel maps by name (differentiable)."""

    def __init__(self, **weights: float) -> None:
        super().__init__()
        self.weights = map_weights(weights)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack([w * PIXEL_MAPS[name](recon, target).mean() for name, w in self.weights.items()]).sum()

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def image_score(anomaly_map: torch.Tensor, reduce: str = "mean", topk_fraction: float = 0.01) -> torch.Tensor:
    """One score per image from its map (B,1,H,W): mean, max, or mean of the top fraction of pixels.  # (B,)

    topk averages the round(topk_fraction * n) highest of the image's n pixels (at least one). No size depends on
    the data, so the graph exports (ONNX) as is. reduce and topk_fraction are InpaintingModel's, checked there.
    """
    values = anomaly_map.flatten(start_dim=1)  # (B,N)
    if reduce == "mean":
        return values.mean(dim=1)
    if reduce == "max":
        return values.amax(dim=1)
    return values.topk(max(1, round(topk_fraction * values.shape[1])), dim=1).values.mean(dim=1)


def full_coverage_scores(
    net: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    masking: Masking,
    anomaly_map: AnomalyMap,
    reduce: str = "mean",
    topk_fraction: float = 0.01,
    mask_sets: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (B,1,H,W) averaged over the full-coverage inpaintings of each grid size, and image
    scores (B,). The one scoring rule of the trained model (anomaly_lab.model.InpaintingModel)."""
    recons = inpaint_full_coverage(net, images, masking, mask_sets)
    maps, score_maps = anomaly_map.maps(recons, images)  # (B,1,H,W) each
    return maps, image_score(score_maps, reduce, topk_fraction)
