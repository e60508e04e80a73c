"""The dashboard with 100,000 workflows: its pages, and the store reads behind them.

Seeds a store with ``--workflows`` records (100,000 by default: five statuses
in a realistic mix, four orchestrator names, each with the history a real run
writes) and ``--letters`` dead letters, then times, over ``--repeat`` runs
each (p50 and p99, in milliseconds):

* the store reads a dashboard makes: ``count_workflows()``, the first page of
  ``list_workflows``, a page far down by cursor, pages filtered by status, by
  name and status, by status with a cursor, one workflow with its history,
  and a page of dead letters;
* the dashboard's own pages, rendered in process through its ASGI app
  (``flowkit.ui.create_app``, with ``httpx.ASGITransport``: no server, no
  network): the workflows list, a later page by cursor, a filtered list, the
  counts, one workflow's page, the dead letters page.

Target: every page under 300 ms, at p50 and at p99.

The store is SQLite (a fresh file), and PostgreSQL too when ``--postgres URL``
or ``FLOWKIT_POSTGRES_URL`` names a server (a schema of its own, dropped
afterwards). Seeding writes the rows with plain SQL in the store's own
schema (``executemany`` / ``COPY``), after the store has created it; the
state and history of each record are those of real runs of a three-step
saga (one that completes, one that is compensated). PostgreSQL's tables are
``ANALYZE``d after the load, as its autovacuum would do; SQLite's are not.

Run: ``python -m benchmarks bench_ui`` or
``python -m benchmarks.bench_ui [--workflows 100000] [--repeat 30] [--postgres URL]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from flowkit.orchestration import Orchestrator, Step, StepContext
from flowkit.stores import DeadLetter, MemoryStore, PostgresStore, SQLiteStore

from ._report import report
from .bench_orchestrator import Done, Order, reserve, ship

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from flowkit.stores import StateStore

NAMES = ("shop.order", "shop.refund", "billing.invoice", "shipping.dispatch")
#: Statuses with their weights: mostly finished work, some running, a few failures.
STATUSES = (
    ("COMPLETED", 70),
    ("COMPENSATED", 12),
    ("RUNNING", 10),
    ("FAILED", 5),
    ("COMPENSATING", 3),
)
CONSUMERS = ("shop:on_payment", "shop:on_refund", "billing:on_order", "shipping:on_paid")
ERRORS = ("TimeoutError", "ValueError", "DecodeError")
PAGE = 50
TARGET_MS = 300.0
BATCH = 5_000


# -- the records --------------------------------------------------------------------------


async def release(ctx: StepContext, order: Order) -> None:
    return None


async def charge_or_decline(ctx: StepContext, order: Order) -> Done:
    if order.amount < 0:
        raise ValueError("card declined")
    return Done(step="charge", value=order.amount + 1)


async def refund(ctx: StepContext, order: Order) -> None:
    return None


class Checkout(Orchestrator[Order]):
    name = "bench.checkout"
    steps = (
        Step(reserve, compensate=release),
        Step(charge_or_decline, name="charge", compensate=refund),
        Step(ship),
    )


@dataclass(frozen=True, slots=True)
class Template:
    """The state (JSON text, its order id as ``{order}``) and history of a real run."""

    state: str
    history: tuple[str, ...]


async def templates() -> dict[str, Template]:
    """A completed run and a compensated one, by the status they ended in."""
    found: dict[str, Template] = {}
    async with MemoryStore() as store, Checkout(store=store) as saga:
        for workflow_id, amount in (("ok", 42), ("declined", -1)):
            with contextlib.suppress(Exception):  # the declined one is compensated
                await saga.run(Order(order_id="{order}", amount=amount), workflow_id=workflow_id)
            record = await store.load_workflow(workflow_id)
            found[record.status] = Template(
                json.dumps(dict(record.state)), tuple(json.dumps(e) for e in record.history)
            )
    return found


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    name: str
    status: str
    state: str
    created_at: datetime
    history: tuple[str, ...]


def rows(count: int, made: dict[str, Template]) -> Iterator[Row]:
    """``count`` records, one a second, oldest first, the same for every run."""
    rng = random.Random(11)
    statuses = [status for status, _ in STATUSES]
    weights = [weight for _, weight in STATUSES]
    start = datetime.now(UTC) - timedelta(seconds=count + 60)
    for index in range(count):
        status = rng.choices(statuses, weights)[0]
        template = made["COMPLETED" if status in ("COMPLETED", "RUNNING") else "COMPENSATED"]
        yield Row(
            id=f"wf-{index:06d}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}",
            name=NAMES[index % len(NAMES)] if rng.random() < 0.9 else NAMES[0],
            status=status,
            state=template.state.replace("{order}", f"o-{index}"),
            created_at=start + timedelta(seconds=index, microseconds=rng.randrange(1_000_000)),
            history=template.history,
        )


def batches(count: int, made: dict[str, Template]) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows(count, made):
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def letters(count: int) -> Iterator[DeadLetter]:
    start = datetime.now(UTC) - timedelta(hours=1)
    for index in range(count):
        yield DeadLetter(
            id=f"dl-{index:06d}",
            consumer=CONSUMERS[index % len(CONSUMERS)],
            topic="orders",
            body=json.dumps({"order_id": f"o-{index}", "amount": index}).encode(),
            headers={"content-type": "application/json"},
            error_type=ERRORS[index % len(ERRORS)],
            error=f"{ERRORS[index % len(ERRORS)]}: failed on attempt 3",
            attempts=3,
            failed_at=start + timedelta(milliseconds=index * 10),
            message_id=f"m-{index}",
        )


async def add_letters(store: StateStore, count: int) -> None:
    pending = iter(letters(count))

    async def worker() -> None:
        for letter in pending:
            await store.add_dead_letter(letter)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(worker)


# -- seeding ------------------------------------------------------------------------------


def seed_sqlite_rows(path: str, count: int, made: dict[str, Template]) -> None:
    """Insert the records and their history into the store's own tables."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for batch in batches(count, made):
            conn.executemany(
                "INSERT INTO flowkit_workflows (id, name, status, version, state, created_at, "
                "updated_at, owner, lease_until, cancel_requested) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, NULL, 0)",
                [
                    (
                        r.id,
                        r.name,
                        r.status,
                        len(r.history),
                        r.state,
                        _sqlite_time(r.created_at),
                        _sqlite_time(r.created_at + timedelta(seconds=2)),
                    )
                    for r in batch
                ],
            )
            conn.executemany(
                "INSERT INTO flowkit_history (workflow_id, seq, entry) VALUES (?, ?, ?)",
                [(r.id, seq, entry) for r in batch for seq, entry in enumerate(r.history)],
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


async def seed_postgres_rows(url: str, schema: str, count: int, made: dict[str, Template]) -> None:
    """``COPY`` the records and their history into the store's own tables."""
    asyncpg: Any = importlib.import_module("asyncpg")
    conn = await asyncpg.connect(url)
    try:
        for batch in batches(count, made):
            await conn.copy_records_to_table(
                "flowkit_workflows",
                schema_name=schema,
                columns=("id", "name", "status", "version", "state", "created_at", "updated_at"),
                records=[
                    (
                        r.id,
                        r.name,
                        r.status,
                        len(r.history),
                        r.state,
                        r.created_at,
                        r.created_at + timedelta(seconds=2),
                    )
                    for r in batch
                ],
            )
            await conn.copy_records_to_table(
                "flowkit_history",
                schema_name=schema,
                columns=("workflow_id", "seq", "entry"),
                records=[(r.id, seq, e) for r in batch for seq, e in enumerate(r.history)],
            )
        await conn.execute(f'ANALYZE "{schema}".flowkit_workflows')
        await conn.execute(f'ANALYZE "{schema}".flowkit_history')
        await conn.execute(f'ANALYZE "{schema}".flowkit_dead_letters')
    finally:
        await conn.close()


# -- timing -------------------------------------------------------------------------------


async def timed(repeat: int, action: Callable[[], Awaitable[object]]) -> dict[str, float]:
    """p50 and p99 of ``action`` in milliseconds, after one warm-up call."""
    await action()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))],
    }


