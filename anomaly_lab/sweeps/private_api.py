"""Every private name of the sweep's libraries that anomaly_lab uses, each behind one small function.

hydra-optuna-sweeper 1.3.0 requires optuna<3, so the sweep runs on optuna 2.10.1 (SQLAlchemy 1.4) beside
hydra-submitit-launcher 1.2.0; at these versions some of what a crash-safe sweep needs has no public API. The rest
of the package calls only the functions below and subclasses OptunaSweeperImpl (its constructor takes the plugin's
hydra.sweeper keys). tests/test_sweep_private_api.py runs each against the installed versions and fails naming the
private name and the library's version; docs/sweeps-private-api.md says why each is used and what replaces it in
current optuna.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.storages._rdb.models import TrialHeartbeatModel
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy import func

if TYPE_CHECKING:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher


def sweep_directions(sweeper: OptunaSweeperImpl) -> list[str]:
    """hydra.sweeper.direction as a list of names ('minimize'/'maximize'), as the plugin reads it."""
    return list(sweeper._get_directions())


def parse_search_space(
    sweeper: OptunaSweeperImpl, arguments: Sequence[str]
) -> tuple[list[str], dict[str, BaseDistribution], dict[str, Any]]:
    """The search space as the plugin parses it: hydra.sweeper.params as overrides, and the distributions and
    fixed values of those and the command line's `arguments`. The deprecated hydra.sweeper.search_space lands in
    `sweeper.search_space_distributions`."""
    sweeper._process_searchspace_config()
    space = list(sweeper._parse_sweeper_params_config())
    distributions, fixed = create_params_from_overrides([*space, *arguments])
    return space, distributions, fixed


def search_distributions(params: Mapping[str, str]) -> dict[str, BaseDistribution]:
    """hydra.sweeper.params ({key: "choice(...)"}) as the distributions the plugin will draw from."""
    distributions, _ = create_params_from_overrides([f"{key}={spec}" for key, spec in params.items()])
    return distributions


def configure_trials(
    sweeper: OptunaSweeperImpl,
    trials: Sequence[Trial],
    distributions: Mapping[str, BaseDistribution],
    fixed: Mapping[str, Any],
) -> Sequence[Sequence[str]]:
    """Draw each trial's parameters, record the fixed ones (user attrs) and run hydra.sweeper.custom_search_space:
    the override list of each trial's job."""
    return sweeper._configure_trials(list(trials), dict(distributions), dict(fixed))


def trial_id(trial: Trial | FrozenTrial) -> int:
    """The trial's id in its storage (unique across studies; `number` counts within one study)."""
    return int(trial._trial_id)


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage."""
    return int(study._study_id)


def fail_stored_trial(study: optuna.Study, trial: FrozenTrial, user_attrs: Mapping[str, Any]) -> None:
    """Write `user_attrs` and the FAIL state of a RUNNING trial another process asked for, through the study's own
    (cached) storage so its view agrees. RuntimeError where the trial has finished meanwhile."""
    storage = study._storage
    for key, value in user_attrs.items():
        storage.set_trial_user_attr(trial_id(trial), key, value)
    storage.set_trial_state(trial_id(trial), TrialState.FAIL)


def heartbeat_ages(storage: RDBStorage, trial_ids: Iterable[int]) -> dict[int, float]:
    """Seconds since the last heartbeat of each trial among `trial_ids` that ever beat, by the database's clock.
    PostgreSQL's now() is the transaction's start, so a heartbeat committed since reads as a negative age."""
    with _create_scoped_session(storage.scoped_session) as session:
        now = session.execute(func.now()).scalar().replace(tzinfo=None)  # as optuna: naive, the session's zone
        beats = session.query(TrialHeartbeatModel.trial_id, TrialHeartbeatModel.heartbeat).filter(
            TrialHeartbeatModel.trial_id.in_(list(trial_ids))
        )
        return {trial: (now - beat).total_seconds() for trial, beat in beats}


def job_outcome(job: JobReturn) -> Any:
    """The job's return value, or the exception of a failed job, without raising it (JobReturn.return_value
    re-raises it and prints "Error executing job" to stderr)."""
    return job._return_value


def executor_name(launcher: BaseSubmititLauncher) -> str:
    """The submitit executor of a hydra-submitit-launcher launcher: 'slurm' or 'local'."""
    return str(launcher._EXECUTOR)
