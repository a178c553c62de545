"""Silence third-party noise that is not ours to fix, narrowly: one exact message each, nothing of our own.

`quiet()` runs when `anomaly_lab` is imported (anomaly_lab/__init__.py), so every entry point (train,
predict, export, benchmark, sweeps) and the tests pass through it. It is idempotent.

- Lightning's advertisement "💡 Tip: For seamless cloud logging ... litlogger", logged at INFO by
  `rank_zero_info` in lightning/pytorch/trainer/connectors/logger_connector/logger_connector.py whenever no
  LitLogger is configured: a logging filter on Lightning's rank-zero loggers drops that one record.
- torch's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised when Lightning's
  lightning/pytorch/utilities/_pytree.py builds a `LeafSpec()` (torch 2.13 deprecates the class; Lightning
  2.6.6 still builds it): ignored for that message from that module only, and from copyreg, through which
  torch.export rebuilds the same spec during ONNX export.

pytest resets warning filters around collection and each test, so the ones set here at import do not
reach the tests: pyproject.toml's [tool.pytest.ini_options] filterwarnings repeats the warning filter
(keep them in step). pytest's own -W options (e.g. -W default) take precedence over both.
"""

from __future__ import annotations

import logging
import warnings

# rank_zero_info logs through whichever of these two set lightning_utilities' module logger last
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"
LEAFSPEC_MESSAGE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
LEAFSPEC_MODULE = r"lightning\.pytorch\.utilities\._pytree"
LEAFSPEC_UNPICKLED = r"copyreg"  # the same LeafSpec rebuilt by torch.export (ONNX export) through copyreg


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LITLOGGER_TIP)


_TIP_FILTER = _DropLitLoggerTip()


def quiet() -> None:
    """Install the filters above (again harmlessly: neither is added twice)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
    # filterwarnings drops an identical earlier entry before inserting, so repeated calls do not pile up
    for module in (LEAFSPEC_MODULE, LEAFSPEC_UNPICKLED):
        warnings.filterwarnings("ignore", message=LEAFSPEC_MESSAGE, category=FutureWarning, module=module)
