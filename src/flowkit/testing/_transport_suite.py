"""The conformance suite of the transport contract.

Every transport, the in-memory one and the broker ones alike, must pass it; a
third-party transport proves itself the same way::

    from flowkit.testing import check_transport

    @pytest.mark.anyio
    async def test_my_transport() -> None:
        await check_transport(lambda: MyTransport(url))

or, one test per check::

    @pytest.mark.anyio
    @pytest.mark.parametrize("name", TRANSPORT_CHECKS)
    async def test_my_transport(name: str) -> None:
        await TRANSPORT_CHECKS[name](lambda: MyTransport(url))

Each check makes a fresh transport with the factory, enters it with
``async with``, uses topic and group names of its own (random, so a persistent
broker can be reused), and is bounded in time. It uses only the public
transport contract.
"""

from __future__ import annotations

import functools
import uuid
from typing import TYPE_CHECKING

import anyio

from .._errors import TransportClosed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..transports._base import Delivery, Subscription, Transport

    _Check = Callable[[Callable[[], Transport], float], Awaitable[None]]

__all__ = ["TRANSPORT_CHECKS", "check_transport"]

TRANSPORT_CHECKS: dict[str, Callable[..., Awaitable[None]]] = {}
"""Every check by name. Each is called as ``await check(factory, delay_tolerance=0.5)``
and raises :class:`AssertionError` naming itself when the transport fails it."""

# How long one check may take, beyond the delays it waits for on purpose.
_CHECK_TIMEOUT = 20.0
# How long to wait for a delivery that must come.
_RECEIVE_TIMEOUT = 10.0


def _check(func: _Check) -> Callable[..., Awaitable[None]]:
    """Register a check under its name, bounded in time, its failures named."""
    name = func.__name__.removeprefix("_check_")

    @functools.wraps(func)
    async def run(factory: Callable[[], Transport], *, delay_tolerance: float = 0.5) -> None:
        try:
            with anyio.fail_after(_CHECK_TIMEOUT + 10 * delay_tolerance):
                await func(factory, delay_tolerance)
        except Exception as exc:
            failure: BaseException = exc
            while isinstance(failure, BaseExceptionGroup):
                failure = failure.exceptions[0]
            if isinstance(failure, AssertionError):
                outcome = f"failed: {failure}"
            elif isinstance(failure, TimeoutError):
                outcome = "timed out"
            else:
                outcome = f"raised {type(failure).__name__}: {failure}"
            raise AssertionError(f"transport check {name!r} {outcome}") from exc

    TRANSPORT_CHECKS[name] = run
    return run


async def check_transport(
    factory: Callable[[], Transport], *, delay_tolerance: float = 0.5
) -> None:
    """Run every check of the transport contract against a transport.

    Args:
        factory: makes a new, unopened transport; called once per check (and
            the transport entered with ``async with``).
        delay_tolerance: in seconds, how late a delayed redelivery may arrive;
            it is also the delay the delay checks use, and the time the
            checks wait to see that nothing more arrives.

    Raises:
        AssertionError: if the transport fails a check; the message names every
            check that failed and why, and the first failure is chained.
    """
    failures: list[AssertionError] = []
    for check in TRANSPORT_CHECKS.values():
        try:
            await check(factory, delay_tolerance=delay_tolerance)
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        lines = "\n".join(f"  - {failure}" for failure in failures)
        raise AssertionError(
            f"{len(failures)} of {len(TRANSPORT_CHECKS)} transport checks failed:\n{lines}"
        ) from failures[0]


def _name(kind: str) -> str:
    return f"flowkit-check-{kind}-{uuid.uuid4().hex[:12]}"


async def _receive(subscription: Subscription, what: str) -> Delivery:
    with anyio.move_on_after(_RECEIVE_TIMEOUT):
        return await subscription.receive()
    raise AssertionError(f"no delivery within {_RECEIVE_TIMEOUT}s: expected {what}")


async def _expect_nothing(subscription: Subscription, window: float, why: str) -> None:
    with anyio.move_on_after(window):
        delivery = await subscription.receive()
        raise AssertionError(
            f"unexpected delivery of {delivery.body!r} (attempt {delivery.attempt}): {why}"
        )


