"""Where the Hydra configs live, and the OmegaConf resolvers they use, for the entry points, the tools and the
tests (no need to import train). Importing this module registers the resolvers, so import it before Hydra
composes (every entry point does, for CONFIG_DIR)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")  # shipped in the package (package-data)

OPTUNA_DIRECTIONS = {"max": "maximize", "min": "minimize"}


def optuna_direction(mode: str) -> str:
    """objective.mode (max | min) as Optuna's study direction (maximize | minimize): `${optuna_direction:...}`."""
    if mode not in OPTUNA_DIRECTIONS:
        raise ValueError(f"objective.mode={mode!r}: must be one of {', '.join(OPTUNA_DIRECTIONS)}")
    return OPTUNA_DIRECTIONS[mode]


if not OmegaConf.has_resolver("optuna_direction"):
    OmegaConf.register_new_resolver("optuna_direction", optuna_direction)
