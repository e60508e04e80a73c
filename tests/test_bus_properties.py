"""Properties of the bus over random publishes, failures, duplicates and dropped consumers:
every event ends handled by every group or dead-lettered; none is lost, and with a
store none is handled twice."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowkit import Choreography, Context, Event, Retry
from flowkit.stores import MemoryStore
from flowkit.testing import run_in_memory
from flowkit.transports import InMemoryTransport


class Ping(Event):
    n: int


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
    }
)


async def run_plan(plan: dict[str, object]) -> None:
    events = int(plan["events"])  # type: ignore[call-overload]
    attempts = int(plan["attempts"])  # type: ignore[call-overload]
    failures: list[int] = plan["failures"]  # type: ignore[assignment]
    duplicates = {d % events for d in plan["duplicates"]}  # type: ignore[attr-defined]
    drops = {d % events for d in plan["drops"]}  # type: ignore[attr-defined]
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
                raise RuntimeError(f"planned failure {calls[key]}")
            handled[key] += 1

    async with run_in_memory(bus, store=MemoryStore()) as harness:
        for n in range(events):
            if n in duplicates:
                harness.faults.duplicate_next("Ping")
            await bus.publish(Ping(n=n))
            if n in drops:
                await harness.faults.drop_consumers(topic="Ping")
        await harness.drain(timeout=10)
        letters = await harness.dead_letters()

    dead = Counter((letter.consumer.split(":")[0], _n(letter.body)) for letter in letters)
    for group_index, group in enumerate(GROUPS):
        for n in range(events):
            key = (group, n)
            # never lost, never both, never twice
            assert handled[key] + dead[key] == 1, (key, handled[key], dead[key])
            if not drops and not duplicates:  # copies share the planned failures
                expected_dead = failures[group_index * 8 + n] >= attempts
                assert dead[key] == int(expected_dead), key


def _n(body: bytes) -> int:
    from flowkit._events import decode

    return decode(body, Ping)[1].n


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
