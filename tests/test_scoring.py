"""Anomaly maps, losses and image scores: hand cases, references (torchmetrics, scipy) and locality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics.functional.image import structural_similarity_index_measure

from anomaly_lab.pixel_maps.l2 import l2_map
from anomaly_lab.pixel_maps.msgms import MSGMS_C, _prewitt_magnitude, msgms_map
from anomaly_lab.pixel_maps.ssim import ssim_map
from anomaly_lab.scoring import AnomalyMap, ReconstructionLoss, gaussian_blur, image_score

MAPS = {"l2": l2_map, "ssim": ssim_map, "msgms": msgms_map}


def smooth_images(batch: int = 2, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Textured but smooth images in [0, 1].  # (B,3,size,size)"""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("name", MAPS)
def test_identical_images_give_zero_map(name: str) -> None:
    x = smooth_images()
    out = MAPS[name](x, x.clone())
    assert out.shape == (2, 1, 48, 48)
    assert float(out.abs().max()) < 1e-5


@pytest.mark.parametrize("name", MAPS)
def test_local_perturbation_is_found_where_it_is(name: str) -> None:
    x = smooth_images(batch=1, size=64)
    y = x.clone()
    y[..., 24:36, 28:40] = 1.0 - y[..., 24:36, 28:40]  # invert a 12x12 patch
    out = MAPS[name](y, x)[0, 0]  # (H,W)
    patch = torch.zeros(64, 64, dtype=torch.bool)
    patch[24:36, 28:40] = True
    near = torch.from_numpy(ndimage.binary_dilation(patch.numpy(), iterations=8))
    assert out[patch].mean() > 10 * out[~near].mean()
    assert out[near].sum() > 0.9 * out.sum()  # the map's mass sits at the defect


@pytest.mark.parametrize("size", [(30, 45), (4, 4)])
def test_ssim_map_keeps_odd_and_tiny_sizes(size: tuple[int, int]) -> None:
    x, y = torch.rand(2, 3, *size), torch.rand(2, 3, *size)
    out = ssim_map(x, y)
    assert out.shape == (2, 1, *size)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 2.0


def test_ssim_map_mean_matches_torchmetrics_ssim() -> None:
    x = smooth_images(seed=1)
    y = (x + 0.1 * torch.rand_like(x)).clamp(0, 1)
    reference = structural_similarity_index_measure(y, x, data_range=1.0, reduction="none")  # (B,)
    assert torch.allclose(1 - ssim_map(y, x).mean(dim=(1, 2, 3)), reference, atol=1e-5)


