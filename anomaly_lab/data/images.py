"""Image files in, uint8 arrays out: decoding with errors that name the file, and an in-memory dataset.

Images are decoded and resized once and kept as uint8, so epochs after the first cost no I/O. A whole image
resized to the model's size also keeps its ground-truth mask at the file's own resolution (`NativeMask`, one bit
per pixel, nothing for an all-clear mask), which the test's pixel metrics are measured against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from anomaly_lab.errors import ConfigError, as_typed
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.results import SYNTHETIC_DEFECT_PREFIX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# The default of `max_image_pixels`: 100 megapixels, 300 MB as 8-bit RGB (14000x14000 is twice that).
MAX_IMAGE_PIXELS = 100_000_000


class BadImageError(ValueError):
    """An input file that cannot be used; the message names the file and the problem."""


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadImageError(f"{folder}: empty folder (no {'/'.join(IMAGE_SUFFIXES)} images)")
    return files


def check_max_image_pixels(value: Any, key: str) -> int | None:
    """The pixel limit of a config key: a positive whole number, or None for no limit."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(
            f"{key}={as_typed(value)} is not a pixel limit: use a positive whole number or null (no limit)"
        )
    return value


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """PIL's decompression-bomb check (a warning, then an error naming neither file nor size) off while we open
    and decode: `read_image` checks its own limit from the header first."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


def _check_pixels(path: Path, image: Image.Image, max_pixels: int | None) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise BadImageError(
            f"{path}: {width}x{height} image ({width * height} pixels) is larger than max_image_pixels={max_pixels}"
            f" (a decompression bomb, or a page to shrink first; raise the limit to read it)"
        )


def _to_uint8(image: Image.Image, mode: str) -> Image.Image:
    # 16-bit grayscale is scaled by its type's range, not its content, so frames of one sensor keep their
    # relative brightness: v / 65535 * 255 (as OpenCV and scikit-image do; PIL's own convert clips to 255).
    # Mode "I" (32-bit, e.g. a 16-bit PNG from older Pillow, or a 32-bit TIFF) is taken as 16-bit: clipped to
    # [0, 65535] first.
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)  # (H,W)
        image = Image.fromarray((array / 65535.0 * 255.0 + 0.5).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P") and mode == "RGB":
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert(mode)


def read_image(
    path: Path, size: int | None, mode: str = "RGB", max_pixels: int | None = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Decode one image to uint8 (H,W,3) for RGB or (H,W) for L, resized to size x size.

    An image of more than max_pixels (None: any size) is refused from its header, before it is decoded.
    """
    try:
        with _own_pixel_limit(), Image.open(path) as opened:
            _check_pixels(path, opened, max_pixels)
            opened.load()
            image = _to_uint8(opened, mode)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BadImageError(f"{path}: corrupt or unreadable image ({error})") from error
    if size is not None and image.size != (size, size):
        resample = Image.Resampling.NEAREST if mode == "L" else Image.Resampling.BILINEAR
        image = image.resize((size, size), resample)
    return np.asarray(image)


