"""The errors a user causes (bad config, bad data, bad checkpoint, a folder in the way).

The command-line entry points print such an error as one line and exit non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message is one sentence naming the key, file or folder and what is wrong."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and the allowed values."""


class RunFolderError(UserError):
    """A run folder that would lose results if written into (non-empty, not resumed, no overwrite)."""


class SplitError(UserError, ValueError):
    """A train/validation/test split that leaves a split without what it needs; names the keys to change."""
