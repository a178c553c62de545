"""A trained model outside Lightning: the checkpoint's inference spec, safe loading, and the full-coverage scorer.

train.run gives the module a spec of plain values (net config, image size, normalisation, masking, scoring,
tiling) that the module writes into every checkpoint under "anomaly_lab", with the validation threshold.
Such a checkpoint loads with `torch.load(weights_only=True)`, so one downloaded from elsewhere cannot run
code while it is unpickled; predict and export build net, masking and anomaly map from the spec, and the spec
may name only the few classes of CHECKPOINT_CLASSES, with plain values: a file never chooses what is called.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import nn

from anomaly_lab.errors import UserError
from anomaly_lab.masking import GridMasking, Masking, NoMasking
from anomaly_lab.models.unet import UNet
from anomaly_lab.scoring import AnomalyMap, full_coverage_scores

SPEC_KEY = "anomaly_lab"  # the checkpoint entry that holds the spec
FORMAT_VERSION = 1  # bump when the spec's meaning changes; older readers then refuse newer checkpoints
# The only classes a checkpoint may name, each by its exact dotted name, built with plain keyword values. Nothing is
# imported or resolved from the file's strings (hydra's instantiate would walk module attributes, so a prefix such
# as "anomaly_lab.masking." reaches every module anomaly_lab imports, torch.load among them).
CHECKPOINT_CLASSES: dict[str, type] = {
    "anomaly_lab.models.unet.UNet": UNet,
    "anomaly_lab.masking.GridMasking": GridMasking,
    "anomaly_lab.masking.NoMasking": NoMasking,
    "anomaly_lab.scoring.AnomalyMap": AnomalyMap,
}
PlainValue = bool | int | float | str | None


class CheckpointError(UserError, ValueError):
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


def is_plain(value: Any) -> bool:
    """A bool, number, string or None, or a list of them: nothing that could name code."""
    if isinstance(value, list | tuple):
        return all(isinstance(item, PlainValue) for item in value)
    return isinstance(value, PlainValue)


def build_from_spec(node: Any, where: str) -> Any:
    """The object a spec entry describes: one of CHECKPOINT_CLASSES, called with its plain keyword values.

    CheckpointError for anything else: another `_target_`, a nested dict (a nested `_target_` would be built by
    instantiate), a non-plain value or keyword arguments the class does not take.
    """
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise CheckpointError(f"{where}: expected a mapping with a _target_, got {type(node).__name__}")
    target = node["_target_"]
    cls = CHECKPOINT_CLASSES.get(target)
    if cls is None:
        raise CheckpointError(
            f"{where}: _target_ {target!r} is not one of the classes a checkpoint may name "
            f"({', '.join(sorted(CHECKPOINT_CLASSES))}); refusing to build it"
        )
    kwargs = {key: value for key, value in node.items() if key != "_target_"}
    for key, value in kwargs.items():
        if not isinstance(key, str) or key.startswith("_") or not is_plain(value):
            raise CheckpointError(
                f"{where}.{key}: only plain values (numbers, strings, booleans, lists of them) may configure "
                f"{target}; refusing {type(value).__name__}"
            )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{where}: cannot build {target} from the checkpoint ({first_line(error)})") from error


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def unpickling_refusal(error: pickle.UnpicklingError) -> str:
    """Why torch's weights-only unpickler refused a file, in this project's words.

    torch's own message ends in advice to retry with weights_only=False, which would run the file's code:
    it is never passed on.
    """
    text = str(error)
    if re.search(r"unsupported\s+(global|class)|GLOBAL\s+\S+\s+was not an allowed global", text, re.IGNORECASE):
        return (
            "holds Python objects other than tensors and plain values; refusing to unpickle it, since unpickling "
            "such objects can run any code. Checkpoints written by anomaly_lab's train load safely"
        )
    reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    detail = reason.group(1) if reason else "its pickle is malformed"
    if "weights_only" in detail:
        detail = "its pickle is malformed"
    return f"not a PyTorch checkpoint ({detail.strip()})"


def load_weights_only(path: Path) -> Any:
    """torch.load(weights_only=True); any refusal or breakage of the file is a CheckpointError naming it."""
    with path.open("rb") as file:
        head = file.read(2)
    if head[:1] == b"\x80":  # a bare pickle stream, not torch.save's zip archive
        raise CheckpointError(
            f"{path}: a plain pickle, not a checkpoint written by torch.save; refusing to unpickle it "
            f"(unpickling can run any code)"
        )
    try:
        with warnings.catch_warnings():  # torch's own warnings about the file end in advice we do not give
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: {unpickling_refusal(error)}") from error
    except Exception as error:  # the unpickler breaks on garbage in many ways (KeyError, EOFError, ...)
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint ({type(error).__name__}: {first_line(error)})"
        ) from error


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The spec (threshold included) and the state dict of an anomaly_lab checkpoint, loaded weights-only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    checkpoint = load_weights_only(path)
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


def checked_settings(spec: dict[str, Any], path: Path) -> dict[str, Any]:
    """The spec's plain settings, each checked: a CheckpointError names the first one that cannot work."""

    def bad(key: str, value: Any, allowed: str) -> CheckpointError:
        return CheckpointError(f"{path}: {key}={value!r} in the inference spec; expected {allowed}")

    def is_int(value: Any) -> TypeGuard[int]:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_number(value: Any) -> TypeGuard[float]:
        return isinstance(value, int | float) and not isinstance(value, bool)

    size, scoring = spec["image_size"], spec["scoring"]
    if not is_int(size) or not 1 <= size <= 16384:
        raise bad("image_size", size, "an integer from 1 to 16384")
    if not isinstance(scoring, dict) or scoring.get("reduce") not in ("mean", "max", "topk"):
        raise bad("scoring.reduce", scoring.get("reduce") if isinstance(scoring, dict) else scoring, "mean|max|topk")
    topk = scoring.get("topk_fraction")
    if not is_number(topk) or not 0 < topk <= 1:
        raise bad("scoring.topk_fraction", topk, "a number in (0, 1]")
    threshold = spec.get("threshold")
    if threshold is not None and not is_number(threshold):
        raise bad("threshold", threshold, "a number or null")
    normalisation = spec.get("normalisation") or {"divide_by": 255.0, "grayscale": False}
    divide_by = normalisation.get("divide_by") if isinstance(normalisation, dict) else None
    if not is_number(divide_by) or not 0 < divide_by < math.inf:
        raise bad("normalisation.divide_by", divide_by, "a positive number (255.0)")
    if not isinstance(normalisation.get("grayscale", False), bool):
        raise bad("normalisation.grayscale", normalisation.get("grayscale"), "true or false")
    tiling = spec.get("tiling")
    if tiling is not None:
        if not isinstance(tiling, dict):
            raise bad("tiling", tiling, "null or {stride, border, page_width}")
        for key in ("stride", "page_width"):
            if tiling.get(key) is not None and (not is_int(tiling[key]) or tiling[key] < 1):
                raise bad(f"tiling.{key}", tiling.get(key), "null or a positive integer")
        if tiling.get("border") not in ("drop", "pad"):
            raise bad("tiling.border", tiling.get("border"), "drop or pad")
    return {
        "image_size": size,
        "reduce": scoring["reduce"],
        "topk_fraction": float(topk),
        "threshold": math.nan if threshold is None else float(threshold),
        "normalisation": {"divide_by": float(divide_by), "grayscale": normalisation.get("grayscale", False)},
        "tiling": None if tiling is None else {key: tiling.get(key) for key in ("stride", "border", "page_width")},
    }


