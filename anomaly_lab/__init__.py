"""Masked U-Net autoencoders for unsupervised visual anomaly detection.

from anomaly_lab import load_model
model = load_model("outputs/runs/<run>/checkpoints/best.ckpt")
result = model.predict("image.png")  # .score .anomalous .anomaly_map .mask (anomaly_lab/api.py)
"""

import os
from typing import Any

# OpenMP threads sleep between parallel regions instead of spinning, as `make` sets it (Makefile), so that
# `python -m anomaly_lab.*` runs as the make targets do: on cores shared with other work, spinning threads cost torch
# most of its speed (predict measured at 1.6 against 7.7 img/s on 2 busy cores). Set before torch loads; an
# OMP_WAIT_POLICY already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from anomaly_lab.quiet import quiet as _quiet

_quiet()  # every entry point and the tests import this package first: see anomaly_lab/quiet.py

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":  # imported on first use: `import anomaly_lab` stays light for the CLIs
        from anomaly_lab.checkpoint_loading import load_model

        return load_model
    raise AttributeError(f"module 'anomaly_lab' has no attribute {name!r}")
