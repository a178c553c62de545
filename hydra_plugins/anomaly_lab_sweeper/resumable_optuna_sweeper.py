"""Registers anomaly_lab's resumable Optuna sweeper with Hydra, which only loads plugins from hydra_plugins.

`hydra/sweeper=resumable_optuna` takes every option of hydra-optuna-sweeper's `optuna` plus the
heartbeat settings and a pruner (`hydra/sweeper/pruner=none|median|percentile|successive_halving|hyperband|
threshold`, or the presets in anomaly_lab/conf/hydra/sweeper/pruner/; options as `hydra.sweeper.pruner.<key>=...`)
allow_other_data (join a study of other data) and budget_minutes (a wall-clock budget); the loop itself is
anomaly_lab.sweeps.resumable_optuna.ResumableOptunaSweeperImpl.
"""

# no `from __future__ import annotations`: Hydra's plugin scanner runs this module before it is in
# sys.modules, where dataclasses cannot resolve string annotations
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import MISSING, OmegaConf

import anomaly_lab.configs  # noqa: F401  registers ${optuna_direction:...} and ${data_digest:...}, which the sweep configs use

# OmegaConf 2.3 reads Optional and List, not X | None and list[X]; the defaults are optuna 2.10's


@dataclass
class NopPrunerConf:
    """No pruning: every trial trains to its last epoch (it still reports each validation)."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    """Prune a trial whose best report so far is worse than the median of the complete trials' at that step."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # no pruning until this many trials have completed
    n_warmup_steps: int = 0  # no pruning before this many epochs have trained (step = epochs trained)
    interval_steps: int = 1
    n_min_trials: int = 1  # complete trials that reported at this step, at least


@dataclass
class PercentilePrunerConf(MedianPrunerConf):
    """As median, with another percentile (25.0: prune all but the best quarter)."""

    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0


@dataclass
class SuccessiveHalvingPrunerConf:
    """Asynchronous successive halving: at each rung keep the best 1/reduction_factor of the trials."""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"  # epochs before the first rung; "auto": from the first complete trial
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConf:
    """Hyperband: several successive-halving brackets with different first rungs."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # epochs of a full trial; "auto": from the complete trials
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConf:
    """Prune a trial whose report falls below `lower` or above `upper` (e.g. a NaN-like collapse)."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: Optional[float] = None  # noqa: UP045
    upper: Optional[float] = None  # noqa: UP045
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class ResumableOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.anomaly_lab_sweeper.resumable_optuna_sweeper.ResumableOptunaSweeper"
    # Hydra builds the sampler here (ResumableOptunaSweeper), not the pruner: that one is built by the sweep,
    # from an allow-list, so no config names code to run (anomaly_lab/sweeps/pruning.py)
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])  # noqa: UP006
    # a running trial records a heartbeat every heartbeat_interval s; one silent for grace_period s
    # (default 2 x interval) belongs to a dead worker and is failed (at once where that worker ran on this host)
    heartbeat_interval: int = 10
    grace_period: Optional[int] = None  # noqa: UP045
    pruner: Any = MISSING  # set by the defaults: hydra/sweeper/pruner=none (or another option)
    # a study records the data its trials train on (configs.data_identity); a sweep of other data is refused unless
    # this is true (the data moved: the study's finished points count as this data's)
    allow_other_data: bool = False
    # minutes of wall clock for this sweep (null: none): a trial whose estimated run does not fit in what is left is
    # not started, and each started one stops (PRUNED) before an epoch that would end past the budget
    budget_minutes: Optional[float] = None  # noqa: UP045
    # parameter values (e.g. {tune.length: short}) a draw that does not fit in the budget left is tried with: that
    # point is enqueued as the next trial where its estimated run fits
    budget_fallback: Dict[str, Any] = field(default_factory=dict)  # noqa: UP006


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="resumable_optuna", node=ResumableOptunaSweeperConf, provider="anomaly_lab")
for name, node in {
    "none": NopPrunerConf,
    "median": MedianPrunerConf,
    "percentile": PercentilePrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
    "hyperband": HyperbandPrunerConf,
    "threshold": ThresholdPrunerConf,
}.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="anomaly_lab")


class ResumableOptunaSweeper(OptunaSweeper):
    def __init__(self, **kwargs: Any) -> None:
        from anomaly_lab.sweeps.resumable_optuna import ResumableOptunaSweeperImpl  # heavy (optuna); only when sweeping

        sampler = kwargs.get("sampler")
        if OmegaConf.is_config(sampler):  # not recursive (see _recursive_ above): the sampler is built here
            kwargs["sampler"] = instantiate(sampler)
        self.sweeper = ResumableOptunaSweeperImpl(**kwargs)
