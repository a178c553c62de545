"""A trained model outside Lightning: the checkpoint spec, safe loading, and the rebuilt InpaintingModel.

The spec is the model's config as plain values (the `model` node with its nested `_target_`s, resolved), written
into every checkpoint under "anomaly_lab" by the LightningModule; weights and the validation threshold are the
state dict's. Such a checkpoint loads with `torch.load(weights_only=True)`, so one downloaded from elsewhere
cannot run code while it is unpickled, and the spec may name only the classes of the registry
(anomaly_lab.registry.CHECKPOINT_CLASSES), each built with plain keyword values: a file never chooses what is
imported or called. `model_spec` (writing) and `load_model` (reading) are the two ends of that format.
"""

from __future__ import annotations

import pickle
import re
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from anomaly_lab.errors import UserError
from anomaly_lab.model import InpaintingModel
from anomaly_lab.registry import CHECKPOINT_CLASSES, RENAMED_CLASSES, load_builtin_parts

SPEC_KEY = "anomaly_lab"  # the checkpoint entry that holds the spec
FORMAT_VERSION = 2  # bump when the spec's meaning changes; older readers then refuse newer checkpoints
MODEL_CLASS = f"{InpaintingModel.__module__}.{InpaintingModel.__qualname__}"
TRAINING_ONLY = {"compile": False}  # model options that only training uses: a rebuilt model runs without them
MODEL_PARTS = ("net", "masking", "anomaly_map", "preprocessing")  # each a node of its own class, never a plain value
PlainValue = bool | int | float | str | None


class CheckpointError(UserError, ValueError):
    """A file that is not a usable anomaly_lab checkpoint; the message names the file and says why."""


def is_plain(value: Any) -> bool:
    """A bool, number, string or None, or a list of them: nothing that could name code."""
    if isinstance(value, list | tuple):
        return all(isinstance(item, PlainValue) for item in value)
    return isinstance(value, PlainValue)


def build_from_spec(node: Any, where: str, build: bool = True) -> Any:
    """The object a spec node describes: one of CHECKPOINT_CLASSES, called with plain keyword values or nested
    nodes of the same kind.

    CheckpointError for anything else: another `_target_`, `_args_` or other underscore keys, a value that is
    neither plain nor such a node, or keyword arguments the class does not take. build=False checks only.
    """
    load_builtin_parts()
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise CheckpointError(f"{where}: expected a mapping with a _target_, got {type(node).__name__}")
    target = node["_target_"]
    cls = CHECKPOINT_CLASSES.get(target)
    if cls is None:
        raise CheckpointError(
            f"{where}: _target_ {target!r} is not one of the classes a checkpoint may name "
            f"({', '.join(sorted(CHECKPOINT_CLASSES))}); refusing to build it"
        )
    kwargs: dict[str, Any] = {}
    for key, value in node.items():
        if key == "_target_":
            continue
        if not isinstance(key, str) or key.startswith("_"):
            raise CheckpointError(f"{where}.{key}: not a keyword argument of {target}; refusing it")
        if isinstance(value, dict):
            kwargs[key] = build_from_spec(value, f"{where}.{key}", build)
        elif is_plain(value):
            kwargs[key] = value
        else:
            raise CheckpointError(
                f"{where}.{key}: only plain values (numbers, strings, booleans, lists of them) or nested classes "
                f"of the list may configure {target}; refusing {type(value).__name__}"
            )
    if not build:  # build=False: only check that the node is one the loader would build
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, RuntimeError, AttributeError) as error:  # AttributeError: a part of the wrong kind
        raise CheckpointError(f"{where}: cannot build {target} from the checkpoint ({first_line(error)})") from error


def current_names(node: Any) -> Any:
    """A spec node with every `_target_` that names a moved class by its old name (RENAMED_CLASSES) renamed."""
    if isinstance(node, dict):
        return {
            key: RENAMED_CLASSES.get(value, value)
            if key == "_target_" and isinstance(value, str)
            else current_names(value)
            for key, value in node.items()
        }
    return node


