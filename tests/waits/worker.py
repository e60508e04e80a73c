"""An orchestrator process whose workflows wait (timers, events, signals), to be
killed with SIGKILL or stopped with SIGTERM at any moment; and a process that
publishes an event or sends a signal.

Usage::

    python worker.py serve --tag p1 --store STORE [--schema SCHEMA] --ledger LEDGER_DB \
        --run timer,event [--transport memory|redis://...] [--prefix PREFIX] \
        [--backend asyncio|trio] [--wait-poll 1.0] [--hold]
    python worker.py send --store STORE [--schema SCHEMA] \
        [--transport redis://... --prefix PREFIX --publish ORDER_ID NOTE] \
        [--signal KIND WORKFLOW_ID NOTE]

``STORE`` is a SQLite file path, or a PostgreSQL URL (then ``--schema`` names the
schema).

``serve`` enters ``async with`` of the orchestrators of the kinds named by
``--run`` (see :data:`SAGAS`; owner ``TAG:PID``), which take up their due
waiting workflows, prints ``ready OWNER TIME`` (``TIME``: ``time.time()`` once
its imports were done, before it entered them), then obeys the commands it
reads, one a line, on its standard input. With ``--hold``, it first prints
``loaded`` once its imports are done and enters its orchestrators only when it
reads ``go`` (``TIME`` is then when it read it): a process started ahead, whose
orchestrators start at a given moment. The commands:

* ``start KIND FIRST COUNT``: starts workflows ``KIND-FIRST`` to
  ``KIND-{FIRST+COUNT-1}`` (numbers of four digits; the order id of ``KIND-n`` is
  ``order-KIND-n``) with ``start()``, then prints ``started``;
* ``publish ORDER_ID NOTE``: publishes ``SellerAccepted(order_id, note)`` on a bus
  of its own on ``--transport`` (the in-memory transport reaches only this
  process), then prints ``sent TIME`` (when it published, ``time.time()``).

SIGTERM, or the end of its input, makes it leave ``async with`` (its runs get
no grace) and print ``stopped``.

``send`` publishes one ``SellerAccepted`` on a bus of its own, and/or sends one
``Approve`` signal through an orchestrator that recovers nothing
(``recover=False``), and prints ``sent TIME`` for each (``TIME``: just before it
was sent) and then ``woke True|False`` for the signal.

Every step and compensation writes a row to the ledger, a SQLite database of
its own shared by every process, as it begins: the workflow, the step, whether
it compensates, the process, ``time.time()``, and for ``b`` the ``note`` of the
event or signal its wait took.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel

from flowkit import Choreography, Event, Message
from flowkit.orchestration import (
    Orchestrator,
    Sleep,
    Step,
    StepContext,
    WaitForEvent,
    WaitForSignal,
)
from flowkit.stores import SQLiteStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from flowkit.stores import StateStore
    from flowkit.transports import Transport

TIMER = 2.5
"""Seconds the timer workflows sleep between ``a`` and ``b``."""
EVENT_TIMEOUT = 120.0
"""Seconds the event and signal waits of ``event`` and ``signal`` workflows wait
(longer than any test)."""
TIMEOUT = 2.0
"""Seconds the signal wait of ``timeout`` workflows waits before it runs out."""

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    compensating INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    tag TEXT NOT NULL,
    t REAL NOT NULL,
    payload TEXT
);
"""


def open_ledger(path: str) -> sqlite3.Connection:
    """The ledger database (WAL, waiting up to 30 s for another writer), created
    if missing."""
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(LEDGER_SCHEMA)
    return db


class Ledger:
    """Where the steps of this process record that they run."""

    def __init__(self, path: str, tag: str) -> None:
        self.db = open_ledger(path)
        self.tag = tag
        self.pid = os.getpid()

    def record(self, ctx: StepContext, payload: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO ledger (workflow, step, compensating, pid, tag, t, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                ctx.workflow_id,
                ctx.step,
                int(ctx.compensating),
                self.pid,
                self.tag,
                time.time(),
                payload,
            ),
        )


LEDGER: Ledger | None = None


def ledger() -> Ledger:
    assert LEDGER is not None, "the ledger is not open"
    return LEDGER


class Order(BaseModel):
    order_id: str


class SellerAccepted(Event, correlate_by="order_id"):
    order_id: str
    note: str


class Approve(Message):
    note: str


async def a(ctx: StepContext, order: Order) -> str:
    ledger().record(ctx)
    return order.order_id


async def undo_a(ctx: StepContext, order: Order) -> None:
    ledger().record(ctx)


async def c(ctx: StepContext, order: Order) -> str:
    ledger().record(ctx)
    return order.order_id


async def undo_c(ctx: StepContext, order: Order) -> None:
    ledger().record(ctx)


async def b(ctx: StepContext, order: Order) -> None:
    """Records the ``note`` of the event or signal its workflow's wait took."""
    taken: Any = ctx.results.get("wait_for_seller_accepted") or ctx.results.get("wait_for_approve")
    ledger().record(ctx, None if taken is None else taken.note)


class TimerSaga(Orchestrator[Order]):
    name = "WaitsTimer"
    steps = (Step(a, compensate=undo_a), Sleep(TIMER), Step(b))


class LateTimerSaga(TimerSaga):
    """The timer workflows that no process runs when they are due."""

    name = "WaitsLateTimer"


class EventSaga(Orchestrator[Order]):
    name = "WaitsEvent"
    steps = (
        Step(a, compensate=undo_a),
        WaitForEvent(SellerAccepted, timeout=EVENT_TIMEOUT),
        Step(b),
    )


class SignalSaga(Orchestrator[Order]):
    name = "WaitsSignal"
    steps = (Step(a, compensate=undo_a), WaitForSignal(Approve, timeout=EVENT_TIMEOUT), Step(b))


