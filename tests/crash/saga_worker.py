"""A service running sagas on a SQLiteStore, to be killed with SIGKILL at any moment.

Usage: ``python saga_worker.py STORE_DB EFFECTS_DB WORKFLOWS SEED BACKEND``

It first resumes the unfinished workflows whose lease is free, then runs
workflows ``wf-0`` to ``wf-{WORKFLOWS-1}`` (``run`` is idempotent: finished
ones return at once; one still held by a killed process is waited for, and
taken over when its half-second lease runs out), then prints ``done``. It
prints ``ready`` once it has opened the store.

Every step and compensation applies its effect in a separate SQLite database,
keyed by its idempotency key: a repeated call (a retry, or a call repeated after
a crash) finds its key and applies nothing. Each call is also counted, so the
test can see that calls were repeated while effects were not.

Failure plans are fixed per workflow number ``n``:

* ``n % 5 == 1``: ``charge`` is declined (not retryable): the workflow is compensated;
* ``n % 7 == 3``: ``confirm`` fails and the compensation of ``reserve`` always
  fails: the workflow ends FAILED with ``reserve`` left to undo (``notify`` has
  no compensation, so its effect stays too).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import sys
import time
from pathlib import Path

import anyio
from pydantic import BaseModel

from flowkit import NonRetryableError, Retry
from flowkit.orchestration import Orchestrator, Parallel, Step, StepContext
from flowkit.stores._sqlite import SQLiteStore

WEIGHTS = {"reserve": 1, "charge": 10, "pack": 100, "notify": 1000}
"""What each step adds to its workflow's balance (its compensation takes it back)."""

EFFECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY, workflow TEXT NOT NULL, step TEXT NOT NULL, delta INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS balances (workflow TEXT PRIMARY KEY, amount INTEGER NOT NULL);
"""


class Order(BaseModel):
    number: int


class Effects:
    """Effects applied at most once per idempotency key, in their own database."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(EFFECTS_SCHEMA)

    def apply(self, ctx: StepContext, step: str, undo: bool) -> None:
        key = ctx.idempotency_key
        delta = -WEIGHTS[step] if undo else WEIGHTS[step]
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO calls (key, n) VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1",
                (key,),
            )
            done = db.execute("SELECT 1 FROM effects WHERE key = ?", (key,)).fetchone()
            # a compensation undoes only an effect that was applied
            forward = f"{ctx.workflow_id}:{step}"
            applied = db.execute("SELECT 1 FROM effects WHERE key = ?", (forward,)).fetchone()
            if done is None and (not undo or applied is not None):
                db.execute(
                    "INSERT INTO effects (key, workflow, step, delta) VALUES (?, ?, ?, ?)",
                    (key, ctx.workflow_id, step, delta),
                )
                db.execute(
                    "INSERT INTO balances (workflow, amount) VALUES (?, ?) "
                    "ON CONFLICT(workflow) DO UPDATE SET amount = amount + excluded.amount",
                    (ctx.workflow_id, delta),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # widen the window in which the effect is applied but not yet checkpointed
        time.sleep(random.uniform(0, 0.001))


EFFECTS: Effects | None = None


def effects() -> Effects:
    assert EFFECTS is not None
    return EFFECTS


async def pause() -> None:
    await anyio.sleep(random.uniform(0, 0.004))


async def reserve(ctx: StepContext, order: Order) -> int:
    await pause()
    effects().apply(ctx, "reserve", undo=False)
    return order.number


async def release(ctx: StepContext, order: Order) -> None:
    if order.number % 7 == 3:
        raise RuntimeError("the warehouse refuses the release")
    await pause()
    effects().apply(ctx, "reserve", undo=True)


async def charge(ctx: StepContext, order: Order) -> str:
    await pause()
    if order.number % 5 == 1:
        raise NonRetryableError("card declined")
    effects().apply(ctx, "charge", undo=False)
    return f"payment-{order.number}"


async def refund(ctx: StepContext, order: Order) -> None:
    await pause()
    effects().apply(ctx, "charge", undo=True)


async def pack(ctx: StepContext, order: Order) -> None:
    await pause()
    effects().apply(ctx, "pack", undo=False)


async def unpack(ctx: StepContext, order: Order) -> None:
    await pause()
    effects().apply(ctx, "pack", undo=True)


async def notify(ctx: StepContext, order: Order) -> None:
    await pause()
    effects().apply(ctx, "notify", undo=False)


async def confirm(ctx: StepContext, order: Order) -> None:
    await pause()
    if order.number % 7 == 3:
        raise NonRetryableError("confirmation refused")


class CrashSaga(Orchestrator[Order]):
    steps = (
        Step(reserve, compensate=release),
        Step(charge, compensate=refund),
        Parallel(Step(pack, compensate=unpack), Step(notify)),
        Step(confirm),
    )
    step_retry = Retry(attempts=3, backoff=0.001)
    compensation_retry = Retry(attempts=2, backoff=0.001)


async def main(store_db: str, workflows: int) -> None:
    async with (
        SQLiteStore(store_db) as store,
        CrashSaga(store=store, concurrency=20, lease=0.5) as saga,
    ):
        print("ready", flush=True)
        await saga.resume()

        async def run(n: int) -> None:
            await saga.run(Order(number=n), workflow_id=f"wf-{n}")

        async with anyio.create_task_group() as tg:
            for n in range(workflows):
                tg.start_soon(run, n)
    print("done", flush=True)


if __name__ == "__main__":
    store_path, effects_path, count, seed, backend = sys.argv[1:6]
    random.seed(int(seed))
    logging.getLogger("flowkit").setLevel(logging.CRITICAL)
    Path(effects_path).touch()
    EFFECTS = Effects(effects_path)
    anyio.run(main, store_path, int(count), backend=backend)
