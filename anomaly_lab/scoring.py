"""Anomaly maps and reconstruction losses, shared by training (loss) and inference (maps, image scores).

One set of per-pixel error maps serves both purposes: the training loss is a weighted sum of map means
(so L2, SSIM and MSGMS are swappable from config), and the anomaly map is a weighted sum of the maps
themselves, optionally blurred, as in RIAD (Zavrtanik et al. 2021).
All maps take images (B,C,H,W) in [0, 1] and return (B,1,H,W).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from anomaly_lab.masking import Masking, inpaint_full_coverage

MSGMS_C = 0.0026  # GMS stability constant of RIAD (for images in [0, 1])
REDUCTIONS = ("mean", "max", "topk")


def _check_pair(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Validate a (B,C,H,W) pair; return target in recon's dtype."""
    if recon.ndim != 4 or recon.shape != target.shape:
        raise ValueError(
            f"expected two (B,C,H,W) tensors of one shape, got {tuple(recon.shape)} and {tuple(target.shape)}"
        )
    return target.to(recon.dtype)


def l2_map(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over channels.  # (B,1,H,W)"""
    target = _check_pair(recon, target)
    return (recon - target).pow(2).mean(dim=1, keepdim=True)


def ssim_map(recon: torch.Tensor, target: torch.Tensor, kernel_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - SSIM per pixel, channel-averaged, in [0, 2].  # (B,1,H,W)

    torchmetrics' Gaussian window width follows sigma (int(3.5 sigma + 0.5) * 2 + 1, i.e. 11 for 1.5);
    kernel_size is passed on (it must be odd) and only sizes a uniform window, which is not used here.
    torchmetrics reflect-pads by the window radius, which needs H, W > radius: smaller images are
    replicate-padded first and the map cropped back.
    """
    target = _check_pair(recon, target)
    height, width = recon.shape[-2:]
    radius = int(3.5 * sigma + 0.5)
    extra_h, extra_w = max(0, radius + 1 - height), max(0, radius + 1 - width)
    if extra_h or extra_w:
        pad = (extra_w, extra_w, extra_h, extra_h)
        recon, target = F.pad(recon, pad, mode="replicate"), F.pad(target, pad, mode="replicate")
    _, full = structural_similarity_index_measure(
        recon,
        target,
        gaussian_kernel=True,
        sigma=sigma,
        kernel_size=kernel_size,
        reduction="none",
        data_range=1.0,
        return_full_image=True,
    )  # (B,C,H',W')
    full = full[..., extra_h : extra_h + height, extra_w : extra_w + width]
    dh, dw = height - full.shape[-2], width - full.shape[-1]
    if dh or dw:  # a torchmetrics that crops the border instead of padding: pad the map back
        full = F.pad(full, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")
    return (1.0 - full).mean(dim=1, keepdim=True).clamp(0.0, 2.0)  # (B,1,H,W)


def _prewitt_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude, replicate-padded so image borders add no false edges.  # (B,1,h,w)"""
    kx = torch.tensor([[1.0, 0.0, -1.0]] * 3, dtype=gray.dtype, device=gray.device) / 3.0  # (3,3)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2,1,3,3)
    grads = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)  # (B,2,h,w)
    # eps keeps sqrt's gradient finite on flat regions (where the squared gradient is exactly 0)
    return torch.sqrt(grads.pow(2).sum(dim=1, keepdim=True) + 1e-12)


def msgms_map(recon: torch.Tensor, target: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient magnitude dissimilarity of RIAD, in [0, 1).  # (B,1,H,W)

    On the channel-mean grayscale, at scales 1, 1/2, ..., 1/2**(scales-1) (2x2 average pooling):
    GMS = (2 g1 g2 + c) / (g1^2 + g2^2 + c), map = mean over scales of (1 - GMS), each upsampled
    bilinearly to H x W.
    """
    target = _check_pair(recon, target)
    height, width = recon.shape[-2:]
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    if min(height, width) < 2 ** (scales - 1):
        raise ValueError(f"a {height}x{width} image is too small for {scales} MSGMS scales")
    x = recon.mean(dim=1, keepdim=True)  # (B,1,H,W)
    y = target.mean(dim=1, keepdim=True)  # (B,1,H,W)
    total = torch.zeros_like(x)
    for scale in range(scales):
        if scale:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        gx, gy = _prewitt_magnitude(x), _prewitt_magnitude(y)
        dissimilarity = 1.0 - (2 * gx * gy + MSGMS_C) / (gx.pow(2) + gy.pow(2) + MSGMS_C)  # (B,1,h,w)
        if scale:
            dissimilarity = F.interpolate(dissimilarity, size=(height, width), mode="bilinear", align_corners=False)
        total = total + dissimilarity
    return total / scales  # (B,1,H,W)


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


def _check_weights(**weights: float) -> dict[str, float]:
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"map weights must be non-negative, got {weights}")
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"at least one map weight must be positive, got {weights}")
    return {name: float(w) for name, w in weights.items() if w > 0}


_MAPS = {"l2": l2_map, "ssim": ssim_map, "msgms": msgms_map}


class AnomalyMap(nn.Module):
    """Weighted sum of the L2 / SSIM / MSGMS maps, then a Gaussian blur (blur_sigma 0 = none)."""

    def __init__(self, l2: float = 1.0, ssim: float = 0.0, msgms: float = 0.0, blur_sigma: float = 0.0) -> None:
        super().__init__()
        self.weights = _check_weights(l2=l2, ssim=ssim, msgms=msgms)
        self.blur_sigma = float(blur_sigma)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        maps = torch.stack([w * _MAPS[name](recon, target) for name, w in self.weights.items()]).sum(dim=0)
        return gaussian_blur(maps, self.blur_sigma)  # (B,1,H,W)

    def extra_repr(self) -> str:
        return f"weights={self.weights}, blur_sigma={self.blur_sigma}"


class ReconstructionLoss(nn.Module):
    """Training loss: weighted sum of the means of the L2 / SSIM / MSGMS maps (differentiable)."""

    def __init__(self, l2: float = 1.0, ssim: float = 0.0, msgms: float = 0.0) -> None:
        super().__init__()
        self.weights = _check_weights(l2=l2, ssim=ssim, msgms=msgms)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack([w * _MAPS[name](recon, target).mean() for name, w in self.weights.items()]).sum()  # ()

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


def image_score(
    anomaly_map: torch.Tensor,
    reduce: str = "mean",
    topk_fraction: float = 0.01,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """One score per image from its map (B,1,H,W): mean, max, or mean of the top fraction of pixels.  # (B,)

    topk averages the round(topk_fraction * n) highest pixels (at least one), n = the image's pixel count
    or, with `valid` (B,1,H,W) bool, its count of valid pixels; only valid pixels count for every reduction.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    if reduce == "topk" and not 0.0 < topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
    values = anomaly_map.flatten(start_dim=1)  # (B,N)
    if valid is None:  # every pixel counts: no size depends on the data, so the graph exports (ONNX) as is
        if reduce == "mean":
            return values.mean(dim=1)
        if reduce == "max":
            return values.amax(dim=1)
        return values.topk(max(1, round(topk_fraction * values.shape[1])), dim=1).values.mean(dim=1)
    if valid.shape != anomaly_map.shape:
        raise ValueError(f"valid {tuple(valid.shape)} must match the map {tuple(anomaly_map.shape)}")
    mask = valid.flatten(start_dim=1).bool()  # (B,N)
    counts = mask.sum(dim=1)  # (B,)
    if bool((counts == 0).any()):
        raise ValueError("an image has no valid pixels to score")
    if reduce == "mean":
        return torch.where(mask, values, torch.zeros_like(values)).sum(dim=1) / counts
    masked = torch.where(mask, values, torch.full_like(values, -math.inf))  # (B,N)
    if reduce == "max":
        return masked.amax(dim=1)
    ks = torch.clamp(torch.round(topk_fraction * counts.to(values.dtype)), min=1).long()  # (B,)
    top = masked.topk(int(ks.max()), dim=1).values  # (B,kmax), descending
    keep = torch.arange(top.shape[1], device=top.device)[None, :] < ks[:, None]  # (B,kmax)
    return torch.where(keep, top, torch.zeros_like(top)).sum(dim=1) / ks


def full_coverage_scores(
    net: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    masking: Masking,
    anomaly_map: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    reduce: str = "mean",
    topk_fraction: float = 0.01,
    mask_sets: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anomaly maps (B,1,H,W) averaged over the full-coverage inpaintings of each grid size, and image
    scores (B,). The one scoring rule of training (InpaintingModule) and of predict/export."""
    recons = inpaint_full_coverage(net, images, masking, mask_sets)
    maps = torch.stack([anomaly_map(recon, images) for recon in recons]).mean(dim=0)  # (B,1,H,W)
    return maps, image_score(maps, reduce, topk_fraction)
