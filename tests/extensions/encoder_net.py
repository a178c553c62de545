"""A backbone added from outside the package: an encoder (where a pretrained one would be loaded) and a decoder.

`parameter_groups(lr)` gives the encoder its own learning rate (encoder_lr_scale times the optimizer's), which the
LightningModule's configure_optimizers uses; the YAML option beside it (conf/model/encoder_decoder.yaml) sets the
normalisation such an encoder expects in the preprocessing. `@checkpoint_class` puts the class on the list a
checkpoint may name, once this module is imported: importing it is the user's explicit choice of code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anomaly_lab.registry import checkpoint_class


@checkpoint_class
class EncoderDecoderNet(nn.Module):
    """Two stride-2 convolutions down (`encoder`), two transposed ones up (`decoder`): (B,3,H,W) -> (B,3,H,W), H
    and W multiples of 4."""

    def __init__(self, base_channels: int = 8, encoder_lr_scale: float = 0.1) -> None:
        super().__init__()
        width = base_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        )
        self.decoder = nn.Sequential(
            nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1),
        )
        self.encoder_lr_scale = encoder_lr_scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))  # (B,3,H,W)

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        return [
            {"params": list(self.encoder.parameters()), "lr": lr * self.encoder_lr_scale},
            {"params": list(self.decoder.parameters())},
        ]
