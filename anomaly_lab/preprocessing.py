"""How a decoded file becomes model input: the one rule of training, validation, predict and export.

A Preprocessing travels inside the trained model (and so inside every checkpoint), so a served model prepares
images exactly as it was trained. Decoding (any mode and bit depth to 8-bit RGB) is data.images.read_image's;
from its uint8 (H,W,3) on, everything is here:
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
- pixel values are divided by divide_by (255: [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomaly_lab.data.tiles import BORDERS, TileGrid
from anomaly_lab.errors import as_typed
from anomaly_lab.orientation import ORIENTS, apply_pose, find_pose, orient, turn_back
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

    def __post_init__(self) -> None:
        def positive_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        if not positive_int(self.image_size) or self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(f"image_size={as_typed(self.image_size)}: expected an integer from 1 to {MAX_IMAGE_SIZE}")
        for key in ("stride", "page_width"):
            if getattr(self, key) is not None and not positive_int(getattr(self, key)):
                raise ValueError(f"{key}={as_typed(getattr(self, key))}: expected null or a positive integer")
        if self.border not in BORDERS:
            raise ValueError(f"border={as_typed(self.border)}: expected one of {', '.join(BORDERS)}")
        if self.orient not in ORIENTS:
            raise ValueError(f"orient={as_typed(self.orient)}: expected one of {', '.join(ORIENTS)}")
        if self.orient != "none" and self.tiled:
            raise ValueError(
                f"orient={as_typed(self.orient)} turns whole images; tiled pages keep their pose (orient=none)"
            )
        if self.crop_height is not None:
            if not positive_int(self.crop_height) or self.crop_height > self.image_size:
                expected = f"expected null or an integer from 1 to image_size={self.image_size}"
                raise ValueError(f"crop_height={as_typed(self.crop_height)}: {expected}")
            if self.tiled:
                raise ValueError(f"crop_height={self.crop_height} crops whole images; tiled pages keep their tiles")
        if not isinstance(self.grayscale, bool) or not isinstance(self.tiled, bool):
            raise ValueError("grayscale and tiled must be true or false")
        if isinstance(self.divide_by, bool) or not isinstance(self.divide_by, int | float):
            raise ValueError(f"divide_by={as_typed(self.divide_by)}: expected a positive number (255.0)")
        if not 0 < self.divide_by < math.inf:
            raise ValueError(f"divide_by={as_typed(self.divide_by)}: expected a positive number (255.0)")

    def prepare(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A decoded file (H,W,3) uint8 and its mask (H,W) bool (None: all normal) at model geometry and colour.

        Returns (H,W,3) and (H,W) for whole images (input_shape), or the page (h,w,3) and (h,w) to cut into tiles.
        """
        return self.fit(*self.turn(image, mask))

    def decode_factors(self, width: int, height: int) -> tuple[int, int]:
        """Integer factors (x, y) by which a file of width x height is decoded smaller (box averages: PIL's
        Image.reduce) before `turn` and `fit`: (1, 1), the file as it is, for one of at most REDUCE_ABOVE_PIXELS or
        tiled pages at their own resolution (page_width=null); else as large as keeps each side at least
        REDUCING_GAP times what `fit` resizes it to (one factor for both sides where the aspect matters: tiled
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

    @overload
    def turn(self, image: np.ndarray, mask: np.ndarray, source: str = ...) -> tuple[np.ndarray, np.ndarray]: ...
    @overload
    def turn(self, image: np.ndarray, mask: None = None, source: str = ...) -> tuple[np.ndarray, None]: ...
    def turn(
        self, image: np.ndarray, mask: np.ndarray | None = None, source: str = "an image"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """prepare's first step: image (H,W,3) and mask (H,W) or None in the pose `orient` says, at the file's size
        (source: the file, for the warning of a part turned beyond the edge)."""
        return orient(image, mask, self.orient, source)

    def turn_with_pose(self, image: np.ndarray, source: str = "an image") -> tuple[np.ndarray, np.ndarray | None]:
        """turn for predict: image (H,W,3) uint8 turned, and the (2,3) map that turned it (None: not turned), which
        turn_back needs to put an anomaly map of the turned image back on the file."""
        pose = find_pose(image, self.orient, source)
        return apply_pose(image, None, pose)[0], pose

    def map_on_file(
        self, anomaly_map: np.ndarray, pose: np.ndarray | None, height: int, width: int, source: str = "an image"
    ) -> np.ndarray:
        """A whole image's anomaly map (H,W) (input_shape) on its file of height x width as it is: the rows
        crop_height left out put back (0: nothing scored there), resized, and turned back from the pose
        turn_with_pose found (0 where the file's pixels were turned beyond the edge; a warning names source if
        the map peaks beyond it).  # (height,width) float32"""
        square = self.uncrop(torch.from_numpy(np.asarray(anomaly_map, np.float32))).numpy()  # (S,S)
        return turn_back(resize_map(square, height, width), pose, source)

    def fit(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """prepare's second step, on a turned image: model geometry and colour (the module docstring's rule)."""
        height, width = image.shape[:2]
        if mask is None:
            mask = np.zeros((height, width), bool)
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
        """uint8 images (...,H,W,3) -> float model input (...,3,H,W)."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.require(images, requirements=["C", "W"]))  # a copy only if read-only
        return images.movedim(-1, -3).float() / float(self.divide_by)
