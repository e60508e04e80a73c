"""An application for the command-line tests: buses and an orchestrator on a SQLite
file named by the FLOWKIT_CLI_DB environment variable.

``StandInBroker`` is an in-memory transport that declares it crosses processes,
so that the commands which need a broker can be tested in one process; the
messages it carries stay in this process all the same.
"""

from __future__ import annotations

import os
from typing import Self

from flowkit import (
    Choreography,
    Command,
    Event,
    NonRetryableError,
    Orchestrator,
    Remote,
    Step,
    StepContext,
)
from flowkit.stores import MemoryStore, SQLiteStore
from flowkit.testing import FaultyTransport
from flowkit.transports import Capabilities, InMemoryTransport

DB = os.environ.get("FLOWKIT_CLI_DB", "flowkit-cli-test.db")


class StandInBroker(InMemoryTransport):
    """An in-memory transport that says it crosses processes, standing in for a broker."""

    @property
    def capabilities(self) -> Capabilities:
        """``crosses_processes`` is True."""
        return Capabilities(crosses_processes=True)


class OpenCountingTransport(InMemoryTransport):
    """An in-memory transport that counts how often it was opened."""

    opened = 0

    async def __aenter__(self) -> Self:
        self.opened += 1
        return await super().__aenter__()


class Ping(Event):
    n: int


async def answer(event: Ping) -> None:
    pass


# On the in-memory transport: inspection works, replay and worker refuse.
bus = Choreography(InMemoryTransport(), store=SQLiteStore(DB))
bus.on(Ping, service="pong", name="answer")(answer)

# On a stand-in broker whose publishes a test can make fail.
broker = FaultyTransport(StandInBroker())
broker_bus = Choreography(broker, store=SQLiteStore(DB))
broker_bus.on(Ping, service="pong", name="answer")(answer)

storeless_bus = Choreography(StandInBroker())
storeless_bus.on(Ping, service="pong", name="answer")(answer)
memory_bus = Choreography(StandInBroker(), store=MemoryStore())
memory_bus.on(Ping, service="pong", name="answer")(answer)
idle_bus = Choreography(StandInBroker())


async def ok(ctx: StepContext, ping: Ping) -> int:
    return ping.n


async def undo(ctx: StepContext, ping: Ping) -> None:
    pass


async def refuse(ctx: StepContext, ping: Ping) -> int:
    if ping.n < 0:
        raise NonRetryableError(
            "negative\nFor further information visit https://errors.pydantic.dev/2/v/x"
        )
    return ping.n


class PingSaga(Orchestrator[Ping]):
    steps = (Step(ok, compensate=undo), Step(refuse))


class Pong(Event):
    n: int


class Echo(Command[Pong]):
    n: int


class EchoSaga(Orchestrator[Ping]):
    steps = (Remote(Echo),)


orders = PingSaga(store=SQLiteStore(DB))
remote_transport = OpenCountingTransport()
remote_orders = EchoSaga(store=SQLiteStore(DB), transport=remote_transport)
memory_orders = PingSaga(store=MemoryStore())
not_a_bus = 42
