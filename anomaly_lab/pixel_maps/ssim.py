"""1 - SSIM per pixel (torchmetrics' Gaussian-window SSIM), as in RIAD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from anomaly_lab.pixel_maps import check_pair
from anomaly_lab.registry import pixel_map


@pixel_map("ssim")
def ssim_map(recon: torch.Tensor, target: torch.Tensor, kernel_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - SSIM per pixel, channel-averaged, in [0, 2].  # (B,1,H,W)

    torchmetrics' Gaussian window width follows sigma (int(3.5 sigma + 0.5) * 2 + 1, i.e. 11 for 1.5);
    kernel_size is passed on (it must be odd) and only sizes a uniform window, which is not used here.
    torchmetrics reflect-pads by the window radius, which needs H, W > radius: smaller images are
    replicate-padded first and the map cropped back.
    """
    target = check_pair(recon, target)
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