@dataclass(frozen=True, slots=True)
class Probe:
    """What the reads ask for: a cursor far down the list, and one workflow."""

    far_cursor: str
    failed_cursor: str
    workflow_id: str


async def probe(store: StateStore) -> Probe:
    counts = await store.count_workflows()
    total = sum(counts.values())
    far: str | None = None
    # Walk to about two thirds of the list by cursor, a page of a thousand at a time.
    for _ in range(max(1, (2 * total // 3) // 1000)):
        page = await store.list_workflows(limit=1000, after=far)
        if not page:
            break
        far = page[-1].cursor
    failed = await store.list_workflows(status="FAILED", limit=PAGE * 20)
    if far is None or not failed:
        raise RuntimeError("the store was not seeded")
    return Probe(far, failed[-1].cursor, failed[len(failed) // 2].id)


def store_reads(store: StateStore, p: Probe) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "count_workflows()": store.count_workflows,
        "list: first page": lambda: store.list_workflows(limit=PAGE),
        "list: page by cursor (2/3 down)": lambda: store.list_workflows(
            limit=PAGE, after=p.far_cursor
        ),
        "list: status=FAILED": lambda: store.list_workflows(status="FAILED", limit=PAGE),
        "list: status=FAILED, by cursor": lambda: store.list_workflows(
            status="FAILED", limit=PAGE, after=p.failed_cursor
        ),
        "list: unfinished (2 statuses)": lambda: store.list_workflows(
            status=("RUNNING", "COMPENSATING"), limit=PAGE
        ),
        "list: name + status, by cursor": lambda: store.list_workflows(
            status="FAILED", name=NAMES[1], limit=PAGE, after=p.failed_cursor
        ),
        "list: name=shipping.dispatch": lambda: store.list_workflows(name=NAMES[3], limit=PAGE),
        "load_workflow (with history)": lambda: store.load_workflow(p.workflow_id),
        "list_dead_letters": lambda: store.list_dead_letters(limit=PAGE),
    }


def pages(p: Probe) -> dict[str, tuple[str, dict[str, str]]]:
    """The dashboard's pages: a path and its query, by what they show."""
    return {
        "workflows (counts + first page)": ("/workflows", {}),
        "workflows: page by cursor (2/3 down)": ("/workflows", {"after": p.far_cursor}),
        "workflows: status=FAILED": ("/workflows", {"status": "FAILED"}),
        "workflows: name + status, by cursor": (
            "/workflows",
            {"status": "FAILED", "name": NAMES[1], "after": p.failed_cursor},
        ),
        "one workflow": (f"/workflows/{p.workflow_id}", {}),
        "dead letters": ("/dead-letters", {}),
    }


async def page_timings(kind: str, store: StateStore, p: Probe, repeat: int) -> list[dict[str, Any]]:
    """Each page rendered by the dashboard's ASGI app, in process."""
    try:
        ui = importlib.import_module("flowkit.ui")
        httpx: Any = importlib.import_module("httpx")
    except ImportError as exc:
        print(f"{kind}: no dashboard pages timed ({exc}); install flowkit[ui] and httpx")
        return []
    app = ui.create_app(store)
    results: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:

        async def get(path: str, query: dict[str, str]) -> None:
            response = await client.get(path, params=query)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path} answered {response.status_code}")

        for what, (path, query) in pages(p).items():
            timing = await timed(repeat, functools.partial(get, path, query))
            results.append({"store": kind, "what": f"page {what}", **timing})
    return results


async def measure(kind: str, store: StateStore, repeat: int) -> list[dict[str, Any]]:
    p = await probe(store)
    results: list[dict[str, Any]] = []
    for what, action in store_reads(store, p).items():
        results.append({"store": kind, "what": f"store {what}", **await timed(repeat, action)})
    return results + await page_timings(kind, store, p, repeat)


def with_verdict(rows_: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows_:
        row["under_300ms"] = max(row["p50_ms"], row["p99_ms"]) < TARGET_MS
    return rows_


# -- the runs -----------------------------------------------------------------------------


async def run_sqlite(count: int, letter_count: int, repeat: int) -> list[dict[str, Any]]:
    made = await templates()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ui.db")
        async with SQLiteStore(path):
            pass  # creates the schema
        start = time.perf_counter()
        seed_sqlite_rows(path, count, made)
        async with SQLiteStore(path) as store:
            await add_letters(store, letter_count)
            seeded = time.perf_counter() - start
            print(f"sqlite: seeded {count:,} workflows in {seeded:.1f} s")
            return await measure("sqlite", store, repeat)


async def run_postgres(
    url: str, count: int, letter_count: int, repeat: int
) -> list[dict[str, Any]]:
    made = await templates()
    schema = f"bench_ui_{uuid.uuid4().hex[:8]}"
    try:
        async with PostgresStore(url, schema=schema) as store:
            start = time.perf_counter()
            await add_letters(store, letter_count)
            await seed_postgres_rows(url, schema, count, made)
            seeded = time.perf_counter() - start
            print(f"postgres: seeded {count:,} workflows in {seeded:.1f} s")
            return await measure("postgres", store, repeat)
    finally:
        asyncpg: Any = importlib.import_module("asyncpg")
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def main(count: int, letter_count: int, repeat: int, postgres: str | None) -> None:
    results = anyio.run(run_sqlite, count, letter_count, repeat)
    if postgres:
        results += anyio.run(run_postgres, postgres, count, letter_count, repeat)
    report(
        "bench_ui",
        with_verdict(results),
        {"workflows": count, "dead_letters": letter_count, "repeat": repeat, "page": PAGE},
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workflows", type=int, default=100_000)
    parser.add_argument("--letters", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--postgres", default=os.environ.get("FLOWKIT_POSTGRES_URL"))
    args = parser.parse_args(argv)
    main(args.workflows, args.letters, args.repeat, args.postgres)


if __name__ == "__main__":
    cli()
