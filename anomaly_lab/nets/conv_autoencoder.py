"""A plain convolutional autoencoder: strided convolutions down, transposed convolutions up, no skip connections.

Without the U-Net's skips every pixel passes through the bottleneck, so the net cannot copy its input
through: the classic reconstruction baseline (e.g. Bergmann et al.'s AE-L2), here as an inpainting backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from anomaly_lab.nets.unet import _norm, check_divisible
from anomaly_lab.registry import checkpoint_class


@checkpoint_class
class ConvAutoencoder(nn.Module):
    """Level i halves the size with a 4x4 stride-2 convolution to `channels[i]` (default base_channels * 2**i for
    `depth` levels); the decoder mirrors it with 4x4 stride-2 transposed convolutions. Images must be a multiple
    of 2**depth on each side."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        channels: Sequence[int] | None = None,
        base_channels: int = 32,
        depth: int | None = 4,
        norm: str = "batch",
        output_activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        if channels is None:
            if depth is None or depth < 1:
                raise ValueError(f"depth must be >= 1, got {depth}")
            channels = [base_channels * 2**i for i in range(depth)]
        elif not channels or (depth is not None and depth != len(channels)):
            raise ValueError(
                f"channels={list(channels)} has {len(channels)} levels but depth={depth}; set depth to match"
            )
        if output_activation not in ("sigmoid", "none"):
            raise ValueError(f"output_activation must be 'sigmoid' or 'none', got {output_activation!r}")
        self.depth = len(channels)
        self.output_activation = output_activation
        bias = norm == "none"
        widths = [in_channels, *channels]
        self.encoder = nn.Sequential(
            *(
                nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=bias), _norm(norm, c_out), nn.ReLU())
                for c_in, c_out in pairwise(widths)
            )
        )
        ups = [
            nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, padding=1, bias=bias), _norm(norm, c_out), nn.ReLU())
            for c_in, c_out in pairwise(widths[:0:-1])
        ]
        self.decoder = nn.Sequential(*ups, nn.ConvTranspose2d(widths[1], out_channels, 4, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,C,H,W) -> (B,C_out,H,W)
        check_divisible(x.shape[-2], x.shape[-1], self.depth)
        out = self.decoder(self.encoder(x))
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out
