"""Registers anomaly_lab's resumable Optuna sweeper with Hydra, which only loads plugins from hydra_plugins.

`hydra/sweeper=resumable_optuna` takes every option of hydra-optuna-sweeper's `optuna` plus the
heartbeat settings; the loop itself is anomaly_lab.sweeps.resumable_optuna.ResumableOptunaSweeperImpl.
"""

# no `from __future__ import annotations`: Hydra's plugin scanner runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations
from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

import anomaly_lab.configs  # noqa: F401  registers ${optuna_direction:...} and ${data_digest:...}, which the sweep configs use


@dataclass
class ResumableOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.anomaly_lab_sweeper.resumable_optuna_sweeper.ResumableOptunaSweeper"
    # a running trial records a heartbeat every heartbeat_interval s; one silent for grace_period s
    # (default 2 x interval) belongs to a dead worker and is failed (at once where that worker ran on this host)
    heartbeat_interval: int = 10
    grace_period: Optional[int] = None  # noqa: UP045 (OmegaConf 2.3 reads Optional, not X | None)


ConfigStore.instance().store(
    group="hydra/sweeper", name="resumable_optuna", node=ResumableOptunaSweeperConf, provider="anomaly_lab"
)


class ResumableOptunaSweeper(OptunaSweeper):
    def __init__(self, **kwargs: Any) -> None:
        from anomaly_lab.sweeps.resumable_optuna import ResumableOptunaSweeperImpl  # heavy (optuna); only when sweeping

        self.sweeper = ResumableOptunaSweeperImpl(**kwargs)