def read_mask(path: Path, image_path: Path, size: int | None, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a ground-truth mask (nonzero = defect) to bool (H,W); its size must match the image's."""
    try:
        with _own_pixel_limit(), Image.open(path) as mask, Image.open(image_path) as image:
            if mask.size != image.size:
                raise BadImageError(
                    f"{path}: mask size {mask.size[0]}x{mask.size[1]} differs from its image "
                    f"{image_path} ({image.size[0]}x{image.size[1]})"
                )
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BadImageError(f"{path}: corrupt or unreadable mask ({error})") from error
    return read_image(path, size, mode="L", max_pixels=max_pixels) > 0


@dataclass(frozen=True)
class NativeMask:
    """A ground-truth mask at its file's own resolution, kept for the test's pixel metrics: height x width bits
    (np.packbits of the bool mask, row-major), or no bits when every pixel is clear (a good image costs nothing).

    Memory: one bit per pixel of an anomalous image, e.g. 32 KiB for a 512x512 MVTec mask.
    """

    height: int
    width: int
    bits: bytes | None = field(default=None, repr=False)

    @classmethod
    def of(cls, mask: np.ndarray) -> NativeMask:
        """Pack a bool (H,W) mask."""
        height, width = mask.shape
        return cls(height, width, np.packbits(mask, axis=None).tobytes() if mask.any() else None)

    def array(self) -> np.ndarray:
        """The mask, bool (H,W)."""
        if self.bits is None:
            return np.zeros((self.height, self.width), dtype=bool)
        bits = np.unpackbits(np.frombuffer(self.bits, dtype=np.uint8), count=self.height * self.width)
        return bits.reshape(self.height, self.width).astype(bool)


def native_mask(mask: np.ndarray, prepared: np.ndarray) -> NativeMask | None:
    """The file's mask (H,W) bool kept for testing when preprocessing changed its size, else None (the prepared
    mask is already the ground truth at the file's resolution)."""
    return None if mask.shape == prepared.shape else NativeMask.of(mask)


@dataclass
class Sample:
    path: str
    label: int  # 0 normal, 1 anomalous
    defect: str
    mask_path: str | None = None
    page: str | None = None  # a tile's page (its file), row and column in the page's tile grid; None: whole image
    row: int | None = None
    col: int | None = None
    # the ground-truth mask at the file's resolution where the prepared mask has another size (a whole image resized
    # to the model's); None: the prepared mask is the one (tiles, images already at model size, synthetic anomalies,
    # unknown masks)
    native_mask: NativeMask | None = field(default=None, repr=False, compare=False)

    @property
    def mask_known(self) -> bool:
        """Whether the mask is ground truth: a normal sample (all clear), a mask file, or a generated anomaly (exact
        mask). An anomalous sample without a mask file is anomalous everywhere (all ones), its true mask unknown."""
        return self.label == 0 or self.mask_path is not None or self.defect.startswith(SYNTHETIC_DEFECT_PREFIX)


@dataclass
class DecodedImages:
    """Decoded samples: images (N,H,W,3) uint8, masks (N,H,W) bool."""

    samples: list[Sample]
    images: np.ndarray
    masks: np.ndarray = field(repr=False)

    @classmethod
    def decode(
        cls,
        samples: Sequence[Sample],
        preprocessing: Preprocessing,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        skipped: list[str] | None = None,
    ) -> DecodedImages:
        """Decode samples; a bad file raises BadImageError, or with `skipped` is left out and its error appended."""
        kept: list[Sample] = []
        images: list[np.ndarray] = []  # (H,W,3) uint8 each
        masks: list[np.ndarray] = []  # (H,W) bool each
        for sample in samples:
            try:
                image = read_image(Path(sample.path), None, max_pixels=max_pixels)  # (H,W,3) uint8
                mask_path = Path(sample.mask_path) if sample.mask_path else None
                full = read_mask(mask_path, Path(sample.path), None, max_pixels) if mask_path else None  # (H,W) bool
                height, width = image.shape[:2]
                # the file's mask too, in the pose the maps will be in
                image, full = preprocessing.turn(image, full, sample.path)
                image, mask = preprocessing.fit(image, full)
                if not sample.mask_known:  # no mask file: anomalous everywhere
                    mask = np.ones_like(mask)
                elif not preprocessing.tiled and mask.shape != (height, width):  # resized: keep the file's mask
                    native = NativeMask.of(full) if full is not None else NativeMask(height, width)
                    sample = replace(sample, native_mask=native)
            except BadImageError as error:
                if skipped is None:
                    raise
                skipped.append(str(error))
                continue
            kept.append(sample)
            images.append(image)
            masks.append(mask)
        if not kept:
            raise BadImageError(f"no usable image of {len(samples)}; skipped as bad:\n" + "\n".join(skipped or []))
        return cls(kept, np.stack(images), np.stack(masks))

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


NATIVE_MASK_KEY = "mask_native"


def collate_samples(items: list[dict[str, Any]]) -> dict[str, Any]:
    """torch's default collate, except that native-resolution masks (sizes may differ) stay a list of (1,h,w)."""
    native = [item[NATIVE_MASK_KEY] for item in items] if items and NATIVE_MASK_KEY in items[0] else None
    batch: dict[str, Any] = default_collate([{k: v for k, v in item.items() if k != NATIVE_MASK_KEY} for item in items])
    if native is not None:
        batch[NATIVE_MASK_KEY] = native
    return batch


class ImageDataset(Dataset[dict[str, Any]]):
    """Items are dicts: image (3,H,W) float (preprocessing.to_tensor), mask (1,H,W) float, label, mask_known,
    defect, path, page, row, col; with native_masks=True also mask_native, the ground-truth mask (1,h,w) bool at the
    file's own resolution (the mask itself where that is the model's: tiles, unknown masks); batch them with
    `collate_samples`."""

    def __init__(
        self,
        decoded: DecodedImages,
        preprocessing: Preprocessing,
        transform: Callable[..., dict[str, Any]] | None = None,
        native_masks: bool = False,
    ) -> None:
        self.decoded = decoded
        self.preprocessing = preprocessing
        self.transform = transform
        self.native_masks = native_masks

    def __len__(self) -> int:
        return len(self.decoded.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.decoded.images[index]  # (H,W,3) uint8
        mask = self.decoded.masks[index].astype(np.uint8)  # (H,W)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        sample = self.decoded.samples[index]
        mask_tensor = torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0)  # (1,H,W) uint8
        item = {
            "image": self.preprocessing.to_tensor(image),  # (3,H,W)
            "mask": mask_tensor.float(),
            "label": sample.label,
            "mask_known": sample.mask_known,  # False: an anomalous sample whose true mask is unknown (all ones)
            "defect": sample.defect,
            "path": sample.path,
            # a whole image is the one tile (0,0) of its own page, so scores stitch back the same way
            "page": sample.page or sample.path,
            "row": sample.row or 0,
            "col": sample.col or 0,
        }
        if self.native_masks:  # (1,h,w) bool; the transform (training only) is not applied to it
            native = sample.native_mask if sample.mask_known else None
            item[NATIVE_MASK_KEY] = (mask_tensor > 0) if native is None else torch.from_numpy(native.array())[None]
        return item
