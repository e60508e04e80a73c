"""Run every benchmark: `python -m benchmarks` (what `make bench` does)."""

from __future__ import annotations

import argparse
import importlib

# Each benchmark with the arguments `make bench` gives it.
BENCHMARKS: dict[str, list[str]] = {
    "bench_bus": [],
    "bench_store": [],
    "bench_orchestrator": ["--dbos", "--synchronous", "FULL"],
    "bench_redis": [],
    "bench_rabbitmq": [],
    "bench_nats": [],
    "bench_kafka": [],
    "bench_postgres": [],
    "bench_checkpoint": [],
    "bench_outbox": [],
    "bench_otel": [],
    "bench_trace": [],
    "bench_ui": [],
    "bench_waits": [],
    "bench_signing": [],
    "bench_backpressure": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run flowkit's benchmarks.")
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS), help="benchmarks to run")
    args = parser.parse_args()
    for name in args.names:
        module = importlib.import_module(f"benchmarks.{name}")
        module.cli(BENCHMARKS.get(name, []))


if __name__ == "__main__":
    main()
