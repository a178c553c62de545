"""hydra-submitit-launcher, one trial's death at a time: the launch behind `hydra/launcher=slurm` and `slurm_local`.

hydra-submitit-launcher 1.2.0 waits for a round's jobs with `job.results()`, which raises submitit's
UncompletedJobError (or FailedJobError) for a job whose process died: a node failure, an out-of-memory kill,
SLURM's time limit. That exception ends its launch() for the whole array, and the sweep with it. launch_each is
its launch with that one line changed: such a job becomes a failed JobReturn holding the error, so the sweeper
fails that trial only and tells the others their results. (A job that raises in Python is already a failed
JobReturn: Hydra's run_job catches it in the job.) The launcher classes Hydra instantiates live in
hydra_plugins/anomaly_lab_sweeper/submitit_launchers.py: Hydra takes launchers from that namespace only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

if TYPE_CHECKING:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

log = logging.getLogger(__name__)


def failed_job(error: BaseException, overrides: Sequence[str]) -> JobReturn:
    """The JobReturn of a job that ended with `error` (as Hydra's run_job returns a job that raised)."""
    job = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    job.return_value = error
    return job


def launch_each(
    launcher: BaseSubmititLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[JobReturn]:
    """BaseSubmititLauncher.launch of hydra-submitit-launcher 1.2.0, but a job whose process died is returned
    as a failed JobReturn (its error: submitit's, with the job's id and the end of its log) instead of raising."""
    import submitit  # lazy, as the plugin's: plugin discovery stays fast
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    from anomaly_lab.sweeps import private_api  # lazy too: it imports optuna

    assert launcher.config is not None and job_overrides
    executor_name = private_api.executor_name(launcher)
    init_keys = {"max_num_timeout"}
    executor = submitit.AutoExecutor(
        cluster=executor_name,
        folder=launcher.params["submitit_folder"],
        **{f"{executor_name}_{k}": v for k, v in launcher.params.items() if k in init_keys},
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{
            k if k in base else f"{executor_name}_{k}": v
            for k, v in launcher.params.items()
            if k not in init_keys | {"submitit_folder"}
        }
    )
    sweep = launcher.config.hydra.sweep
    log.info(f"Submitit '{executor_name}' sweep output dir : {sweep.dir}")
    Path(str(sweep.dir)).mkdir(parents=True, exist_ok=True)
    if "mode" in sweep:
        os.chmod(str(sweep.dir), mode=int(str(sweep.mode), 8))
    params: list[Any] = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*params, strict=True))
    returns = []
    for job, overrides in zip(jobs, job_overrides, strict=True):
        try:
            returns.append(job.results()[0])
        except Exception as error:  # UncompletedJobError, FailedJobError: the job's process is gone
            log.warning("job %s died: %s: %s", job.job_id, type(error).__name__, str(error)[-2000:])
            returns.append(failed_job(error, overrides))
    return returns
