"""Squared error: the thesis's map and loss."""

from __future__ import annotations

import torch

from anomaly_lab.pixel_maps import check_pair
from anomaly_lab.registry import pixel_map


@pixel_map("l2")
def l2_map(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over channels.  # (B,1,H,W)"""
    target = check_pair(recon, target)
    return (recon - target).pow(2).mean(dim=1, keepdim=True)
