"""U-Net autoencoder: the reconstruction/inpainting network, plain torch.

Width, depth, normalisation and upsampling are arguments so that the thesis's full
512x512 net, its reduced 64x64 tile net and CPU-sized nets are one class.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from anomaly_lab.registry import checkpoint_class

NORMS = ("batch", "instance", "group", "none")
UPSAMPLING = ("transpose", "bilinear", "nearest")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm == "none"),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm == "none"),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, norm: str, mode: str) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        elif mode in ("bilinear", "nearest"):
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode=mode),
                nn.Conv2d(in_channels, in_channels // 2, 1),
            )
        else:
            raise ValueError(f"unknown upsampling {mode!r}; choose one of {UPSAMPLING}")
        self.conv = DoubleConv(in_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


def check_divisible(height: int, width: int, depth: int) -> None:
    """ValueError unless both sides of an input are multiples of 2**depth, naming the model's option that sets the
    side that is not: image_size (the width, and the height of a square), preprocessing.crop_height."""
    m = 2**depth
    if height % m or width % m:
        side, key = (width, "image_size") if width % m else (height, "preprocessing.crop_height")
        lower, upper = max(m, side // m * m), (side // m + 1) * m
        raise ValueError(
            f"{key}={side}: must be a multiple of 2**depth = {m} (net.depth={depth}); use {key}={lower} or {upper}, "
            "or a lower depth"
        )


@checkpoint_class
class UNet(nn.Module):
    """U-Net with `depth` down/up levels; level i has `base_channels * 2**i` channels."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 64,
        depth: int = 4,
        norm: str = "batch",
        upsampling: str = "transpose",
        output_activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0], norm)
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1], norm) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], norm, upsampling) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)
        if output_activation not in ("sigmoid", "none"):
            raise ValueError(f"output_activation must be 'sigmoid' or 'none', got {output_activation!r}")
        self.output_activation = output_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,C,H,W) -> (B,C_out,H,W)
        check_divisible(x.shape[-2], x.shape[-1], self.depth)
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        h = skips.pop()
        for up in self.ups:
            h = up(h, skips.pop())
        out = self.head(h)
        return torch.sigmoid(out) if self.output_activation == "sigmoid" else out
