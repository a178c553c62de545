"""Per-pixel error maps of an inpainting against its input, one module each, registered by name.

Each map takes recon and target (B,C,H,W) in [0, 1] and returns (B,1,H,W); AnomalyMap and ReconstructionLoss
(anomaly_lab.scoring) weight them by name (`scoring.anomaly_map.<name>`, `scoring.loss.<name>`). A new map is
one module here with an `@pixel_map("<name>")` function, plus a conf/scoring option that weights it.
"""

from __future__ import annotations

import torch


def check_pair(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Validate a (B,C,H,W) pair; return target in recon's dtype."""
    if recon.ndim != 4 or recon.shape != target.shape:
        raise ValueError(
            f"expected two (B,C,H,W) tensors of one shape, got {tuple(recon.shape)} and {tuple(target.shape)}"
        )
    return target.to(recon.dtype)
