"""Durable throughput on PostgreSQL: flowkit's orchestrator against DBOS Transact.

The 3-step workflow of ``bench_orchestrator`` (each step returns a small
pydantic model), run by flowkit's :class:`~flowkit.orchestration.Orchestrator`
on :class:`~flowkit.stores.PostgresStore`, one workflow after another and from
100 concurrent tasks. Each workflow writes 4 checkpoints (its start with the
first step's, then one per step).

DBOS Transact 3.4 runs the same workflow (``@DBOS.workflow`` calling three
``@DBOS.step``) on its PostgreSQL system database, on the same server, in the
same run, sequentially and from 100 concurrent tasks. Each run gets a schema of
its own for flowkit and a database of its own for DBOS, both created for the run
and dropped afterwards. Target: flowkit >= 10x DBOS concurrent.

Needs a PostgreSQL server: ``--postgres URL`` or ``FLOWKIT_POSTGRES_URL``
(``make bench`` starts one, with ``fsync=off``), and ``asyncpg`` and ``dbos``
importable (the benchmarks' own environment, ``make bench``).

Run: ``python -m benchmarks bench_postgres`` or
``python -m benchmarks.bench_postgres [--postgres URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flowkit.stores import PostgresStore

from ._dbos import DbosWorkflow, dbos_workflow
from ._report import report
from .bench_orchestrator import CHECKPOINTS_PER_WORKFLOW, CONCURRENCY, ThreeSteps, orders, pool

POOL_SIZE = 10


def with_database(url: str, database: str) -> str:
    """``url`` with its database name replaced by ``database``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def server_facts(url: str) -> dict[str, str]:
    asyncpg: Any = importlib.import_module("asyncpg")
    conn = await asyncpg.connect(url)
    try:
        facts = {}
        for setting in ("server_version", "fsync", "synchronous_commit"):
            facts[setting] = str(await conn.fetchval(f"SHOW {setting}"))
        return facts
    finally:
        await conn.close()


async def admin(url: str, statement: str) -> None:
    """Run one statement (outside a transaction) on the server at ``url``."""
    asyncpg: Any = importlib.import_module("asyncpg")
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


# -- flowkit ---------------------------------------------------------------------------------


