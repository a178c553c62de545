"""The Hydra configs, a package so that a config outside it can name it: `pkg://anomaly_lab.conf` (scripts/)."""
