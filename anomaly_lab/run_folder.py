"""A run folder is written by one run: reusing it must not lose what an earlier run recorded.

RunFolderGuard is a Hydra callback (conf/hydra/default.yaml): it runs before Hydra creates the run folder and
writes .hydra/ into it, so a refusal there leaves everything as it was, and a config error leaves no folder.

- a non-empty folder is refused unless `resume=true` (continue the run in it) or `overwrite=true` (delete
  the earlier run's outputs first; files that are not run outputs are kept);
- resuming refuses a checkpoint that holds another model than the options build (checkpointing.check_same_model);
- resuming keeps the earlier record: the earlier .hydra/ files move to .hydra/previous/<n>/, and train.run
  merges the earlier metrics.json into the new one (keys the resumed run logs again take the new values);
- a folder holding only what a run that stopped before training leaves (.hydra/ and train.log, e.g. after a
  SplitError) is reused as it is: the corrected command goes into the same folder, the earlier .hydra/ files
  move to .hydra/previous/<n>/ and train.log is appended to.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from anomaly_lab.checkpointing import check_same_model, resume_checkpoint
from anomaly_lab.cli import user_errors_exit
from anomaly_lab.config_checks import option_of
from anomaly_lab.errors import RunFolderError
from anomaly_lab.train import prepare_module

log = logging.getLogger(__name__)
# What a train run writes into its folder (conf/callbacks, conf/logger, Hydra's job log and .hydra).
RUN_OUTPUTS = ("metrics.json", "scores.csv", "checkpoints", "tensorboard", "csv", ".hydra", "train.log")
# What a run that stopped before its first training step leaves: its config and its log.
BEFORE_TRAINING_OUTPUTS = {".hydra", "train.log"}


def previous_hydra_dir(hydra_dir: Path) -> Path:
    """The next free .hydra/previous/<n>."""
    number = 1
    while (hydra_dir / "previous" / str(number)).exists():
        number += 1
    return hydra_dir / "previous" / str(number)


def keep_earlier_config(folder: Path, why: str) -> None:
    """Move the folder's .hydra/*.yaml to the next free .hydra/previous/<n>, before Hydra writes the new ones."""
    hydra_dir = folder / ".hydra"
    if not hydra_dir.is_dir():
        return
    keep = previous_hydra_dir(hydra_dir)
    keep.mkdir(parents=True)
    for path in hydra_dir.glob("*.yaml"):
        path.rename(keep / path.name)
    log.info("%s: its earlier config is kept in %s", why, keep)


def stopped_before_training(folder: Path) -> bool:
    """The folder holds only a run's config folder and log file, neither a link: that run stopped before training
    (nothing to lose by reuse)."""
    hydra_dir, log_file = folder / ".hydra", folder / "train.log"
    if hydra_dir.is_symlink() or not hydra_dir.is_dir() or log_file.is_symlink():
        return False
    if log_file.exists() and not log_file.is_file():
        return False
    return {path.name for path in folder.iterdir()} <= BEFORE_TRAINING_OUTPUTS


def prepare_run_folder(
    folder: Path,
    resume: bool | str | None,
    overwrite: bool,
    spec: dict[str, Any] | None = None,
    set_by: Callable[[str], str | None] = lambda option: None,
) -> None:
    """Refuse, clear or keep the folder a run is about to write into (see the module docstring). With `spec` (the
    model the options build), a checkpoint to resume that holds another model is refused first."""
    checkpoint = resume_checkpoint(resume, folder)  # None without resume; raises, before anything is touched, if none
    if checkpoint is not None and spec is not None:
        check_same_model(checkpoint, spec, set_by)
    if not folder.exists() or not any(folder.iterdir()):
        return
    if folder.is_file():
        raise RunFolderError(f"hydra.run.dir={folder} is a file; choose a folder")
    if checkpoint is not None:
        keep_earlier_config(folder, f"resuming in {folder}")
        return
    if not overwrite and stopped_before_training(folder):
        keep_earlier_config(folder, f"{folder} holds a run that stopped before training; this run goes on in it")
        return
    if not overwrite:
        recorded = sorted(path.name for path in folder.iterdir())
        listed = ", ".join(recorded[:6]) + (", ..." if len(recorded) > 6 else "")
        raise RunFolderError(
            f"hydra.run.dir={folder} already holds a run ({listed});"
            f" pass resume=true to continue it, overwrite=true to replace its results, or choose another hydra.run.dir"
        )
    for name in RUN_OUTPUTS:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    log.info("overwrite=true: removed the earlier run's outputs from %s", folder)


class RunFolderGuard(Callback):
    """Checks the config, builds the model train.run trains and prepares the run folder, before Hydra writes
    anything (single runs only)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors_exit():  # Hydra would turn an exception here into a warning and run anyway
            set_by = option_of(config)  # before building resolves config
            module = prepare_module(config, keep=True)  # a ConfigError before any folder exists; run() trains it
            folder = Path(str(config.hydra.run.dir))
            resume, overwrite = config.get("resume"), bool(config.get("overwrite", False))
            prepare_run_folder(folder, resume, overwrite, module.spec, set_by)
