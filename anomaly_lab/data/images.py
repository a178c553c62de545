"""Image files in, uint8 arrays out: decoding with errors that name the file, and an in-memory dataset.

Images are decoded and resized once and kept as uint8, so epochs after the first cost no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class BadImageError(ValueError):
    """An input file that cannot be used; the message names the file and the problem."""


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadImageError(f"{folder}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images)")
    return files


def _to_uint8(image: Image.Image, mode: str) -> Image.Image:
    # 16-bit grayscale ("I;16", "I") is scaled down to 8 bits instead of clipped.
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P") and mode == "RGB":
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert(mode)


def read_image(path: Path, size: int | None, mode: str = "RGB") -> np.ndarray:
    """Decode one image to uint8 (H,W,3) for RGB or (H,W) for L, resized to size x size."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = _to_uint8(opened, mode)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BadImageError(f"{path}: corrupt or unreadable image ({error})") from error
    if size is not None and image.size != (size, size):
        resample = Image.Resampling.NEAREST if mode == "L" else Image.Resampling.BILINEAR
        image = image.resize((size, size), resample)
    return np.asarray(image)


def read_mask(path: Path, image_path: Path, size: int | None) -> np.ndarray:
    """Decode a ground-truth mask (nonzero = defect) to bool (H,W); its size must match the image's."""
    try:
        with Image.open(path) as mask, Image.open(image_path) as image:
            if mask.size != image.size:
                raise BadImageError(
                    f"{path}: mask size {mask.size[0]}x{mask.size[1]} differs from its image "
                    f"{image_path} ({image.size[0]}x{image.size[1]})"
                )
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BadImageError(f"{path}: corrupt or unreadable mask ({error})") from error
    return read_image(path, size, mode="L") > 0


@dataclass
class Sample:
    path: str
    label: int  # 0 normal, 1 anomalous
    defect: str
    mask_path: str | None = None
    page: str | None = None  # a tile's page (its file), row and column in the page's tile grid; None: whole image
    row: int | None = None
    col: int | None = None


@dataclass
class DecodedImages:
    """Decoded samples: images (N,H,W,3) uint8, masks (N,H,W) bool."""

    samples: list[Sample]
    images: np.ndarray
    masks: np.ndarray = field(repr=False)

    @classmethod
    def decode(cls, samples: Sequence[Sample], size: int | None) -> DecodedImages:
        images = [read_image(Path(s.path), size) for s in samples]
        masks = [
            read_mask(Path(s.mask_path), Path(s.path), size) if s.mask_path else np.zeros(i.shape[:2], bool)
            for s, i in zip(samples, images, strict=True)
        ]
        return cls(list(samples), np.stack(images), np.stack(masks))

    @classmethod
    def concat(cls, parts: Sequence[DecodedImages]) -> DecodedImages:
        return cls(
            [s for part in parts for s in part.samples],
            np.concatenate([part.images for part in parts]),
            np.concatenate([part.masks for part in parts]),
        )

    def subset(self, indices: Sequence[int]) -> DecodedImages:
        index = np.asarray(indices, dtype=np.int64)
        return DecodedImages([self.samples[i] for i in index], self.images[index], self.masks[index])


class ImageDataset(Dataset[dict[str, Any]]):
    """Items are dicts: image (3,H,W) float in [0,1], mask (1,H,W) float, label, defect, path, page, row, col."""

    def __init__(self, decoded: DecodedImages, transform: Callable[..., dict[str, Any]] | None = None) -> None:
        self.decoded = decoded
        self.transform = transform

    def __len__(self) -> int:
        return len(self.decoded.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.decoded.images[index]  # (H,W,3) uint8
        mask = self.decoded.masks[index].astype(np.uint8)  # (H,W)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        sample = self.decoded.samples[index]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0,
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0).float(),
            "label": sample.label,
            "defect": sample.defect,
            "path": sample.path,
            # a whole image is the one tile (0,0) of its own page, so scores stitch back the same way
            "page": sample.page or sample.path,
            "row": sample.row or 0,
            "col": sample.col or 0,
        }