class TimeoutSaga(Orchestrator[Order]):
    name = "WaitsTimeout"
    steps = (
        Step(a, compensate=undo_a),
        Step(c, compensate=undo_c),
        WaitForSignal(Approve, timeout=TIMEOUT),
        Step(b),
    )


SAGAS: dict[str, type[Orchestrator[Order]]] = {
    "timer": TimerSaga,
    "late": LateTimerSaga,
    "event": EventSaga,
    "signal": SignalSaga,
    "timeout": TimeoutSaga,
}
"""The orchestrators, by the kind of their workflows (the prefix of their ids)."""


def workflow_id(kind: str, number: int) -> str:
    return f"{kind}-{number:04d}"


def order_id(kind: str, number: int) -> str:
    return f"order-{workflow_id(kind, number)}"


def open_store(location: str, schema: str | None, tag: str) -> StateStore:
    """The store at ``location``; PostgreSQL connections are named after the process."""
    if location.startswith(("postgresql://", "postgres://")):
        from flowkit.stores._postgres import PostgresStore

        return PostgresStore(
            location,
            schema=schema or "flowkit",
            server_settings={"application_name": f"flowkit-waits-{tag}"},
        )
    return SQLiteStore(location)


def open_transport(location: str | None, prefix: str) -> Transport | None:
    if location is None:
        return None
    if location == "memory":
        from flowkit.transports import InMemoryTransport

        return InMemoryTransport()
    from flowkit.transports import RedisTransport

    redis: Transport = RedisTransport(location, prefix=prefix)
    return redis


async def lines() -> AsyncIterator[str]:
    """The lines of the standard input, read without blocking the event loop."""
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)
    pending = b""
    while True:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            return
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode().strip()


async def obey(
    commands: AsyncIterator[str],
    orchestrators: dict[str, Orchestrator[Order]],
    bus: Choreography | None,
) -> None:
    """Run the commands until they end."""
    async for line in commands:
        match line.split():
            case ["start", kind, first, count]:
                saga = orchestrators[kind]
                for n in range(int(first), int(first) + int(count)):
                    await saga.start(
                        Order(order_id=order_id(kind, n)), workflow_id=workflow_id(kind, n)
                    )
                print("started", flush=True)
            case ["publish", order, note]:
                assert bus is not None, "publish needs --transport"
                sent = time.time()
                await bus.publish(SellerAccepted(order_id=order, note=note))
                print("sent", repr(sent), flush=True)
            case []:
                pass
            case _:
                raise SystemExit(f"unknown command {line!r}")


async def serve(args: argparse.Namespace) -> None:
    began = time.time()
    owner = f"{args.tag}:{os.getpid()}"
    global LEDGER
    LEDGER = Ledger(args.ledger, args.tag)
    store = open_store(args.store, args.schema, args.tag)
    transport = open_transport(args.transport, args.prefix)
    kinds = [kind for kind in args.run.split(",") if kind]
    commands = lines()
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        if args.hold:
            print("loaded", flush=True)
            if await anext(commands, None) != "go":
                return
            began = time.time()
        async with AsyncExitStack() as stack:
            orchestrators = {
                kind: await stack.enter_async_context(
                    SAGAS[kind](
                        store,
                        transport=transport if kind == "event" else None,
                        owner=owner,
                        stop_grace=0.0,
                        wait_poll=args.wait_poll,
                    )
                )
                for kind in kinds
            }
            bus = None
            if transport is not None:
                bus = Choreography(transport)
                await stack.enter_async_context(bus.run(services=[]))
            print("ready", owner, repr(began), flush=True)
            async with anyio.create_task_group() as tg:

                async def stop_on_sigterm() -> None:
                    async for _ in signals:
                        tg.cancel_scope.cancel()

                tg.start_soon(stop_on_sigterm)
                await obey(commands, orchestrators, bus)
                tg.cancel_scope.cancel()
    print("stopped", flush=True)


async def send(args: argparse.Namespace) -> None:
    store = open_store(args.store, args.schema, "send")
    async with AsyncExitStack() as stack:
        if args.publish:
            transport = open_transport(args.transport, args.prefix)
            assert transport is not None, "--publish needs --transport"
            bus = Choreography(transport)
            await stack.enter_async_context(bus.run(services=[]))
            order, note = args.publish
            sent = time.time()
            await bus.publish(SellerAccepted(order_id=order, note=note))
            print("sent", repr(sent), flush=True)
        if args.signal:
            kind, workflow, note = args.signal
            reader = await stack.enter_async_context(SAGAS[kind](store, recover=False))
            sent = time.time()
            woke = await reader.signal(workflow, Approve(note=note))
            print("sent", repr(sent), flush=True)
            print("woke", woke, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "send"):
        command = commands.add_parser(name)
        command.add_argument("--store", required=True)
        command.add_argument("--schema")
        command.add_argument("--transport")
        command.add_argument("--prefix", default="flowkit")
        if name == "serve":
            command.add_argument("--tag", required=True)
            command.add_argument("--ledger", required=True)
            command.add_argument("--run", required=True)
            command.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
            command.add_argument("--wait-poll", type=float, default=1.0)
            command.add_argument("--hold", action="store_true")
        else:
            command.add_argument("--publish", nargs=2, metavar=("ORDER_ID", "NOTE"))
            command.add_argument("--signal", nargs=3, metavar=("KIND", "WORKFLOW_ID", "NOTE"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(created).3f %(process)d %(name)s %(levelname)s %(message)s",
    )
    if arguments.command == "serve":
        anyio.run(serve, arguments, backend=arguments.backend)
    else:
        anyio.run(send, arguments)