def model_spec(model_config: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records to rebuild the model: the model config (plain, resolved), the format version.

    A config this loader could not rebuild (a class outside the registry, a non-plain value) is refused now,
    before training, rather than in predict.
    """
    if model_config.get("_target_") != MODEL_CLASS:
        raise CheckpointError(f"model: _target_ must be {MODEL_CLASS}, got {model_config.get('_target_')!r}")
    build_from_spec(model_config, "model", build=False)
    try:
        package_version = version("anomaly_lab")
    except PackageNotFoundError:
        package_version = "unknown"
    return {
        "format_version": FORMAT_VERSION,
        "anomaly_lab_version": package_version,
        "model": {**model_config, **{k: v for k, v in TRAINING_ONLY.items() if k in model_config}},
    }


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
    return current_names(spec), checkpoint["state_dict"]


def load_weights(model: InpaintingModel, weights: dict[str, Any], path: Path) -> None:
    """model.load_state_dict(weights), strict; a misfit is a CheckpointError naming the file and the first reason."""
    try:
        with warnings.catch_warnings():  # on the meta device copying is a no-op, which torch warns of per tensor
            warnings.filterwarnings("ignore", message=r".*copying from a non-meta parameter")
            model.load_state_dict(weights)
    except RuntimeError as error:
        reasons = str(error).strip().splitlines()[1:]  # torch's first line only says that loading failed
        detail = reasons[0].strip() if reasons else first_line(error)
        detail = detail if len(detail) <= 300 else f"{detail[:300]}..."
        raise CheckpointError(f"{path}: weights do not fit the model of its spec ({detail})") from error


def load_model(path: str | Path, device: torch.device | str = "cpu") -> InpaintingModel:
    """The InpaintingModel of a checkpoint written by anomaly_lab.train (eval mode), its threshold included."""
    spec, state_dict = read_checkpoint(path)
    path = Path(path)
    model_node = spec.get("model")
    if not isinstance(model_node, dict) or model_node.get("_target_") != MODEL_CLASS:
        found = (
            "missing"
            if model_node is None
            else f"_target_ {model_node.get('_target_')!r}"
            if isinstance(model_node, dict)
            else type(model_node).__name__
        )
        raise CheckpointError(f"{path}: the spec's model must be an {MODEL_CLASS} node ({found})")
    for part in MODEL_PARTS:
        if not isinstance(model_node.get(part), dict):
            kind = type(model_node.get(part)).__name__
            raise CheckpointError(f"{path}: model.{part}: expected a mapping with a _target_, got {kind}")
    node = {**model_node, **TRAINING_ONLY}
    weights = {key.removeprefix("model."): value for key, value in state_dict.items() if key.startswith("model.")}
    # First on the meta device (shapes only, no memory): a spec that does not fit its weights, e.g. a crafted one
    # whose net is far wider than the weights the file holds, is refused before any memory is taken for it.
    try:
        with torch.device("meta"):
            skeleton: InpaintingModel | None = build_from_spec(node, f"{path}: model")
    except CheckpointError:
        raise
    except Exception:  # what the meta device cannot run (e.g. batch norm over 0 channels): the real build says why
        skeleton = None
    scored = False
    if skeleton is not None:
        load_weights(skeleton, weights, path)
        scored = score_one_blank_image(skeleton.eval(), path, torch.device("meta"))
    model: InpaintingModel = build_from_spec(node, f"{path}: model")
    load_weights(model, weights, path)
    model.eval()
    if not scored:
        score_one_blank_image(model, path, torch.device("cpu"))
    return model.to(device)


def score_one_blank_image(model: InpaintingModel, path: Path, device: torch.device) -> bool:
    """One image through the whole scoring: a spec that builds but cannot score is a CheckpointError here. On the
    meta device (shapes only, no memory) False if an op has no meta kernel: the caller scores for real then."""
    height, width = model.input_shape
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width, device=device))
    except NotImplementedError:
        if device.type != "meta":
            raise
        return False
    except (RuntimeError, ValueError, TypeError) as error:
        reason = first_line(error)
        raise CheckpointError(f"{path}: its model cannot score a {height}x{width} px image ({reason})") from error
    return True