async def _expect_closed(action: Callable[[], Awaitable[object]], what: str) -> None:
    try:
        with anyio.fail_after(_RECEIVE_TIMEOUT):
            await action()
    except TransportClosed:
        return
    except TimeoutError as exc:
        raise AssertionError(f"{what} blocked instead of raising TransportClosed") from exc
    raise AssertionError(f"{what} did not raise TransportClosed")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 160 else f"{text[:120]}...{text[-30:]}"


def _expect_equal(actual: object, expected: object, what: str) -> None:
    if actual != expected:
        raise AssertionError(f"{what}: expected {_short(expected)}, got {_short(actual)}")


@_check
async def _check_round_trip(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """Bodies (any bytes, empty too) and headers arrive exactly as published."""
    topic, group = _name("topic"), _name("group")
    body = bytes(range(256)) + b"\xff\xfe\x00 not utf-8 \xc3\x28"
    headers = {"content-type": "application/json", "x-unicode": "h\u00e9llo \u2713"}
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, body, headers)
        await transport.publish(topic, b"", None)
        delivery = await _receive(subscription, "the published message")
        _expect_equal(delivery.body, body, "body")
        _expect_equal(dict(delivery.headers), headers, "headers")
        _expect_equal(delivery.topic, topic, "topic")
        _expect_equal(delivery.group, group, "group")
        _expect_equal(delivery.attempt, 1, "attempt of a first delivery")
        await delivery.ack()
        empty = await _receive(subscription, "the message with an empty body")
        _expect_equal(empty.body, b"", "empty body")
        _expect_equal(dict(empty.headers), {}, "headers published as None")
        await empty.ack()
        await subscription.aclose()


@_check
async def _check_fan_out(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """Each of three groups gets every message of its topic, and none of another topic."""
    topic, other = _name("topic"), _name("other-topic")
    groups = [_name(f"group{i}") for i in range(3)]
    async with factory() as transport:
        subscriptions = [await transport.subscribe(topic, group) for group in groups]
        await transport.publish(other, b"other topic")
        await transport.publish(topic, b"fan-out")
        for group, subscription in zip(groups, subscriptions, strict=True):
            delivery = await _receive(subscription, f"the message in group {group}")
            _expect_equal(delivery.body, b"fan-out", f"body received by group {group}")
            _expect_equal(delivery.group, group, "delivery.group")
            _expect_equal(delivery.attempt, 1, "attempt")
            await delivery.ack()
        async with anyio.create_task_group() as tg:
            for subscription in subscriptions:
                tg.start_soon(
                    _expect_nothing, subscription, delay_tolerance / 2, "a group got a copy"
                )
        for subscription in subscriptions:
            await subscription.aclose()


@_check
async def _check_competing_consumers(
    factory: Callable[[], Transport], delay_tolerance: float
) -> None:
    """Two consumers of one group get disjoint sets of messages that cover all of them."""
    topic, group = _name("topic"), _name("group")
    count = 200
    expected = {str(i).encode() for i in range(count)}
    received: list[list[bytes]] = [[], []]
    all_received = anyio.Event()

    async def consume(index: int, subscription: Subscription) -> None:
        while True:
            delivery = await subscription.receive()
            received[index].append(delivery.body)
            await delivery.ack()
            if len(received[0]) + len(received[1]) >= count:
                all_received.set()

    async with factory() as transport:
        subscriptions = [await transport.subscribe(topic, group) for _ in range(2)]
        async with anyio.create_task_group() as tg:
            for index, subscription in enumerate(subscriptions):
                tg.start_soon(consume, index, subscription)
            for body in sorted(expected):
                await transport.publish(topic, body)
            with anyio.move_on_after(_RECEIVE_TIMEOUT):
                await all_received.wait()
            await anyio.sleep(delay_tolerance / 2)
            tg.cancel_scope.cancel()
        for subscription in subscriptions:
            await subscription.aclose()
    first, second = received
    both = set(first) & set(second)
    if both:
        raise AssertionError(f"{len(both)} messages went to both consumers, e.g. {min(both)!r}")
    _expect_equal(len(first) + len(second), count, "number of deliveries")
    _expect_equal(set(first) | set(second), expected, "messages received")


@_check
async def _check_ack_not_redelivered(
    factory: Callable[[], Transport], delay_tolerance: float
) -> None:
    """An acked message is not delivered again, even after its consumer closes."""
    topic, group = _name("topic"), _name("group")
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"first")
        delivery = await _receive(subscription, "the first message")
        await delivery.ack()
        await subscription.aclose()
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"second")
        delivery = await _receive(subscription, "the second message")
        _expect_equal(delivery.body, b"second", "the message after an acked one")
        await delivery.ack()
        await _expect_nothing(subscription, delay_tolerance, "both messages were acked")
        await subscription.aclose()


