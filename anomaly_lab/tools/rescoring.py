"""Score a trained run's checkpoint again on its validation and test sets, with other inference settings.

How many masked passes an image needs (passes_table) and which threshold rule holds on unseen images
(operating_point) are questions about one trained model scored several ways, not about training again.

A run folder someone sends you is as safe to open as a checkpoint: nothing in it chooses what is instantiated.
The run's own command-line options (.hydra/overrides.yaml) are read as plain data (read_run_options): an option
that names code (`_target_`, `_args_`, `_partial_`, `_recursive_`, `_convert_`), an interpolation or resolver
(`${...}`, which may resolve to such a node), a config option that is not a file of this project's config group,
a package (`@`) or a sweep is refused, naming the file and its line, before anything is composed. The config is
composed from those options plus the new ones, from this project's config files (its stored .hydra/config.yaml
is not read). The model is the checkpoint's: its spec, loaded weights-only, with what the new options change in
the composed `model` node, is rebuilt by the checkpoint loader's list of classes (anomaly_lab.checkpoint_loading); the
checkpoint's weights must fit it. Validation then chooses the threshold with the composed rule and the test
measures it, as in training (anomaly_lab.train.run); nothing trains, so no optimizer is built. Relative paths
in the options (data, cache) are read from the folder the run was started in (.hydra/hydra.yaml,
hydra.runtime.cwd), as the run read them. Config files that now compose another model than the checkpoint holds
are named in a warning (the checkpoint's model is scored).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_lab.checkpoint_loading import CheckpointError, build_from_spec, model_spec, read_checkpoint
from anomaly_lab.config_checks import check_train_config
from anomaly_lab.configs import CONFIG_DIR
from anomaly_lab.errors import UserError, as_typed
from anomaly_lab.lightning_model import InpaintingModule
from anomaly_lab.results import StageResults
from anomaly_lab.thresholds import AutoThreshold
from anomaly_lab.train import build_module, build_scoring, config_group

log = logging.getLogger(__name__)

# recorded options that say where a run wrote or how it was resumed, not what it is
NOT_CARRIED = ("hydra.", "hydra/", "sweep_trial", "paths.output_dir", "resume", "overwrite")


@dataclass
class Rescored:
    cfg: DictConfig
    module: InpaintingModule
    trainer: L.Trainer
    val: StageResults
    test: StageResults
    test_metrics: dict[str, float]
    val_metrics: dict[str, float]
    test_seconds: float  # wall time of the test pass (scoring and metrics)
    validation_anomalies: str  # real | synthetic | both (the datamodule's validation_anomaly_kind)


class RunOptionError(UserError, ValueError):
    """A run folder's recorded option that is not plain data; the message names the file, the line and why."""


# Hydra's keys that make a node a call (instantiate), never plain data
CALL_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
OPTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # a config group's option: a file name, no path
SHOWN_CHARS = 80
MAX_OPTIONS_BYTES = 256 * 1024  # a run's overrides.yaml is a few hundred bytes


def why_not_plain(option: str, parser: OverridesParser) -> str | None:
    """Why a recorded command-line option is not plain data (None: it is): see the module docstring."""
    try:
        override = parser.parse_override(option)
    except (HydraException, ValueError, RecursionError) as error:  # a 5000-digit int, a list nested 3000 deep
        return f"not a command-line option ({(str(error).splitlines() or [type(error).__name__])[0]})"
    if override.is_sweep_override():
        return "a sweep, not one run's option"
    if override.package is not None:
        return "moves a config node (@package); a run's options only set values"
    key_parts = re.split(r"[./]", override.key_or_group)
    special = next((part for part in key_parts if part in CALL_KEYS or re.fullmatch(r"_\w+_", part)), None)
    if special is not None:
        return f"sets {special}, which names code to call"
    if override.is_delete():
        return None
    value = override.value()
    found = call_or_interpolation(value)
    if found is not None:
        return found
    group = Path(CONFIG_DIR) / override.key_or_group
    if group.is_dir():  # a config group: its value chooses one of this project's files
        for choice in value if isinstance(value, list) else [value]:
            if choice is None:
                continue
            if not (isinstance(choice, str) and OPTION_NAME.match(choice) and (group / f"{choice}.yaml").is_file()):
                return f"{as_typed(choice)} is not an option of {override.key_or_group} (a file of {group})"
    return None


