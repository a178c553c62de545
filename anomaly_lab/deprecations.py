"""Config options renamed because their names misled; the old names work for one more release, with a warning.

Each old option is an alias file in its group (`anomaly_lab/conf/<group>/<old>.yaml`: `defaults: [<new>, _self_]`),
so it composes to exactly the new option's config. train.main passes Hydra's chosen options
(`HydraConfig.get().runtime.choices`) to warn_deprecated_options, which logs one line per old name used.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

# (group, old option) -> its replacement
DEPRECATED_OPTIONS: dict[tuple[str, str], str] = {
    ("scheduler", "exponential"): "scheduler=step_lr",
    ("masking", "riad"): "masking=multiscale_grid_stitched",
}
# why the old name misled, shown in the warning
REASONS: dict[tuple[str, str], str] = {
    ("scheduler", "exponential"): "it is a StepLR, not torch's ExponentialLR",
    ("masking", "riad"): (
        "it is a training mode, the loss on the stitched inpainting of a disjoint mask set; "
        "RIAD's loss and anomaly map are scoring=riad"
    ),
}


def deprecation_message(group: str, option: str) -> str:
    key = (group, option)
    return (
        f"{group}={option} is deprecated ({REASONS[key]}): use {DEPRECATED_OPTIONS[key]}; "
        "the old name goes in the next release"
    )


def warn_deprecated_options(choices: Mapping[str, str | None]) -> list[str]:
    """Log a warning for every deprecated option in `choices` (group -> chosen option); return the messages."""
    messages = [
        deprecation_message(group, option)
        for group, option in choices.items()
        if option is not None and (group, option) in DEPRECATED_OPTIONS
    ]
    for message in messages:
        log.warning(message)
    return messages


# settings of the model's preprocessing (anomaly_lab/preprocessing.py) that older command lines give as dataset keys
MOVED_DATASET_KEYS = ("image_size", "grayscale", "tiled", "stride", "border", "page_width")


def moved_key_hint(message: str) -> str:
    """For an error about one of MOVED_DATASET_KEYS (Hydra's "Could not override 'dataset.grayscale'", or the
    datamodule's "unexpected keyword argument 'grayscale'" after a `+`), where the key lives now; else ""."""
    for key in MOVED_DATASET_KEYS:
        if f"'dataset.{key}'" in message or f"+dataset.{key}" in message or f"keyword argument '{key}'" in message:
            return f" (dataset.{key} is now dataset.preprocessing.{key})"
    return ""
