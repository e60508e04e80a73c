"""Fault injection: a transport wrapper that misbehaves on request.

:class:`FaultyTransport` wraps any transport and passes everything through,
except the faults a test asks for: consumers that die, messages delivered
twice or late, publishes that fail. It starts no task: a delayed message is
published at once, marked, and given back to the broker with
:meth:`~flowkit.transports.Delivery.nack` each time a consumer of the wrapper
receives it before its time.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import TYPE_CHECKING, Self

import anyio

from .._errors import TransportClosed, TransportError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

    from ..transports._base import Capabilities, Delivery, Subscription, Transport

__all__ = ["FaultyTransport"]

# Marks a delayed message; the wrapper's deliveries never show it.
_DELAY_HEADER = "x-flowkit-faults-delay"


class _FailRule:
    __slots__ = ("error", "remaining", "topic")

    def __init__(self, topic: str | None, remaining: int, error: Exception | None) -> None:
        self.topic = topic
        self.remaining = remaining
        self.error = error


class _FaultyDelivery:
    """A delivery of the inner transport, as the wrapper shows it."""

    __slots__ = ("_headers", "_held", "_inner", "_subscription")

    def __init__(
        self, subscription: _FaultySubscription, inner: Delivery, held: int, marked: bool
    ) -> None:
        self._subscription = subscription
        self._inner = inner
        self._held = held
        self._headers: Mapping[str, str] = (
            {key: value for key, value in inner.headers.items() if key != _DELAY_HEADER}
            if marked
            else inner.headers
        )

    @property
    def topic(self) -> str:
        """The topic the message was published to."""
        return self._inner.topic

    @property
    def group(self) -> str:
        """The consumer group it was delivered to."""
        return self._inner.group

    @property
    def body(self) -> bytes:
        """The message body, as published."""
        return self._inner.body

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers, as published."""
        return self._headers

    @property
    def attempt(self) -> int:
        """How many times this message has been delivered to this group, this time included.

        The times a delayed message was held back before its time do not count.
        """
        return self._inner.attempt - self._held

    @property
    def broker_id(self) -> str | None:
        """The broker's id of this message in this group."""
        return self._inner.broker_id

    async def ack(self) -> None:
        """Ack the message, unless its consumer was dropped (a dead consumer cannot ack)."""
        if not self._subscription.dropped:
            await self._inner.ack()

    async def nack(self, delay: float = 0.0) -> None:
        """Nack the message, unless its consumer was dropped.

        Args:
            delay: seconds before the message is delivered again.
        """
        if not self._subscription.dropped:
            await self._inner.nack(delay)


