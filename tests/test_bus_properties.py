"""Properties of the bus over random publishes, failures (of any exception type,
BaseException subclasses included), poisoned payloads, duplicates and dropped
consumers: every event ends handled by every group or dead-lettered; none is lost,
and with a store none is handled twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import field_validator

from flowkit import Choreography, Context, Event, Retry
from flowkit.stores import MemoryStore
from flowkit.testing import run_in_memory
from flowkit.transports import InMemoryTransport


class Unusual(BaseException):
    """A BaseException of the user's own."""


# What a handler raises when a planned failure hits it; only RuntimeError is retried.
FAILURES: tuple[type[BaseException], ...] = (
    RuntimeError,
    KeyboardInterrupt,
    SystemExit,
    Unusual,
    asyncio.CancelledError,  # raised by hand, not a cancellation of the bus
)
# What a poisoned payload's validator raises.
POISONS: tuple[type[Exception], ...] = (KeyError, ZeroDivisionError, ValueError, RecursionError)
VALIDATING = {"on": False}


class Ping(Event):
    n: int
    poison: int = -1

    @field_validator("poison")
    @classmethod
    def _poisoned(cls, value: int) -> int:
        if VALIDATING["on"] and value >= 0:
            raise POISONS[value]("poisoned")
        return value


GROUPS = ("a", "b", "c")

plans = st.fixed_dictionaries(
    {
        "events": st.integers(min_value=1, max_value=8),
        "attempts": st.integers(min_value=1, max_value=4),
        # how many times each (group, event) fails before it succeeds
        "failures": st.lists(st.integers(min_value=0, max_value=5), min_size=24, max_size=24),
        "duplicates": st.lists(st.integers(min_value=0, max_value=7), max_size=4),
        "drops": st.lists(st.integers(min_value=0, max_value=7), max_size=3),
        "concurrency": st.integers(min_value=1, max_value=3),
        # which exception each (group, event) raises when it fails
        "kinds": st.lists(
            st.integers(min_value=0, max_value=len(FAILURES) - 1), min_size=24, max_size=24
        ),
        # events whose payload fails validation, and how
        "poisoned": st.dictionaries(
            st.integers(min_value=0, max_value=7),
            st.integers(min_value=0, max_value=len(POISONS) - 1),
            max_size=3,
        ),
    }
)


async def run_plan(plan: dict[str, object]) -> None:
    events = int(plan["events"])  # type: ignore[call-overload]
    attempts = int(plan["attempts"])  # type: ignore[call-overload]
    failures: list[int] = plan["failures"]  # type: ignore[assignment]
    duplicates = {d % events for d in plan["duplicates"]}  # type: ignore[attr-defined]
    drops = {d % events for d in plan["drops"]}  # type: ignore[attr-defined]
    kinds: list[int] = plan["kinds"]  # type: ignore[assignment]
    poisoned: dict[int, int] = plan["poisoned"]  # type: ignore[assignment]
    calls: Counter[tuple[str, int]] = Counter()
    handled: Counter[tuple[str, int]] = Counter()
    bus = Choreography(InMemoryTransport())

    for index, group in enumerate(GROUPS):

        @bus.on(
            Ping,
            service=group,
            name="h",
            retry=Retry(attempts=attempts, backoff=0.0005, jitter=0),
            concurrency=int(plan["concurrency"]),  # type: ignore[call-overload]
        )
        async def handle(event: Ping, ctx: Context, group: str = group, index: int = index) -> None:
            key = (group, event.n)
            calls[key] += 1
            if calls[key] <= failures[index * 8 + event.n]:
                raise FAILURES[kinds[index * 8 + event.n]](f"planned failure {calls[key]}")
            handled[key] += 1

    pings = [Ping(n=n, poison=poisoned.get(n, -1)) for n in range(events)]
    VALIDATING["on"] = True
    try:
        async with run_in_memory(bus, store=MemoryStore()) as harness:
            for n, ping in enumerate(pings):
                if n in duplicates:
                    harness.faults.duplicate_next("Ping")
                await bus.publish(ping)
                if n in drops:
                    await harness.faults.drop_consumers(topic="Ping")
            await harness.drain(timeout=10)
            letters = await harness.dead_letters()
    finally:
        VALIDATING["on"] = False

    dead = Counter((letter.consumer.split(":")[0], _n(letter.body)) for letter in letters)
    for group_index, group in enumerate(GROUPS):
        for n in range(events):
            key = (group, n)
            # never lost, never both, never twice
            assert handled[key] + dead[key] == 1, (key, handled[key], dead[key])
            if n in poisoned:
                assert dead[key] == 1 and calls[key] == 0, key
            elif not drops and not duplicates:  # copies share the planned failures
                planned = failures[group_index * 8 + n]
                retried = FAILURES[kinds[group_index * 8 + n]] is RuntimeError
                expected_dead = planned >= attempts if retried else planned >= 1
                assert dead[key] == int(expected_dead), key


def _n(body: bytes) -> int:
    return int(json.loads(body)["payload"]["n"])


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans)
def test_every_event_is_handled_once_or_dead_lettered(
    backend: str, plan: dict[str, object]
) -> None:
    anyio.run(run_plan, plan, backend=backend)
