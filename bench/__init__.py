"""Benchmark harness for cbam-triton (``python -m bench``)."""
