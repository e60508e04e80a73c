from __future__ import annotations

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from flowkit._errors import TransportClosed, TransportError
from flowkit.testing._faults import FaultyTransport
from flowkit.testing._transport_suite import check_transport
from flowkit.transports._base import Transport
from flowkit.transports._memory import InMemoryTransport

pytestmark = pytest.mark.anyio


def test_is_a_transport() -> None:
    assert isinstance(FaultyTransport(InMemoryTransport()), Transport)


async def test_without_faults_it_passes_the_conformance_suite() -> None:
    await check_transport(lambda: FaultyTransport(InMemoryTransport()), delay_tolerance=0.05)


async def test_drop_consumers_gives_back_unacked_deliveries() -> None:
    async with FaultyTransport(InMemoryTransport()) as transport:
        victim = await transport.subscribe("t", "g1")
        other_group = await transport.subscribe("t", "g2")
        other_topic = await transport.subscribe("u", "g1")
        await transport.publish("t", b"m", {"k": "v"})
        held = await victim.receive()

        assert await transport.drop_consumers(topic="t", group="g1") == 1
        assert transport.dropped == 1
        with pytest.raises(TransportClosed):
            await victim.receive()
        await held.ack()  # a dead consumer cannot ack: the message comes back

        replacement = await transport.subscribe("t", "g1")
        with anyio.fail_after(1):
            again = await replacement.receive()
        assert (again.body, dict(again.headers), again.attempt) == (b"m", {"k": "v"}, 2)
        with anyio.fail_after(1):
            assert (await other_group.receive()).attempt == 1
        await transport.publish("u", b"still here")
        with anyio.fail_after(1):
            assert (await other_topic.receive()).body == b"still here"


async def test_drop_consumers_wakes_blocked_receivers() -> None:
    async with FaultyTransport(InMemoryTransport()) as transport:
        subscription = await transport.subscribe("t", "g")
        outcomes: list[str] = []

        async def receive() -> None:
            with pytest.raises(TransportClosed):
                await subscription.receive()
            outcomes.append("closed")

        with anyio.fail_after(1):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                tg.start_soon(receive)
                await wait_all_tasks_blocked()
                assert await transport.drop_consumers() == 1
        assert outcomes == ["closed", "closed"]


async def test_drop_consumers_filters() -> None:
    async with FaultyTransport(InMemoryTransport()) as transport:
        for topic in ("t", "u"):
            for group in ("g1", "g2"):
                await transport.subscribe(topic, group)
        assert await transport.drop_consumers(group="g2") == 2
        assert await transport.drop_consumers(topic="t", group="g2") == 0
        assert await transport.drop_consumers(topic="t") == 1
        assert await transport.drop_consumers() == 1
        assert transport.dropped == 4


async def test_closed_subscription_is_not_dropped() -> None:
    async with FaultyTransport(InMemoryTransport()) as transport:
        async with await transport.subscribe("t", "g"):
            pass
        assert await transport.drop_consumers() == 0


async def test_duplicate_next() -> None:
    async with FaultyTransport(InMemoryTransport()) as transport:
        subscription = await transport.subscribe("t", "g")
        transport.duplicate_next("t", times=2)
        transport.duplicate_next("other")
        for body in (b"1", b"2", b"3"):
            await transport.publish("t", body)
        got = []
        with anyio.move_on_after(0.05):
            while True:
                delivery = await subscription.receive()
                got.append((delivery.body, delivery.attempt))
                await delivery.ack()
        assert got == [(b"1", 1), (b"1", 1), (b"2", 1), (b"2", 1), (b"3", 1)]
        assert (transport.published, transport.duplicated) == (3, 2)


async def test_delay_next() -> None:
    delay = 0.1
    async with FaultyTransport(InMemoryTransport()) as transport:
        first = await transport.subscribe("t", "g1")
        second = await transport.subscribe("t", "g2")
        transport.delay_next("t", delay)
        start = anyio.current_time()
        await transport.publish("t", b"late", {"k": "v"})
        await transport.publish("t", b"on time")
        assert anyio.current_time() - start < delay / 2, "the publish itself does not wait"
        for subscription in (first, second):
            with anyio.fail_after(1):
                on_time = await subscription.receive()
            assert on_time.body == b"on time"
            await on_time.ack()
        for subscription in (first, second):
            with anyio.fail_after(1):
                late = await subscription.receive()
            assert anyio.current_time() - start >= delay
            assert (late.body, dict(late.headers), late.attempt) == (b"late", {"k": "v"}, 1)
            await late.nack()
            again = await subscription.receive()
            assert (again.body, again.attempt) == (b"late", 2)
            await again.ack()
        assert (transport.published, transport.delayed) == (2, 1)


async def test_delay_next_only_delays_the_next_message() -> None:
    async with FaultyTransport(InMemoryTransport()) as transport:
        subscription = await transport.subscribe("t", "g")
        transport.delay_next("t", 0.0)
        transport.delay_next("t", 10.0)
        await transport.publish("t", b"due at once")
        await transport.publish("t", b"held")
        await transport.publish("t", b"not delayed")
        with anyio.fail_after(1):
            assert (await subscription.receive()).body == b"due at once"
            assert (await subscription.receive()).body == b"not delayed"
        with anyio.move_on_after(0.05):
            await subscription.receive()
            pytest.fail("the held message arrived before its delay")


async def test_fail_next_publish() -> None:
    async with FaultyTransport(InMemoryTransport()) as transport:
        subscription = await transport.subscribe("t", "g")
        transport.fail_next_publish("t", times=2)
        await transport.publish("other", b"not failed")
        for _ in range(2):
            with pytest.raises(TransportError, match="injected"):
                await transport.publish("t", b"lost")
        await transport.publish("t", b"delivered")
        with anyio.fail_after(1):
            assert (await subscription.receive()).body == b"delivered"
        assert (transport.failed, transport.published) == (2, 2)


async def test_fail_next_publish_any_topic_with_an_error() -> None:
    async with FaultyTransport(InMemoryTransport()) as transport:
        transport.fail_next_publish(error=ConnectionResetError("reset"))
        with pytest.raises(ConnectionResetError, match="reset"):
            await transport.publish("whatever", b"x")
        await transport.publish("whatever", b"x")
        assert transport.failed == 1


def test_fault_arguments_are_checked() -> None:
    transport = FaultyTransport(InMemoryTransport())
    with pytest.raises(ValueError, match="times"):
        transport.duplicate_next("t", times=0)
    with pytest.raises(ValueError, match="times"):
        transport.fail_next_publish(times=0)
    with pytest.raises(ValueError, match="seconds"):
        transport.delay_next("t", -1)


async def test_enters_and_closes_the_wrapped_transport() -> None:
    inner = InMemoryTransport()
    transport = FaultyTransport(inner)
    assert transport.inner is inner
    async with transport:
        subscription = await transport.subscribe("t", "g")
        await inner.publish("t", b"through the inner transport")
        assert (await subscription.receive()).body == b"through the inner transport"
    with pytest.raises(TransportClosed):
        await inner.publish("t", b"x")
    with pytest.raises(TransportClosed):
        await subscription.receive()
    async with transport:
        await transport.aclose()
        with pytest.raises(TransportClosed):
            await transport.publish("t", b"x")
