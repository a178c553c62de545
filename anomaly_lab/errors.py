"""The errors a user causes (bad config, bad data, bad checkpoint, a folder in the way, a full disk).

The command-line entry points print such an error as one line and exit non-zero; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence


class UserError(Exception):
    """Bad input from the user; the message is one sentence naming the key, file or folder and what is wrong."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key and the allowed values."""


class RunFolderError(UserError):
    """A run folder that would lose results if written into (non-empty, not resumed, no overwrite)."""


class SplitError(UserError, ValueError):
    """A train/validation/test split that leaves a split without what it needs; names the keys to change."""


class StorageError(UserError):
    """A write the file system refused for want of room (full disk, quota, file size limit) or because it is
    read-only: the machine's state, not a bug. The message names the file and the reason."""


# A full disk (ENOSPC), an exhausted quota (EDQUOT), a file size limit (EFBIG: ulimit -f, FAT32) and a read-only
# file system (EROFS): what a write meets from the storage, never from this project's code.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def storage_error(error: BaseException | None) -> OSError | None:
    """The OSError of a refused write (STORAGE_ERRNOS) that caused `error` or is it, if any: torch reports a full
    disk during torch.save as a RuntimeError raised while handling the OSError."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def storage_message(error: OSError, path: object = None) -> str:
    """`<path>: no space left on device` (the file's name from the error if not given, the reason in lower case)."""
    where = path if path is not None else error.filename
    reason = os.strerror(error.errno).lower() if error.errno is not None else str(error)
    return f"{where}: {reason}" if where is not None else f"writing a file: {reason}"


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
