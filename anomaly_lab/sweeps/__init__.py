"""Sweeps: the crash-safe Optuna loop behind `hydra/sweeper=resumable_optuna` (hydra_plugins/anomaly_lab_sweeper
registers the sweeper with Hydra and imports this loop only when a sweep runs)."""
