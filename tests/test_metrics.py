"""Metrics against hand-computed cases and brute-force references (rank statistic, all-threshold PRO, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.stats import rankdata, wasserstein_distance

from anomaly_lab.metrics import PixelMetrics, f1_max, image_auroc, wasserstein_separation

# ---------------------------------------------------------------- brute-force references


def exact_auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Mann-Whitney U / (n0 n1), ties counted half."""
    ranks = rankdata(np.concatenate([normal, anomalous]))
    n0, n1 = len(normal), len(anomalous)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def exact_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """PRO curve at every unique score threshold, trapezoid up to `limit` (interpolated), over `limit`."""
    structure = np.ones((3, 3), dtype=bool)  # 8-connected regions, as MVTec AD
    regions = []
    for amap, mask in zip(maps, masks, strict=True):
        labels, count = ndimage.label(mask, structure=structure)
        regions += [np.sort(amap[labels == r]) for r in range(1, count + 1)]
    normal = np.sort(maps[~masks])
    thresholds = np.concatenate([[np.inf], np.unique(maps)[::-1]])  # descending: fpr goes 0 -> 1

    def at_or_above(sorted_values: np.ndarray) -> np.ndarray:  # fraction >= each threshold
        return (len(sorted_values) - np.searchsorted(sorted_values, thresholds, side="left")) / len(sorted_values)

    fpr = at_or_above(normal)
    pro = np.mean([at_or_above(r) for r in regions], axis=0)
    keep = fpr <= limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < limit:
        i = int(keep.sum())
        y = np.append(y, y[-1] + (limit - x[-1]) / (fpr[i] - x[-1]) * (pro[i] - y[-1]))
        x = np.append(x, limit)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / limit)