class _FaultySubscription:
    """A subscription of the inner transport that the wrapper can drop."""

    __slots__ = ("_faults", "_inner", "dropped", "group", "topic")

    def __init__(self, faults: FaultyTransport, inner: Subscription, topic: str, group: str):
        self._faults = faults
        self._inner = inner
        self.topic = topic
        self.group = group
        self.dropped = False

    async def receive(self) -> Delivery:
        """Wait for the next delivery.

        Returns:
            The next delivery; a delayed message is not delivered before its time.

        Raises:
            TransportClosed: once the subscription or its transport is closed,
                or after the subscription was dropped.
        """
        while True:
            if self.dropped:
                raise TransportClosed("the consumer was dropped by FaultyTransport")
            delivery = await self._inner.receive()
            if self.dropped:
                raise TransportClosed("the consumer was dropped by FaultyTransport")
            fault_id = delivery.headers.get(_DELAY_HEADER)
            if fault_id is None:
                return _FaultyDelivery(self, delivery, 0, marked=False)
            faults = self._faults
            key = (fault_id, delivery.group)
            remaining = faults._due.get(fault_id, 0.0) - anyio.current_time()
            if remaining <= 0:
                return _FaultyDelivery(self, delivery, faults._held.get(key, 0), marked=True)
            faults._held[key] = faults._held.get(key, 0) + 1
            await delivery.nack(remaining)

    async def receive_many(self, limit: int) -> list[Delivery]:
        """Wait for the next delivery and return it alone (faults apply one by one)."""
        return [await self.receive()]

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack each delivery."""
        for delivery in deliveries:
            await delivery.ack()

    async def aclose(self) -> None:
        """Detach the consumer; unacked deliveries go back to the group."""
        self._faults._subscriptions.discard(self)
        await self._inner.aclose()

    async def _drop(self) -> None:
        self.dropped = True
        self._faults._subscriptions.discard(self)
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class FaultyTransport:
    """A transport wrapper that injects faults into another transport.

    Everything is passed on to the wrapped transport, except the faults asked
    for. Each fault method arms a fault for the next matching publishes or for
    the live consumers; the counters tell a test what happened::

        transport = FaultyTransport(InMemoryTransport())
        transport.duplicate_next("orders.placed")
        transport.fail_next_publish("payments.charged", times=2)
        async with transport:
            ...
        assert transport.duplicated == 1

    Delays only apply to consumers subscribed through the wrapper.

    Args:
        inner: the transport to wrap; it is entered and closed with the wrapper.

    Attributes:
        published: messages passed on to the wrapped transport (extra copies
            made by :meth:`duplicate_next` not counted).
        duplicated: extra copies published by :meth:`duplicate_next`.
        delayed: messages delayed by :meth:`delay_next`.
        failed: publishes failed by :meth:`fail_next_publish`.
        dropped: subscriptions closed by :meth:`drop_consumers`.
    """

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self._subscriptions: set[_FaultySubscription] = set()
        self._duplicates: dict[str, int] = {}
        self._delays: dict[str, deque[float]] = {}
        self._failures: list[_FailRule] = []
        # When each delayed message is due, and how often each group held it back.
        self._due: dict[str, float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self.published = 0
        self.duplicated = 0
        self.delayed = 0
        self.failed = 0
        self.dropped = 0

    @property
    def capabilities(self) -> Capabilities:
        """Those of the wrapped transport."""
        return self._inner.capabilities

    @property
    def inner(self) -> Transport:
        """The wrapped transport."""
        return self._inner

    async def drop_consumers(self, topic: str | None = None, group: str | None = None) -> int:
        """Close the matching live subscriptions abruptly, as if their consumer died.

        Their unacked deliveries go back to the group (acking or nacking them
        afterwards does nothing), and ``receive()`` on them raises
        :class:`~flowkit.TransportClosed` from then on, so a consumer must
        subscribe again.

        Args:
            topic: only drop subscriptions to this topic; every topic if ``None``.
            group: only drop subscriptions of this group; every group if ``None``.

        Returns:
            How many subscriptions were dropped.
        """
        victims = [
            subscription
            for subscription in self._subscriptions
            if (topic is None or subscription.topic == topic)
            and (group is None or subscription.group == group)
        ]
        for subscription in victims:
            await subscription._drop()
        self.dropped += len(victims)
        return len(victims)

    def duplicate_next(self, topic: str, times: int = 1) -> None:
        """Publish each of the next ``times`` messages to ``topic`` twice.

        Args:
            topic: the topic whose messages to duplicate.
            times: how many of its next publishes to duplicate.

        Raises:
            ValueError: if ``times`` is less than 1.
        """
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        self._duplicates[topic] = self._duplicates.get(topic, 0) + times

    def delay_next(self, topic: str, seconds: float) -> None:
        """Deliver the next message published to ``topic`` only after ``seconds``.

        The publish itself returns at once; messages published after it may
        arrive first. Several calls delay several next messages, in order.

        Args:
            topic: the topic whose next message to delay.
            seconds: how long the message is held back, from its publish.

        Raises:
            ValueError: if ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"seconds must not be negative, not {seconds}")
        self._delays.setdefault(topic, deque()).append(seconds)

    def fail_next_publish(
        self, topic: str | None = None, times: int = 1, error: Exception | None = None
    ) -> None:
        """Make the next ``times`` publishes fail without reaching the broker.

        Args:
            topic: only fail publishes to this topic; any topic if ``None``.
            times: how many publishes to fail.
            error: the exception to raise; a :class:`~flowkit.TransportError`
                if ``None``.

        Raises:
            ValueError: if ``times`` is less than 1.
        """
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        self._failures.append(_FailRule(topic, times, error))

    async def publish(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
        group: str | None = None,
    ) -> None:
        """Publish through the wrapped transport, applying the armed faults.

        Args:
            topic: where to publish.
            body: the message body.
            headers: string headers.
            key: passed on.
            group: passed on: deliver to this group only.

        Raises:
            TransportError: if a failure was armed with :meth:`fail_next_publish`
                (or the exception it was given), or if the wrapped transport fails.
            TransportClosed: if the wrapped transport is not open.
        """
        for rule in self._failures:
            if rule.topic is None or rule.topic == topic:
                rule.remaining -= 1
                if not rule.remaining:
                    self._failures.remove(rule)
                self.failed += 1
                if rule.error is not None:
                    raise rule.error
                raise TransportError(f"publish to {topic!r} failed (injected by FaultyTransport)")
        copies = 1
        if self._duplicates.get(topic):
            self._duplicates[topic] -= 1
            copies = 2
        delays = self._delays.get(topic)
        delay = delays.popleft() if delays else None
        for copy in range(copies):
            if delay is None:
                await self._inner.publish(topic, body, headers, key=key, group=group)
            else:
                fault_id = uuid.uuid4().hex
                self._due[fault_id] = anyio.current_time() + delay
                marked = {**(headers or {}), _DELAY_HEADER: fault_id}
                await self._inner.publish(topic, body, marked, key=key, group=group)
            if copy:
                self.duplicated += 1
        self.published += 1
        if delay is not None:
            self.delayed += 1

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        """Subscribe through the wrapped transport; the subscription can be dropped.

        Args:
            topic: the topic to consume.
            group: the consumer group.
            durable: passed on.

        Returns:
            A subscription that :meth:`drop_consumers` can drop.

        Raises:
            TransportClosed: if the wrapped transport is not open.
        """
        inner = await self._inner.subscribe(topic, group, durable=durable)
        subscription = _FaultySubscription(self, inner, topic, group)
        self._subscriptions.add(subscription)
        return subscription

    async def backlog(self, topic: str, group: str) -> int:
        """The wrapped transport's backlog of ``group`` (delayed messages included)."""
        return await self._inner.backlog(topic, group)

    async def aclose(self) -> None:
        """Close the wrapped transport and every subscription on it."""
        self._subscriptions.clear()
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    def __repr__(self) -> str:
        return f"FaultyTransport({self._inner!r})"
