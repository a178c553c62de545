"""Sweeps: the crash-safe Optuna loop behind `hydra/sweeper=resumable_optuna` (hydra_plugins/anomaly_lab_sweeper
registers the sweeper with Hydra and imports this loop only when a sweep runs) and the pruning of its trials."""

import logging

# importing optuna's RDB storage imports alembic, whose plugin set-up logs seven INFO lines into every sweep's log
logging.getLogger("alembic").setLevel(logging.WARNING)
