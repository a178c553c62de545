"""Where the Hydra configs live, and the OmegaConf resolvers they use, for the entry points, the tools and the
tests (no need to import train). Importing this module registers the resolvers, so import it before Hydra
composes (every entry point does, for CONFIG_DIR)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anomaly_lab.errors import ConfigError

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")  # shipped in the package (package-data)

OPTUNA_DIRECTIONS = {"max": "maximize", "min": "minimize"}


def optuna_direction(mode: str) -> str:
    """objective.mode (max | min) as Optuna's study direction (maximize | minimize): `${optuna_direction:...}`."""
    if mode not in OPTUNA_DIRECTIONS:
        raise ValueError(f"objective.mode={mode!r}: must be one of {', '.join(OPTUNA_DIRECTIONS)}")
    return OPTUNA_DIRECTIONS[mode]


# The sweep's study name digests the data a dataset node reads (`${data_digest:...}`), as its datamodule class
# declares it: `data_paths` (absolute, so `../x` and its absolute path are one study; a missing path, null, stays
# None) and `data_settings` (a generator's settings), class attributes of each layout (data.datamodules.
# LayoutDataModule). Loader, split and preprocessing keys are no data: changing them must not start a new study.
# Changing what a class declares renames its existing studies.
DATA_DIGEST_CHARS = 8


def data_identity(dataset: DictConfig, cwd: str | None = None) -> dict[str, Any]:
    """The keys of a dataset node that say which images it reads, as its `_target_` class declares them, with
    their values (a relative path relative to `cwd`, the directory the command ran in; symbolic links resolved).
    A ConfigError when the class declares none: two data sets would share one study."""
    from hydra.utils import get_class

    target = dataset.get("_target_")
    datamodule = get_class(str(target)) if target is not None else None
    paths = tuple(getattr(datamodule, "data_paths", ()))
    settings = tuple(getattr(datamodule, "data_settings", ()))
    if not paths and not settings:
        raise ConfigError(
            f"dataset._target_={target}: declares no data identity (class attributes data_paths and data_settings, "
            f"see anomaly_lab.data.datamodules.LayoutDataModule), so the sweep cannot name its study by the data"
        )
    base = Path(cwd) if cwd is not None else Path.cwd()
    identity: dict[str, Any] = {}
    for name in paths:
        if name in dataset:
            value = dataset[name]
            identity[name] = None if value is None else os.fspath((base / str(value)).resolve())
    for name in settings:
        if name in dataset:
            value = dataset[name]
            identity[name] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return identity


def data_digest(dataset: DictConfig, cwd: str | None = None) -> str:
    """A short stable digest of data_identity(dataset, cwd), 8 hex digits: `${data_digest:${dataset},
    ${hydra.runtime.cwd}}` in the sweep's study name, so sweeps of different data are different studies and
    `../x` and its absolute path are the same study."""
    text = json.dumps(data_identity(dataset, cwd), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:DATA_DIGEST_CHARS]


def if_cuda(on_gpu: Any, on_cpu: Any) -> Any:
    """`${if_cuda:<value on a GPU>,<value on the CPU>}`: trainer=auto's settings follow the machine it runs on."""
    import torch

    return on_gpu if torch.cuda.is_available() else on_cpu


def cuda_mixed_precision() -> str:
    """bf16-mixed on a GPU that supports bf16 (Ampere and newer), else 16-mixed: `${cuda_mixed_precision:}`."""
    import torch

    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16-mixed" if supported or not torch.cuda.is_available() else "16-mixed"


if not OmegaConf.has_resolver("optuna_direction"):
    OmegaConf.register_new_resolver("optuna_direction", optuna_direction)
if not OmegaConf.has_resolver("data_digest"):
    OmegaConf.register_new_resolver("data_digest", data_digest)
if not OmegaConf.has_resolver("if_cuda"):
    OmegaConf.register_new_resolver("if_cuda", if_cuda)
if not OmegaConf.has_resolver("cuda_mixed_precision"):
    OmegaConf.register_new_resolver("cuda_mixed_precision", cuda_mixed_precision)
