"""Commands around training, each `python -m anomaly_lab.tools.<name> key=value ...` with a Makefile target: the
benchmark table, predict's throughput (bench_predict) and the sweep report; rescoring scores a trained run again.
One-off research and check scripts are not installed: scripts/ (`python scripts/<name>.py`)."""
