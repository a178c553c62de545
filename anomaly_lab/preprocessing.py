"""How a decoded file becomes model input: the one rule of training, validation, predict and export.

A Preprocessing travels inside the trained model (and so inside every checkpoint), so a served model prepares
images exactly as it was trained. `Preprocessing.load(path, mask_path)` is the one call every datamodule and
predict make (`prepare` the same for an image already decoded in memory); decoding (any mode and bit depth to
8-bit RGB) is data.images'; from its uint8 (H,W,3) on, everything is here:
- a file of more than REDUCE_ABOVE_PIXELS (4 megapixels) that the model sees much smaller is decoded at reduced size
  (`decode_factors`: integer factors, box averages, PIL's Image.reduce), still REDUCING_GAP times larger than
  what the steps below resize it to, so a 100-megapixel file takes the memory of its decoding only; what follows
  (orient, masks, predict's maps and outputs) is at that decoded size;
- orient="principal_axis" first turns a whole image so its part lies in one pose (orientation.py), at the file's
  resolution, masks alike (so ground truth at the file's resolution is in the pose the maps are);
- whole images are resized to image_size x image_size (bilinear, aspect not kept; masks nearest), then
  crop_height (if set) keeps the centre band of that many rows: a long part that orient laid along the centre
  row at a resolution the square would not afford (model input crop_height x image_size, H x W);
- tiled pages keep their size, or are scaled to page_width (aspect kept), then cut into image_size tiles
  `stride` apart (border: drop or pad the remainder);
- grayscale=true turns RGB into luminance replicated over 3 channels (models stay 3-channel);
- pixel values are divided by divide_by (255: [0, 1]), then normalised per channel by mean and std if set
  (a pretrained encoder's statistics, set by its model option).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomaly_lab.data.images import MAX_IMAGE_PIXELS, decode_file, read_mask
from anomaly_lab.data.tiles import BORDERS, TileGrid
from anomaly_lab.errors import as_typed
from anomaly_lab.orientation import ORIENTS, apply_pose, find_pose, turn_back
from anomaly_lab.registry import checkpoint_class


def resize_page(image: np.ndarray, mask: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Image bilinear, mask nearest, to width x height."""
    if image.shape[:2] == (height, width):
        return image, mask
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    resized_mask = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(resized), np.asarray(resized_mask)


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map (h,w) resized bilinearly to (height,width).  # (height,width) float32"""
    if anomaly_map.shape == (height, width):
        return anomaly_map.astype(np.float32)
    resized = F.interpolate(torch.from_numpy(anomaly_map)[None, None].float(), size=(height, width), mode="bilinear")
    return resized[0, 0].numpy()


