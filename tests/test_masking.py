import math

import pytest
import torch

from anomaly_lab.masking import GridMasking, NoMasking, inpaint_for_training, inpaint_full_coverage


@pytest.mark.parametrize(("grid", "ratio"), [(2, 0.25), (4, 0.5), (8, 0.3), (5, 0.5), (3, 0.9)])
def test_random_masks_blank_exactly_round_ratio_cells(grid: int, ratio: float) -> None:
    torch.manual_seed(0)
    masking = GridMasking(grid, ratio)
    size = grid * 6
    masks = masking.random_masks(16, size, size)  # (B,1,H,W)
    cells = masks[:, 0, ::6, ::6]  # one pixel per cell (cells are 6x6 here)
    assert cells.shape[-1] == grid
    assert (cells.flatten(1).sum(1) == round(ratio * grid * grid)).all()
    # cells are blanked whole: each 6x6 block is constant
    blocks = masks[:, 0].unfold(1, 6, 6).unfold(2, 6, 6)
    assert (blocks.amax((-1, -2)) == blocks.amin((-1, -2))).all()
    assert not torch.equal(masks[0], masks[1])  # random per sample


@pytest.mark.parametrize(
    ("grids", "ratio", "size"), [([2], 0.25, (32, 32)), ([4, 8], 0.5, (64, 48)), ([3], 0.3, (31, 17))]
)
def test_coverage_masks_cover_every_pixel_exactly_once(grids: list[int], ratio: float, size: tuple[int, int]) -> None:
    masking = GridMasking(grids, ratio)
    sets = masking.coverage_masks(*size)
    assert len(sets) == len(grids)
    for masks in sets:  # (n,1,H,W)
        assert masks.shape[1:] == (1, *size)
        assert torch.equal(masks.sum(0), torch.ones(1, *size))


@pytest.mark.parametrize("size", [(16, 64), (64, 24)])
def test_a_band_is_masked_with_square_cells_as_the_square_it_was_cut_from(size: tuple[int, int]) -> None:
    """A non-square input (preprocessing.crop_height) gets the cells of the square of its longer side: square
    cells, and the same masks as that square's first rows or columns (random ones and coverage sets alike)."""
    height, width = size
    side = max(size)
    masking = GridMasking([4, 8], 0.25)
    for band, square in zip(masking.coverage_masks(height, width), masking.coverage_masks(side, side), strict=True):
        assert torch.equal(band, square[..., :height, :width])
    torch.manual_seed(0)
    band = masking.random_masks(3, height, width)
    torch.manual_seed(0)
    assert torch.equal(band, masking.random_masks(3, side, side)[..., :height, :width])


def test_apply_fills_only_blanked_pixels() -> None:
    masking = GridMasking(2, 0.5, fill=0.25)
    images = torch.rand(3, 3, 8, 8)
    masks = masking.random_masks(3, 8, 8)
    out = masking.apply(images, masks)
    assert torch.equal(out[masks.expand_as(out) == 1], torch.full_like(out[masks.expand_as(out) == 1], 0.25))
    assert torch.equal(out[masks.expand_as(out) == 0], images[masks.expand_as(out) == 0])


def test_full_coverage_takes_each_pixel_from_the_pass_that_blanked_it() -> None:
    masking = GridMasking([4], 0.25, fill=-1.0)
    images = torch.rand(2, 3, 16, 16)
    # A "net" that returns its input: every pixel of the stitched result was blanked -> fill value.
    (recon,) = inpaint_full_coverage(lambda x: x, images, masking)
    assert torch.equal(recon, torch.full_like(images, -1.0))
    # Without masking the identity net reproduces the image.
    (plain,) = inpaint_full_coverage(lambda x: x, images, NoMasking())
    assert torch.equal(plain, images)


def test_bad_ratio_is_rejected() -> None:
    with pytest.raises(ValueError, match="ratio"):
        GridMasking(4, 1.0)
    with pytest.raises(ValueError, match="blanks no cell"):
        GridMasking(2, 0.1)


@pytest.mark.parametrize(("grid", "ratio"), [(4, 0.25), (8, 0.5), (5, 0.3)])
def test_random_partition_blanks_every_pixel_once_per_sample(grid: int, ratio: float) -> None:
    masking = GridMasking(grid_sizes=[grid], ratio=ratio)
    masks = masking.random_partition(batch=3, height=40, width=40)  # (n,B,1,H,W)
    assert masks.shape == (math.ceil(grid * grid / masking.cells_per_mask(grid)), 3, 1, 40, 40)
    assert torch.equal(masks.sum(dim=0), torch.ones(3, 1, 40, 40))
    assert not torch.equal(masks[:, 0], masks[:, 1])  # each sample its own split


def test_full_coverage_training_stitches_only_inpainted_pixels() -> None:
    images = torch.rand(2, 3, 16, 16)
    masking = GridMasking(grid_sizes=[4], ratio=0.25, fill=0.0, train_full_coverage=True)
    # a "net" that returns its masked input: the stitched image keeps only blanked (zero) pixels
    assert torch.equal(inpaint_for_training(lambda x: x, images, masking), torch.zeros_like(images))
    # a net that outputs a constant: every pixel comes from exactly one pass
    assert torch.allclose(inpaint_for_training(lambda x: torch.full_like(x, 0.5), images, masking), images * 0 + 0.5)
    random_cells = GridMasking(grid_sizes=[4], ratio=0.25)
    blanked = inpaint_for_training(lambda x: x, images, random_cells) == 0  # one pass, a quarter of cells blank
    assert blanked.float().mean().item() == pytest.approx(0.25, abs=0.01)
