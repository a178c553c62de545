"""Image files in, uint8 arrays out: decoding with errors that name the file, and an in-memory dataset.

Images are decoded and prepared once (Preprocessing.load) and kept as uint8, so epochs after the first cost no
I/O. A whole image resized to the model's size also keeps its ground-truth mask at the file's own resolution
(`NativeMask`, one bit per pixel, nothing for an all-clear mask), which the test's pixel metrics are measured
against.

A file of more than 4 megapixels that the model sees much smaller is decoded at reduced size
(Preprocessing.decode_factors: Image.reduce's box averages, a JPEG by libjpeg's own scaling, its mask nearest), so
memory is that of one decoded file (a 98-megapixel PNG: about 300 MB as RGB) rather than of float copies of it; its
"file's resolution" above is then that reduced size.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from anomaly_lab.errors import ConfigError, as_typed
from anomaly_lab.results import SYNTHETIC_DEFECT_PREFIX

if TYPE_CHECKING:  # preprocessing decodes through this module
    from anomaly_lab.preprocessing import Preprocessing

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


def _check_regular_file(path: Path) -> None:
    """A BadImageError for a path that exists but is no regular file: PIL's open of a FIFO named x.png waits for
    a writer forever (a run hung), a device is read without end; a missing file is left to open to name."""
    if path.exists() and not path.is_file():
        raise BadImageError(f"{path}: not a regular file (a FIFO, device or folder); remove it from the images")


def _check_pixels(path: Path, image: Image.Image, max_pixels: int | None) -> None:
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise BadImageError(
            f"{path}: {width}x{height} image ({width * height} pixels) is larger than max_image_pixels={max_pixels}"
            f" (a decompression bomb, or a page to shrink first; raise the limit to read it)"
        )


# 16-bit value v as 8-bit: v / 65535 * 255, rounded (one table look-up per pixel, no float copy of a large file)
_SIXTEEN_TO_EIGHT_BIT = (np.arange(65536) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
_ROWS_PER_STEP = 1024


def _eight_bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit integer images as 8-bit "L"; any other image as it is.

    16-bit grayscale is scaled by its type's range, not its content, so frames of one sensor keep their relative
    brightness: v / 65535 * 255 (as OpenCV and scikit-image do; PIL's own convert clips to 255). Mode "I" (32-bit,
    e.g. a 16-bit PNG from older Pillow, or a 32-bit TIFF) is taken as 16-bit: clipped to [0, 65535] first.
    """
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        return image
    values = np.asarray(image)  # (H,W) uint16 or int32
    eight_bit = np.empty(values.shape, np.uint8)  # (H,W)
    for top in range(0, len(values), _ROWS_PER_STEP):  # a band of rows at a time: no int64 copy of the whole file
        rows = values[top : top + _ROWS_PER_STEP]
        eight_bit[top : top + _ROWS_PER_STEP] = _SIXTEEN_TO_EIGHT_BIT[np.clip(rows, 0, 65535)]
    return Image.fromarray(eight_bit)


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    """An 8-bit image in mode: RGBA, LA and palette images composited on white for RGB."""
    if image.mode in ("RGBA", "LA", "P") and mode == "RGB":
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image if image.mode == mode else image.convert(mode)


def reduced_size(width: int, height: int, factors: tuple[int, int]) -> tuple[int, int]:
    """The (width, height) Image.reduce(factors) makes of a file: each side divided, rounded up."""
    return -(-width // factors[0]), -(-height // factors[1])


def _reduced(image: Image.Image, original: tuple[int, int], factors: tuple[int, int], mode: str) -> Image.Image:
    """An 8-bit image of a file of size original, reduced by factors: box averages (a JPEG already decoded at a
    smaller scale by draft is box-resized the rest of the way). Palette and 1-bit images are turned into values
    first (an average of palette indices is no colour); masks (mode "L") are taken nearest, so they stay masks."""
    target = reduced_size(*original, factors)
    if image.size == target:
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if mode == "RGB" else "L")
    elif image.mode in ("PA", "1"):
        image = image.convert(mode)
    if mode == "L":
        return image.convert("L").resize(target, Image.Resampling.NEAREST)
    if image.size == original:
        return image.reduce(factors)
    return image.resize(target, Image.Resampling.BOX)


