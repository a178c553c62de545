"""A trained model outside Lightning: the checkpoint's inference spec, safe loading, and the full-coverage scorer.

train.run gives the module a spec of plain values (net config, image size, normalisation, masking, scoring,
tiling) that the module writes into every checkpoint under "anomaly_lab", with the validation threshold.
Such a checkpoint loads with `torch.load(weights_only=True)`, so one downloaded from elsewhere cannot run
code while it is unpickled; predict and export rebuild net, masking and anomaly map from the spec.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from anomaly_lab.masking import Masking
from anomaly_lab.scoring import full_coverage_scores

SPEC_KEY = "anomaly_lab"  # the checkpoint entry that holds the spec
FORMAT_VERSION = 1  # bump when the spec's meaning changes; older readers then refuse newer checkpoints
# instantiate() imports and calls whatever a `_target_` names, with arguments from the file: a spec naming,
# say, os.system or torch.hub.load (which runs a repository's code) would undo what weights_only=True
# guards against. Only this project's nets, masking and anomaly maps may be built from a checkpoint
# (not torch.*: torch.hub.load, torch.load(weights_only=False) and friends live there).
ALLOWED_TARGETS = ("anomaly_lab.models.", "anomaly_lab.masking.", "anomaly_lab.scoring.")


class CheckpointError(ValueError):
    """A file that is not a usable anomaly_lab checkpoint; the message names the file and says why."""


class FullCoverageScorer(nn.Module):
    """A trained net with its scoring rule at one image size: images (B,3,S,S) in [0, 1] -> maps, scores.

    The same computation as InpaintingModule.forward; the full-coverage mask sets are computed once for
    S x S and kept as a buffer, so the forward graph is static (ONNX export) and no batch recomputes them.
    """

    def __init__(
        self,
        net: nn.Module,
        masking: Masking,
        anomaly_map: nn.Module,
        image_size: int,
        reduce: str = "mean",
        topk_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        self.net = net
        self.masking = masking
        self.anomaly_map = anomaly_map
        self.image_size = image_size
        self.reduce = reduce
        self.topk_fraction = topk_fraction
        mask_sets = masking.coverage_masks(image_size, image_size)  # per grid size (n,1,S,S)
        self.set_sizes = [len(masks) for masks in mask_sets]
        self.coverage_masks: torch.Tensor
        self.register_buffer("coverage_masks", torch.cat(mask_sets), persistent=False)  # (sum n,1,S,S)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly maps (B,1,S,S) and image scores (B,) of images (B,3,S,S)."""
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape)}")
        mask_sets = self.coverage_masks.split(self.set_sizes)
        return full_coverage_scores(
            self.net, images, self.masking, self.anomaly_map, self.reduce, self.topk_fraction, mask_sets
        )


@dataclass
class TrainedModel:
    """What a checkpoint gives predict and export: the scorer (eval mode) and how to feed it."""

    scorer: FullCoverageScorer
    threshold: float  # image-score threshold chosen on validation; NaN when training set none
    image_size: int
    normalisation: dict[str, Any]  # {"divide_by": 255.0, "grayscale": bool}
    tiling: dict[str, Any] | None  # {"stride", "border", "page_width"} for models trained on tiles of pages
    spec: dict[str, Any]


def check_targets(node: Any, where: str) -> None:
    """Raise CheckpointError if any `_target_` in a spec (nested too) is outside ALLOWED_TARGETS."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not (isinstance(target, str) and target.startswith(ALLOWED_TARGETS)):
            raise CheckpointError(
                f"{where}: _target_ {target!r} is not one of anomaly_lab's own classes "
                f"({', '.join(t + '*' for t in ALLOWED_TARGETS)}); refusing to build it from a checkpoint"
            )
        for key, value in node.items():
            check_targets(value, f"{where}.{key}")
    elif isinstance(node, Sequence) and not isinstance(node, str):
        for i, value in enumerate(node):
            check_targets(value, f"{where}[{i}]")


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The spec (threshold included) and the state dict of an anomaly_lab checkpoint, loaded weights-only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error) or "Unsupported class" in str(error):
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors and plain values; refusing to unpickle it "
                f"(torch.load with weights_only=True), since unpickling such objects can run any code. "
                f"Checkpoints written by this anomaly_lab's train load safely."
            ) from error
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({reason.group(1) if reason else first_line(error)})"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({first_line(error)})") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    spec = checkpoint.get(SPEC_KEY)
    if not isinstance(spec, dict):
        raise CheckpointError(
            f"{path}: a checkpoint without anomaly_lab's inference spec ('{SPEC_KEY}'): written by another "
            f"program or by anomaly_lab before checkpoint format {FORMAT_VERSION}; train it again with this version"
        )
    version = spec.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version!r} (anomaly_lab {spec.get('anomaly_lab_version', '?')}), but this "
            f"anomaly_lab reads format {FORMAT_VERSION}; use the anomaly_lab version that wrote it"
        )
    return spec, checkpoint["state_dict"]


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild the scorer of a checkpoint written by anomaly_lab.train (see read_checkpoint)."""
    spec, state_dict = read_checkpoint(path)
    try:
        for key in ("net", "masking", "scoring"):
            check_targets(spec[key], f"{path}: {key}")
        net: nn.Module = instantiate(spec["net"])
        masking: Masking = instantiate(spec["masking"])
        anomaly_map: nn.Module = instantiate(spec["scoring"]["anomaly_map"])
        image_size = int(spec["image_size"])
        scoring = spec["scoring"]
    except KeyError as error:
        raise CheckpointError(f"{path}: the inference spec lacks {error}") from error
    net_state = {key.removeprefix("net."): value for key, value in state_dict.items() if key.startswith("net.")}
    try:
        net.load_state_dict(net_state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the net of its spec ({error})") from error
    scorer = FullCoverageScorer(net, masking, anomaly_map, image_size, scoring["reduce"], scoring["topk_fraction"])
    threshold = spec.get("threshold")
    return TrainedModel(
        scorer=scorer.to(device).eval(),
        threshold=float(threshold) if threshold is not None else math.nan,
        image_size=image_size,
        normalisation=dict(spec.get("normalisation") or {"divide_by": 255.0, "grayscale": False}),
        tiling=spec.get("tiling"),
        spec=spec,
    )