def synthetic_blobs(n: int = 6, size: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise maps with disks and rectangles of varied size and strength; some images defect-free."""
    rng = np.random.default_rng(seed)
    maps = rng.gamma(2.0, 0.05, size=(n, 1, size, size))
    masks = np.zeros_like(maps, dtype=bool)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n - 2):  # the last two images stay normal
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(5, size - 5), rng.integers(5, size - 5), rng.integers(1, 5)
            blob = (
                (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                if rng.random() < 0.5
                else ((abs(yy - cy) <= r) & (abs(xx - cx) <= 2 * r))
            )
            masks[i, 0] |= blob
            maps[i, 0][blob] += rng.uniform(0.0, 0.15) + rng.gamma(2.0, 0.05, size=blob.sum())
    return torch.from_numpy(maps).float(), torch.from_numpy(masks)


# ---------------------------------------------------------------- image-level


def test_image_auroc_by_hand_and_unaffected_by_scale() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    assert image_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), labels) == pytest.approx(0.75)
    # large scores: torchmetrics would sigmoid them into float32 ties; the rank transform must not
    assert image_auroc(torch.tensor([100.0, 400.0, 300.0, 800.0]), labels) == pytest.approx(0.75)
    assert image_auroc(np.array([1.0, 1.0, 1.0, 2.0]), [0, 1, 0, 1]) == pytest.approx(0.75)  # ties count half
    with pytest.raises(ValueError):
        image_auroc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))


def test_image_auroc_separable_and_random() -> None:
    normal, anomalous = torch.rand(50), torch.rand(50) + 5.0
    scores, labels = torch.cat([normal, anomalous]), torch.cat([torch.zeros(50), torch.ones(50)]).long()
    assert image_auroc(scores, labels) == 1.0
    assert image_auroc(-scores, labels) == 0.0
    aurocs = []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        aurocs.append(image_auroc(torch.rand(200, generator=g), torch.randint(0, 2, (200,), generator=g)))
    assert abs(np.mean(aurocs) - 0.5) < 0.1
    assert max(abs(a - 0.5) for a in aurocs) < 0.2


def test_f1_max_by_hand() -> None:
    # threshold 0.2 calls {0.2..0.5} anomalous: P = 3/4, R = 1, F1 = 6/7 beats every other cut
    scores, labels = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), torch.tensor([0, 1, 0, 1, 1])
    f1, threshold = f1_max(scores, labels)
    assert f1 == pytest.approx(6 / 7) and threshold == pytest.approx(0.2)
    f1, threshold = f1_max(1000 * scores, labels)  # outside [0, 1]: same answer, threshold in score units
    assert f1 == pytest.approx(6 / 7) and threshold == pytest.approx(200.0)


def test_f1_max_separable_threshold_lies_between_classes() -> None:
    normal, anomalous = 3.0 * torch.rand(40), 7.0 + torch.rand(10)
    f1, threshold = f1_max(torch.cat([anomalous, normal]), torch.cat([torch.ones(10), torch.zeros(40)]))
    assert f1 == pytest.approx(1.0)
    assert float(normal.max()) < threshold <= float(anomalous.min())


def test_wasserstein_matches_scipy_and_a_shift() -> None:
    rng = np.random.default_rng(0)
    normal, d = rng.normal(size=20000), 1.5
    anomalous = rng.normal(size=20000) + d
    distance = wasserstein_separation(normal, anomalous)
    assert distance == wasserstein_distance(normal, anomalous)
    assert distance == pytest.approx(d, abs=0.05)
    # normalised by the std of both samples pooled: sqrt(1 + d^2 / 4) for two unit normals d apart
    normalised = wasserstein_separation(torch.from_numpy(normal), torch.from_numpy(anomalous), normalise=True)
    assert normalised == pytest.approx(d / math.sqrt(1 + d * d / 4), abs=0.05)
    assert wasserstein_separation(100 * normal, 100 * anomalous, normalise=True) == pytest.approx(normalised)
    assert wasserstein_separation([0.0, 1.0], [3.0]) == pytest.approx(2.5)  # by hand: mean |x - 3|
    assert wasserstein_separation([0.0, 1.0], [3.0], signed=True) == pytest.approx(2.5)
    assert wasserstein_separation([3.0], [0.0, 1.0], signed=True) == pytest.approx(-2.5)  # anomalies lower


def test_wasserstein_edge_cases() -> None:
    assert wasserstein_separation([2.0, 2.0], [2.0], normalise=True) == 0.0
    with pytest.raises(ValueError):
        wasserstein_separation([], [1.0])
    with pytest.raises(ValueError):
        wasserstein_separation([1.0, float("nan")], [1.0])
    with pytest.raises(ValueError):
        wasserstein_separation([1.0], [float("inf")], normalise=True)


# ---------------------------------------------------------------- pixel-level


def test_pixel_metrics_by_hand() -> None:
    amap = torch.tensor([[0.1, 0.2], [0.3, 0.4]]).view(1, 1, 2, 2)
    mask = torch.tensor([[False, True], [False, True]]).view(1, 1, 2, 2)  # one region {0.2, 0.4}
    # PRO curve (fpr, pro): (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    metric = PixelMetrics(num_bins=10, max_value=1.0, fpr_limit=1.0)
    metric.update(amap, mask)
    out = metric.compute()
    assert float(out["pixel_auroc"]) == pytest.approx(0.75)
    assert float(out["aupro"]) == pytest.approx(0.75)
    metric = PixelMetrics(num_bins=10, max_value=1.0, fpr_limit=0.3)
    metric.update(amap, mask)
    assert float(metric.compute()["aupro"]) == pytest.approx(0.5)  # 0.3 * 0.5 / 0.3


def test_pro_averages_regions_not_pixels() -> None:
    amap = torch.zeros(1, 1, 8, 8)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[0, 0, :4, :4] = True  # 16-pixel region, found
    amap[0, 0, :4, :4] = 0.9
    mask[0, 0, 6, 6] = mask[0, 0, 7, 7] = True  # diagonal pair: one 8-connected region, missed
    metric = PixelMetrics(num_bins=10, max_value=1.0, fpr_limit=1.0)
    metric.update(amap, mask)
    # at every threshold in (0, 0.9]: fpr 0, pro (1 + 0) / 2; below: fpr 1, pro 1
    assert float(metric.compute()["aupro"]) == pytest.approx(0.75)
    assert metric.region_hists[0].numel() == 2 * 10  # block + diagonal pair: 2 regions, not 3


def test_pixel_auroc_matches_rank_statistic() -> None:
    maps, masks = synthetic_blobs(seed=1)
    metric = PixelMetrics(num_bins=20000, max_value=float(maps.max()) * 1.01)
    for i in range(0, len(maps), 2):  # streamed in batches
        metric.update(maps[i : i + 2], masks[i : i + 2])
    expected = exact_auroc(maps[~masks].double().numpy(), maps[masks].double().numpy())
    assert float(metric.compute()["pixel_auroc"]) == pytest.approx(expected, abs=1e-3)
    assert 0.6 < expected < 0.99  # a non-trivial case


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_matches_all_threshold_brute_force(limit: float) -> None:
    maps, masks = synthetic_blobs(seed=2)
    metric = PixelMetrics(num_bins=5000, fpr_limit=limit)  # max_value fixed from the first batch
    for i in range(len(maps)):
        metric.update(maps[i : i + 1], masks[i : i + 1])
    expected = exact_aupro(maps[:, 0].double().numpy(), masks[:, 0].numpy(), limit)
    assert float(metric.compute()["aupro"]) == pytest.approx(expected, abs=2e-3)
    assert 0.2 < expected < 0.95 or limit == 1.0  # a non-trivial case


def test_first_batch_fixes_the_range_and_reset_clears_it() -> None:
    metric = PixelMetrics(num_bins=4)
    first = torch.full((1, 1, 2, 2), 0.5)
    metric.update(first, torch.zeros_like(first, dtype=torch.bool))
    assert float(metric.upper) == pytest.approx(1.0)  # 2x the first batch's max
    metric.update(torch.full((1, 1, 2, 2), 7.0), torch.ones(1, 1, 2, 2, dtype=torch.bool))
    assert metric.anomalous_hist.tolist() == [0, 0, 0, 4]  # above the range: last bin
    assert float(metric.compute()["pixel_auroc"]) == pytest.approx(1.0)
    metric.reset()
    assert float(metric.upper) < 0 and len(metric.region_hists) == 0
    metric.update(3 * first, torch.zeros_like(first, dtype=torch.bool))
    assert float(metric.upper) == pytest.approx(3.0)


def test_no_anomalous_pixels_gives_nan_not_an_error() -> None:
    metric = PixelMetrics()
    metric.update(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.bool))
    out = metric.compute()
    assert math.isnan(float(out["pixel_auroc"])) and math.isnan(float(out["aupro"]))


def test_states_merge_like_ddp_ranks() -> None:
    """Two 'ranks' (one holding no defects) synced with torchmetrics' gather logic equal one metric on all."""
    maps, masks = synthetic_blobs(seed=3)
    whole = PixelMetrics(num_bins=500, max_value=2.0)
    whole.update(maps, masks)
    rank0, rank1 = PixelMetrics(num_bins=500, max_value=2.0), PixelMetrics(num_bins=500, max_value=2.0)
    rank0.update(maps[:4], masks[:4])
    rank1.update(maps[4:], masks[4:])  # the last two images: no regions on this rank
    assert len(rank1.region_hists) == 0
    # what rank 1 contributes to each all_gather, in state order (an empty list is sent as an empty tensor)
    theirs = iter([rank1.normal_hist, rank1.anomalous_hist, torch.tensor([]), rank1.upper])
    rank0._sync_dist(lambda tensor, group=None: [tensor, next(theirs)])
    for name in ("pixel_auroc", "aupro"):
        assert float(rank0.compute()[name]) == pytest.approx(float(whole.compute()[name]), abs=1e-6)


def test_update_rejects_bad_input() -> None:
    metric = PixelMetrics()
    with pytest.raises(ValueError):  # a mask tensor must match the maps; masks of other sizes come as a sequence
        metric.update(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError):
        metric.update(torch.rand(2, 1, 8, 8), [torch.zeros(1, 1, 16, 16, dtype=torch.bool)] * 2)
    with pytest.raises(ValueError):
        metric.update(torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 2, 2, dtype=torch.bool))
