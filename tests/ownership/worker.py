"""An orchestrator process sharing its store with others, to be killed with SIGKILL
or stopped with SIGTERM at any moment.

Usage::

    python worker.py --tag p1 --store STORE [--schema SCHEMA] --ledger LEDGER_DB \
        --first 0 --count 500 --lease 2 --backend asyncio [--stop-grace 0.5]

``STORE`` is a SQLite file path, or a PostgreSQL URL (then ``--schema`` names the
schema). The worker enters ``async with`` of :class:`OwnershipSaga` (owner
``TAG:PID``), prints ``ready OWNER``, starts workflows ``wf-FIRST`` to
``wf-{FIRST+COUNT-1}`` with ``start()`` (none with ``--count 0``: it only takes
over free workflows, as a process of a rolling deploy does), prints ``started``,
and runs until SIGTERM, which makes it leave ``async with`` (its runs get
``--stop-grace`` seconds, then stop and give up their leases). It prints
``stopped`` on the way out.

Every step and compensation works for 2 to 30 ms and writes to the ledger, a
SQLite database of its own shared by all workers: a row when it begins (before
its work) and that row's end and outcome (``ok``, ``failed`` or ``cancelled``)
when it ends. A process killed with SIGKILL leaves its open rows without an end.
The steps of a worker wait until it has started all its workflows, so that a
worker killed partway has recorded all of its own. Warnings (a lease lost, the
runs stopped at the end of the grace) go to stderr.

The plan of workflow ``n``:

* ``n % 5 == 2``: ``ship`` fails (not retryable): ``refund`` and ``release`` run,
  the workflow ends COMPENSATED;
* otherwise it ends COMPLETED;
* ``n % 10 == 7``: ``charge`` fails at its first attempt and is retried;
* ``n % 20 == 2``: ``refund`` fails at its first attempt and is retried.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sqlite3
import sys
import time
from typing import TYPE_CHECKING

import anyio
from pydantic import BaseModel

from flowkit import NonRetryableError, Retry
from flowkit.orchestration import Orchestrator, Step, StepContext
from flowkit.stores import SQLiteStore

if TYPE_CHECKING:
    from flowkit.stores import StateStore

WORKFLOW_NAME = "OwnershipSaga"

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    compensating INTEGER NOT NULL,
    key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    owner TEXT NOT NULL,
    t_start REAL NOT NULL,
    t_end REAL,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS ledger_workflow ON ledger (workflow, t_start);
"""


def open_ledger(path: str) -> sqlite3.Connection:
    """The ledger database (WAL, waiting up to 30 s for another writer), created
    if missing."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(LEDGER_SCHEMA)
    return db


class Ledger:
    """Where the steps of this process record when they run."""

    def __init__(self, path: str, owner: str) -> None:
        self.db = open_ledger(path)
        self.owner = owner
        self.pid = os.getpid()

    def begin(self, ctx: StepContext) -> int:
        now = time.time()
        cursor = self.db.execute(
            "INSERT INTO ledger (workflow, step, compensating, key, attempt, pid, owner, t_start)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ctx.workflow_id,
                ctx.step,
                int(ctx.compensating),
                ctx.idempotency_key,
                ctx.attempt,
                self.pid,
                self.owner,
                now,
            ),
        )
        row = cursor.lastrowid
        assert row is not None
        return row

    def end(self, row: int, outcome: str) -> None:
        self.db.execute(
            "UPDATE ledger SET t_end = ?, outcome = ? WHERE id = ?", (time.time(), outcome, row)
        )


LEDGER: Ledger | None = None
STARTED: anyio.Event | None = None
"""Set once this worker has started all its workflows: until then, its steps wait
(so that a worker killed a third of the way through had started them all)."""


class Order(BaseModel):
    number: int


class Refused(NonRetryableError):
    """A planned failure that is not retried."""


class Flaky(RuntimeError):
    """A planned failure of a first attempt (retried)."""


async def act(ctx: StepContext, *, fail: bool = False, flaky: bool = False) -> None:
    """Record the step in the ledger around a few milliseconds of work."""
    ledger, started = LEDGER, STARTED
    assert ledger is not None and started is not None
    await started.wait()
    row = ledger.begin(ctx)
    outcome = "cancelled"
    try:
        await anyio.sleep(random.uniform(0.002, 0.030))
        if fail:
            outcome = "failed"
            raise Refused(f"{ctx.step} refused for {ctx.workflow_id}")
        if flaky and ctx.attempt == 1:
            outcome = "failed"
            raise Flaky(f"{ctx.step} failed once for {ctx.workflow_id}")
        outcome = "ok"
    finally:
        ledger.end(row, outcome)


async def reserve(ctx: StepContext, order: Order) -> int:
    await act(ctx)
    return order.number


async def release(ctx: StepContext, order: Order) -> None:
    await act(ctx)


async def charge(ctx: StepContext, order: Order) -> str:
    await act(ctx, flaky=order.number % 10 == 7)
    return f"payment-{order.number}"


async def refund(ctx: StepContext, order: Order) -> None:
    await act(ctx, flaky=order.number % 20 == 2)


async def ship(ctx: StepContext, order: Order) -> None:
    await act(ctx, fail=order.number % 5 == 2)


async def recall(ctx: StepContext, order: Order) -> None:
    await act(ctx)


async def notify(ctx: StepContext, order: Order) -> None:
    await act(ctx)


class OwnershipSaga(Orchestrator[Order]):
    name = WORKFLOW_NAME
    steps = (
        Step(reserve, compensate=release),
        Step(charge, compensate=refund),
        Step(ship, compensate=recall),
        Step(notify),
    )
    step_retry = Retry(attempts=3, backoff=0.001)
    compensation_retry = Retry(attempts=3, backoff=0.001)


def open_store(location: str, schema: str | None, tag: str) -> StateStore:
    """The store at ``location``; PostgreSQL connections are named after the worker
    (``application_name``), to tell them apart on the server."""
    if location.startswith(("postgresql://", "postgres://")):
        from flowkit.stores._postgres import PostgresStore

        return PostgresStore(
            location,
            schema=schema or "flowkit",
            server_settings={"application_name": f"flowkit-ownership-{tag}"},
        )
    return SQLiteStore(location)


async def main(args: argparse.Namespace) -> None:
    owner = f"{args.tag}:{os.getpid()}"
    global LEDGER, STARTED
    LEDGER = Ledger(args.ledger, owner)
    STARTED = anyio.Event()
    store = open_store(args.store, args.schema, args.tag)
    saga = OwnershipSaga(
        store,
        lease=args.lease,
        owner=owner,
        stop_grace=args.stop_grace,
    )
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with saga:
            print("ready", owner, flush=True)
            for n in range(args.first, args.first + args.count):
                await saga.start(Order(number=n), workflow_id=f"wf-{n:04d}")
            STARTED.set()
            print("started", flush=True)
            async for _ in signals:
                break
    print("stopped", flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--schema")
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--lease", type=float, required=True)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--stop-grace", type=float, default=10.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(created).3f %(process)d %(name)s %(levelname)s %(message)s",
    )
    anyio.run(main, arguments, backend=arguments.backend)
