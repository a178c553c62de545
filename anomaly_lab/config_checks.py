"""Config values that cannot work, refused before anything is trained or written.

A value is checked once, by the class built from it (InpaintingModel, GridMasking, Preprocessing, AnomalyMap ...),
and keyed_refusal names the option the user typed in that class's refusal. Checked here: values no class of this
package is built from (the trainer's, the optimizer's, the splits', the objective) and rules that span groups.
Each refusal is one sentence naming the key, the value and what is allowed. train.prepare_module runs
check_train_config and builds the model before Hydra creates the run folder (so a config error leaves none).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anomaly_lab.configs import optuna_direction
from anomaly_lab.errors import ConfigError, as_typed
from anomaly_lab.results import SYNTHETIC_DEFECT_PREFIX

# What run(cfg) can return: the metrics every validation logs (models.module) and the training loss.
OBJECTIVE_METRICS = (
    "val/wasserstein",
    "val/wasserstein_normalised",
    "val/image_auroc",
    "val/f1_max",
    "val/loss",
    "train/loss",
)
DATASET_FOLDER_HINTS = {
    "dataset.mask_dir": "; set dataset.mask_dir=null if the anomalous images have no masks",
}


def positive_int(cfg: DictConfig, key: str, examples: str = "") -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = f" (e.g. {examples})" if examples else ""
        raise ConfigError(f"{key}={as_typed(value)}: must be a positive integer{hint}")
    return value


def check_training(cfg: DictConfig) -> None:
    lr = OmegaConf.select(cfg, "optimizer.lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr < 0):
        # 0 is allowed: weights held fixed (tests/test_ddp.py compares evaluation that way)
        raise ConfigError(f"optimizer.lr={as_typed(lr)}: must be a number >= 0 (e.g. 1e-3)")
    positive_int(cfg, "dataset.batch_size", "8")
    if OmegaConf.select(cfg, "dataset.eval_batch_size") is not None:
        positive_int(cfg, "dataset.eval_batch_size", "8")
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if max_epochs is not None and max_epochs != -1:
        positive_int(cfg, "trainer.max_epochs", "40; -1 with trainer.max_time for a time budget")
    if OmegaConf.select(cfg, "trainer.check_val_every_n_epoch") is not None:
        positive_int(cfg, "trainer.check_val_every_n_epoch", "1 or 5")


def needs_validation_anomalies(cfg: DictConfig) -> bool:
    """Whether the objective is a separation of normal and anomalous validation scores (not val/loss)."""
    metric = str(OmegaConf.select(cfg, "objective.metric") or "")
    return metric.startswith("val/") and metric != "val/loss"


def check_splits(cfg: DictConfig) -> None:
    if OmegaConf.select(cfg, "validation_anomalies") is not None:  # e.g. +validation_anomalies.generator=cutpaste
        raise ConfigError(
            "validation_anomalies.<key>: the group's settings live in dataset.validation_anomalies, "
            "e.g. dataset.validation_anomalies.generator=cutpaste"
        )
    val_anomalous = OmegaConf.select(cfg, "dataset.val_anomalous")
    if val_anomalous is not None:
        if isinstance(val_anomalous, bool) or not isinstance(val_anomalous, int | float) or val_anomalous < 0:
            raise ConfigError(
                f"dataset.val_anomalous={as_typed(val_anomalous)}: must be a share in (0, 1) or a count >= 1 of "
                f"anomalous images"
            )
        synthetic = OmegaConf.select(cfg, "dataset.validation_anomalies.source", default="real") != "real"
        if val_anomalous == 0 and needs_validation_anomalies(cfg) and not synthetic:
            raise ConfigError(
                f"dataset.val_anomalous=0 leaves validation without anomalous images, but "
                f"objective.metric={OmegaConf.select(cfg, 'objective.metric')} needs them; set dataset.val_anomalous "
                f"to a share (e.g. 0.25) or a count, validation_anomalies=synthetic, or objective.metric=val/loss"
            )


def check_objective_metric(cfg: DictConfig) -> None:
    """One of OBJECTIVE_METRICS, or val/<kind>/wasserstein|image_auroc for a kind of validation anomaly this
    config has (logged when validation has more than one kind: data.validation_anomalies)."""
    metric = OmegaConf.select(cfg, "objective.metric")
    parts = metric.split("/") if isinstance(metric, str) else []
    if len(parts) != 3 or parts[0] != "val":
        check_choice(cfg, "objective.metric", OBJECTIVE_METRICS)
        return
    source = OmegaConf.select(cfg, "dataset.validation_anomalies.source", default="real")
    generators = OmegaConf.select(cfg, "dataset.validation_anomalies.generator", default=None) or []
    generators = [generators] if isinstance(generators, str) else list(generators or [])
    synthetic = [f"{SYNTHETIC_DEFECT_PREFIX}{name}" for name in generators] if source != "real" else []
    kinds = (["real"] if source == "both" else []) + synthetic
    if source == "real" or len(kinds) < 2:
        kinds = []  # one kind of validation anomaly at most: only the overall metrics are logged
    if parts[1] not in kinds or parts[2] not in ("wasserstein", "image_auroc"):
        per_kind = [f"val/{kind}/{name}" for kind in kinds for name in ("wasserstein", "image_auroc")]
        raise ConfigError(
            f"objective.metric={as_typed(metric)}: must be one of {', '.join(OBJECTIVE_METRICS + tuple(per_kind))}"
            + (
                ""
                if per_kind
                else "; a metric of one kind of validation anomaly (val/<kind>/wasserstein) needs "
                "several kinds: validation_anomalies=both or a generator list, e.g. [perlin,cutpaste]"
            )
        )


def check_choice(cfg: DictConfig, key: str, choices: tuple[Any, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
        names = [choice if isinstance(choice, str) else as_typed(choice) for choice in choices]
        raise ConfigError(f"{key}={as_typed(value)}: must be one of {', '.join(names)}")


def check_optional(cfg: DictConfig, key: str, check: Any, *args: Any) -> None:
    """Run check(cfg, key, *args) when the key is set in this config (options differ in their keys)."""
    if OmegaConf.select(cfg, key) is not None:
        check(cfg, key, *args)


def non_negative_int(cfg: DictConfig, key: str) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}={as_typed(value)}: must be an integer >= 0")
    return value


def positive_number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{key}={as_typed(value)}: must be a positive number")
    return float(value)


def check_top_level(cfg: DictConfig) -> None:
    for key in ("test", "overwrite"):
        check_choice(cfg, key, (True, False))
    for key in ("seed", "dataset.split_seed", "dataset.data_seed"):
        check_optional(cfg, key, non_negative_int)
    try:  # the sweeps' rule (the study's direction), for single runs too
        optuna_direction(OmegaConf.select(cfg, "objective.mode"))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_objective_metric(cfg)
    resume = OmegaConf.select(cfg, "resume")
    if resume not in (True, False, None) and not Path(str(resume)).is_file():
        raise ConfigError(f"resume={as_typed(resume)}: must be true, false or the path of a .ckpt file (no file there)")


def check_schedule(cfg: DictConfig) -> None:
    check_optional(cfg, "scheduler.gamma", positive_number)
    check_optional(cfg, "scheduler.step_size", positive_int)
    check_optional(cfg, "optimizer.weight_decay", non_negative_number)
    check_optional(cfg, "trainer.log_every_n_steps", positive_int)


def non_negative_number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}={as_typed(value)}: must be a number >= 0")
    return float(value)


def check_dataset(cfg: DictConfig) -> None:
    """Folders that must exist and counts that must be positive, for the keys this dataset option has."""
    for key in ("dataset.normal_dir", "dataset.abnormal_dir", "dataset.mask_dir"):  # MVTecDataModule checks root
        value = OmegaConf.select(cfg, key)
        if value is not None and not Path(str(value)).is_dir():
            what = "is a file, not a folder" if Path(str(value)).is_file() else "not found"
            raise ConfigError(f"{key}={value}: {what}{DATASET_FOLDER_HINTS.get(key, '')}")
    for key in ("dataset.n_train", "dataset.n_test_good", "dataset.n_test_per_defect"):
        check_optional(cfg, key, positive_int)
    check_optional(cfg, "dataset.num_workers", non_negative_int)


def check_train_config(cfg: DictConfig) -> None:
    """ConfigError naming the first key whose value cannot work."""
    check_top_level(cfg)
    check_training(cfg)
    check_schedule(cfg)
    check_splits(cfg)
    check_dataset(cfg)


def option_of(cfg: DictConfig) -> Callable[[str], str | None]:
    """key as a built object sees it (model.preprocessing.crop_height) -> the option the user sets it through
    (dataset.preprocessing.crop_height), following interpolations of the key or of a node above it (model.masking is
    `${masking}`, masking.seed is `${seed}`); None for a key the config lacks. Read now: building objects from cfg
    resolves it."""
    tree = OmegaConf.to_container(cfg, resolve=False)

    def option(key: str, hops: int = 0) -> str | None:
        parts = key.split(".")
        node: Any = tree
        for index, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
            reference = re.fullmatch(r"\$\{([\w.]+)\}", node) if isinstance(node, str) else None
            if reference and hops < 20:  # a loop of interpolations ends in OmegaConf's own error
                return option(".".join([reference.group(1), *parts[index + 1 :]]), hops + 1) or key
        return key

    return option


# `key=value` in a class's refusal: the key of one of its arguments (or of an argument's own: masking.grid_sizes)
REFUSED_KEY = re.compile(r"(?<![\w.*])([A-Za-z_][\w.]*)=")


def keyed_refusal(error: BaseException, option: Callable[[str], str | None]) -> str | None:
    """A class's refusal of a config value while Hydra built it, with each `key=` it names as the option the user
    sets (scoring.reduce='median': ... for InpaintingModel's reduce='median': ...); None unless the refusal
    starts with the key of the node Hydra was building (full_key)."""
    node = re.search(r"\nfull_key: ([\w.]+)\s*$", str(error))
    cause = error.__cause__
    if node is None or not isinstance(cause, ValueError) or not str(cause).strip():
        return None
    text = str(cause).strip().splitlines()[0]
    lead = REFUSED_KEY.match(text)
    if lead is None or option(f"{node.group(1)}.{lead.group(1)}") is None:
        return None
    return REFUSED_KEY.sub(lambda key: f"{option(f'{node.group(1)}.{key.group(1)}') or key.group(1)}=", text)
