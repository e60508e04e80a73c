from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest
from anyio import wait_all_tasks_blocked

from flowkit._errors import TransportClosed
from flowkit.testing._transport_suite import TRANSPORT_CHECKS, check_transport
from flowkit.transports._base import Delivery, Subscription, Transport
from flowkit.transports._memory import InMemoryTransport

if TYPE_CHECKING:
    from collections.abc import Sequence

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("name", sorted(TRANSPORT_CHECKS))
async def test_conformance(name: str) -> None:
    await TRANSPORT_CHECKS[name](InMemoryTransport, delay_tolerance=0.05)


async def test_check_transport_runs_every_check() -> None:
    await check_transport(InMemoryTransport, delay_tolerance=0.05)


class _ForgetsAcks(InMemoryTransport):
    """A broken transport: every subscription gives back even acked deliveries."""

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        return _ForgetfulSubscription(await super().subscribe(topic, group, durable=durable))


class _ForgetfulSubscription:
    def __init__(self, inner: Subscription) -> None:
        self._inner = inner

    async def receive(self) -> Delivery:
        delivery = await self._inner.receive()
        await delivery.nack()
        return await self._inner.receive()

    async def receive_many(self, limit: int) -> list[Delivery]:
        return [await self.receive()]

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            await delivery.ack()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _ForgetfulSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def test_check_transport_names_the_failed_checks() -> None:
    with pytest.raises(AssertionError) as info:
        await check_transport(_ForgetsAcks, delay_tolerance=0.05)
    message = str(info.value)
    assert "transport check 'round_trip' failed" in message
    assert "transport check 'nack_redelivers' failed: attempt of a redelivery" in message
    assert "'closed_raises'" not in message


def test_is_a_transport() -> None:
    assert isinstance(InMemoryTransport(), Transport)


def test_max_buffer_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_buffer"):
        InMemoryTransport(max_buffer=0)


async def test_topic_without_group_drops_messages() -> None:
    async with InMemoryTransport() as transport:
        await transport.publish("t", b"dropped")
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"kept")
        delivery = await subscription.receive()
        assert delivery.body == b"kept"


async def test_backpressure_blocks_publisher_until_a_consume() -> None:
    async with InMemoryTransport(max_buffer=2) as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.subscribe("t", "roomy")  # another group, also full
        await transport.publish("t", b"1")
        await transport.publish("t", b"2")
        published = anyio.Event()

        async def publish_third() -> None:
            await transport.publish("t", b"3")
            published.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_third)
            await wait_all_tasks_blocked()
            assert not published.is_set()
            delivery = await subscription.receive()
            assert delivery.body == b"1"
            await wait_all_tasks_blocked()
            # The other group is still full: the publish waits for both.
            assert not published.is_set()
            other = await transport.subscribe("t", "roomy")
            await other.receive()
            with anyio.fail_after(1):
                await published.wait()
        bodies = [(await subscription.receive()).body for _ in range(2)]
        assert bodies == [b"2", b"3"]


async def test_redeliveries_do_not_wait_for_room() -> None:
    async with InMemoryTransport(max_buffer=1) as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"1")
        first = await subscription.receive()
        await transport.publish("t", b"2")
        with anyio.fail_after(1):
            await first.nack()
            await subscription.aclose()
        subscription = await transport.subscribe("t", "g")
        bodies = sorted([(await subscription.receive()).body for _ in range(2)])
        assert bodies == [b"1", b"2"]


async def test_cancelled_publish_adds_nothing() -> None:
    async with InMemoryTransport(max_buffer=1) as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"1")
        with anyio.move_on_after(0.01):
            await transport.publish("t", b"2")
        assert (await subscription.receive()).body == b"1"
        await transport.publish("t", b"3")
        assert (await subscription.receive()).body == b"3"


async def test_entered_several_times_closes_on_last_exit() -> None:
    transport = InMemoryTransport()
    async with transport:
        subscription = await transport.subscribe("t", "g")
        async with transport:
            await transport.publish("t", b"inner")
        await transport.publish("t", b"still open")
        assert (await subscription.receive()).body == b"inner"
    with pytest.raises(TransportClosed):
        await transport.publish("t", b"closed")
    with pytest.raises(TransportClosed):
        await subscription.receive()


async def test_reopens_empty_after_close() -> None:
    transport = InMemoryTransport()
    async with transport:
        old = await transport.subscribe("t", "g")
        await transport.publish("t", b"lost")
    async with transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"new")
        assert (await subscription.receive()).body == b"new"
        with pytest.raises(TransportClosed):
            await old.receive()


async def test_aclose_closes_at_once_and_exits_are_then_no_ops() -> None:
    transport = InMemoryTransport()
    async with transport:
        async with transport:
            await transport.aclose()
            with pytest.raises(TransportClosed):
                await transport.subscribe("t", "g")
    with pytest.raises(TransportClosed):
        await transport.publish("t", b"x")


