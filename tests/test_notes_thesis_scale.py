"""experiment=notes_thesis_scale: the generated notes at the thesis's scale (about 2550 tiles from 6 normal pages).

Computed from the composed config alone: no page is generated and nothing is trained.
"""

from __future__ import annotations

from anomaly_lab.data.tiles import TileGrid
from tests.conftest import compose_config


def test_thesis_scale_pages_give_about_2550_tiles() -> None:
    cfg = compose_config(["experiment=notes_thesis_scale"])
    pages, preprocessing = cfg.dataset.write_pages, cfg.dataset.preprocessing
    assert preprocessing.tiled and preprocessing.page_width is None  # pages are tiled at their written size
    grid = TileGrid.of_page(
        pages.height, pages.width, preprocessing.image_size, preprocessing.stride, preprocessing.border
    )
    tiles = pages.n_normal * grid.rows * grid.cols
    assert pages.n_normal == 6 and abs(tiles - 2550) <= 50, tiles
