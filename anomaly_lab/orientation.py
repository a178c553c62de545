"""Turning an elongated part to one pose before it is scored: screws, pins or capsules photographed at any angle.

A small inpainting net trained within a CPU budget learns one pose of a part far better than every pose: on
MVTec AD screw, which lies at any angle, the bottle recipe scores test image AUROC 0.50 on the images as they
are and about 0.7 on the same images turned to one pose (docs/benchmarks.md, "Screw"). The pose comes from the
image alone, so training, validation and predict turn every image the same way:
- the part is the minority side of Otsu's threshold on luminance (a dark part on a light ground, or the reverse);
- its principal axis (second moments, about the centroid) turns horizontal, and its extent moves to the centre;
- its wider end goes to the left, by a half turn, never a mirror (a mirror would change a thread's hand).
Round parts, or parts that fill most of the image, have no stable axis: find_pose still turns them (by the noise
of near-equal moments, the same way at training and predict), so orient=none is their setting; make tune starts
from a turn only for a long part (part_geometry), though its search may draw one for any part.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import overload

import cv2
import numpy as np

ORIENTS = ("none", "principal_axis")

log = logging.getLogger(__name__)


def part_mask(image: np.ndarray) -> np.ndarray:
    """The part's pixels (H,W) bool of an image (H,W,3) uint8: the minority side of Otsu's threshold."""
    luminance = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)  # (H,W) uint8
    _, above = cv2.threshold(luminance, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    part = above.astype(bool)
    return part if part.sum() <= part.size / 2 else ~part


def principal_axis_pose(part: np.ndarray) -> np.ndarray | None:
    """The (2,3) affine map that turns an image whose part is `part` (H,W) bool to the module docstring's pose;
    None: no part."""
    height, width = part.shape
    moments = cv2.moments(part.astype(np.uint8), binaryImage=True)
    if moments["m00"] < 2:  # a flat image: nothing to turn
        return None
    centre_x, centre_y = moments["m10"] / moments["m00"], moments["m01"] / moments["m00"]
    axis = 0.5 * math.atan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"])  # radians, y pointing down
    pose = cv2.getRotationMatrix2D((centre_x, centre_y), math.degrees(axis), 1.0)  # axis -> +x about the centroid
    rows, columns = np.nonzero(part)
    turned = pose[:, :2] @ np.stack([columns, rows]) + pose[:, 2:]  # (2,n) x, y of the part's pixels, turned
    # the part's extent, not its centroid, to the centre: a part with a heavy end still fits if it is shorter
    # than the image is wide
    shift = np.array([width - 1, height - 1]) / 2 - (turned.min(axis=1) + turned.max(axis=1)) / 2
    pose[:, 2] += shift
    column = np.clip(np.rint(turned[0] + shift[0]), 0, width - 1).astype(np.int64)
    window = max(1, width // 32)
    part_width = np.convolve(np.bincount(column, minlength=width), np.ones(window) / window, mode="same")  # (W,)
    if int(part_width.argmax()) > (width - 1) / 2:  # wider end on the right: half a turn about the image centre
        pose = -pose
        pose[:, 2] += (width - 1, height - 1)
    return pose


def find_pose(image: np.ndarray, how: str, source: str = "an image") -> np.ndarray | None:
    """The (2,3) affine map that turns image (H,W,3) uint8 to the pose `how` says (ORIENTS, which Preprocessing
    checks); None: left as it is (how="none", or no part found).

    The turned image keeps the file's size, so a part longer than the image is wide loses its ends beyond the
    edge: a warning names `source` and the share lost, since what lies there (a defect too) is not scored.
    """
    if how == "none":
        return None
    part = part_mask(image)  # (H,W) bool
    pose = principal_axis_pose(part)
    if pose is None:
        return None
    height, width = part.shape
    rows, columns = np.nonzero(part)
    x, y = np.rint(pose[:, :2] @ np.stack([columns, rows]) + pose[:, 2:])  # the part's pixels, turned
    lost = 1 - np.count_nonzero((x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)) / len(x)
    if lost > 0.01:
        log.warning(
            "%s: %.0f%% of its part turned beyond the image edge (orient=principal_axis); not scored",
            source,
            100 * lost,
        )
    return pose


@overload
def apply_pose(image: np.ndarray, mask: np.ndarray, pose: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def apply_pose(image: np.ndarray, mask: None, pose: np.ndarray | None) -> tuple[np.ndarray, None]: ...
def apply_pose(
    image: np.ndarray, mask: np.ndarray | None, pose: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """image (H,W,3) uint8 and its mask (H,W) bool or None, both turned by pose (find_pose); sizes kept."""
    if pose is None:
        return image, mask
    height, width = image.shape[:2]
    # the ground turned in from beyond the edge repeats the edge's pixels: no corner edges for the net to call
    # anomalous (a flat fill draws one), but a part touching the edge is lengthened there
    turned = cv2.warpAffine(image, pose, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if mask is None:
        return turned, None
    turned_mask = cv2.warpAffine(mask.astype(np.uint8), pose, (width, height), flags=cv2.INTER_NEAREST)
    return turned, turned_mask.astype(bool)


def turn_back(anomaly_map: np.ndarray, pose: np.ndarray | None, source: str = "an image") -> np.ndarray:
    """An anomaly map (H,W) float32 of a turned image, put back on the file as it is (same size): where the file's
    pixels were turned beyond the edge, nothing was scored, and the map is 0 there.

    The turned image's corners hold ground turned in from beyond the file's edge, which no pixel of the file
    shows: if the map peaks there, a warning names `source` (its score may come from there, its map cannot).
    """
    if pose is None:
        return anomaly_map
    height, width = anomaly_map.shape
    peak = np.unravel_index(int(anomaly_map.argmax()), anomaly_map.shape)
    inverse = cv2.invertAffineTransform(pose)
    x, y = inverse @ np.array([peak[1], peak[0], 1.0])  # the peak's place in the file
    if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
        log.warning(
            "%s: its anomaly map peaks in the ground turned in from beyond the file's edge (orient=principal_axis), "
            "which the map drawn on the file cannot show",
            source,
        )
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(anomaly_map, pose, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT)


# A part whose principal axis is this many times its width (square root of the second moments' ratio) is long:
# MVTec AD screw's good images 4.9 (median of 32), bottle's 1.0 (round).
ELONGATED = 2.0


@dataclass(frozen=True)
class PartGeometry:
    """What a few good images say of their part's shape (medians over the images; band: the 90th percentile)."""

    elongation: float  # principal axis length over width, from the part's second moments
    cover: float  # share of the image the part covers
    band: float  # share of the image's rows the part spans once turned (orient=principal_axis)
    images: int

    @property
    def elongated(self) -> bool:
        """A long part: worth turning to one pose, and looking at the band of rows it spans once turned."""
        return self.elongation >= ELONGATED and self.cover <= 0.5

    def describe(self) -> str:
        shape = f"{self.elongation:.1f} times as long as wide, covering {self.cover:.0%} of the image"
        if not self.elongated:
            return f"no long part (round, or filling the image): {shape} (medians of {self.images} images)"
        return (
            f"a long part: {shape}; turned to one pose it spans {self.band:.0%} of the rows (medians and 90th "
            f"percentile of {self.images} images)"
        )


def part_geometry(images: list[np.ndarray]) -> PartGeometry | None:
    """The PartGeometry of images (each (H,W,3) uint8, the part found as `part_mask` finds it); None: no part."""
    found = []
    for image in images:
        part = part_mask(image)  # (H,W) bool
        moments = cv2.moments(part.astype(np.uint8), binaryImage=True)
        pose = principal_axis_pose(part)
        if moments["m00"] < 2 or pose is None:
            continue
        spread = np.array([[moments["mu20"], moments["mu11"]], [moments["mu11"], moments["mu02"]]]) / moments["m00"]
        low, high = np.linalg.eigvalsh(spread)
        rows, columns = np.nonzero(part)
        turned_rows = pose[1, :2] @ np.stack([columns, rows]) + pose[1, 2]  # (n,)
        band = (np.percentile(turned_rows, 99.5) - np.percentile(turned_rows, 0.5)) / part.shape[0]
        found.append((math.sqrt(high / max(low, 1e-9)), float(part.mean()), float(band)))
    if not found:
        return None
    values = np.array(found)  # (n,3)
    return PartGeometry(
        float(np.median(values[:, 0])),
        float(np.median(values[:, 1])),
        float(np.percentile(values[:, 2], 90)),
        len(found),
    )
