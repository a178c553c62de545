"""Commands around the library, not part of it: the benchmark, loader and framework-overhead measurements, and
the sweep report. Each is `python -m anomaly_lab.tools.<name>` (the Makefile has a target for each)."""
