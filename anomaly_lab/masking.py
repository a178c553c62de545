"""Grid masking for inpainting: random masks to train on, complementary mask sets to score with.

A mask is 1 where a pixel is blanked (and must be inpainted) and 0 where the net sees it.
At inference every cell of the grid is blanked in exactly one mask of a set, so stitching
each mask's inpainted pixels gives a reconstruction in which no pixel was seen by the net
(RIAD, Zavrtanik et al. 2021). Several grid sizes give several such sets (multi-scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from anomaly_lab.errors import as_typed
from anomaly_lab.registry import checkpoint_class


def _cell_index(height: int, width: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """Cell number of every pixel for a grid x grid split of the image's longer side; works for any image size.

    Cells are square: a non-square image (a band, preprocessing.crop_height) lies in the first rows (or columns)
    of the square grid, and the cells beyond it hold no pixel.  # (H,W) long
    """
    side = max(height, width)
    rows = torch.arange(height, device=device) * grid // side
    cols = torch.arange(width, device=device) * grid // side
    return rows[:, None] * grid + cols[None, :]


@checkpoint_class
class NoMasking:
    """Plain autoencoder: the net sees the whole image and every pixel is scored from one pass."""

    fill = 0.0
    train_full_coverage = False

    def random_masks(self, batch: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        return torch.zeros(batch, 1, height, width, device=device)  # (B,1,H,W)

    def coverage_masks(self, height: int, width: int, device: torch.device | None = None) -> list[torch.Tensor]:
        return [torch.ones(1, 1, height, width, device=device)]  # one (1,1,H,W) set

    def coverage_mask_count(self) -> int:
        return 1

    def apply(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return images


@contextmanager
def seeded_random_stream(device: torch.device, seed: int) -> Iterator[None]:
    """Draws inside come from torch's random stream seeded with `seed` (on `device`'s generator too, if a GPU);
    the stream outside is restored after, as if nothing had been drawn: masks for validation and pictures that
    are the same every time and leave training's masks and batch order alone."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _grid_list(value: Sequence[int] | int, key: str) -> list[int]:
    grids = [value] if isinstance(value, int) else list(value) if isinstance(value, Sequence) else [value]
    if not grids:
        raise ValueError(f"{key}=[]: give at least one grid size")
    if any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grids):
        raise ValueError(f"{key}={as_typed(value)}: each must be a positive integer")
    return grids


