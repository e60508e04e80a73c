"""SQLiteStore's write rate against raw sqlite3 commits, measured in the same run.

Run with ``python -m benchmarks bench_store`` or ``python -m benchmarks.bench_store
[--seconds 2] [--backend asyncio] [--synchronous NORMAL]``. It reports, in WAL mode
at the given ``synchronous`` level:

* raw sqlite3 single-row commits/s (one UPDATE per transaction, no event loop);
* ``SQLiteStore.save_workflow`` calls/s, one after another;
* ``SQLiteStore.save_workflow`` calls/s from 100 concurrent tasks (one workflow each);

and each store figure as a ratio of the raw rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from typing import TYPE_CHECKING, cast

import anyio

from flowkit.stores import SQLiteStore, WorkflowRecord

from ._report import report

if TYPE_CHECKING:
    from flowkit.stores._sqlite import SynchronousLevel

STATE = {
    "input": {"order_id": "o-123", "amount": 4200, "items": ["a", "b", "c"]},
    "steps": [{"name": "reserve", "status": "DONE", "attempts": 1}],
    "history": ["started", "reserve.done"],
}


def raw_commits_per_second(path: str, seconds: float, synchronous: SynchronousLevel) -> float:
    """Single-row UPDATE commits per second with plain sqlite3 in WAL mode."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(
        "CREATE TABLE raw (id TEXT PRIMARY KEY, status TEXT, version INTEGER, state TEXT, "
        "updated_at TEXT)"
    )
    conn.execute("INSERT INTO raw VALUES ('w', 'RUNNING', 0, '{}', '')")
    state = json.dumps(STATE)
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            conn.execute(
                "UPDATE raw SET status = ?, state = ?, version = version + 1, updated_at = ? "
                "WHERE id = ? AND version = ?",
                ("RUNNING", state, "2024-01-01T00:00:00.000000+00:00", "w", count),
            )
            count += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return count / elapsed


async def store_saves_per_second(
    path: str, seconds: float, tasks: int, synchronous: SynchronousLevel
) -> float:
    """``save_workflow`` calls per second from ``tasks`` concurrent tasks."""
    count = 0
    async with SQLiteStore(path, synchronous=synchronous) as store:

        async def worker(index: int) -> None:
            nonlocal count
            record, _ = await store.create_workflow(
                WorkflowRecord(id=f"w{tasks}-{index}", name="probe", status="RUNNING", state=STATE)
            )
            while time.perf_counter() < deadline:
                record = await store.save_workflow(record)
                count += 1

        start = time.perf_counter()
        deadline = start + seconds
        async with anyio.create_task_group() as tg:
            for index in range(tasks):
                tg.start_soon(worker, index)
        elapsed = time.perf_counter() - start
    return count / elapsed


def cli(argv: list[str] | None = None) -> None:
    """Run the benchmark and print JSON, then a table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument(
        "--synchronous", default="NORMAL", choices=["OFF", "NORMAL", "FULL", "EXTRA"]
    )
    args = parser.parse_args(argv)
    synchronous = cast("SynchronousLevel", args.synchronous)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = raw_commits_per_second(os.path.join(tmp, "raw.db"), args.seconds, synchronous)
        rows.append({"measure": "raw sqlite3 single-row commits/s", "value": raw, "x_raw": 1.0})
        for tasks in (1, 100):
            rate = anyio.run(
                store_saves_per_second,
                os.path.join(tmp, f"store{tasks}.db"),
                args.seconds,
                tasks,
                synchronous,
                backend=args.backend,
            )
            label = "sequential" if tasks == 1 else f"{tasks} concurrent tasks"
            rows.append(
                {
                    "measure": f"SQLiteStore.save_workflow/s, {label}",
                    "value": rate,
                    "x_raw": rate / raw,
                }
            )
    report(
        "sqlite_store",
        rows,
        {"synchronous": synchronous, "journal_mode": "WAL", "backend": args.backend},
    )


if __name__ == "__main__":
    cli()
