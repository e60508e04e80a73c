"""Run every benchmark: `python -m benchmarks` (what `make bench` does)."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = ["bench_bus"]


def main() -> None:
    parser = argparse.ArgumentParser(description="Run flowkit's benchmarks.")
    parser.add_argument("names", nargs="*", default=BENCHMARKS, help="benchmarks to run")
    args = parser.parse_args()
    for name in args.names:
        module = importlib.import_module(f"benchmarks.{name}")
        module.cli([])


if __name__ == "__main__":
    main()
