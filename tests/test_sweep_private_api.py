"""Each function of anomaly_lab/sweeps/private_api.py against the installed libraries: the private name it uses is
still there, and the real call still does what the sweep relies on (on a study in a temporary SQLite file). A
library upgrade that breaks one fails here with the private name and the installed version, not deep in a sweep.
docs/sweeps-private-api.md says what replaces each in current optuna."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import optuna
import pytest
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, UniformDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

LIBRARIES = ("optuna", "hydra-optuna-sweeper", "hydra-core", "SQLAlchemy")
try:
    from anomaly_lab.sweeps import private_api
    from anomaly_lab.sweeps.launchers import failed_job
except ImportError as error:  # a private name the seam imports is gone
    installed = ", ".join(f"{name} {version(name)}" for name in LIBRARIES)
    raise ImportError(f"anomaly_lab/sweeps/private_api.py: {error} ({installed})") from error


@contextlib.contextmanager
def uses(private_name: str, distribution: str) -> Iterator[None]:
    """Turn any failure inside into one naming the private name and the installed version of its library."""
    try:
        yield
    except Exception as error:
        pytest.fail(
            f"{private_name} of {distribution} {version(distribution)} no longer works as "
            f"anomaly_lab/sweeps/private_api.py uses it ({type(error).__name__}: {error}); "
            f"see docs/sweeps-private-api.md for its public replacement",
            pytrace=False,
        )


def require(owner: Any, name: str, distribution: str) -> None:
    with uses(f"{getattr(owner, '__name__', type(owner).__name__)}.{name}", distribution):
        assert hasattr(owner, name), "the name is gone"


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> RDBStorage:
    """An RDB storage with heartbeats, in a temporary SQLite file (the sweep's default kind of storage)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('private_api') / 'study.db'}"
    return RDBStorage(url, heartbeat_interval=60)


@pytest.fixture
def study(storage: RDBStorage, request: pytest.FixtureRequest) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=request.node.name, direction="maximize")


def plugin_sweeper(**params: Any) -> private_api.OptunaSweeperImpl:
    """The plugin's sweeper as hydra.sweeper's keys build it (sweep() is not run)."""
    settings: dict[str, Any] = {
        "sampler": optuna.samplers.RandomSampler(seed=0),
        "direction": "maximize",
        "storage": None,
        "study_name": None,
        "n_trials": 1,
        "n_jobs": 1,
        "max_failure_rate": 0.0,
        "search_space": None,
        "custom_search_space": None,
        "params": None,
        **params,
    }
    return private_api.OptunaSweeperImpl(**settings)


def test_sweep_directions_reads_the_plugins_direction() -> None:
    require(private_api.OptunaSweeperImpl, "_get_directions", "hydra-optuna-sweeper")
    with uses("OptunaSweeperImpl._get_directions", "hydra-optuna-sweeper"):
        assert private_api.sweep_directions(plugin_sweeper(direction="minimize")) == ["minimize"]


def test_parse_search_space_parses_params_and_the_command_line() -> None:
    for name in ("_process_searchspace_config", "_parse_sweeper_params_config"):
        require(private_api.OptunaSweeperImpl, name, "hydra-optuna-sweeper")
    sweeper = plugin_sweeper(params=OmegaConf.create({"masking.ratio": "interval(0.1, 0.9)", "model.depth": "3"}))
    with uses("OptunaSweeperImpl._parse_sweeper_params_config + create_params_from_overrides", "hydra-optuna-sweeper"):
        space, distributions, fixed = private_api.parse_search_space(sweeper, ["seed=choice(1, 2)"])
        assert space == ["masking.ratio=interval(0.1, 0.9)", "model.depth=3"]
        assert distributions == {
            "masking.ratio": UniformDistribution(0.1, 0.9),
            "seed": CategoricalDistribution([1, 2]),
        }
        assert fixed == {"model.depth": "3"}  # as text: the sweep's point keys of stored studies compare it so


def test_configure_trials_draws_parameters_and_records_fixed_ones() -> None:
    require(private_api.OptunaSweeperImpl, "_configure_trials", "hydra-optuna-sweeper")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    with uses("OptunaSweeperImpl._configure_trials", "hydra-optuna-sweeper"):
        (overrides,) = private_api.configure_trials(
            plugin_sweeper(), [trial], {"seed": CategoricalDistribution([7])}, {"model.depth": 3}
        )
        assert list(overrides) == ["seed=7", "model.depth=3"]
        assert trial.params == {"seed": 7} and trial.user_attrs == {"model.depth": 3}


def test_trial_id_is_the_storages_id_of_a_trial_and_of_its_frozen_copy(
    study: optuna.Study, storage: RDBStorage
) -> None:
    trial = study.ask()
    (frozen,) = study.get_trials(deepcopy=False)
    require(trial, "_trial_id", "optuna")
    require(frozen, "_trial_id", "optuna")
    with uses("Trial._trial_id", "optuna"):
        expected = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number
        )
        assert private_api.trial_id(trial) == private_api.trial_id(frozen) == expected


