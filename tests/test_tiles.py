"""Tiling: counts for known page sizes, cut-then-stitch gives the page back, labels from masks."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly_lab.data.tiles import TileGrid, TileSizeError, cut_tiles, stitch_scores, stitch_tiles, tile_labels


@pytest.mark.parametrize(
    ("height", "width", "tile", "stride", "border", "shape"),
    [
        (200, 300, 64, None, "drop", (3, 4)),  # 200 = 3*64 + 8, 300 = 4*64 + 44: remainders dropped
        (200, 300, 64, None, "pad", (4, 5)),
        (128, 192, 64, None, "drop", (2, 3)),  # exact multiples: drop and pad agree
        (128, 192, 64, None, "pad", (2, 3)),
        (128, 128, 64, 32, "drop", (3, 3)),  # overlapping
        (64, 64, 64, None, "drop", (1, 1)),
    ],
)
def test_tile_count_for_known_page_sizes(
    height: int, width: int, tile: int, stride: int | None, border: str, shape: tuple[int, int]
) -> None:
    grid = TileGrid.of_page(height, width, tile, stride, border)
    assert grid.shape == shape
    tiles = cut_tiles(np.zeros((height, width, 3), np.uint8), grid)
    assert tiles.shape == (shape[0] * shape[1], tile, tile, 3)


def test_thesis_page_gives_its_tile_count() -> None:
    # 2550 tiles from 6 pages is 425 a page, e.g. a 17 x 25 grid: a 1100 x 1600 page at 64px, remainders dropped.
    assert TileGrid.of_page(1100, 1600, 64).shape == (17, 25)


@pytest.mark.parametrize("border", ["drop", "pad"])
def test_cut_then_stitch_returns_the_page(border: str) -> None:
    rng = np.random.default_rng(0)
    page = rng.integers(0, 256, (150, 230, 3), dtype=np.uint8)
    grid = TileGrid.of_page(150, 230, 32, border=border)
    back = stitch_tiles(cut_tiles(page, grid), grid, page.shape[:2])
    covered_h, covered_w = (min(n, extent) for n, extent in zip(grid.covered, page.shape[:2], strict=True))
    np.testing.assert_array_equal(back[:covered_h, :covered_w], page[:covered_h, :covered_w])
    if border == "pad":
        assert (covered_h, covered_w) == page.shape[:2]  # padding covers the whole page
    else:
        assert back[covered_h:].sum() == 0 and back[:, covered_w:].sum() == 0  # dropped remainders


def test_tiles_lie_at_their_row_and_column() -> None:
    page = np.arange(6 * 8).reshape(6, 8)  # pixel value encodes its place
    grid = TileGrid.of_page(6, 8, 2)
    tiles = cut_tiles(page, grid)
    for tile, row, col in zip(tiles, *grid.positions(), strict=True):
        assert tile[0, 0] == page[2 * row, 2 * col]
    grid_of_scores = stitch_scores([t[0, 0] for t in tiles], *grid.positions(), grid.shape)
    np.testing.assert_array_equal(grid_of_scores, page[::2, ::2])


def test_stitch_scores_leaves_unscored_tiles_nan() -> None:
    grid = stitch_scores([0.5, 0.7], rows=[0, 2], cols=[1, 0], grid_shape=(3, 2))
    assert grid[0, 1] == 0.5 and grid[2, 0] == 0.7
    assert np.isnan(grid).sum() == 4
    with pytest.raises(ValueError, match="outside the grid"):
        stitch_scores([1.0], rows=[3], cols=[0], grid_shape=(3, 2))


def test_padding_repeats_edges_and_masks_pad_with_false() -> None:
    page = np.full((10, 10, 3), 200, np.uint8)
    mask = np.ones((10, 10), bool)
    grid = TileGrid.of_page(10, 10, 8, border="pad")
    assert grid.shape == (2, 2)
    assert (cut_tiles(page, grid) == 200).all()
    mask_tiles = cut_tiles(mask, grid)
    assert mask_tiles[3].sum() == 2 * 2  # only the 2x2 corner of the last tile is on the page


def test_tile_labels_from_masks() -> None:
    masks = np.zeros((4, 10, 10), bool)
    masks[1, 0, 0] = True  # 1 %
    masks[2, :5] = True  # 50 %
    masks[3] = True  # 100 %
    np.testing.assert_array_equal(tile_labels(masks), [0, 1, 1, 1])
    np.testing.assert_array_equal(tile_labels(masks, min_fraction=0.01), [0, 0, 1, 1])
    np.testing.assert_array_equal(tile_labels(masks, min_fraction=0.5), [0, 0, 0, 1])


@pytest.mark.parametrize("border", ["drop", "pad"])
def test_tile_larger_than_the_page_is_an_error(border: str) -> None:
    with pytest.raises(TileSizeError, match=r"64x64 tile is larger than the 100x50 page"):
        TileGrid.of_page(50, 100, 64, border=border)
