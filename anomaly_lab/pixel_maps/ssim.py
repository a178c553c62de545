"""1 - SSIM per pixel, as in RIAD: torchmetrics' Gaussian-window SSIM, with its window applied as two matrices.

The loss of every inpainting recipe computes it at each training step. torchmetrics' 11x11 depthwise convolution
was half of a CPU training step (a narrow U-Net at 256x96, batch 8); the same window as one banded matrix per axis
(reflect padding folded in) makes it a pair of matrix products, about 6x faster forward and backward on CPU, equal
to torchmetrics' map to float rounding (tests/test_scoring.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_lab.pixel_maps import check_pair
from anomaly_lab.registry import pixel_map

SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2  # SSIM's stability constants for a data range of 1


@functools.lru_cache(maxsize=32)
def _window_array(size: int, sigma: float) -> np.ndarray:
    """window_matrix's values, cached in numpy: a cached tensor could be an export's fake one."""
    radius = int(3.5 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum()  # (2r+1,)
    rows = np.arange(size)[:, None]  # (size,1)
    columns = np.abs(rows + offsets)  # (size,2r+1) the pixel each tap reads, reflected at the start ...
    columns = np.where(columns >= size, 2 * (size - 1) - columns, columns)  # ... and at the end
    matrix = np.zeros((size, size))
    np.add.at(matrix, (np.broadcast_to(rows, columns.shape), columns), np.broadcast_to(taps, columns.shape))
    matrix.flags.writeable = False
    return matrix


def window_matrix(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The Gaussian window of torchmetrics' SSIM along one axis of `size` pixels, reflect-padded, as a matrix:
    `matrix @ x` blurs x along its rows; a constant, not traced ops, in an export.  # (size,size)

    The window has radius int(3.5 sigma + 0.5) (torchmetrics' width), which must be below `size`.
    """
    return torch.tensor(_window_array(size, sigma), dtype=dtype, device=device)


@pixel_map("ssim")
def ssim_map(recon: torch.Tensor, target: torch.Tensor, kernel_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - SSIM per pixel, channel-averaged, in [0, 2].  # (B,1,H,W)

    The window is torchmetrics' Gaussian one (gaussian_kernel=True): width int(3.5 sigma + 0.5) * 2 + 1, i.e. 11
    for 1.5; kernel_size (odd) only sizes torchmetrics' uniform window, not used here, and is kept for configs
    that name it. Reflect padding by the window radius needs H, W > radius: smaller images are replicate-padded
    first and the map cropped back.
    """
    if kernel_size % 2 == 0 or kernel_size < 1 or sigma <= 0:
        raise ValueError(f"ssim: kernel_size must be odd and positive and sigma positive, got {kernel_size}, {sigma}")
    target = check_pair(recon, target)
    height, width = recon.shape[-2:]
    radius = int(3.5 * sigma + 0.5)
    extra_h, extra_w = max(0, radius + 1 - height), max(0, radius + 1 - width)
    if extra_h or extra_w:
        pad = (extra_w, extra_w, extra_h, extra_h)
        recon, target = F.pad(recon, pad, mode="replicate"), F.pad(target, pad, mode="replicate")
    rows = window_matrix(recon.shape[-2], sigma, recon.dtype, recon.device)  # (H',H')
    columns_t = window_matrix(recon.shape[-1], sigma, recon.dtype, recon.device).t()  # (W',W')

    def window_mean(x: torch.Tensor) -> torch.Tensor:  # (K,B,C,H',W') -> (K,B,C,H',W')
        return rows @ (x @ columns_t)

    # recon's moments carry the gradient; target's (usually the input images) need none. Stacked on a new first
    # axis, not concatenated along the batch: an export keeps its batch dimension free.
    mean_r, square_r, product = window_mean(torch.stack((recon, recon * recon, recon * target))).unbind(0)
    mean_t, square_t = window_mean(torch.stack((target, target * target))).unbind(0)
    mean_rr, mean_tt, mean_rt = mean_r.pow(2), mean_t.pow(2), mean_r * mean_t
    variance_r = torch.clamp(square_r - mean_rr, min=0.0)
    variance_t = torch.clamp(square_t - mean_tt, min=0.0)
    covariance = product - mean_rt
    full = ((2 * mean_rt + SSIM_C1) * (2 * covariance + SSIM_C2)) / (
        (mean_rr + mean_tt + SSIM_C1) * (variance_r + variance_t + SSIM_C2)
    )  # (B,C,H',W')
    full = full[..., extra_h : extra_h + height, extra_w : extra_w + width]
    return (1.0 - full).mean(dim=1, keepdim=True).clamp(0.0, 2.0)  # (B,1,H,W)