def test_study_id_is_the_storages_id_of_the_study(study: optuna.Study, storage: RDBStorage) -> None:
    require(study, "_study_id", "optuna")
    with uses("Study._study_id", "optuna"):
        assert private_api.study_id(study) == storage.get_study_id_from_name(study.study_name)


def test_fail_stored_trial_fails_a_running_trial_once(study: optuna.Study, storage: RDBStorage) -> None:
    require(study, "_storage", "optuna")
    trial = study.ask()
    (frozen,) = study.get_trials(deepcopy=False)
    with uses("Study._storage.set_trial_user_attr/set_trial_state", "optuna"):
        private_api.fail_stored_trial(study, frozen, {"failed_because": "its worker is gone"})
        stored = storage.get_trial(private_api.trial_id(trial))
        assert stored.state == TrialState.FAIL
        assert stored.user_attrs["failed_because"] == "its worker is gone"
        # the sweep's fail_trial counts on a RuntimeError for a trial another worker finished first
        with pytest.raises(RuntimeError):
            private_api.fail_stored_trial(study, frozen, {"failed_because": "again"})


def test_heartbeat_ages_reads_the_heartbeat_table_by_the_databases_clock(
    study: optuna.Study, storage: RDBStorage
) -> None:
    from optuna.storages._rdb import models
    from optuna.storages._rdb import storage as rdb

    require(models, "TrialHeartbeatModel", "optuna")
    require(rdb, "_create_scoped_session", "optuna")
    require(storage, "scoped_session", "optuna")
    beating, silent = study.ask(), study.ask()
    storage.record_heartbeat(private_api.trial_id(beating))
    with uses("optuna.storages._rdb.models.TrialHeartbeatModel, _rdb.storage._create_scoped_session", "optuna"):
        ages = private_api.heartbeat_ages(storage, [private_api.trial_id(beating), private_api.trial_id(silent)])
        assert set(ages) == {private_api.trial_id(beating)}, "only a trial that beat has an age"
        # the same clock wrote and read it: seconds, not hours of a time zone (no bound on a busy machine's delay)
        assert -60 < ages[private_api.trial_id(beating)] < 3600


def test_job_outcome_is_a_failed_jobs_error_without_raising_it() -> None:
    from hydra.core.utils import JobReturn

    require(JobReturn(), "_return_value", "hydra-core")
    error = ValueError("the job raised")
    job = failed_job(error, ["seed=1"])
    with uses("JobReturn._return_value", "hydra-core"):
        assert job.status == JobStatus.FAILED
        assert private_api.job_outcome(job) is error
        completed = JobReturn(status=JobStatus.COMPLETED)
        completed.return_value = 0.5
        assert private_api.job_outcome(completed) == 0.5


def test_executor_name_is_the_launchers_submitit_cluster() -> None:
    launcher = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.submitit_launcher")
    for cls, cluster in ((launcher.SlurmLauncher, "slurm"), (launcher.LocalLauncher, "local")):
        require(cls, "_EXECUTOR", "hydra-submitit-launcher")
        with uses(f"{cls.__name__}._EXECUTOR", "hydra-submitit-launcher"):
            assert private_api.executor_name(cls.__new__(cls)) == cluster


def test_launch_each_copies_the_installed_launchers_launch() -> None:
    """launch_each (anomaly_lab/sweeps/launchers.py) is BaseSubmititLauncher.launch of 1.2.0 with one change."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    installed = version("hydra-submitit-launcher")
    assert installed == "1.2.0", (
        f"hydra-submitit-launcher {installed}: anomaly_lab.sweeps.launchers.launch_each copies the launch() of 1.2.0; "
        f"compare it with BaseSubmititLauncher.launch of {installed} and carry over what changed"
    )


def test_two_workers_failing_one_trial_in_the_same_instant_leave_it_to_the_first(
    study: optuna.Study, storage: RDBStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race PostgreSQL showed: two workers find one stale trial; both see no failed_because yet, the first
    inserts it, the second's insert breaks the unique key. The second must step back, not crash its sweep."""
    from optuna.storages._rdb import models

    from anomaly_lab.sweeps.resumable_optuna import fail_trial

    other_worker = optuna.load_study(study_name=study.study_name, storage=storage)  # its own process's trial
    other_worker.ask()
    (frozen,) = study.get_trials(deepcopy=False)
    storage.set_trial_user_attr(private_api.trial_id(frozen), "failed_because", "the first worker's reason")
    # the second worker looked before the first's insert committed: it finds no attribute and inserts one
    monkeypatch.setattr(models.TrialUserAttributeModel, "where_trial_id", classmethod(lambda *_: []))
    assert fail_trial(study, frozen, "the second worker's reason") is False
    monkeypatch.undo()
    assert storage.get_trial(private_api.trial_id(frozen)).user_attrs["failed_because"] == "the first worker's reason"
