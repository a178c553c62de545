"""Multi-scale gradient magnitude similarity (RIAD, Zavrtanik et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomaly_lab.pixel_maps import check_pair
from anomaly_lab.registry import pixel_map

MSGMS_C = 0.0026  # GMS stability constant of RIAD (for images in [0, 1])


def _prewitt_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude, replicate-padded so image borders add no false edges.  # (B,1,h,w)"""
    kx = torch.tensor([[1.0, 0.0, -1.0]] * 3, dtype=gray.dtype, device=gray.device) / 3.0  # (3,3)
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2,1,3,3)
    grads = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)  # (B,2,h,w)
    # eps keeps sqrt's gradient finite on flat regions (where the squared gradient is exactly 0)
    return torch.sqrt(grads.pow(2).sum(dim=1, keepdim=True) + 1e-12)


@pixel_map("msgms")
def msgms_map(recon: torch.Tensor, target: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient magnitude dissimilarity of RIAD, in [0, 1).  # (B,1,H,W)

    On the channel-mean grayscale, at scales 1, 1/2, ..., 1/2**(scales-1) (2x2 average pooling):
    GMS = (2 g1 g2 + c) / (g1^2 + g2^2 + c), map = mean over scales of (1 - GMS), each upsampled
    bilinearly to H x W.
    """
    target = check_pair(recon, target)
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