def grayscale_rgb(image: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R 601, as PIL's "L") replicated over 3 channels.  # (H,W,3) uint8"""
    luminance = np.asarray(Image.fromarray(image).convert("L"))
    return np.repeat(luminance[..., None], 3, axis=-1)


# Files of more pixels than this are decoded at reduced size where the model sees them much smaller (decode_factors);
# smaller ones (every MVTec AD image, 1024x1024 at most) are decoded whole, as they always were.
REDUCE_ABOVE_PIXELS = 2048 * 2048
# A reduced file keeps at least this many times the side it is then resized to: PIL's `reducing_gap` (Image.resize),
# from 3 on "indistinguishable from fair resampling in most cases".
REDUCING_GAP = 3

# model input side in pixels: larger is a typo or a crafted checkpoint (one pass at 4096 px takes gigabytes; larger
# parts are tiled)
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class PreparedImage:
    """One image as the rule prepares it (Preprocessing.load, Preprocessing.prepare)."""

    decoded: np.ndarray  # (H,W,3) uint8 as decoded (a large file at reduced size): outputs are drawn on it
    image: np.ndarray  # (h,w,3) uint8: the model input (input_shape), or a tiled page to cut into tiles
    mask: np.ndarray  # (h,w) bool: the mask at the size of image (all clear without a mask)
    # (H,W) bool: the mask at the decoded size, in the pose the maps are put back from (the ground truth of the
    # pixel metrics); None where `mask` is already that (tiled pages, whole images decoded at the model's size)
    native_mask: np.ndarray | None
    pose: np.ndarray | None  # (2,3): the map orient turned the decoded image by (None: not turned)
    file_size: tuple[int, int]  # the file's own (width, height); the decoded size for an image given in memory


@dataclass(frozen=True)
@checkpoint_class
class Preprocessing:
    """The settings of the rule in the module docstring; the datamodules, predict and export apply them."""

    image_size: int
    grayscale: bool = False
    tiled: bool = False
    stride: int | None = None  # tiled: pixels between tiles; None = image_size
    border: str = "drop"  # tiled: drop | pad the remainder a whole tile does not cover
    page_width: int | None = None  # tiled: scale each page to this width first (aspect kept)
    divide_by: float = 255.0
    orient: str = "none"  # whole images: none | principal_axis (turn each part to one pose first)
    crop_height: int | None = None  # whole images: keep the centre crop_height rows; None: the whole square
    # per channel (R,G,B), on the divided scale: inputs become (x - mean) / std, as a pretrained encoder expects;
    # None: no normalisation
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        for key in ("mean", "std"):  # a list from YAML or a checkpoint's spec: kept as a tuple (hashable, frozen)
            value = getattr(self, key)
            numbers = value is None or (
                not isinstance(value, str | bytes)
                and len(value) == 3
                and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            )
            if not numbers or (key == "std" and value is not None and min(value) <= 0):
                positive = " positive" if key == "std" else ""
                raise ValueError(f"{key}={as_typed(value)}: expected null or 3{positive} numbers (R, G, B)")
            object.__setattr__(self, key, None if value is None else tuple(float(v) for v in value))
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"mean={as_typed(self.mean)} and std={as_typed(self.std)}: set both or neither")

        def positive_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        if not positive_int(self.image_size) or self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(
                f"image_size={as_typed(self.image_size)}: must be an integer from 1 to {MAX_IMAGE_SIZE} "
                "(e.g. 64, 128, 256)"
            )
        for key in ("stride", "page_width"):
            if getattr(self, key) is not None and not positive_int(getattr(self, key)):
                raise ValueError(f"{key}={as_typed(getattr(self, key))}: expected null or a positive integer")
        if self.border not in BORDERS:
            raise ValueError(f"border={as_typed(self.border)}: must be one of {', '.join(BORDERS)}")
        if self.orient not in ORIENTS:
            raise ValueError(f"orient={as_typed(self.orient)}: must be one of {', '.join(ORIENTS)}")
        if self.orient != "none" and self.tiled:
            raise ValueError(
                f"orient={as_typed(self.orient)} turns whole images; tiled pages keep their pose (orient=none)"
            )
        if self.crop_height is not None:
            if not positive_int(self.crop_height) or self.crop_height > self.image_size:
                allowed = f"a positive integer at most image_size={self.image_size} (rows of the resized image) or null"
                raise ValueError(f"crop_height={as_typed(self.crop_height)}: must be {allowed}")
            if self.tiled:
                raise ValueError(
                    f"crop_height={self.crop_height}: crops whole images; tiled pages keep their tiles (tiled=true): "
                    "set crop_height=null"
                )
        if not isinstance(self.grayscale, bool) or not isinstance(self.tiled, bool):
            raise ValueError("grayscale and tiled must be true or false")
        if isinstance(self.divide_by, bool) or not isinstance(self.divide_by, int | float):
            raise ValueError(f"divide_by={as_typed(self.divide_by)}: expected a positive number (255.0)")
        if not 0 < self.divide_by < math.inf:
            raise ValueError(f"divide_by={as_typed(self.divide_by)}: expected a positive number (255.0)")

    def load(
        self, path: Path, mask_path: Path | None = None, max_pixels: int | None = MAX_IMAGE_PIXELS
    ) -> PreparedImage:
        """A file and its mask file (nonzero = defect, its size checked against the image's; None: all clear)
        decoded and prepared: a large file at the reduced size `decode_factors` allows, its mask nearest. An image
        of more than max_pixels (None: any size) is refused from its header; BadImageError names the file."""
        image, file_size = decode_file(path, "RGB", max_pixels, self)  # (H,W,3) uint8
        mask = read_mask(mask_path, path, max_pixels, self) if mask_path is not None else None  # (H,W) bool
        return self.prepare(image, mask, str(path), file_size)

    def prepare(
        self,
        image: np.ndarray,
        mask: np.ndarray | None = None,
        source: str = "an image",
        file_size: tuple[int, int] | None = None,
    ) -> PreparedImage:
        """An image decoded in memory (H,W,3) uint8 and its mask (H,W) bool (None: all clear) prepared as `load`
        prepares a file: turned to the pose `orient` says at the decoded size (the mask alike, so ground truth is
        in the pose the maps are; source names the image in the warning of a part turned beyond the edge), then
        at model geometry and colour. file_size: the file's (width, height), if it was decoded smaller."""
        height, width = image.shape[:2]
        pose = find_pose(image, self.orient, source)
        turned, turned_mask = apply_pose(image, mask, pose)
        if turned_mask is None:
            turned_mask = np.zeros((height, width), bool)
        fitted, fitted_mask = self._fit(turned, turned_mask)
        native = None if self.tiled or fitted_mask.shape == turned_mask.shape else turned_mask
        return PreparedImage(image, fitted, fitted_mask, native, pose, file_size or (width, height))

    def decode_factors(self, width: int, height: int) -> tuple[int, int]:
        """Integer factors (x, y) by which a file of width x height is decoded smaller (box averages: PIL's
        Image.reduce) before `prepare`: (1, 1), the file as it is, for one of at most REDUCE_ABOVE_PIXELS or
        tiled pages at their own resolution (page_width=null); else as large as keeps each side at least
        REDUCING_GAP times what `prepare` resizes it to (one factor for both sides where the aspect matters: tiled
        pages scaled to page_width, and orient, which finds the pose on the image as decoded)."""
        if width * height <= REDUCE_ABOVE_PIXELS:
            return 1, 1
        if self.tiled:
            if self.page_width is None:
                return 1, 1
            factor = max(1, width // (REDUCING_GAP * self.page_width))
            return factor, factor
        across = max(1, width // (REDUCING_GAP * self.image_size))
        down = max(1, height // (REDUCING_GAP * self.image_size))
        if self.orient != "none":
            across = down = min(across, down)
        return across, down

    def map_on_file(
        self, anomaly_map: np.ndarray, pose: np.ndarray | None, height: int, width: int, source: str = "an image"
    ) -> np.ndarray:
        """A whole image's anomaly map (H,W) (input_shape) on its file of height x width as it is: the rows
        crop_height left out put back (0: nothing scored there), resized, and turned back from the pose
        `prepare` found (0 where the file's pixels were turned beyond the edge; a warning names source if
        the map peaks beyond it).  # (height,width) float32"""
        square = self.uncrop(torch.from_numpy(np.asarray(anomaly_map, np.float32))).numpy()  # (S,S)
        return turn_back(resize_map(square, height, width), pose, source)

    def _fit(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """prepare's second step, on a turned image (H,W,3) and mask (H,W): model geometry and colour (the module
        docstring's rule)."""
        height, width = image.shape[:2]
        if not self.tiled:
            image, mask = resize_page(image, mask, self.image_size, self.image_size)
            top = self.band_top
            image, mask = image[top : top + self.input_shape[0]], mask[top : top + self.input_shape[0]]
        elif self.page_width is not None:
            image, mask = resize_page(image, mask, self.page_width, max(1, round(height * self.page_width / width)))
        return (grayscale_rgb(image) if self.grayscale else image), mask

    @property
    def input_shape(self) -> tuple[int, int]:
        """(H, W) of a model input: (crop_height or image_size, image_size)."""
        return (self.crop_height or self.image_size, self.image_size)

    @property
    def band_top(self) -> int:
        """The first row crop_height keeps of the image_size x image_size image (0: no crop)."""
        return (self.image_size - self.input_shape[0]) // 2

    def uncrop(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps of model inputs (...,H,W) placed in the image_size x image_size image they were cut from, 0 in the
        rows crop_height left out (nothing scored there).  # (...,S,S)"""
        height = self.input_shape[0]
        if height == self.image_size:
            return maps
        bottom = self.image_size - height - self.band_top
        return F.pad(maps, (0, 0, self.band_top, bottom))

    def tile_grid(self, height: int, width: int) -> TileGrid:
        """The tiles of a prepared page (TileSizeError for a page smaller than a tile)."""
        return TileGrid.of_page(height, width, self.image_size, self.stride, self.border)

    def to_tensor(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images (...,H,W,3) -> float model input (...,3,H,W), normalised by mean and std if set."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.require(images, requirements=["C", "W"]))  # a copy only if read-only
        scaled = images.movedim(-1, -3).float() / float(self.divide_by)
        if self.mean is None or self.std is None:
            return scaled
        mean, std = torch.tensor(self.mean).view(3, 1, 1), torch.tensor(self.std).view(3, 1, 1)
        return (scaled - mean) / std
