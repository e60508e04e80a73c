from __future__ import annotations

import anyio
import pytest

from flowkit import Choreography, Context, Event, Retry, TransportError
from flowkit.stores import Claim, MemoryStore
from flowkit.testing import run_in_memory
from flowkit.transports import InMemoryTransport

pytestmark = pytest.mark.anyio


class OrderPlaced(Event):
    order_id: str


class ConfirmationSent(Event):
    order_id: str


class _NeverOpened(InMemoryTransport):
    """A transport that fails if used: stands for a broker the test must not touch."""

    async def __aenter__(self) -> _NeverOpened:
        raise AssertionError("the bus's own transport was used")


def make_bus() -> Choreography:
    bus = Choreography(_NeverOpened())

    @bus.on(
        OrderPlaced,
        service="notification",
        emits=[ConfirmationSent],
        retry=Retry(attempts=3, backoff=0.001),
    )
    async def confirm(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(ConfirmationSent(order_id=event.order_id))

    return bus


async def test_the_bus_runs_in_memory_and_its_own_transport_is_restored() -> None:
    bus = make_bus()
    original = bus.transport
    async with run_in_memory(bus) as harness:
        await bus.publish(OrderPlaced(order_id="o-1"))
        (sent,) = await harness.wait_for(ConfirmationSent)
        assert sent.order_id == "o-1"
        harness.assert_published(OrderPlaced, order_id="o-1")
        harness.assert_not_published(Event)  # no event of the base type itself
    assert bus.transport is original
    assert not bus.running


async def test_wait_for_times_out_with_what_was_published() -> None:
    bus = make_bus()
    async with run_in_memory(bus) as harness:
        await bus.publish(OrderPlaced(order_id="o-1"))
        with pytest.raises(TimeoutError, match=r"2 ConfirmationSent.*OrderPlaced"):
            await harness.wait_for(ConfirmationSent, count=2, timeout=0.1)


async def test_assertions_fail_with_a_useful_message() -> None:
    bus = make_bus()
    async with run_in_memory(bus) as harness:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await harness.drain()
        with pytest.raises(AssertionError, match="no ConfirmationSent with"):
            harness.assert_published(ConfirmationSent, order_id="other")
        with pytest.raises(AssertionError, match="1 OrderPlaced"):
            harness.assert_not_published(OrderPlaced)


async def test_fail_handler_fails_it_n_times_then_lets_it_run() -> None:
    bus = make_bus()
    async with run_in_memory(bus) as harness:
        harness.fail_handler("notification:make_bus.<locals>.confirm", times=2)
        await bus.publish(OrderPlaced(order_id="o-1"))
        await harness.wait_for(ConfirmationSent)
        assert await harness.dead_letters() == []


async def test_fail_handler_beyond_the_retries_dead_letters() -> None:
    bus = make_bus()
    (spec,) = bus.handlers
    async with run_in_memory(bus) as harness:
        harness.fail_handler(spec.func, times=3, error=ValueError("boom"))
        await bus.publish(OrderPlaced(order_id="o-1"))
        await harness.drain()
        (letter,) = await harness.dead_letters()
        assert letter.error_type == "ValueError"
        harness.assert_not_published(ConfirmationSent)
    with pytest.raises(LookupError):
        harness.fail_handler("nope")


async def test_drain_waits_for_delayed_retries() -> None:
    bus = Choreography(_NeverOpened())
    runs: list[int] = []

    @bus.on(OrderPlaced, service="slow", retry=Retry(attempts=2, backoff=0.05, jitter=0))
    async def flaky(event: OrderPlaced, ctx: Context) -> None:
        runs.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first time fails")

    async with run_in_memory(bus) as harness:
        await bus.publish(OrderPlaced(order_id="o"))
        await harness.drain()
        assert runs == [1, 2]


async def test_duplicates_are_handled_once_with_the_harness_store() -> None:
    bus = Choreography(_NeverOpened())
    handled: list[str] = []

    @bus.on(OrderPlaced, service="seller")
    async def prepare(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    store = MemoryStore()
    async with run_in_memory(bus, store=store) as harness:
        harness.faults.duplicate_next("OrderPlaced", times=1)
        await bus.publish(OrderPlaced(order_id="o"))
        await harness.drain()
    assert handled == ["o"]


async def test_a_failed_publish_raises_transport_error() -> None:
    bus = make_bus()
    async with run_in_memory(bus) as harness:
        harness.faults.fail_next_publish("OrderPlaced")
        with pytest.raises(TransportError):
            await bus.publish(OrderPlaced(order_id="o"))
        await bus.publish(OrderPlaced(order_id="o"))
        await harness.wait_for(ConfirmationSent)


async def test_fixtures_are_open(
    memory_transport: InMemoryTransport, memory_store: MemoryStore
) -> None:
    sub = await memory_transport.subscribe("t", "g")
    await memory_transport.publish("t", b"x")
    with anyio.fail_after(1):
        delivery = await sub.receive()
    assert delivery.body == b"x"
    await delivery.ack()
    assert await memory_store.inbox_claim("c", "m", lease=60) is Claim.CLAIMED


async def test_the_memory_bus_fixture(memory_bus: Choreography) -> None:
    seen: list[str] = []

    @memory_bus.on(OrderPlaced, service="s")
    async def handle(event: OrderPlaced) -> None:
        seen.append(event.order_id)

    async with run_in_memory(memory_bus) as harness:
        await memory_bus.publish(OrderPlaced(order_id="o"))
        await harness.drain()
    assert seen == ["o"]