async def test_close_wakes_blocked_receivers_and_publishers() -> None:
    outcomes: list[str] = []

    async def receive(subscription: Subscription) -> None:
        with pytest.raises(TransportClosed):
            await subscription.receive()
        outcomes.append("receiver")

    async def publish(transport: InMemoryTransport) -> None:
        with pytest.raises(TransportClosed):
            await transport.publish("full", b"blocked")
        outcomes.append("publisher")

    async with InMemoryTransport(max_buffer=1) as transport:
        subscriptions = [await transport.subscribe("t", "g") for _ in range(2)]
        await transport.subscribe("full", "g")
        await transport.publish("full", b"fills the buffer")
        with anyio.fail_after(1):
            async with anyio.create_task_group() as tg:
                for subscription in subscriptions:
                    tg.start_soon(receive, subscription)
                    tg.start_soon(receive, subscription)
                tg.start_soon(publish, transport)
                await wait_all_tasks_blocked()
                assert outcomes == []
                await transport.aclose()
    assert sorted(outcomes) == ["publisher"] + ["receiver"] * 4


async def test_subscription_close_wakes_only_its_receivers() -> None:
    async with InMemoryTransport() as transport:
        closing = await transport.subscribe("t", "g")
        staying = await transport.subscribe("t", "g")
        got: list[bytes] = []

        async def receive_closed() -> None:
            with pytest.raises(TransportClosed):
                await closing.receive()

        async def receive_one() -> None:
            got.append((await staying.receive()).body)

        with anyio.fail_after(1):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive_closed)
                tg.start_soon(receive_one)
                await wait_all_tasks_blocked()
                async with closing:
                    pass
                await wait_all_tasks_blocked()
                assert got == []
                await transport.publish("t", b"m")
        assert got == [b"m"]


async def test_given_back_deliveries_come_first_in_order() -> None:
    async with InMemoryTransport() as transport:
        first = await transport.subscribe("t", "g")
        for i in range(4):
            await transport.publish("t", str(i).encode())
        held = [await first.receive() for _ in range(3)]
        await held[1].ack()
        await first.aclose()
        await held[0].ack()  # too late: the subscription gave it back
        second = await transport.subscribe("t", "g")
        got = [await second.receive() for _ in range(3)]
        assert [(d.body, d.attempt) for d in got] == [(b"0", 2), (b"2", 2), (b"3", 1)]


async def test_cancelled_receiver_does_not_swallow_a_message() -> None:
    async with InMemoryTransport() as transport:
        subscription = await transport.subscribe("t", "g")
        got: list[bytes] = []

        async def receive_one() -> None:
            got.append((await subscription.receive()).body)

        with anyio.fail_after(1):
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as doomed:
                    async with anyio.create_task_group() as inner:
                        inner.start_soon(receive_one)
                        await wait_all_tasks_blocked()
                        tg.start_soon(receive_one)
                        await wait_all_tasks_blocked()
                        doomed.cancel()
                await transport.publish("t", b"m")
        assert got == [b"m"]


async def test_delayed_message_reaches_a_receiver_already_waiting() -> None:
    async with InMemoryTransport() as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"a")
        await transport.publish("t", b"b")
        a = await subscription.receive()
        b = await subscription.receive()
        got: list[bytes] = []

        async def receive_one() -> None:
            got.append((await subscription.receive()).body)

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive_one)
                tg.start_soon(receive_one)
                await wait_all_tasks_blocked()
                await a.nack(0.02)
                await b.nack(0.05)
        assert got == [b"a", b"b"]


async def test_delayed_redelivery_waits_for_its_time() -> None:
    async with InMemoryTransport() as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"x")
        delivery = await subscription.receive()
        await delivery.nack(0.05)
        with anyio.move_on_after(0.03):
            await subscription.receive()
            pytest.fail("delivered before its delay")
        with anyio.fail_after(1):
            again = await subscription.receive()
        assert (again.body, again.attempt) == (b"x", 2)


async def test_headers_are_copied_and_read_only() -> None:
    async with InMemoryTransport() as transport:
        subscription = await transport.subscribe("t", "g")
        headers = {"k": "v"}
        await transport.publish("t", b"x", headers)
        headers["k"] = "changed"
        delivery = await subscription.receive()
        assert dict(delivery.headers) == {"k": "v"}
        with pytest.raises(TypeError):
            delivery.headers["k"] = "w"  # type: ignore[index]


async def test_busy_consumer_yields_to_other_tasks() -> None:
    async with InMemoryTransport() as transport:
        subscription = await transport.subscribe("t", "g")
        for i in range(500):
            await transport.publish("t", str(i).encode())
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            start = ticks
            for _ in range(500):
                await (await subscription.receive()).ack()
            assert ticks - start >= 500 // 64 - 1
            tg.cancel_scope.cancel()


def test_repr() -> None:
    assert "max_buffer=3" in repr(InMemoryTransport(max_buffer=3))
