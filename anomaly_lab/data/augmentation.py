"""The thesis's rotation scheme: k extra rotated copies of every training image, computed once.

Random per-item augmentation (flips, colour jitter, random rotation) is an albumentations `Compose`
from `conf/augmentation/`; these copies are fixed, so they are decoded and rotated once and cached
with the split instead of being recomputed every epoch.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from anomaly_lab.data.images import DecodedImages


def rotation_angles(copies: int) -> list[float]:
    """The k angles of the k extra copies, evenly spaced over the circle: k=3 gives 90, 180, 270."""
    return [360.0 * j / (copies + 1) for j in range(1, copies + 1)]


def add_rotated_copies(decoded: DecodedImages, copies: int) -> DecodedImages:
    """The images followed by `copies` (>= 0, SplitDataModule checks) rotated versions of each (image and mask alike).

    Corners that a rotation brings in from outside are filled by reflecting the image (no black
    wedges the model would learn); multiples of 90 degrees on square images are exact.
    """
    if copies == 0 or not decoded.samples:
        return decoded
    parts = [decoded]
    for angle in rotation_angles(copies):
        rotate = A.Rotate(limit=(angle, angle), border_mode=cv2.BORDER_REFLECT_101, p=1.0)
        images, masks = [], []
        for image, mask in zip(decoded.images, decoded.masks, strict=True):
            out = rotate(image=image, mask=mask.astype(np.uint8))
            images.append(out["image"])
            masks.append(out["mask"] > 0)
        parts.append(DecodedImages(list(decoded.samples), np.stack(images), np.stack(masks)))
    return DecodedImages.concat(parts)