def decode_file(
    path: Path, mode: str, max_pixels: int | None, reduce_for: Preprocessing | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """The file decoded to 8 bits in mode (uint8 (H,W,3) for RGB, (H,W) for L), reduced as
    reduce_for.decode_factors says (None: at its own size; mode L, masks, nearest), and the file's own (width,
    height). An image of more than max_pixels is refused from its header."""
    _check_regular_file(path)
    try:
        with _own_pixel_limit(), Image.open(path) as opened:
            _check_pixels(path, opened, max_pixels)
            original = opened.size
            factors = reduce_for.decode_factors(*original) if reduce_for is not None else (1, 1)
            if factors != (1, 1) and mode != "L":
                opened.draft(None, reduced_size(*original, factors))  # JPEG: decoded at 1/2, 1/4 or 1/8 scale
            opened.load()
            image = _eight_bit(opened)
            if factors != (1, 1):
                image = _reduced(image, original, factors, mode)
            image = _in_mode(image, mode)
            return np.asarray(image), original  # a copy: the file's image is closed on leaving
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BadImageError(f"{path}: corrupt or unreadable image ({error})") from error


def read_image(
    path: Path, mode: str = "RGB", max_pixels: int | None = MAX_IMAGE_PIXELS, reduce_for: Preprocessing | None = None
) -> np.ndarray:
    """Decode one image to uint8 (H,W,3) for RGB or (H,W) for L, at its own size (model input: Preprocessing.load).

    An image of more than max_pixels (None: any size) is refused from its header, before it is decoded. With
    reduce_for, a large file is decoded at the reduced size that preprocessing's `decode_factors` allows.
    """
    return decode_file(path, mode, max_pixels, reduce_for)[0]


def read_mask(
    path: Path, image_path: Path, max_pixels: int | None = MAX_IMAGE_PIXELS, reduce_for: Preprocessing | None = None
) -> np.ndarray:
    """Decode a ground-truth mask (nonzero = defect) to bool (H,W); its size must match the image's. With
    reduce_for, a large mask is taken (nearest) at its image's reduced size."""
    _check_regular_file(path)
    _check_regular_file(image_path)
    try:
        with _own_pixel_limit(), Image.open(path) as mask, Image.open(image_path) as image:
            if mask.size != image.size:
                raise BadImageError(
                    f"{path}: mask size {mask.size[0]}x{mask.size[1]} differs from its image "
                    f"{image_path} ({image.size[0]}x{image.size[1]})"
                )
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise BadImageError(f"{path}: corrupt or unreadable mask ({error})") from error
    return read_image(path, "L", max_pixels, reduce_for) > 0


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
                mask_path = Path(sample.mask_path) if sample.mask_path else None
                prepared = preprocessing.load(Path(sample.path), mask_path, max_pixels)
                mask = prepared.mask  # (h,w) bool
                if not sample.mask_known:  # no mask file: anomalous everywhere
                    mask = np.ones_like(mask)
                elif prepared.native_mask is not None:  # resized: keep the file's mask for testing
                    sample = replace(sample, native_mask=NativeMask.of(prepared.native_mask))
            except BadImageError as error:
                if skipped is None:
                    raise
                skipped.append(str(error))
                continue
            kept.append(sample)
            images.append(prepared.image)
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


# An image whose luminance varies less than this (standard deviation, of 255) is near-constant: blank, or a file
# decoded to one grey; one 99% of whose pixels are darker than NEAR_BLACK_LEVEL (of 255) is near-black, e.g. a
# 16-bit file of small values. Either holds next to nothing to learn from, and scores as anomalous.
NEAR_CONSTANT_SPREAD = 2.0
NEAR_BLACK_LEVEL = 10.0
_LUMINANCE = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L"
_CHECKED_PIXELS = 1 << 16  # a larger image is looked at every k-th row and column
FAINT_ADVICE = (
    "a 16-bit image is scaled by its type's range (v / 65535 * 255) and a 32-bit one taken as 16-bit, so small "
    "values decode nearly black, and a float image is cut to whole numbers 0-255: convert such files to 8-bit over "
    "their own range first (e.g. PIL's ImageOps.autocontrast); remove blank (all-black, all-white) files, or check "
    "that they are what you meant"
)


def faint_content(image: np.ndarray) -> str | None:
    """Why an image (H,W,3) or the tiles of one page (N,H,W,3), uint8, hold next to nothing to learn from or to
    score: "near-constant (...)" or "near-black (...)"; None when they hold enough."""
    rows = image.reshape(-1, image.shape[-2], image.shape[-1])  # (N*H,W,3)
    step = max(1, math.ceil(math.sqrt(rows.shape[0] * rows.shape[1] / _CHECKED_PIXELS)))
    luminance = rows[::step, ::step].astype(np.float32) @ _LUMINANCE  # (h,w)
    if float(luminance.std()) < NEAR_CONSTANT_SPREAD:
        return f"near-constant (every pixel about {float(luminance.mean()):.0f}/255)"
    level = float(np.percentile(luminance, 99))
    if level < NEAR_BLACK_LEVEL:
        return f"near-black (99% of its pixels at or below {level:.0f}/255)"
    return None


def warn_faint_files(splits: dict[str, DecodedImages], listed: int = 20) -> dict[str, str]:
    """One warning naming the files of the splits (whole images, or pages of tiles) that `faint_content` flags,
    with what to do; returns them, {file: why}."""
    tiles_of: dict[str, list[tuple[DecodedImages, int]]] = {}
    for split in splits.values():
        for index, sample in enumerate(split.samples):
            tiles_of.setdefault(sample.page or sample.path, []).append((split, index))
    found: dict[str, str] = {}
    for file, places in tiles_of.items():
        why = faint_content(np.stack([split.images[index] for split, index in places]))  # (N,H,W,3)
        if why is not None:
            found[file] = why
    if found:
        lines = [f"{file}: {why}" for file, why in list(found.items())[:listed]]
        if len(found) > listed:
            lines.append(f"... and {len(found) - listed} more")
        warnings.warn(
            f"{len(found)} of {len(tiles_of)} images are near-constant or near-black, next to nothing to learn from "
            f"(and scored as anomalous):\n" + "\n".join(lines) + f"\nWhat to do: {FAINT_ADVICE}",
            stacklevel=3,
        )
    return found


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
