"""The benchmark harness behind bench/run.py: rigs, measurements, the report."""
