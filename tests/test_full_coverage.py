"""Full-coverage masked scoring: a perfect inpainter scores zero everywhere; each pixel's error comes from the
pass that blanked it; scales are averaged (RIAD)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from anomaly_lab.masking import GridMasking, NoMasking
from anomaly_lab.model import InpaintingModel
from anomaly_lab.pixel_maps.l2 import l2_map
from anomaly_lab.preprocessing import Preprocessing
from anomaly_lab.scoring import AnomalyMap


class Oracle(nn.Module):
    """Returns the clean images whatever it is shown: a perfect inpainter (only where it saw no pixel)."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images

    def forward(self, masked: torch.Tensor) -> torch.Tensor:
        return self.images[: len(masked)].clone()  # the model's shape check passes it one blank image


def scoring_module(
    net: nn.Module, masking: GridMasking | NoMasking, anomaly_map: AnomalyMap
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The trained model's scoring (max reduction) at the size of the images it is given."""

    def score(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = images.shape[-1]
        return InpaintingModel(size, net, masking, anomaly_map, Preprocessing(size), reduce="max")(images)

    return score


@pytest.mark.parametrize(
    "weights",
    [dict(l2=1.0), dict(ssim=1.0), dict(msgms=1.0), dict(l2=1.0, ssim=1.0, msgms=1.0, blur_sigma=2.0)],
    ids=["l2", "ssim", "msgms", "riad_sum"],
)
def test_perfect_inpainter_gives_a_zero_map_at_every_scale(weights: dict[str, float]) -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    masking = GridMasking([2, 4, 8, 16], ratio=0.25, fill=0.0)
    module = scoring_module(Oracle(images), masking, AnomalyMap(**weights))
    maps, scores = module(images)
    assert maps.shape == (2, 1, 32, 32)
    assert torch.allclose(maps, torch.zeros_like(maps), atol=1e-5)
    assert torch.allclose(scores, torch.zeros(2), atol=1e-5)


def test_identity_net_without_masking_gives_a_zero_map() -> None:
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    maps, scores = scoring_module(nn.Identity(), NoMasking(), AnomalyMap(l2=1.0, ssim=1.0))(images)
    assert torch.allclose(maps, torch.zeros_like(maps), atol=1e-6)
    assert torch.allclose(scores, torch.zeros(3), atol=1e-6)


def test_identity_net_under_masking_is_caught_not_rewarded() -> None:
    # Copying the input is no inpainting: every pixel comes from a pass in which it was blanked (fill 0).
    images = 0.5 + 0.5 * torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps, _ = scoring_module(nn.Identity(), GridMasking([4], 0.25), AnomalyMap(l2=1.0))(images)
    assert torch.allclose(maps, l2_map(torch.zeros_like(images), images))


def test_one_scale_map_is_each_pixels_error_from_the_pass_that_blanked_it() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.Tanh(), nn.Conv2d(8, 3, 5, padding=2), nn.Sigmoid())
    images = torch.rand(2, 3, 24, 24)
    masking = GridMasking([4], ratio=0.25, fill=0.0, seed=3)
    with torch.no_grad():
        maps, _ = scoring_module(net, masking, AnomalyMap(l2=1.0))(images)
        (masks,) = masking.coverage_masks(24, 24)  # (n,1,H,W)
        errors = torch.stack([l2_map(net(masking.apply(images, mask)), images) for mask in masks])  # (n,B,1,H,W)
    for mask, error in zip(masks, errors, strict=True):
        inpainted = mask.bool().expand_as(error)  # (B,1,H,W)
        assert torch.allclose(maps[inpainted], error[inpainted], atol=1e-7)
    # and not some other pass's error: the passes disagree on most pixels
    assert (errors[0] - errors[1]).abs().mean() > 1e-4


def test_multiscale_map_is_the_mean_of_the_single_scale_maps() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Sigmoid())
    images = torch.rand(2, 3, 16, 16)
    anomaly_map = AnomalyMap(l2=1.0, msgms=1.0)
    with torch.no_grad():
        both, _ = scoring_module(net, GridMasking([2, 4], 0.5, seed=5), anomaly_map)(images)
        # coverage sets are drawn in grid order from one seeded generator, so [2] alone repeats the first set
        first, _ = scoring_module(net, GridMasking([2], 0.5, seed=5), anomaly_map)(images)
    sets = GridMasking([2, 4], 0.5, seed=5).coverage_masks(16, 16)
    second_only = torch.zeros_like(images)
    with torch.no_grad():
        for mask in sets[1]:
            second_only = second_only + mask * net(GridMasking([4], 0.5).apply(images, mask))
        second, _ = anomaly_map.maps([second_only], images)
    assert torch.allclose(both, (first + second) / 2, atol=1e-6)
    assert not torch.allclose(first, second, atol=1e-4)


def _normal_and_anomalous(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat grey images with faint noise; the anomalous half has a white 6x6 square somewhere.  # (2n,3,32,32)"""
    g = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.02 * torch.randn(2 * n, 3, 32, 32, generator=g)
    for i in range(n, 2 * n):
        y, x = torch.randint(0, 26, (2,), generator=g).tolist()
        images[i, :, y : y + 6, x : x + 6] = 1.0
    return images.clamp(0, 1), torch.cat([torch.zeros(n), torch.ones(n)]).long()


def test_separable_data_scores_auroc_one_and_a_random_inpainter_about_half() -> None:
    from anomaly_lab.metrics import image_auroc

    masking = GridMasking([4, 8], ratio=0.25)
    images, labels = _normal_and_anomalous(seed=0)
    grey = scoring_module(Oracle(torch.full_like(images, 0.5)), masking, AnomalyMap(l2=1.0, blur_sigma=1.0))
    assert image_auroc(grey(images)[1], labels) == 1.0

    # labels that the images do not reflect (both halves drawn alike): the scores carry no signal
    aurocs = []
    for seed in range(12):
        g = torch.Generator().manual_seed(100 + seed)
        images = 0.5 + 0.1 * torch.randn(16, 3, 32, 32, generator=g)
        noise = Oracle(torch.rand(images.shape, generator=g))
        _, scores = scoring_module(noise, masking, AnomalyMap(l2=1.0))(images)
        aurocs.append(image_auroc(scores, labels))
    assert abs(sum(aurocs) / len(aurocs) - 0.5) < 0.12