@checkpoint_class
class GridMasking:
    """Blank a fraction `ratio` of the cells of an m x m grid, m drawn from `grid_sizes`.

    train_full_coverage: train as RIAD does: each sample's cells are split at random into
    ceil(1/ratio) disjoint masks, the net inpaints each, and the loss sees the stitched image in which
    every pixel was inpainted (as at inference). Costs ceil(1/ratio) forward passes per image.
    Otherwise the loss sees one pass over an image with a random `ratio` of its cells blanked.

    score_grid_sizes: the grid sizes whose full-coverage mask sets score an image (validation, test, predict,
    export); None: every training grid size. Fewer sets, fewer masked passes per image: ceil(1/ratio) per grid
    size. A grid size's masks are the same whichever sizes are scored (one seeded draw per size, in
    grid_sizes order, then the score-only sizes).

    score_ratio: the share of cells each scoring mask blanks (None: ratio): 0.5 with a net trained at 0.25 scores
    with 2 passes per grid size instead of 4, each inpainting cells with fewer known neighbours
    (docs/lab/2026-12-06-predict-speed.md measures what that costs).
    """

    def __init__(
        self,
        grid_sizes: Sequence[int] | int,
        ratio: float = 0.5,
        fill: float = 0.0,
        seed: int = 0,
        train_full_coverage: bool = False,
        score_grid_sizes: Sequence[int] | int | None = None,
        score_ratio: float | None = None,
    ) -> None:
        self.grid_sizes = _grid_list(grid_sizes, "grid_sizes")
        self.score_grid_sizes = (
            list(self.grid_sizes) if score_grid_sizes is None else _grid_list(score_grid_sizes, "score_grid_sizes")
        )
        if len(set(self.score_grid_sizes)) < len(self.score_grid_sizes):  # the same passes twice, for nothing
            raise ValueError(
                f"score_grid_sizes={as_typed(self.score_grid_sizes)}: a grid size twice scores the same masks "
                "twice; give each once"
            )
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
            raise ValueError(f"ratio={as_typed(ratio)}: must be in (0, 1); the share of grid cells blanked per mask")
        if score_ratio is not None and (
            isinstance(score_ratio, bool) or not isinstance(score_ratio, int | float) or not 0 < score_ratio < 1
        ):
            raise ValueError(
                f"score_ratio={as_typed(score_ratio)}: must be in (0, 1) or null (ratio); the share of grid cells "
                "each scoring mask blanks"
            )
        self.score_ratio = ratio if score_ratio is None else score_ratio
        for grid, share, key in [
            *((g, ratio, "ratio") for g in self.grid_sizes),
            *(
                (g, self.score_ratio, "score_ratio" if score_ratio is not None else "ratio")
                for g in self.score_grid_sizes
            ),
        ]:
            if round(share * grid * grid) < 1:
                raise ValueError(f"{key}={share}: blanks no cell of a {grid}x{grid} grid; raise it or the grid size")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={as_typed(seed)}: must be an integer >= 0")
        self.ratio = ratio
        self.fill = fill
        self.seed = seed
        self.train_full_coverage = train_full_coverage

    def cells_per_mask(self, grid: int, scoring: bool = False) -> int:
        return round((self.score_ratio if scoring else self.ratio) * grid * grid)

    def masks_per_set(self, grid: int, scoring: bool = False) -> int:
        """Masks that blank each of a grid's cells once: ceil(cells / cells_per_mask)."""
        return math.ceil(grid * grid / self.cells_per_mask(grid, scoring))

    def coverage_mask_count(self) -> int:
        """Masked passes per scored image, counted without drawing a mask: the masks of every scored grid size."""
        return sum(self.masks_per_set(grid, scoring=True) for grid in self.score_grid_sizes)

    def random_masks(self, batch: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """One grid size per batch, an independent random cell choice per sample.  # (B,1,H,W)"""
        grid = self.grid_sizes[int(torch.randint(len(self.grid_sizes), ()).item())]
        cells = grid * grid
        ranks = torch.rand(batch, cells, device=device).argsort(dim=1).argsort(dim=1)  # (B,cells)
        blanked = ranks < self.cells_per_mask(grid)  # (B,cells) exactly k True per row
        index = _cell_index(height, width, grid, device)  # (H,W)
        return blanked[:, index].unsqueeze(1).float()  # (B,1,H,W)

    def random_partition(self, batch: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """One grid size per batch; per sample, its cells split at random into disjoint masks.  # (n,B,1,H,W)

        Every pixel is blanked in exactly one of the n = ceil(cells / cells_per_mask) masks.
        """
        grid = self.grid_sizes[int(torch.randint(len(self.grid_sizes), ()).item())]
        cells = grid * grid
        per_mask = self.cells_per_mask(grid)
        ranks = torch.rand(batch, cells, device=device).argsort(dim=1).argsort(dim=1)  # (B,cells)
        group_map = (ranks // per_mask)[:, _cell_index(height, width, grid, device)]  # (B,H,W) mask number
        numbers = torch.arange(self.masks_per_set(grid), device=device)  # (n,)
        masks = group_map[None] == numbers[:, None, None, None]  # (n,B,H,W)
        return masks.unsqueeze(2).float()  # (n,B,1,H,W)

    def coverage_masks(self, height: int, width: int, device: torch.device | None = None) -> list[torch.Tensor]:
        """Per scored grid size (score_grid_sizes, in that order), a (n,1,H,W) set of masks in which every pixel
        is blanked exactly once."""
        generator = torch.Generator().manual_seed(self.seed)
        drawn: dict[int, torch.Tensor] = {}
        for grid in [*self.grid_sizes, *(g for g in self.score_grid_sizes if g not in self.grid_sizes)]:
            cells = grid * grid
            per_mask = self.cells_per_mask(grid, scoring=True)
            order = torch.randperm(cells, generator=generator)
            group_of_cell = torch.empty(cells, dtype=torch.long)
            group_of_cell[order] = torch.arange(cells) // per_mask
            group_map = group_of_cell.to(device)[_cell_index(height, width, grid, device)]  # (H,W)
            numbers = torch.arange(self.masks_per_set(grid, scoring=True), device=device)  # (n,)
            masks = group_map[None] == numbers[:, None, None]  # (n,H,W)
            drawn.setdefault(grid, masks.unsqueeze(1).float())  # (n,1,H,W)
        return [drawn[grid] for grid in self.score_grid_sizes]

    def apply(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return images * (1 - masks) + self.fill * masks  # (B,C,H,W)


Masking = NoMasking | GridMasking


def inpaint_for_training(
    net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, masking: Masking
) -> torch.Tensor:
    """The reconstruction the training loss sees.  # (B,C,H,W)

    One pass over randomly masked images, or (masking.train_full_coverage) the stitched inpainting of
    a random disjoint mask set, all its passes in one batch of n*B images.
    """
    batch, _, height, width = images.shape
    if not isinstance(masking, GridMasking) or not masking.train_full_coverage:
        return net(masking.apply(images, masking.random_masks(batch, height, width, device=images.device)))
    masks = masking.random_partition(batch, height, width, device=images.device)  # (n,B,1,H,W)
    masked = masking.apply(images.unsqueeze(0), masks)  # (n,B,C,H,W)
    recons = net(masked.flatten(0, 1)).unflatten(0, masks.shape[:2])  # (n,B,C,H,W)
    return (masks * recons).sum(dim=0)  # (B,C,H,W)


def inpaint_full_coverage(
    net: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    masking: Masking,
    mask_sets: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Reconstructions in which every pixel comes from a pass where it was blanked, one per grid size.

    images: (B,C,H,W); returns a list of (B,C,H,W), one per mask set. mask_sets: the sets of
    `masking.coverage_masks(H, W)` computed beforehand (a static graph for export), else computed here.
    """
    height, width = images.shape[-2:]
    recons = []
    if mask_sets is None:
        mask_sets = masking.coverage_masks(height, width, images.device)
    for masks in mask_sets:  # (n,1,H,W)
        recon = torch.zeros_like(images)
        for mask in masks:  # (1,H,W)
            recon = recon + mask * net(masking.apply(images, mask))
        recons.append(recon)
    return recons
