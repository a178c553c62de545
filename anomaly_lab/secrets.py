"""Passwords in database URLs stay out of the console, the logs and the run folders.

A sweep's storage (`hydra.sweeper.storage='postgresql://user:password@host/db'`) is passed on to each trial's job
(`+sweep_trial.storage`), so the URL as given shows in the launcher's job lines, in a trial's train.log and in
the three files Hydra writes into each run folder (.hydra/config.yaml, hydra.yaml, overrides.yaml). mask_secrets
replaces the password of every such URL with `***` (and a `password=` query parameter's value):

- mask_secrets_in_logs wraps the process's log-record factory, so every record is masked when it is made, whatever
  handlers Hydra configures for each job (it replaces them per job) or a library adds;
- MaskSecretsInRunConfig, a Hydra callback (conf/hydra/default.yaml), rewrites the .hydra/*.yaml files right after
  Hydra writes them and before the task starts; the job itself keeps the real URL in memory.

To keep the password off the command line (and the process list) too, let Hydra read the storage from the
environment: `hydra.sweeper.storage='${oc.env:ANOMALY_LAB_STORAGE}'`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

MASK = "***"
# scheme://user:password@ as SQLAlchemy's make_url reads it: a user holds no ':' or '/', a password no '@'
URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)[^@\s]+(?=@)")
QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&#\s'\"]+", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: `postgresql://user:***@host/db`."""
    if "://" not in text and "password=" not in text.lower():
        return text
    return QUERY_PASSWORD.sub(rf"\g<head>{MASK}", URL_PASSWORD.sub(rf"\g<head>{MASK}", text))


class MaskingRecordFactory:
    """A log-record factory that masks the message (and the traceback) of the records the wrapped one makes."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = self.wrapped(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when the record is emitted
            return record
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if (masked_text := mask_secrets(text)) != text:
                record.exc_text = masked_text  # formatters use exc_text where it is set
        return record


def mask_secrets_in_logs() -> None:
    """Mask passwords in every log record this process makes from now on (once per process)."""
    factory = logging.getLogRecordFactory()
    if not isinstance(factory, MaskingRecordFactory):
        logging.setLogRecordFactory(MaskingRecordFactory(factory))


def mask_secrets_in_files(paths: Iterable[Path]) -> None:
    """Rewrite each file whose text holds a password, masked (a new file moved over the old one)."""
    for path in paths:
        text = path.read_text()
        masked = mask_secrets(text)
        if masked != text:
            partial = path.with_name(f".{path.name}.masking-{os.getpid()}")
            partial.write_text(masked)
            partial.chmod(path.stat().st_mode & 0o777)
            partial.replace(path)


class MaskSecretsInRunConfig(Callback):
    """Hydra callback: passwords masked in the process's logs from the start of a run or sweep, and in the job's
    .hydra/*.yaml files once Hydra has written them (Hydra writes them just before on_job_start)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_secrets_in_logs()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_secrets_in_logs()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        mask_secrets_in_logs()  # a job of its own process (hydra/launcher=slurm)
        subdir = config.hydra.get("output_subdir")
        if subdir is not None:
            mask_secrets_in_files(sorted((Path(str(config.hydra.runtime.output_dir)) / str(subdir)).glob("*.yaml")))
