"""Per-sample results of a validation or test pass, collected once by the LightningModule.

The module gathers them across DDP processes once per stage (one all_gather) and publishes them as
`module.results[stage]` before the stage ends; callbacks (scores.csv, figures) read them in on_validation_end /
on_test_end instead of collecting their own copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Defect names of synthetic anomalies (data.validation_anomalies): "synthetic_perlin", "synthetic_cutpaste"
SYNTHETIC_DEFECT_PREFIX = "synthetic_"


def validation_key(metrics: Mapping[str, Any], name: str) -> str:
    """The key of metrics.json that holds validation metric `name` (e.g. "val/image_auroc") for the run's model: the
    chosen scoring's (val/chosen/image_auroc) where scoring=auto chose one at the end of training, else `name`."""
    chosen = f"val/chosen/{name.removeprefix('val/')}"
    return chosen if chosen in metrics else name


def anomaly_kind(defect: str) -> str:
    """Which anomalies an anomalous sample belongs to: its synthetic generator's defect name, or "real"."""
    return defect if defect.startswith(SYNTHETIC_DEFECT_PREFIX) else "real"


@dataclass(frozen=True)
class ScoredSample:
    """One evaluated image (or tile: its page and position in the page's tile grid) and its image score."""

    path: str
    label: int
    defect: str
    score: float
    page: str
    row: int
    col: int
    mask_known: bool = True  # False: anomalous, its true mask unknown (no pixel metrics with it)


@dataclass(frozen=True)
class StageResults:
    """Every sample of one validation or test pass, in loader order, and the threshold in force after it."""

    stage: str
    samples: list[ScoredSample]
    threshold: float = float("nan")  # the image-score threshold (NaN: none chosen)
    scores: np.ndarray = field(init=False, repr=False)  # (N,) float64
    labels: np.ndarray = field(init=False, repr=False)  # (N,) int64

    def __post_init__(self) -> None:
        object.__setattr__(self, "scores", np.array([s.score for s in self.samples], dtype=np.float64))
        object.__setattr__(self, "labels", np.array([s.label for s in self.samples], dtype=np.int64))


def scored_samples(batch: dict[str, Any], scores: torch.Tensor) -> list[ScoredSample]:
    """The batch's samples with their image scores (B,)."""
    values = scores.detach().float().cpu().tolist()
    labels, rows, cols = (torch.as_tensor(batch[key]).cpu().tolist() for key in ("label", "row", "col"))
    known = torch.as_tensor(batch.get("mask_known", [True] * len(values))).cpu().tolist()  # (B,) bool
    columns = zip(batch["path"], labels, batch["defect"], values, batch["page"], rows, cols, known, strict=True)
    return [
        ScoredSample(str(path), int(label), str(defect), float(score), str(page), int(row), int(col), bool(mask))
        for path, label, defect, score, page, row, col, mask in columns
    ]


def without_masks_note(samples: list[ScoredSample]) -> str | None:
    """Why pixel metrics are skipped: some anomalous samples have no ground-truth mask (None: every mask is known).

    Counted in files (a tile's page), so tiled pages count as the images they were cut from.
    """
    anomalous = {s.page for s in samples if s.label == 1}
    unknown = {s.page for s in samples if s.label == 1 and not s.mask_known}
    if not unknown:
        return None
    folders = sorted({str(Path(page).parent) for page in unknown})
    where = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more folders" if len(folders) > 3 else "")
    return (
        f"no ground-truth masks for {len(unknown)} of the {len(anomalous)} anomalous test images (in {where}): "
        f"pixel AUROC and AUPRO skipped, image metrics only"
    )


def gather_samples(samples: list[ScoredSample]) -> list[ScoredSample]:
    """Every process's samples under DDP (each saw a shard; every rank must call this); unchanged otherwise.

    Evaluation loaders use an unrepeated distributed sampler (data.datamodules.evaluation_sampler), so shards do
    not overlap; identical rows are still dropped as a safeguard against a padding sampler.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return samples
    parts: list[list[ScoredSample] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, samples)
    return list(dict.fromkeys(sample for part in parts for sample in part or []))
