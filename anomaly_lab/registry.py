"""The explicit lists of this project's own code that data may name: checkpoint classes and pixel maps.

A checkpoint's spec names the classes that rebuild its model (`_target_`) and the pixel maps of its anomaly map
(by short name); both are looked up here and nowhere else, so a file never chooses what is imported or run.
A class or map joins by its decorator; `load_builtin_parts()` imports the packages that hold them
(anomaly_lab.nets for backbones, anomaly_lab.pixel_maps for maps), so a new backbone or pixel map is one
module in one of those packages, plus its YAML option.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TypeVar

import torch

PixelMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (recon, target) (B,C,H,W) -> (B,1,H,W)
T = TypeVar("T", bound=type)

CHECKPOINT_CLASSES: dict[str, type] = {}
PIXEL_MAPS: dict[str, PixelMap] = {}
PART_PACKAGES = ("anomaly_lab.nets", "anomaly_lab.pixel_maps")
# Old dotted names of moved classes, as checkpoints written before the move name them: each reads as its name now.
RENAMED_CLASSES = {
    "anomaly_lab.models.unet.UNet": "anomaly_lab.nets.unet.UNet",
    "anomaly_lab.models.conv_autoencoder.ConvAutoencoder": "anomaly_lab.nets.conv_autoencoder.ConvAutoencoder",
}


def checkpoint_class(cls: T) -> T:
    """Class decorator: a checkpoint may name this class (by its dotted name) and build it with plain values."""
    CHECKPOINT_CLASSES[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def pixel_map(name: str) -> Callable[[PixelMap], PixelMap]:
    """Function decorator: `name` becomes a weight of AnomalyMap and ReconstructionLoss (scoring.<name>=1.0)."""

    def register(function: PixelMap) -> PixelMap:
        if PIXEL_MAPS.get(name, function) is not function:
            raise ValueError(f"pixel map {name!r} is registered twice")
        PIXEL_MAPS[name] = function
        return function

    return register


def load_builtin_parts() -> None:
    """Import every module of the packages of backbones and pixel maps, so their decorators have run."""
    for package_name in PART_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__, f"{package_name}."):
            importlib.import_module(module.name)