async def flowkit_run(
    url: str, schema: str, sequential: int, concurrent: int
) -> tuple[float, float, int]:
    """flowkit's workflows/s, sequential and concurrent, in a schema dropped afterwards."""
    try:
        async with (
            PostgresStore(url, schema=schema, max_size=POOL_SIZE) as store,
            ThreeSteps(store=store, concurrency=CONCURRENCY) as saga,
        ):
            seq_work = orders("seq", sequential)
            conc_work = orders("conc", concurrent)

            async def run_seq(i: int) -> None:
                await saga.run(seq_work[i][1], workflow_id=seq_work[i][0])

            async def run_conc(i: int) -> None:
                await saga.run(conc_work[i][1], workflow_id=conc_work[i][0])

            seq = await pool(sequential, 1, run_seq)
            conc = await pool(concurrent, CONCURRENCY, run_conc)
            checkpoints = (await store.load_workflow("seq-0")).version
    finally:
        await admin(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return seq, conc, checkpoints


# -- DBOS ----------------------------------------------------------------------------------------


async def dbos_measure(
    wf: DbosWorkflow, database_url: str, sequential: int, concurrent: int
) -> tuple[float, float, float]:
    """DBOS's workflows/s, sequential and concurrent, and its step rows per workflow."""
    DBOS = wf.DBOS
    DBOS(
        config={
            "name": "bench_postgres",
            "system_database_url": database_url,
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    try:

        async def run_one(i: int) -> None:
            await wf.workflow({"order_id": f"o-{i}", "amount": i})

        seq = await pool(sequential, 1, run_one)
        conc = await pool(concurrent, CONCURRENCY, lambda i: run_one(sequential + i))
    finally:
        DBOS.destroy()
    asyncpg: Any = importlib.import_module("asyncpg")
    conn = await asyncpg.connect(database_url)
    try:
        workflows = await conn.fetchval("SELECT count(*) FROM dbos.workflow_status")
        steps = await conn.fetchval("SELECT count(*) FROM dbos.operation_outputs")
    finally:
        await conn.close()
    return seq, conc, steps / workflows if workflows else 0.0


def dbos_run(
    wf: DbosWorkflow, url: str, database: str, sequential: int, concurrent: int
) -> tuple[float, float, float]:
    """DBOS's figures, in a database of its own, dropped afterwards."""
    asyncio.run(admin(url, f"CREATE DATABASE {database}"))
    try:
        return asyncio.run(dbos_measure(wf, with_database(url, database), sequential, concurrent))
    finally:
        asyncio.run(admin(url, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))


# -- main ----------------------------------------------------------------------------------------


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get("FLOWKIT_POSTGRES_URL"),
        help="postgresql:// URL of the server (default: $FLOWKIT_POSTGRES_URL)",
    )
    parser.add_argument("--sequential", type=int, default=2_000, help="flowkit workflows")
    parser.add_argument("--concurrent", type=int, default=5_000, help="flowkit workflows")
    parser.add_argument("--dbos-sequential", type=int, default=200, help="DBOS workflows")
    parser.add_argument("--dbos-concurrent", type=int, default=600, help="DBOS workflows")
    parser.add_argument("--repeat", type=int, default=3, help="median of this many runs")
    parser.add_argument("--no-dbos", action="store_true", help="measure flowkit only")
    args = parser.parse_args(argv)
    if not args.postgres:
        parser.error("give --postgres URL or set FLOWKIT_POSTGRES_URL (make bench starts a server)")
    url: str = args.postgres

    wf: DbosWorkflow | None = None
    notes: dict[str, Any] = {
        "backend": "asyncio",
        "workflow": "3 local steps, each returning a small pydantic model",
        "concurrency": CONCURRENCY,
        "flowkit_pool_size": POOL_SIZE,
        "dbos_pool_size": "its default (20)",
        "statistic": f"median of {args.repeat}",
        "targets": {"times_dbos_concurrent": 10},
    }
    if not args.no_dbos:
        try:
            wf = dbos_workflow()
        except ImportError:
            notes["dbos"] = "not installed: run in the benchmarks' environment (make bench)"
    server = asyncio.run(server_facts(url))
    notes["server"] = {
        **server,
        "note": "fsync=off (as make bench starts it, and as DBOS's reference figures on "
        "PostgreSQL were measured): commits are not forced to disk"
        if server["fsync"] == "off"
        else "fsync=on: commits are forced to disk",
    }

    seq, conc, dbos_seq, dbos_conc, dbos_steps = [], [], [], [], []
    checkpoints = CHECKPOINTS_PER_WORKFLOW
    for _ in range(args.repeat):
        tag = uuid.uuid4().hex[:12]
        s, c, checkpoints = asyncio.run(
            flowkit_run(url, f"flowkit_bench_{tag}", args.sequential, args.concurrent)
        )
        seq.append(s)
        conc.append(c)
        if wf is not None:
            s, c, steps = dbos_run(
                wf, url, f"flowkit_bench_dbos_{tag}", args.dbos_sequential, args.dbos_concurrent
            )
            dbos_seq.append(s)
            dbos_conc.append(c)
            dbos_steps.append(steps)

    rows: list[dict[str, Any]] = [
        {
            "measure": "flowkit 3-step workflows/s, sequential, PostgresStore",
            "value": statistics.median(seq),
            "unit": "/s",
        },
        {
            "measure": f"flowkit 3-step workflows/s, {CONCURRENCY} concurrent, PostgresStore",
            "value": statistics.median(conc),
            "unit": "/s",
        },
        {"measure": "flowkit checkpoints per workflow", "value": checkpoints, "unit": "writes"},
    ]
    if wf is not None:
        rows += [
            {
                "measure": "DBOS 3-step workflows/s, sequential, PostgreSQL",
                "value": statistics.median(dbos_seq),
                "unit": "/s",
            },
            {
                "measure": f"DBOS 3-step workflows/s, {CONCURRENCY} concurrent, PostgreSQL",
                "value": statistics.median(dbos_conc),
                "unit": "/s",
            },
            {
                "measure": "DBOS step-output rows per workflow (plus its workflow_status row)",
                "value": statistics.median(dbos_steps),
                "unit": "rows",
            },
            {
                "measure": "flowkit / DBOS, sequential",
                "value": statistics.median(seq) / statistics.median(dbos_seq),
                "unit": "x",
            },
            {
                "measure": f"flowkit / DBOS, {CONCURRENCY} concurrent",
                "value": statistics.median(conc) / statistics.median(dbos_conc),
                "unit": "x",
            },
        ]
    report("postgres", rows, notes)


if __name__ == "__main__":
    cli()
