"""Absolute error: a map less dominated by a few large errors than L2, and a loss that blurs less."""

from __future__ import annotations

import torch

from anomaly_lab.pixel_maps import check_pair
from anomaly_lab.registry import pixel_map


@pixel_map("l1")
def l1_map(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute error averaged over channels, in [0, 1] for images in [0, 1].  # (B,1,H,W)"""
    target = check_pair(recon, target)
    return (recon - target).abs().mean(dim=1, keepdim=True)
