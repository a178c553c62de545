"""The thesis's plots as matplotlib figures: score histograms, ROC / PR curves, a page's tile classification.

Plain functions from arrays to `matplotlib.figure.Figure` (no pyplot state, no GUI backend), so callbacks
can hand them to TensorBoard's `add_figure` and tests can inspect them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

NORMAL_COLOUR = "tab:blue"
ANOMALOUS_COLOUR = "tab:red"


def _as_numpy(values: torch.Tensor | np.ndarray | list[float]) -> np.ndarray:
    return np.asarray(torch.as_tensor(values).detach().cpu(), dtype=np.float64).ravel()


def score_histogram(
    normal_scores: torch.Tensor | np.ndarray | list[float],
    anomalous_scores: torch.Tensor | np.ndarray | list[float],
    threshold: float = math.nan,
    title: str = "image scores",
    bins: int = 30,
) -> Figure:
    """Overlaid histograms of normal and anomalous scores on shared bins, the threshold as a vertical line."""
    normal, anomalous = _as_numpy(normal_scores), _as_numpy(anomalous_scores)
    both = np.concatenate([normal, anomalous])
    if both.size == 0:
        raise ValueError("score_histogram needs at least one score")
    low, high = float(both.min()), float(both.max())
    if math.isfinite(threshold):
        low, high = min(low, threshold), max(high, threshold)
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1).tolist()
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for values, colour, name in ((normal, NORMAL_COLOUR, "normal"), (anomalous, ANOMALOUS_COLOUR, "anomalous")):
        if values.size:
            axes.hist(values, bins=edges, alpha=0.5, color=colour, label=f"{name} (n={values.size})")
    if math.isfinite(threshold):
        axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    axes.set(xlabel="score", ylabel="images", title=title)
    axes.legend()
    return figure


def _curve_inputs(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, ...]:
    """Scores as dense ranks in [0, 1] (torchmetrics would squash others with a sigmoid), labels as long."""
    values = torch.as_tensor(scores).detach().cpu().flatten().double()  # (N,)
    target = torch.as_tensor(labels).detach().cpu().flatten().long()  # (N,)
    if values.shape != target.shape or values.numel() == 0:
        raise ValueError(f"need as many scores as labels (got {values.numel()} and {target.numel()})")
    if not (bool((target == 0).any()) and bool((target == 1).any())):
        raise ValueError("ROC and PR curves need normal (0) and anomalous (1) samples")
    unique, inverse = torch.unique(values, return_inverse=True)
    return inverse.double() / max(len(unique) - 1, 1), target, values


def roc_figure(
    scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, threshold: float = math.nan
) -> Figure:
    """ROC curve with its AUC, and the operating point of `threshold` (score >= threshold is anomalous)."""
    ranks, target, values = _curve_inputs(scores, labels)
    fpr, tpr, _ = binary_roc(ranks, target)
    auc = float(torch.trapezoid(tpr, fpr))
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.plot(fpr.numpy(), tpr.numpy(), color=ANOMALOUS_COLOUR, label=f"AUROC {auc:.3f}")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    if math.isfinite(threshold):
        called = values >= threshold
        point = (float(called[target == 0].double().mean()), float(called[target == 1].double().mean()))
        axes.plot(*point, "ko", label=f"threshold {threshold:.4g}")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    return figure


def precision_recall_figure(
    scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, threshold: float = math.nan
) -> Figure:
    """Precision-recall curve, the anomalous share as the chance level, and the operating point of `threshold`."""
    ranks, target, values = _curve_inputs(scores, labels)
    precision, recall, _ = binary_precision_recall_curve(ranks, target)
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.plot(recall.numpy(), precision.numpy(), color=ANOMALOUS_COLOUR, label="precision-recall")
    axes.axhline(float(target.double().mean()), color="grey", linestyle=":", label="chance")
    if math.isfinite(threshold):
        called = values >= threshold
        true_positives = float((called & (target == 1)).sum())
        point = (true_positives / float((target == 1).sum()), true_positives / max(float(called.sum()), 1.0))
        axes.plot(*point, "ko", label=f"threshold {threshold:.4g}")
    axes.set(xlabel="recall", ylabel="precision", title="precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower left")
    return figure


def tile_classification_figure(
    page: np.ndarray | torch.Tensor, tile_scores: np.ndarray | torch.Tensor, threshold: float, title: str = ""
) -> Figure:
    """The thesis's page figure: the page, its per-tile score grid, and the tiles called anomalous drawn on it.

    page: (H,W,3) or (H,W) image, uint8 or float in [0, 1]; tile_scores: (rows, cols), one score per tile
    (NaN for a tile that was not scored); a tile with score >= threshold is anomalous. The tile grid is
    spread over the whole page, so a page cut into rows x cols tiles lines up with its tiles.
    """
    image = np.asarray(torch.as_tensor(page).detach().cpu())
    grid = np.asarray(torch.as_tensor(tile_scores).detach().cpu(), dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"tile_scores must be a (rows, cols) grid, got shape {grid.shape}")
    if image.ndim not in (2, 3):
        raise ValueError(f"page must be (H,W) or (H,W,3), got shape {image.shape}")
    height, width = image.shape[:2]
    extent = (0.0, float(width), float(height), 0.0)  # tiles stretched over the page: x right, y down
    anomalous = np.where(np.isfinite(grid), grid >= threshold, False)  # (rows, cols)

    figure = Figure(figsize=(15, 5), layout="constrained")
    page_axes, score_axes, class_axes = figure.subplots(1, 3, sharex=True, sharey=True)
    colour_map = "gray" if image.ndim == 2 else None
    page_axes.imshow(image, cmap=colour_map)
    page_axes.set_title("page")
    shown = score_axes.imshow(grid, cmap="viridis", extent=extent, interpolation="nearest")
    figure.colorbar(shown, ax=score_axes, shrink=0.8, label="tile score")
    score_axes.set_title("tile scores")
    class_axes.imshow(image, cmap=colour_map)
    red = ListedColormap([(0, 0, 0, 0), (1, 0, 0, 0.45)])  # transparent for normal, red veil for anomalous
    class_axes.imshow(anomalous.astype(float), cmap=red, vmin=0, vmax=1, extent=extent, interpolation="nearest")
    rows, cols = grid.shape
    for r in range(1, rows):
        class_axes.axhline(r * height / rows, color="white", linewidth=0.5)
    for c in range(1, cols):
        class_axes.axvline(c * width / cols, color="white", linewidth=0.5)
    class_axes.set_title(f"{int(anomalous.sum())} of {grid.size} tiles >= {threshold:.4g}")
    for axes in (page_axes, score_axes, class_axes):
        axes.set_axis_off()
    if title:
        figure.suptitle(title)
    return figure