def call_or_interpolation(value: Any) -> str | None:
    """What in a parsed option value could name code: a call key in a mapping, or an interpolation."""
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key) in CALL_KEYS or re.fullmatch(r"_\w+_", str(key)):
                return f"its value holds {key}, which names code to call"
            found = call_or_interpolation(key) or call_or_interpolation(item)
            if found is not None:
                return found
    elif isinstance(value, list):
        return next((found for item in value if (found := call_or_interpolation(item)) is not None), None)
    elif isinstance(value, str) and "${" in value:
        return "an interpolation (${...}), which may resolve to a node that names code"
    return None


def read_run_options(path: Path) -> list[str]:
    """Every option of a run's .hydra/overrides.yaml, each checked to be plain data: a RunOptionError naming the
    file and the line otherwise. The file is read as YAML text (no tags, nothing built), a list of strings, and
    only up to MAX_OPTIONS_BYTES (each option is parsed by Hydra's grammar: an 11 MB file took 270 s)."""
    size = path.stat().st_size
    if size > MAX_OPTIONS_BYTES:
        raise RunOptionError(
            f"{path}: {size} bytes, more than a run's command-line options ({MAX_OPTIONS_BYTES} bytes at most); "
            f"refusing the run folder"
        )
    try:
        document = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise RunOptionError(
            f"{path}: not a YAML list of command-line options ({str(error).splitlines()[0]})"
        ) from None
    if document is None:
        return []
    if not isinstance(document, yaml.SequenceNode):
        raise RunOptionError(
            f"{path}: expected a YAML list of command-line options, as a run of anomaly_lab.train writes"
        )
    parser = OverridesParser.create()
    options = []
    for item in document.value:
        line = item.start_mark.line + 1
        if not isinstance(item, yaml.ScalarNode) or item.tag != "tag:yaml.org,2002:str":
            raise RunOptionError(f"{path}:{line}: not a command-line option (a string); refusing the run folder")
        option = item.value
        reason = why_not_plain(option, parser)
        if reason is not None:
            shown = option if len(option) <= SHOWN_CHARS else f"{option[:SHOWN_CHARS]}..."
            raise RunOptionError(
                f"{path}:{line}: {shown}: {reason}; a run folder's options may only set values of this project's "
                f"config, refusing the run folder"
            )
        options.append(option)
    return options


