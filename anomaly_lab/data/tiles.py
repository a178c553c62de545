"""Pages cut into tiles and per-tile scores stitched back into the page's grid.

The thesis scores 64x64 tiles of large pages (notes, sea photographs) and shows a page's per-tile
error grid; these functions do both directions with plain numpy, so datamodules, evaluation and
figures share one definition of where tile (row, col) lies on its page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BORDERS = ("drop", "pad")


class TileSizeError(ValueError):
    """The tile does not fit on the page."""


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one page lie: tile (row, col) starts at pixel (row * stride, col * stride)."""

    rows: int
    cols: int
    tile_size: int
    stride: int

    @classmethod
    def of_page(
        cls, height: int, width: int, tile_size: int = 64, stride: int | None = None, border: str = "drop"
    ) -> TileGrid:
        """The grid of a height x width page.

        border="drop" keeps only tiles that lie wholly on the page (the right and bottom remainders
        are not scored); border="pad" adds one more row/column of tiles that reach past the page,
        padded by `cut_tiles`. A tile larger than the page is an error either way. Preprocessing refuses any
        other border.
        """
        stride = stride or tile_size
        if tile_size <= 0 or stride <= 0:
            raise ValueError(f"tile_size and stride must be positive, got {tile_size} and {stride}")
        if tile_size > height or tile_size > width:
            raise TileSizeError(f"a {tile_size}x{tile_size} tile is larger than the {width}x{height} page")
        steps = [(extent - tile_size) / stride for extent in (height, width)]
        rounding = np.ceil if border == "pad" else np.floor
        rows, cols = (int(rounding(step)) + 1 for step in steps)
        return cls(rows, cols, tile_size, stride)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    @property
    def covered(self) -> tuple[int, int]:
        """Height and width of the page area the tiles span (beyond the page where padded)."""
        return (self.rows - 1) * self.stride + self.tile_size, (self.cols - 1) * self.stride + self.tile_size

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of every tile, row-major.  # (N,), (N,)"""
        rows, cols = np.divmod(np.arange(self.rows * self.cols), self.cols)
        return rows, cols


def cut_tiles(page: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Tiles of a page (H,W) or (H,W,C), row-major as `grid.positions()`.  # (N,t,t) or (N,t,t,C)

    Where the grid reaches past the page, the page is padded by repeating its edge pixels (masks,
    being bool, get False there).
    """
    height, width = page.shape[:2]
    need_h, need_w = grid.covered
    pad = [(0, max(need_h - height, 0)), (0, max(need_w - width, 0))] + [(0, 0)] * (page.ndim - 2)
    if page.dtype == bool:
        page = np.pad(page, pad, mode="constant", constant_values=False)
    else:
        page = np.pad(page, pad, mode="edge")
    t, s = grid.tile_size, grid.stride
    rows, cols = grid.positions()
    return np.stack([page[r * s : r * s + t, c * s : c * s + t] for r, c in zip(rows, cols, strict=True)])


def tile_labels(mask_tiles: np.ndarray, min_fraction: float = 0.0) -> np.ndarray:
    """1 where more than `min_fraction` of a tile's pixels are masked, else 0.  # (N,) int64

    mask_tiles: (N,t,t) bool. min_fraction=0 makes any masked pixel count.
    """
    fraction = mask_tiles.reshape(len(mask_tiles), -1).mean(axis=1)  # (N,)
    return (fraction > min_fraction).astype(np.int64)


def stitch_scores(
    scores: Sequence[float] | np.ndarray,
    rows: Sequence[int] | np.ndarray,
    cols: Sequence[int] | np.ndarray,
    grid_shape: tuple[int, int],
) -> np.ndarray:
    """Per-tile scores placed at their (row, col) in a page's grid; NaN where no tile was scored.  # (R,C)"""
    grid = np.full(grid_shape, np.nan, dtype=np.float64)
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    if len(rows) and (rows.max() >= grid_shape[0] or cols.max() >= grid_shape[1] or min(rows.min(), cols.min()) < 0):
        raise ValueError(f"tile positions up to ({rows.max()}, {cols.max()}) fall outside the grid {grid_shape}")
    grid[rows, cols] = np.asarray(scores, dtype=np.float64)
    return grid


def stitch_tiles(tiles: np.ndarray, grid: TileGrid, page_shape: tuple[int, int]) -> np.ndarray:
    """The page back from its tiles (N,t,t[,C]); where tiles overlap, the later one wins.  # (H,W[,C])

    Pixels that no tile covers (a dropped border) are zero.
    """
    need_h, need_w = grid.covered
    canvas = np.zeros((max(need_h, page_shape[0]), max(need_w, page_shape[1]), *tiles.shape[3:]), tiles.dtype)
    t, s = grid.tile_size, grid.stride
    for tile, r, c in zip(tiles, *grid.positions(), strict=True):
        canvas[r * s : r * s + t, c * s : c * s + t] = tile
    return canvas[: page_shape[0], : page_shape[1]]
