"""How the command-line entry points end: a user's mistake is one line and exit code 2, a bug keeps its traceback.

Hydra prints a 20-40 line traceback for any exception. Here Hydra is told to re-raise (HYDRA_FULL_ERROR=1 for
the duration of the call), and errors the user caused (config, data, checkpoint, a folder in the way, a full disk)
become one line on stderr, `<ErrorClass>: <message>`, with exit code 2.
`HYDRA_FULL_ERROR=1 python -m anomaly_lab.train ...` shows the full traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from hydra.errors import HydraException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import OmegaConfBaseException

from anomaly_lab.data.images import BadImageError
from anomaly_lab.deprecations import moved_key_hint
from anomaly_lab.errors import StorageError, UserError, storage_error, storage_message
from anomaly_lab.secrets import mask_secrets

USER_ERROR_EXIT = 2
FULL_TRACEBACK = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user's choice, read before run_cli sets it
# BadImageError and CheckpointError (a UserError) name the file; Hydra's and OmegaConf's errors name the key
# (composition, a missing ??? value, instantiation of a config with a value its class refuses).
USER_ERRORS = (
    UserError,
    BadImageError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    HydraException,
    OmegaConfBaseException,
    MisconfigurationException,
)


def one_line(error: BaseException) -> str:
    """The error's message on one line; an instantiation error also gives the refusal of the class it built."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = error.__cause__
    if isinstance(error, HydraException | OmegaConfBaseException) and cause is not None and str(cause) not in lines:
        lines.append(str(cause).strip().splitlines()[0])
    return " ".join(lines) or type(error).__name__


def exit_for_user_error(error: BaseException) -> NoReturn:
    message = one_line(error)
    message += moved_key_hint(message)
    line = mask_secrets(f"{type(error).__name__}: {message}")  # a database URL's password: ***
    record = logging.LogRecord(__name__, logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:  # the run's log file (train.log) keeps why the run stopped
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"{line} [HYDRA_FULL_ERROR=1 shows the traceback]", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


def exit_if_storage_refused(error: BaseException) -> None:
    """A write the disk refused (full, quota, size limit, read-only; errors.STORAGE_ERRNOS), wherever it happened and
    however wrapped, is the user's one line too: a StorageError naming the file."""
    refused = storage_error(error)
    if refused is not None:
        exit_for_user_error(StorageError(f"{storage_message(refused)}; free space, then run the command again"))


@contextmanager
def user_errors_exit(enabled: bool = True) -> Iterator[None]:
    """Inside a single run (a Hydra task or callback): a user error exits at once, before Hydra adds lines of
    its own or, in a callback, turns it into a warning. Off in sweeps, where a trial's error fails the trial."""
    if not enabled or FULL_TRACEBACK:
        yield
        return
    try:
        yield
    except USER_ERRORS as error:
        exit_for_user_error(error)
    except Exception as error:
        exit_if_storage_refused(error)
        raise


def run_cli(main: Callable[[], Any]) -> None:
    """Call a @hydra.main function; a user error is printed as `<ErrorClass>: <one line>` and exits with code 2."""
    if FULL_TRACEBACK:
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own traceback
    try:
        main()
    except USER_ERRORS as error:
        exit_for_user_error(error)
    except Exception as error:
        exit_if_storage_refused(error)
        raise
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)
