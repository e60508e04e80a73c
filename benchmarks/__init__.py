"""flowkit's benchmarks: `make bench` (or `python -m benchmarks`) runs them all."""