@_check
async def _check_settle_twice(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """Acking or nacking a delivery a second time is a no-op."""
    topic, group = _name("topic"), _name("group")
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"acked")
        delivery = await _receive(subscription, "the message to ack")
        await delivery.ack()
        await delivery.ack()
        await delivery.nack()
        await transport.publish(topic, b"nacked")
        delivery = await _receive(subscription, "the message to nack")
        _expect_equal(delivery.body, b"nacked", "the message after an acked one")
        await delivery.nack()
        await delivery.nack()
        await delivery.ack()
        again = await _receive(subscription, "the nacked message")
        _expect_equal(again.body, b"nacked", "redelivered body")
        _expect_equal(again.attempt, 2, "attempt after one effective nack")
        await again.ack()
        await _expect_nothing(subscription, delay_tolerance, "a second ack or nack is a no-op")
        await subscription.aclose()


@_check
async def _check_nack_redelivers(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """A message nacked without delay is delivered again, attempt incremented, headers kept."""
    topic, group = _name("topic"), _name("group")
    headers = {"x-key": "value"}
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"retry me", headers)
        delivery = await _receive(subscription, "the message")
        await delivery.nack(0)
        for attempt in (2, 3):
            delivery = await _receive(subscription, f"attempt {attempt} of the nacked message")
            _expect_equal(delivery.body, b"retry me", "redelivered body")
            _expect_equal(dict(delivery.headers), headers, "redelivered headers")
            _expect_equal(delivery.attempt, attempt, "attempt of a redelivery")
            if attempt == 2:
                await delivery.nack()
        await delivery.ack()
        await subscription.aclose()


@_check
async def _check_nack_delay(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """A message nacked with a delay comes back after the delay, not before."""
    topic, group = _name("topic"), _name("group")
    delay = delay_tolerance
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"later")
        delivery = await _receive(subscription, "the message")
        start = anyio.current_time()
        await delivery.nack(delay)
        with anyio.move_on_after(delay + delay_tolerance):
            again = await subscription.receive()
        elapsed = anyio.current_time() - start
        if elapsed >= delay + delay_tolerance:
            raise AssertionError(
                f"not redelivered within {delay + delay_tolerance:.3f}s of nack({delay})"
            )
        if elapsed < 0.9 * delay:
            raise AssertionError(f"redelivered after {elapsed:.3f}s, before nack({delay}) allowed")
        _expect_equal(again.body, b"later", "redelivered body")
        _expect_equal(again.attempt, 2, "attempt of a redelivery")
        await again.ack()
        await subscription.aclose()


@_check
async def _check_nack_delay_does_not_block(
    factory: Callable[[], Transport], delay_tolerance: float
) -> None:
    """Messages published after one nacked with a delay are delivered during the delay."""
    topic, group = _name("topic"), _name("group")
    delay = 2 * delay_tolerance
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"delayed")
        delivery = await _receive(subscription, "the message to delay")
        start = anyio.current_time()
        await delivery.nack(delay)
        await transport.publish(topic, b"next")
        following = await _receive(subscription, "the next message")
        elapsed = anyio.current_time() - start
        _expect_equal(following.body, b"next", "message delivered during the delay")
        if elapsed >= delay:
            raise AssertionError(f"the next message waited {elapsed:.3f}s for the delayed one")
        await following.ack()
        again = await _receive(subscription, "the delayed message")
        _expect_equal(again.body, b"delayed", "redelivered body")
        await again.ack()
        await subscription.aclose()


