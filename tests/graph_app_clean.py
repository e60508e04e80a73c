"""Flows without a lint finding: two services answering each other's events."""

from __future__ import annotations

from flowkit import Choreography, Event
from flowkit.transports import InMemoryTransport


class Ping(Event):
    n: int


class Pong(Event):
    n: int


bus = Choreography(InMemoryTransport())


@bus.on(Ping, service="left", emits=[Pong], name="answer-ping")
async def answer_ping(event: Ping) -> None:
    pass


@bus.on(Pong, service="right", emits=[Ping], name="answer-pong")
async def answer_pong(event: Pong) -> None:
    pass