def load_trained_model(path: str | Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild the scorer of a checkpoint written by anomaly_lab.train (see read_checkpoint)."""
    spec, state_dict = read_checkpoint(path)
    path = Path(path)
    try:
        settings = checked_settings(spec, path)
        net: nn.Module = build_from_spec(spec["net"], f"{path}: net")
        masking: Masking = build_from_spec(spec["masking"], f"{path}: masking")
        anomaly_map: nn.Module = build_from_spec(spec["scoring"]["anomaly_map"], f"{path}: scoring.anomaly_map")
    except KeyError as error:
        raise CheckpointError(f"{path}: the inference spec lacks {error}") from error
    net_state = {key.removeprefix("net."): value for key, value in state_dict.items() if key.startswith("net.")}
    try:
        net.load_state_dict(net_state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the net of its spec ({error})") from error
    image_size = settings["image_size"]
    try:
        scorer = FullCoverageScorer(
            net, masking, anomaly_map, image_size, settings["reduce"], settings["topk_fraction"]
        ).eval()
        with torch.no_grad():  # one image through the whole scoring: a spec that builds but cannot score fails here
            scorer(torch.zeros(1, 3, image_size, image_size))
    except (RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: its model cannot score a {image_size}px image ({first_line(error)})") from error
    return TrainedModel(
        scorer=scorer.to(device),
        threshold=settings["threshold"],
        image_size=image_size,
        normalisation=settings["normalisation"],
        tiling=settings["tiling"],
        spec=spec,
    )
