"""`hydra/launcher=slurm` and `slurm_local`: hydra-submitit-launcher's SLURM and local launchers, but a job that dies
(node failure, out-of-memory kill, time limit) fails its own trial only (anomaly_lab.sweeps.launchers). Hydra
instantiates launchers from the hydra_plugins namespace only; without the `slurm` extra this module defines none.
"""

from collections.abc import Sequence

from hydra.core.utils import JobReturn

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # pip install -e '.[slurm]'
    submitit_launcher = None

if submitit_launcher is not None:
    from anomaly_lab.sweeps.launchers import launch_each

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            return launch_each(self, job_overrides, initial_job_idx)

    class LocalLauncher(submitit_launcher.LocalLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            return launch_each(self, job_overrides, initial_job_idx)
