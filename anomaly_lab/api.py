"""Score images from Python, as `python -m anomaly_lab.predict` does, without writing files:

    from anomaly_lab import load_model
    model = load_model("outputs/runs/<run>/checkpoints/best.ckpt")
    result = model.predict("bottle.png")          # or a PIL image, an (H,W,3) uint8 array, or a list of them
    print(result.score, result.anomalous, result.mask.sum())

The same pipeline as the CLI (anomaly_lab.predict: decoding, preprocessing, the torch backend, the map brought back
to the input's size, the masks' rule of predict_outputs.image_mask), so a file gets the CLI's score; an array or a
PIL image is scored as the decoded pixels of a file would be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from anomaly_lab.model import InpaintingModel

DEFAULT_MASK_PEAK_SHARE = 0.9  # conf/predict.yaml's mask_peak_share


@dataclass
class Prediction:
    """One input's result."""

    score: float
    anomalous: bool  # score >= the threshold
    anomaly_map: np.ndarray  # (H,W) float32 at the input's size
    mask: np.ndarray  # (H,W) bool: the pixels at or above the pixel threshold (see predict_outputs.image_mask)
    tile_scores: np.ndarray | None = None  # a tiled model's tiles, (N,)


def as_image(item: Any) -> tuple[np.ndarray | None, Path]:
    """(the decoded image (H,W,3) uint8, or None for a file to read; a name for messages)."""
    from PIL import Image

    if isinstance(item, str | Path):
        return None, Path(item)
    if isinstance(item, Image.Image):
        return np.asarray(item.convert("RGB")), Path("<PIL image>")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ValueError(f"expected an (H,W,3) uint8 array, got {item.dtype} {item.shape}")
        return item, Path("<array>")
    raise TypeError(f"cannot score a {type(item).__name__}: give a path, a PIL image or an (H,W,3) uint8 array")


@torch.no_grad()
def predict_images(
    model: InpaintingModel,
    inputs: Any,
    score_threshold: float | None = None,
    pixel_threshold: float | None = None,
    mask_peak_share: float | None = DEFAULT_MASK_PEAK_SHARE,
    batch_size: int = 16,
) -> Prediction | list[Prediction]:
    """InpaintingModel.predict: one Prediction per input (a list for a list or tuple of inputs)."""
    from anomaly_lab.predict import (
        Prepared,
        Skipped,
        TorchScorer,
        pixel_threshold_of,
        prepare_file,
        prepare_image,
        score_pending,
    )
    from anomaly_lab.predict_outputs import Drawing, image_mask

    single = not isinstance(inputs, Sequence) or isinstance(inputs, str)
    items = [inputs] if single else list(inputs)
    threshold = float(model.threshold) if score_threshold is None else float(score_threshold)
    if not np.isfinite(threshold):
        raise ValueError("the model holds no threshold (its training set none): pass score_threshold=")
    pixel_threshold, _ = pixel_threshold_of(pixel_threshold, model, threshold, "the model")
    drawing = Drawing(threshold, float(pixel_threshold), 2.0 * float(pixel_threshold), 0.5, mask_peak_share)
    was_training = model.training
    model.eval()
    try:
        prepared: list[Prepared | Skipped] = []
        for item in items:
            image, name = as_image(item)
            if image is None:
                prepared.append(prepare_file(name, model.preprocessing, None))
            else:
                prepared.append(prepare_image(image, name, model.preprocessing))
        results = []
        for result in score_pending(prepared, TorchScorer(model), batch_size, model.preprocessing):
            assert not isinstance(result, Skipped)  # prepare_image raised for anything it could not use
            scored = result[0]
            mask, _ = image_mask(scored, drawing)
            results.append(
                Prediction(scored.score, scored.score >= threshold, scored.anomaly_map, mask, scored.tile_scores)
            )
    finally:
        model.train(was_training)
    return results[0] if single else results