@pytest.mark.parametrize(("shape", "sigma"), [((2, 3, 48, 48), 1.5), ((3, 3, 24, 40), 1.5), ((2, 1, 20, 17), 2.0)])
def test_ssim_map_and_its_gradient_match_torchmetrics_per_pixel(shape: tuple[int, ...], sigma: float) -> None:
    """The window as two matrices is torchmetrics' Gaussian-window SSIM, map and gradient, to float rounding."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(shape, generator=g)
    y0 = (x + 0.2 * torch.randn(shape, generator=g)).clamp(0, 1)
    maps, grads = [], []
    for ours in (True, False):
        y = y0.clone().requires_grad_(True)
        if ours:
            out = ssim_map(y, x, sigma=sigma)
        else:
            _, full = structural_similarity_index_measure(
                y, x, gaussian_kernel=True, sigma=sigma, data_range=1.0, reduction="none", return_full_image=True
            )
            out = (1.0 - full).mean(dim=1, keepdim=True)
        (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()  # a gradient that sees every pixel
        maps.append(out.detach())
        grads.append(y.grad)
    assert torch.allclose(maps[0], maps[1], atol=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-5 * float(grads[1].abs().max()))


def test_an_exported_ssim_map_keeps_its_batch_free_and_eager_maps_stay_real() -> None:
    """torch.export of a map with SSIM: the batch dimension stays free, and the window cached during the trace is
    not a fake tensor that a later eager call gets back."""

    class SSIMOfDarker(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return ssim_map(0.9 * x, x)

    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(SSIMOfDarker(), (torch.rand(2, 3, 26, 34),), dynamic_shapes=({0: batch},))
    x = torch.rand(5, 3, 26, 34)
    eager = ssim_map(0.9 * x, x)
    assert type(eager) is torch.Tensor
    assert torch.allclose(exported.module()(x), eager, atol=1e-6)


def test_prewitt_magnitude_is_the_convolution_with_prewitt_kernels() -> None:
    gray = smooth_images(batch=2, size=20, seed=4)[:, :1, :, :15]  # (2,1,20,15) not square: axes kept apart
    kx = torch.tensor([[1.0, 0.0, -1.0]] * 3) / 3.0
    grads = torch.nn.functional.conv2d(
        torch.nn.functional.pad(gray, (1, 1, 1, 1), mode="replicate"), torch.stack([kx, kx.t()]).unsqueeze(1)
    )  # (2,2,20,15)
    assert torch.allclose(_prewitt_magnitude(gray), grads.pow(2).sum(dim=1, keepdim=True).add(1e-12).sqrt(), atol=1e-6)


def test_msgms_on_a_step_edge_by_hand() -> None:
    flat = torch.zeros(1, 1, 8, 8)
    step = flat.clone()
    step[..., 4:] = 1.0  # columns 3 and 4 see a Prewitt gradient of magnitude 1
    out = msgms_map(step, flat, scales=1)[0, 0]
    expected = torch.zeros(8, 8)
    expected[:, 3:5] = 1 - MSGMS_C / (1 + MSGMS_C)
    assert torch.allclose(out, expected, atol=1e-6)
    assert float(msgms_map(step, flat).max()) < 1.0  # multi-scale stays in [0, 1)
    with pytest.raises(ValueError, match="too small"):
        msgms_map(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), scales=4)


def test_gaussian_blur_matches_scipy() -> None:
    x = torch.rand(2, 1, 40, 33, dtype=torch.float64)
    ours = gaussian_blur(x, 2.0)
    # torch "reflect" is scipy "mirror"; scipy's radius is int(truncate * sigma + 0.5) like ours
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 2.0, 2.0), mode="mirror", truncate=4.0)
    assert np.allclose(ours.numpy(), ref, atol=1e-10)
    assert gaussian_blur(x, 0.0) is x
    const = torch.full((1, 1, 9, 9), 3.0)
    assert torch.allclose(gaussian_blur(const, 4.0), const)  # radius cut to the map, kernel renormalised


def test_anomaly_map_is_the_weighted_sum_then_blur() -> None:
    x, y = smooth_images(seed=2), smooth_images(seed=3)
    combined, _ = AnomalyMap(l2=2.0, ssim=0.5, msgms=1.0, blur_sigma=1.5).maps([y], x)
    expected = gaussian_blur(2.0 * l2_map(y, x) + 0.5 * ssim_map(y, x) + msgms_map(y, x), 1.5)
    assert torch.allclose(combined, expected, atol=1e-6)
    assert torch.equal(AnomalyMap().maps([y], x)[0], l2_map(y, x))
    with pytest.raises(ValueError):
        AnomalyMap(l2=0.0)
    with pytest.raises(ValueError):
        ReconstructionLoss(l2=0.0, ssim=0.0, msgms=0.0)


def test_the_image_score_pools_its_own_blur_of_the_map_when_given_one() -> None:
    from anomaly_lab.masking import NoMasking
    from anomaly_lab.scoring import full_coverage_scores

    x = smooth_images(seed=4)
    y = x.clone()
    y[0, :, 20:23, 20:23] = 1 - y[0, :, 20:23, 20:23]  # a small defect: a wide blur flattens its peak
    net = lambda _: y  # noqa: E731 (the "inpainting" is y whatever is masked)
    raw = l2_map(y, x)
    two_blurs = AnomalyMap(l2=1.0, blur_sigma=6.0, score_blur_sigma=1.0)
    maps, scores = full_coverage_scores(net, x, NoMasking(), two_blurs, reduce="max")
    assert torch.allclose(maps, gaussian_blur(raw, 6.0), atol=1e-6)
    assert torch.allclose(scores, image_score(gaussian_blur(raw, 1.0), "max"), atol=1e-6)
    assert scores[0] > 2 * image_score(maps, "max")[0]  # the narrow blur kept the small defect's peak
    same, same_scores = full_coverage_scores(net, x, NoMasking(), AnomalyMap(l2=1.0, blur_sigma=6.0), reduce="max")
    assert torch.allclose(same, maps) and torch.allclose(same_scores, image_score(maps, "max"), atol=1e-6)
    for bad in (-1.0, float("nan"), "abc", True):
        with pytest.raises(ValueError, match=r"^score_blur_sigma=.*: must be a number >= 0"):
            AnomalyMap(l2=1.0, score_blur_sigma=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^blur_sigma=null: must be a number >= 0"):
        AnomalyMap(l2=1.0, blur_sigma=None)  # type: ignore[arg-type]


def test_reconstruction_loss_is_differentiable() -> None:
    x = smooth_images()
    recon = (x + 0.05 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    loss_fn = ReconstructionLoss(l2=1.0, ssim=1.0, msgms=1.0)
    loss = loss_fn(recon, x)
    expected = l2_map(recon, x).mean() + ssim_map(recon, x).mean() + msgms_map(recon, x).mean()
    assert loss.ndim == 0 and torch.allclose(loss, expected)
    loss.backward()
    assert recon.grad is not None and bool(torch.isfinite(recon.grad).all()) and float(recon.grad.abs().sum()) > 0
    same = x.clone().requires_grad_(True)
    loss_fn(same, x).backward()  # identical inputs: flat GMS / zero error must not give NaN gradients
    assert bool(torch.isfinite(same.grad).all())


def test_image_score_reductions_by_hand() -> None:
    amap = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)  # (2,1,2,2)
    amap[1] *= 10
    assert torch.allclose(image_score(amap, "mean"), torch.tensor([2.5, 25.0]))
    assert torch.allclose(image_score(amap, "max"), torch.tensor([4.0, 40.0]))
    assert torch.allclose(image_score(amap, "topk", topk_fraction=0.5), torch.tensor([3.5, 35.0]))
    assert torch.allclose(image_score(amap, "topk", topk_fraction=0.01), torch.tensor([4.0, 40.0]))  # >= 1 pixel
