"""Masked U-Net autoencoders for unsupervised visual anomaly detection."""

from anomaly_lab.quiet import quiet as _quiet

_quiet()  # every entry point and the tests import this package first: see anomaly_lab/quiet.py
