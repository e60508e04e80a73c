"""An application for the command-line tests: a bus and an orchestrator on a SQLite file
named by the FLOWKIT_CLI_DB environment variable."""

from __future__ import annotations

import os

from flowkit import Choreography, Event, NonRetryableError, Orchestrator, Step, StepContext
from flowkit.stores import SQLiteStore
from flowkit.transports import InMemoryTransport

DB = os.environ.get("FLOWKIT_CLI_DB", "flowkit-cli-test.db")


class Ping(Event):
    n: int


bus = Choreography(InMemoryTransport(), store=SQLiteStore(DB))


@bus.on(Ping, service="pong", name="answer")
async def answer(event: Ping) -> None:
    pass


async def ok(ctx: StepContext, ping: Ping) -> int:
    return ping.n


async def undo(ctx: StepContext, ping: Ping) -> None:
    pass


async def refuse(ctx: StepContext, ping: Ping) -> int:
    if ping.n < 0:
        raise NonRetryableError("negative")
    return ping.n


class PingSaga(Orchestrator[Ping]):
    steps = (Step(ok, compensate=undo), Step(refuse))


orders = PingSaga(store=SQLiteStore(DB))
not_a_bus = 42