@_check
async def _check_unacked_redelivered_on_close(
    factory: Callable[[], Transport], delay_tolerance: float
) -> None:
    """What a closed subscription held unacked goes to another consumer, attempt incremented."""
    topic, group = _name("topic"), _name("group")
    async with factory() as transport:
        first = await transport.subscribe(topic, group)
        await transport.publish(topic, b"unacked", {"x-key": "value"})
        delivery = await _receive(first, "the message")
        _expect_equal(delivery.attempt, 1, "attempt")
        second = await transport.subscribe(topic, group)
        await first.aclose()
        again = await _receive(second, "the message the closed subscription held")
        _expect_equal(again.body, b"unacked", "redelivered body")
        _expect_equal(dict(again.headers), {"x-key": "value"}, "redelivered headers")
        _expect_equal(again.attempt, 2, "attempt after the first consumer closed")
        await again.ack()
        await _expect_nothing(second, delay_tolerance / 2, "the message was acked")
        await second.aclose()


@_check
async def _check_broker_id(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """A message keeps its broker id on every delivery to its group (nacked, nacked with
    a delay, given back by a closed subscription); two messages published apart, even
    alike, never share one."""
    topic, group = _name("topic"), _name("group")
    async with factory() as transport:
        first = await transport.subscribe(topic, group)
        for _ in range(2):
            await transport.publish(topic, b"alike", {"x-key": "value"})
        one = await _receive(first, "the first message")
        other = await _receive(first, "the second message")
        if one.broker_id is None or other.broker_id is None:
            raise AssertionError("a message the transport published has no broker_id")
        if one.broker_id == other.broker_id:
            raise AssertionError(f"two messages published apart share broker_id {one.broker_id!r}")
        await one.nack(0)
        again = await _receive(first, "the nacked message")
        _expect_equal(again.broker_id, one.broker_id, "broker_id after a nack")
        await again.nack(delay_tolerance / 2)
        second = await transport.subscribe(topic, group)
        await first.aclose()
        seen = set()
        for what in ("the message the closed subscription held", "the delayed message"):
            delivery = await _receive(second, what)
            seen.add(delivery.broker_id)
            await delivery.ack()
        _expect_equal(
            seen, {one.broker_id, other.broker_id}, "broker_ids after a delay and a close"
        )
        await second.aclose()


@_check
async def _check_kept_without_consumer(
    factory: Callable[[], Transport], delay_tolerance: float
) -> None:
    """A group with no consumer keeps the messages published meanwhile."""
    topic, group = _name("topic"), _name("group")
    bodies = {b"kept-1", b"kept-2", b"kept-3"}
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        await subscription.aclose()
        for body in sorted(bodies):
            await transport.publish(topic, body)
        subscription = await transport.subscribe(topic, group)
        received: set[bytes] = set()
        for _ in bodies:
            delivery = await _receive(subscription, "a message published while no consumer ran")
            _expect_equal(delivery.attempt, 1, "attempt")
            received.add(delivery.body)
            await delivery.ack()
        _expect_equal(received, bodies, "messages kept for the group")
        await subscription.aclose()


@_check
async def _check_concurrent_receivers(
    factory: Callable[[], Transport], delay_tolerance: float
) -> None:
    """Several tasks waiting on one subscription each get a different message."""
    topic, group = _name("topic"), _name("group")
    receivers = 5
    received: list[bytes] = []

    async def receive_one(subscription: Subscription) -> None:
        delivery = await subscription.receive()
        received.append(delivery.body)
        await delivery.ack()

    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        with anyio.move_on_after(_RECEIVE_TIMEOUT):
            async with anyio.create_task_group() as tg:
                for _ in range(receivers):
                    tg.start_soon(receive_one, subscription)
                await anyio.sleep(min(0.05, delay_tolerance / 4))
                for i in range(receivers):
                    await transport.publish(topic, f"m{i}".encode())
        _expect_equal(
            sorted(received),
            [f"m{i}".encode() for i in range(receivers)],
            f"messages received by {receivers} concurrent receivers",
        )
        await subscription.aclose()


@_check
async def _check_many_messages(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """A thousand acked messages are each delivered exactly once."""
    topic, group = _name("topic"), _name("group")
    count = 1000
    expected = [str(i).encode() for i in range(count)]
    received: list[bytes] = []

    async def consume(subscription: Subscription) -> None:
        for _ in range(count):
            delivery = await subscription.receive()
            received.append(delivery.body)
            await delivery.ack()

    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        with anyio.move_on_after(_RECEIVE_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume, subscription)
                for body in expected:
                    await transport.publish(topic, body)
        _expect_equal(len(received), count, "number of deliveries")
        _expect_equal(set(received), set(expected), "messages received")
        await _expect_nothing(subscription, delay_tolerance / 2, "every message was acked")
        await subscription.aclose()


@_check
async def _check_fifo(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """One consumer gets the messages of a topic in the order they were published."""
    topic, group = _name("topic"), _name("group")
    expected = [str(i).encode() for i in range(100)]
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        for body in expected:
            await transport.publish(topic, body)
        received: list[bytes] = []
        for _ in expected:
            delivery = await _receive(subscription, "the next message in order")
            received.append(delivery.body)
            await delivery.ack()
        _expect_equal(received, expected, "order of delivery")
        await subscription.aclose()


@_check
async def _check_closed_raises(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """A closed or unopened transport, and a closed subscription, raise TransportClosed."""
    topic, group = _name("topic"), _name("group")
    transport = factory()
    await _expect_closed(
        lambda: transport.publish(topic, b"x"), "publish on a transport never opened"
    )
    async with transport:
        subscription = await transport.subscribe(topic, group)
        await subscription.aclose()
        await _expect_closed(subscription.receive, "receive on a closed subscription")
        await subscription.aclose()
        still_open = await transport.subscribe(topic, group)
    await _expect_closed(still_open.receive, "receive on a subscription of a closed transport")
    await _expect_closed(lambda: transport.publish(topic, b"x"), "publish on a closed transport")
    await _expect_closed(
        lambda: transport.subscribe(topic, group), "subscribe on a closed transport"
    )
    await transport.aclose()


@_check
async def _check_close_wakes_receivers(
    factory: Callable[[], Transport], delay_tolerance: float
) -> None:
    """Receivers blocked on a subscription raise TransportClosed when it or the transport closes."""
    topic, group = _name("topic"), _name("group")
    outcomes: list[str] = []

    async def blocked(subscription: Subscription) -> None:
        try:
            delivery = await subscription.receive()
        except TransportClosed:
            outcomes.append("closed")
        else:
            outcomes.append(f"received {delivery.body!r}")

    pause = min(0.05, delay_tolerance / 4)
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        other = await transport.subscribe(topic, _name("other-group"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked, subscription)
            await anyio.sleep(pause)
            await subscription.aclose()
        _expect_equal(outcomes, ["closed"], "outcome of a receive when its subscription closed")
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked, other)
            await anyio.sleep(pause)
            await transport.aclose()
        _expect_equal(
            outcomes, ["closed", "closed"], "outcome of a receive when the transport closed"
        )


@_check
async def _check_receive_many(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """receive_many returns at least one delivery and at most ``limit``, in order;
    ack_many acks several (an already settled one is skipped); what a closed
    subscription held, and only that, comes back."""
    topic, group = _name("topic"), _name("group")
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        for i in range(5):
            await transport.publish(topic, b"%d" % i)
        got: list[Delivery] = []
        with anyio.fail_after(_RECEIVE_TIMEOUT):
            while len(got) < 5:
                batch = await subscription.receive_many(3)
                if not 1 <= len(batch) <= 3:
                    raise AssertionError(f"receive_many(3) returned {len(batch)} deliveries")
                got.extend(batch)
        _expect_equal([d.body for d in got], [b"%d" % i for i in range(5)], "bodies in order")
        await got[0].ack()
        await subscription.ack_many(got[1:4])  # and one already settled: a no-op
        await subscription.ack_many(got[:1])
        await subscription.aclose()  # the fifth was neither acked nor nacked
        again = await transport.subscribe(topic, group)
        redelivered = await _receive(again, "the delivery the closed subscription held")
        _expect_equal(redelivered.body, b"4", "body given back on close")
        await redelivered.ack()
        await _expect_nothing(again, delay_tolerance, "acked with ack_many, then closed")
        await again.aclose()


@_check
async def _check_backlog(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """backlog counts what a group has not settled: ready, delivered, waiting out a delay."""
    topic, group = _name("topic"), _name("group")
    async with factory() as transport:
        _expect_equal(await transport.backlog(topic, group), 0, "backlog of an unknown group")
        subscription = await transport.subscribe(topic, group)
        for i in range(3):
            await transport.publish(topic, b"%d" % i)
        with anyio.fail_after(_RECEIVE_TIMEOUT):
            # A broker counts its backlog on request: there is nothing to wait on.
            while await transport.backlog(topic, group) < 3:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        first = await _receive(subscription, "the first message")
        _expect_equal(await transport.backlog(topic, group), 3, "backlog with one delivered")
        await first.ack()
        second = await _receive(subscription, "the second message")
        await second.nack(delay_tolerance * 4)
        _expect_equal(await transport.backlog(topic, group), 2, "backlog with one delayed")
        third = await _receive(subscription, "the third message")
        await third.ack()
        _expect_equal(await transport.backlog(topic, group), 1, "backlog with one delayed left")
        again = await _receive(subscription, "the nacked message, after its delay")
        await again.ack()
        with anyio.fail_after(_RECEIVE_TIMEOUT):
            while await transport.backlog(topic, group):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        await subscription.aclose()


@_check
async def _check_capabilities(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """The transport declares its capabilities."""
    from ..transports._base import Capabilities

    transport = factory()
    declared = transport.capabilities
    if not isinstance(declared, Capabilities):
        raise AssertionError(f"capabilities is {declared!r}, not a Capabilities")


@_check
async def _check_publish_to_one_group(
    factory: Callable[[], Transport], delay_tolerance: float
) -> None:
    """A publish naming a group reaches that group only; the others never see it."""
    topic = _name("topic")
    chosen, other = _name("chosen"), _name("other")
    async with factory() as transport:
        to_chosen = await transport.subscribe(topic, chosen)
        to_other = await transport.subscribe(topic, other)
        await transport.publish(topic, b"only for one", {"h": "v"}, group=chosen)
        await transport.publish(topic, b"for all")
        first = await _receive(to_chosen, "the message published to this group")
        _expect_equal(first.body, b"only for one", "body of the targeted message")
        _expect_equal(dict(first.headers), {"h": "v"}, "headers of the targeted message")
        await first.ack()
        everyone = await _receive(to_other, "the message published to every group")
        _expect_equal(everyone.body, b"for all", "what the other group gets first")
        await everyone.ack()
        await _expect_nothing(to_other, delay_tolerance, "a message targeted at another group")
        second = await _receive(to_chosen, "the message published to every group")
        await second.ack()
        await to_chosen.aclose()
        await to_other.aclose()


@_check
async def _check_non_durable_group_leaves_nothing(
    factory: Callable[[], Transport], delay_tolerance: float
) -> None:
    """A non-durable group lives only while subscribed: once its last subscription
    closes, what it held is gone and a later subscription starts empty."""
    topic, group = _name("topic"), _name("inbox")
    async with factory() as transport:
        inbox = await transport.subscribe(topic, group, durable=False)
        await transport.publish(topic, b"1")
        delivery = await _receive(inbox, "a message to the non-durable group")
        await delivery.ack()
        await transport.publish(topic, b"left behind")
        with anyio.fail_after(_RECEIVE_TIMEOUT):
            while await transport.backlog(topic, group) < 1:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        await inbox.aclose()
        _expect_equal(await transport.backlog(topic, group), 0, "backlog of a removed group")
        again = await transport.subscribe(topic, group, durable=False)
        await _expect_nothing(again, delay_tolerance, "a message held by a removed group")
        await again.aclose()


@_check
async def _check_key_is_accepted(factory: Callable[[], Transport], delay_tolerance: float) -> None:
    """Publishing with a key works on every transport; where the transport declares
    ``ordered_by_key``, one consumer gets a key's messages in publish order."""
    topic, group = _name("topic"), _name("group")
    async with factory() as transport:
        subscription = await transport.subscribe(topic, group)
        for i in range(10):
            await transport.publish(topic, b"%d" % i, key="order-1")
        bodies = []
        for _ in range(10):
            delivery = await _receive(subscription, "a message published with a key")
            bodies.append(delivery.body)
            await delivery.ack()
        if transport.capabilities.ordered_by_key:
            _expect_equal(bodies, [b"%d" % i for i in range(10)], "order within one key")
        else:
            _expect_equal(sorted(bodies), sorted(b"%d" % i for i in range(10)), "bodies")
        await subscription.aclose()
