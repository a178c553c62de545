"""The errors a user causes (bad config, bad data, bad checkpoint, a folder in the way).

The command-line entry points print such an error as one line and exit non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class UserError(Exception):
    """Bad input from the user; the message is one sentence naming the key, file or folder and what is wrong."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and the allowed values."""


class RunFolderError(UserError):
    """A run folder that would lose results if written into (non-empty, not resumed, no overwrite)."""


class SplitError(UserError, ValueError):
    """A train/validation/test split that leaves a split without what it needs; names the keys to change."""


def as_typed(value: object) -> str:
    """A config value as a user writes it in YAML or on the command line: true, false, null, 'text', [1, 2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Sequence):  # lists and ListConfigs
        return "[" + ", ".join(as_typed(item) for item in value) + "]"
    if isinstance(value, Mapping):  # dicts and DictConfigs
        return "{" + ", ".join(f"{key}: {as_typed(item)}" for key, item in value.items()) + "}"
    return str(value)
