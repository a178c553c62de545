"""Checkpoints that survive kills and full disks, load without running code, and resume the same run.

- AtomicCheckpointIO writes each checkpoint to a temporary file beside its target, fsyncs it and renames it
  over the target (atomic on POSIX), so a kill or a full disk during a save leaves the previous good file in
  place. Lightning's own writer goes through a temporary file in the system temp folder and then copies it
  across file systems, which truncates the target first. A save the disk refuses (full, quota, read-only) is a
  one-line StorageError naming the file. Loading (resume, test) is weights-only: a checkpoint handed to
  `resume=` cannot run code either.
- RandomState puts the global random generators (torch, numpy, random: masks, shuffling, augmentation) into
  every checkpoint and restores them when one is loaded to resume, so a run killed in epoch k and resumed
  from last.ckpt draws the same masks and batches as a run that was never stopped.
- check_same_model refuses to resume a checkpoint into a different model (another preprocessing, net, masking or
  score): the weights and the validation history would belong to one model and the rest of the run to another.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from anomaly_lab.checkpoint_loading import SPEC_KEY, CheckpointError, current_names, is_plain, load_weights_only
from anomaly_lab.errors import StorageError, storage_error, storage_message

log = logging.getLogger(__name__)


def resume_checkpoint(resume: bool | str | None, output_dir: Path) -> str | None:
    """The checkpoint to continue from: none, the run dir's last.ckpt (resume=true), or a given path."""
    if resume is False or resume is None:
        return None
    path = output_dir / "checkpoints" / "last.ckpt" if resume is True else Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(
            f"resume: no checkpoint at {path}; pass resume=<path/to/last.ckpt> or "
            f"resume=true hydra.run.dir=<the run dir to continue>"
        )
    return str(path)


# Model options that change speed, not the model: a run may resume with them changed (on a GPU, say).
RESUME_MAY_CHANGE = frozenset({"channels_last", "compile"})
# Where the user sets each part of the model's config (conf/model_base/inpainting.yaml), to name the key they typed.
OPTION_OF_MODEL_KEY = {
    "preprocessing": "dataset.preprocessing",
    "masking": "masking",
    "anomaly_map": "scoring.anomaly_map",
    "reduce": "scoring.reduce",
    "topk_fraction": "scoring.topk_fraction",
}


def spec_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(option, value in the checkpoint, value now) for every option whose value differs. An option the checkpoint
    lacks (written before it existed) is not compared."""
    differences = []
    for key, value in current.items():
        if key not in saved or (not prefix and key in RESUME_MAY_CHANGE):
            continue
        option = f"{prefix}.{key}" if prefix else OPTION_OF_MODEL_KEY.get(key, f"model.{key}")
        if isinstance(value, dict) and isinstance(saved[key], dict):
            differences += spec_differences(saved[key], value, option)
        elif not is_plain(saved[key]) or saved[key] != value:  # a tensor or object is no value this config gives
            differences.append((option, saved[key], value))
    return differences


def shortened(value: Any, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters: a crafted value cannot flood the one-line message."""
    text = repr(value) if is_plain(value) or isinstance(value, dict) else f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_same_model(
    path: str | Path, spec: dict[str, Any], set_by: Callable[[str], str | None] = lambda option: None
) -> None:
    """CheckpointError naming the options whose values differ if the checkpoint at path, to be resumed, holds
    another model than `spec` (anomaly_lab.checkpoint_loading.model_spec) describes. set_by(option): the option the user
    sets it through, if another (masking.seed is `seed`'s). Lightning checkpoints without a spec are left to the
    shapes of their weights."""
    saved = load_weights_only(Path(path))
    check_resumable(saved, Path(path))
    saved_spec = saved.get(SPEC_KEY)
    saved_model = current_names(saved_spec.get("model")) if isinstance(saved_spec, dict) else None
    if not isinstance(saved_model, dict):
        return
    differences = spec_differences(saved_model, spec["model"])
    if differences:
        named = []
        for option, before, now in differences[:3]:
            source = set_by(option)
            through = f" (set by {source})" if source not in (None, option) else ""
            named.append(f"{option}{through}: {shortened(before)} in the checkpoint, {shortened(now)} now")
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise CheckpointError(
            f"{path}: resuming a different model: {'; '.join(named)}{more}; resume with the options "
            f"the run was started with (its .hydra/overrides.yaml), or start a new run in another folder"
        )


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in path's folder, flushed to disk, then renamed over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it owner-only; a checkpoint is an ordinary file
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def rewrite_model(path: Path, state_dict: dict[str, torch.Tensor], spec: dict[str, Any]) -> None:
    """Replace a checkpoint's weights and spec (atomically, as every save): the scoring chosen after training
    (scoring=auto) goes into the file that test, predict and export read."""
    checkpoint = load_weights_only(path)
    checkpoint["state_dict"] = {key: value.detach().cpu() for key, value in state_dict.items()}
    checkpoint[SPEC_KEY] = spec
    atomic_torch_save(checkpoint, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer and reader, with atomic saves and weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """A full disk (or quota, size limit, read-only file system) is a StorageError naming the file: the
        temporary file is gone and the checkpoint there before, if any, is untouched."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        try:
            atomic_torch_save(checkpoint, Path(path))
        except Exception as error:
            refused = storage_error(error)
            if refused is None:
                raise
            # resume=true continues from last.ckpt: before the first one is saved there is nothing to continue
            then = (
                "continue the run with resume=true"
                if (Path(path).parent / "last.ckpt").is_file()
                else "run the command again with overwrite=true (no last.ckpt to resume from yet)"
            )
            raise StorageError(
                f"{storage_message(refused, path)}: the checkpoint was not saved and the one there before, if any, "
                f"is kept; free space, then {then}"
            ) from error

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        checkpoint = load_weights_only(path)
        check_resumable(checkpoint, path)
        return checkpoint


# What Lightning reads when it resumes, and the type each entry must have.
RESUMED_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "global_step": int,
    "state_dict": dict,
    "loops": dict,
    "callbacks": dict,
    "optimizer_states": list,
    "lr_schedulers": list,
}


def check_resumable(checkpoint: Any, path: Path) -> None:
    """CheckpointError unless the file has the shape of a Lightning training checkpoint (no garbage states)."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (a {type(checkpoint).__name__}, not a dict)")
    for key, kind in RESUMED_ENTRIES.items():
        if key in checkpoint and not isinstance(checkpoint[key], kind):
            raise CheckpointError(f"{path}: not a Lightning checkpoint ({key} is a {type(checkpoint[key]).__name__})")
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    for owner in ("callbacks", "loops"):
        for name, state in checkpoint.get(owner, {}).items():
            if not isinstance(state, dict):
                raise CheckpointError(f"{path}: not a Lightning checkpoint ({owner}[{name!r}] is not a mapping)")


def random_state() -> dict[str, Any]:
    """The global generators' states as tensors and plain values (weights-only loadable)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "state": list(python_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomState(L.Callback):
    """Saves the global random state with every checkpoint and restores it when a checkpoint is loaded.

    Lightning loads a resumed checkpoint before its first training iterator is made and runs the sanity-check
    validation inside `isolate_rng`, so the first resumed epoch starts from the saved state.
    """

    def state_dict(self) -> dict[str, Any]:
        return random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_random_state(state_dict)