def run_options(folder: Path) -> list[str]:
    """The command-line options a run was started with (read_run_options), less those that place it (paths,
    hydra, sweep)."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; give the folder of a run of python -m anomaly_lab.train")
    return [o for o in read_run_options(path) if not o.lstrip("+~").startswith(NOT_CARRIED)]


def compose_run(folder: Path, options: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[*run_options(folder), *options])


@contextlib.contextmanager
def run_working_directory(folder: Path) -> Iterator[None]:
    """The folder the run was started in (.hydra/hydra.yaml, hydra.runtime.cwd, read as plain YAML, nothing
    resolved), as the current directory: relative data paths resolve as they did."""
    path, recorded = folder / ".hydra" / "hydra.yaml", None
    if path.is_file() and path.stat().st_size <= 4 * MAX_OPTIONS_BYTES:  # a run's hydra.yaml: a few KB
        try:
            recorded = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("runtime", {}).get("cwd")
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError, RecursionError):
            recorded = None
    if not isinstance(recorded, str) or "${" in recorded or not Path(recorded).is_dir():
        log.warning("%s: the folder the run started in is not known or gone; relative paths resolve here", folder)
        yield
        return
    before = os.getcwd()
    os.chdir(recorded)
    try:
        yield
    finally:
        os.chdir(before)


def flat(node: object, prefix: str) -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}.{key}").items()}
    return {prefix: node}


def model_differences(trained: dict[str, Any], composed: dict[str, Any]) -> list[str]:
    """Keys of `model` whose value the checkpoint's spec (`trained`) and the run's options composed now give
    differently (plain values compared; nothing is built)."""
    before, now = flat(trained, "model"), flat(composed, "model")
    return sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))


def with_changes(trained: Any, base: Any, new: Any) -> Any:
    """`trained` (the checkpoint's model node) with what differs between `base` and `new` (the model the run's
    options compose without and with the rescoring's options); a node whose class changes is `new`'s."""
    if base == new:
        return trained
    if not (isinstance(trained, dict) and isinstance(base, dict) and isinstance(new, dict)):
        return new
    if base.get("_target_") != new.get("_target_"):
        return new
    merged = {key: value for key, value in trained.items() if key in new or key not in base}
    for key, value in new.items():
        if key not in base:
            merged[key] = value
        elif key in trained:
            merged[key] = with_changes(trained[key], base[key], value)
        elif base[key] != value:
            merged[key] = value
    return merged


def plain_model(cfg: DictConfig) -> dict[str, Any]:
    """The composed `model` node as plain resolved values, as a checkpoint's spec records it (model_spec)."""
    return model_spec(OmegaConf.to_container(cfg.model, resolve=True))["model"]  # type: ignore[arg-type]


def load_rescored_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """model.load_state_dict(weights), strict: the checkpoint's weights must fit the model rescored."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        raise UserError(
            f"{path}: its weights do not fit the model the run's options compose now "
            f"({lines[0] if lines else 'state dict mismatch'})"
        ) from None


def not_trained(**_: Any) -> torch.optim.Optimizer:
    """The optimizer factory of a rescored module: it scores a checkpoint, nothing trains it."""
    raise RuntimeError("a rescored checkpoint is scored, not trained")


def rescore(folder: Path, options: Sequence[str] = (), checkpoint: str = "best.ckpt") -> Rescored:
    """The run's checkpoint (checkpoints/<checkpoint>) with what `options` change, validated (threshold chosen)
    and tested."""
    folder = folder.resolve()
    run_options(folder)  # a folder whose options are not plain data: refused before anything else is read
    with run_working_directory(folder):
        return _rescore(folder, options, checkpoint)


def rescored_module(folder: Path, cfg: DictConfig, options: Sequence[str], checkpoint: str) -> InpaintingModule:
    """The checkpoint's model (its checked spec, with what `options` change) with its weights, in a module with
    the composed scoring loss and threshold rule (this project's config files) and no optimizer."""
    path = folder / "checkpoints" / checkpoint
    spec, state_dict = read_checkpoint(path)
    trained = spec.get("model")
    if not isinstance(trained, dict):
        raise CheckpointError(f"{path}: the spec's model must be a mapping ({type(trained).__name__})")
    build_from_spec(trained, f"{path}: model", build=False)  # only the loader's classes, plain values
    with config_group("model"):
        base = plain_model(compose_run(folder, []) if options else cfg)
        new = plain_model(cfg)
    changed = model_differences(trained, base)
    if OmegaConf.select(cfg, "scoring.choose"):  # scoring=auto: the checkpoint holds the scoring chosen on validation
        chosen = ("model.reduce", "model.topk_fraction")
        changed = [key for key in changed if not key.startswith("model.anomaly_map.") and key not in chosen]
    if changed:
        log.warning(
            "%s: the run's options now compose another model than it trained (%s); the config files changed since, "
            "the checkpoint's model is scored",
            folder,
            ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else ""),
        )
    node = with_changes(trained, base, new)
    weights = {key.removeprefix("model."): value for key, value in state_dict.items() if key.startswith("model.")}
    with warnings.catch_warnings():  # torch's warnings about an odd net, or copying onto meta, are not the point
        warnings.simplefilter("ignore")
        try:  # shapes first, on the meta device: a spec far wider than its weights takes no memory
            with torch.device("meta"):
                skeleton = build_from_spec(node, f"{path}: model")
        except CheckpointError:
            raise
        except Exception:  # what the meta device cannot run: the real build says why
            skeleton = None
        if skeleton is not None:
            load_rescored_weights(skeleton, weights, path)
        model = build_from_spec(node, f"{path}: model")
    load_rescored_weights(model, weights, path)
    loss, threshold_rule = build_scoring(cfg)
    return InpaintingModule(
        model=model,
        loss=loss,
        optimizer=not_trained,
        normalise_wasserstein=cfg.objective.normalise,
        threshold_rule=threshold_rule,
        spec=model_spec(node),
    )


def _rescore(folder: Path, options: Sequence[str], checkpoint: str) -> Rescored:
    cfg = compose_run(folder, options)
    check_train_config(cfg)
    build_module(cfg)  # what the classes refuse (masking.score_grid_sizes=[64] at 32 px), named as train names it
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = rescored_module(folder, cfg, options, checkpoint)
    datamodule: L.LightningDataModule = instantiate(cfg.dataset, preprocessing=module.model.preprocessing)
    datamodule.setup("fit")
    kind = str(getattr(datamodule, "validation_anomaly_kind", "real"))
    if isinstance(module.threshold_rule, AutoThreshold):
        module.threshold_rule = module.threshold_rule.for_validation(kind == "real")
    quiet = logging.getLogger("lightning.pytorch")
    level, quiet.level = quiet.level, logging.WARNING
    try:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            trainer.validate(module, datamodule=datamodule, verbose=False)
            val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            start = time.perf_counter()
            trainer.test(module, datamodule=datamodule, verbose=False)
            seconds = time.perf_counter() - start
    finally:
        quiet.level = level
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    val, test = module.results["val"], module.results["test"]
    return Rescored(cfg, module, trainer, val, test, metrics, val_metrics, seconds, kind)
