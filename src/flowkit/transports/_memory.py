"""An in-process transport, for tests and single-process applications.

Everything lives in memory: each consumer group is a queue of messages ready
for delivery, a heap of nacked messages waiting for their delay, and the
deliveries its consumers hold. No background task runs: a receiver that finds
nothing ready waits for a publish or for the earliest delayed message to come
due, whichever is first.
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import count
from types import MappingProxyType
from typing import TYPE_CHECKING, Self

import anyio
from anyio.lowlevel import checkpoint

from .._errors import TransportClosed
from ._base import Capabilities

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

    from ._base import Delivery, Subscription

_CAPABILITIES = Capabilities(crosses_processes=False)
__all__ = ["InMemoryTransport"]

# A receive or publish that never has to wait still yields to the event loop
# once every _CHECKPOINT_MASK + 1 calls, so a busy task cannot starve the others.
_CHECKPOINT_MASK = 63

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class _Message:
    """One published message, shared by every group it fans out to."""

    __slots__ = ("body", "headers", "topic")

    def __init__(self, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
        self.topic = topic
        self.body = body
        self.headers = headers


class _Group:
    """A consumer group of one topic: what its consumers share."""

    __slots__ = (
        "delayed",
        "ids",
        "name",
        "publishers",
        "ready",
        "receivers",
        "subscriptions",
        "topic",
    )

    def __init__(self, topic: str, name: str) -> None:
        self.topic = topic
        self.name = name
        # Fresh messages (attempt 1) and settled deliveries to deliver again.
        self.ready: deque[_Message | _MemoryDelivery] = deque()
        # Nacked deliveries waiting for their delay: (due time, id, delivery).
        self.delayed: list[tuple[float, int, _MemoryDelivery]] = []
        self.receivers: deque[anyio.Event] = deque()
        self.publishers: deque[anyio.Event] = deque()
        self.subscriptions: set[_MemorySubscription] = set()
        self.ids = count()

    def wake_receivers(self, n: int) -> None:
        receivers = self.receivers
        while n > 0 and receivers:
            receivers.popleft().set()
            n -= 1

    def wake_all(self) -> None:
        for waiters in (self.receivers, self.publishers):
            while waiters:
                waiters.popleft().set()

    def requeue(self, delivery: _MemoryDelivery, delay: float) -> None:
        if delay <= 0:
            self.ready.append(delivery)
            if self.receivers:
                self.receivers.popleft().set()
            return
        delayed = self.delayed
        heapq.heappush(delayed, (anyio.current_time() + delay, delivery._id, delivery))
        if delayed[0][2] is delivery:
            # A new earliest due time: waiting receivers compute their timeout anew.
            self.wake_all_receivers()

    def wake_all_receivers(self) -> None:
        receivers = self.receivers
        while receivers:
            receivers.popleft().set()

    def promote_due(self) -> None:
        delayed = self.delayed
        now = anyio.current_time()
        if delayed[0][0] > now:
            return
        ready = self.ready
        promoted = 0
        while delayed and delayed[0][0] <= now:
            ready.append(heapq.heappop(delayed)[2])
            promoted += 1
        self.wake_receivers(promoted)


class _State:
    """Everything one opening of a transport holds; a reopened transport starts afresh."""

    __slots__ = ("closed", "groups", "topics")

    def __init__(self) -> None:
        self.closed = False
        self.groups: dict[tuple[str, str], _Group] = {}
        self.topics: dict[str, list[_Group]] = {}


class _MemoryDelivery:
    """One delivery of a message to one subscription."""

    __slots__ = ("_attempt", "_id", "_message", "_subscription")

    def __init__(
        self,
        subscription: _MemorySubscription,
        message: _Message,
        attempt: int,
        delivery_id: int,
    ) -> None:
        self._subscription = subscription
        self._message = message
        self._attempt = attempt
        self._id = delivery_id

    @property
    def topic(self) -> str:
        """The topic the message was published to."""
        return self._message.topic

    @property
    def group(self) -> str:
        """The consumer group it was delivered to."""
        return self._subscription._group.name

    @property
    def body(self) -> bytes:
        """The message body, as published."""
        return self._message.body

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers, as published (read-only)."""
        return self._message.headers

    @property
    def attempt(self) -> int:
        """How many times this message has been delivered to this group, this time included."""
        return self._attempt

    async def ack(self) -> None:
        """Mark the message handled; a second ack or nack is a no-op."""
        self._subscription._in_flight.pop(self._id, None)

    async def nack(self, delay: float = 0.0) -> None:
        """Give the message back, to be delivered again after ``delay`` seconds.

        Args:
            delay: seconds before the message is deliverable again.
        """
        subscription = self._subscription
        if subscription._in_flight.pop(self._id, None) is not None:
            subscription._group.requeue(self, delay)

    def __repr__(self) -> str:
        return (
            f"<InMemoryTransport delivery topic={self.topic!r} group={self.group!r} "
            f"attempt={self._attempt}>"
        )


class _MemorySubscription:
    """A consumer attached to one group."""

    __slots__ = ("_closed", "_group", "_in_flight", "_limit", "_receives")

    def __init__(self, group: _Group, limit: int) -> None:
        self._group = group
        self._limit = limit
        self._closed = False
        self._in_flight: dict[int, _MemoryDelivery] = {}
        self._receives = 0

    async def receive(self) -> Delivery:
        """Wait for the next delivery.

        Returns:
            The next message of the group, ready for this consumer.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
        """
        self._receives += 1
        if not self._receives & _CHECKPOINT_MASK:
            await checkpoint()
        group = self._group
        ready = group.ready
        while True:
            if self._closed:
                raise TransportClosed("the subscription is closed")
            if group.delayed:
                group.promote_due()
            if ready:
                item = ready.popleft()
                if group.publishers and len(ready) < self._limit:
                    group.publishers.popleft().set()
                delivery_id = next(group.ids)
                if isinstance(item, _Message):
                    delivery = _MemoryDelivery(self, item, 1, delivery_id)
                else:
                    delivery = _MemoryDelivery(self, item._message, item._attempt + 1, delivery_id)
                self._in_flight[delivery_id] = delivery
                return delivery
            await self._wait(group)

    async def _wait(self, group: _Group) -> None:
        """Wait until a message may be ready: published, given back or come due."""
        waiter = anyio.Event()
        group.receivers.append(waiter)
        try:
            if group.delayed:
                with anyio.move_on_after(group.delayed[0][0] - anyio.current_time()):
                    await waiter.wait()
            else:
                await waiter.wait()
        except BaseException:
            # Woken for a message but cancelled before taking it: pass the wake-up on.
            if waiter.is_set() and group.ready:
                group.wake_receivers(1)
            raise
        finally:
            if not waiter.is_set():
                group.receivers.remove(waiter)

    def _close(self, *, give_back: bool) -> None:
        if self._closed:
            return
        self._closed = True
        group = self._group
        group.subscriptions.discard(self)
        in_flight = self._in_flight
        if give_back and in_flight:
            group.ready.extendleft(reversed(in_flight.values()))
        in_flight.clear()
        # Wakes this subscription's blocked receivers (they raise TransportClosed)
        # and, for given-back messages, the other consumers of the group.
        group.wake_all_receivers()

    async def aclose(self) -> None:
        """Detach the consumer; unacked deliveries go back to the front of the group."""
        self._close(give_back=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(give_back=True)

    def __repr__(self) -> str:
        group = self._group
        state = "closed" if self._closed else "open"
        return f"<InMemoryTransport subscription {group.topic!r}/{group.name!r} {state}>"


class InMemoryTransport:
    """A transport that keeps every message in the memory of the current process.

    It follows the whole transport contract: fan-out to groups, competing
    consumers, ack and delayed nack, redelivery of what a closed subscription
    held, and backpressure. It runs on asyncio and trio and starts no task.

    A message published to a topic no group subscribes to is dropped. Closing
    the transport drops every message; entering it again starts empty.

    Args:
        max_buffer: how many undelivered messages a group holds before
            :meth:`publish` waits for its consumers. Redeliveries (nacked or
            given back) never wait, so a group can briefly hold more.

    Raises:
        ValueError: if ``max_buffer`` is less than 1.
    """

    __slots__ = ("_entered", "_max_buffer", "_publishes", "_state")

    def __init__(self, *, max_buffer: int = 10_000) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, not {max_buffer}")
        self._max_buffer = max_buffer
        self._state: _State | None = None
        self._entered = 0
        self._publishes = 0

    @property
    def capabilities(self) -> Capabilities:
        """Messages stay in this process: ``crosses_processes`` is False."""
        return _CAPABILITIES

    @property
    def max_buffer(self) -> int:
        """How many undelivered messages a group holds before publishers wait."""
        return self._max_buffer

    def outstanding(self) -> int:
        """How many deliveries are not settled yet, over every group.

        Counts the messages ready for delivery, those waiting out a nack
        delay, and those delivered but neither acked nor nacked. Zero means
        every consumer is done with everything published so far.
        """
        state = self._state
        if state is None:
            return 0
        return sum(
            len(group.ready)
            + len(group.delayed)
            + sum(len(sub._in_flight) for sub in group.subscriptions)
            for group in state.groups.values()
        )

    async def publish(
        self, topic: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> None:
        """Publish one message to every group subscribed to ``topic``.

        The message is added to every group at once, after waiting while any of
        them holds ``max_buffer`` undelivered messages.

        Args:
            topic: where to publish.
            body: the message body.
            headers: string headers, delivered as given.

        Raises:
            TransportClosed: if the transport is not open, or closes while waiting.
        """
        state = self._state
        if state is None:
            raise TransportClosed("the transport is not open")
        self._publishes += 1
        if not self._publishes & _CHECKPOINT_MASK:
            await checkpoint()
            if state.closed:
                raise TransportClosed("the transport is closed")
        groups = state.topics.get(topic)
        if not groups:
            return
        limit = self._max_buffer
        for group in groups:
            if len(group.ready) >= limit:
                groups = await self._wait_for_room(state, topic)
                break
        message = _Message(
            topic,
            body if type(body) is bytes else bytes(body),
            MappingProxyType(dict(headers)) if headers else _NO_HEADERS,
        )
        for group in groups:
            group.ready.append(message)
            if group.receivers:
                group.receivers.popleft().set()

    async def _wait_for_room(self, state: _State, topic: str) -> list[_Group]:
        """Wait until no group of ``topic`` is full; return the groups."""
        limit = self._max_buffer
        while True:
            if state.closed:
                raise TransportClosed("the transport is closed")
            groups = state.topics[topic]
            full = next((group for group in groups if len(group.ready) >= limit), None)
            if full is None:
                return groups
            waiter = anyio.Event()
            full.publishers.append(waiter)
            try:
                await waiter.wait()
            except BaseException:
                # Woken for room but cancelled: pass the wake-up on.
                if waiter.is_set() and full.publishers and len(full.ready) < limit:
                    full.publishers.popleft().set()
                raise
            finally:
                if not waiter.is_set():
                    full.publishers.remove(waiter)

    async def subscribe(self, topic: str, group: str) -> Subscription:
        """Attach a consumer to ``group`` on ``topic``, creating the group if needed.

        Args:
            topic: the topic to consume.
            group: the consumer group; its consumers share its messages.

        Returns:
            The new subscription; close it to detach the consumer.

        Raises:
            TransportClosed: if the transport is not open.
        """
        state = self._state
        if state is None:
            raise TransportClosed("the transport is not open")
        key = (topic, group)
        target = state.groups.get(key)
        if target is None:
            target = state.groups[key] = _Group(topic, group)
            state.topics.setdefault(topic, []).append(target)
        subscription = _MemorySubscription(target, self._max_buffer)
        target.subscriptions.add(subscription)
        return subscription

    async def aclose(self) -> None:
        """Close the transport and every subscription on it, and drop every message.

        Blocked receivers and publishers raise :class:`~flowkit.TransportClosed`.
        Closing a closed transport is a no-op.
        """
        state = self._state
        self._state = None
        self._entered = 0
        if state is None or state.closed:
            return
        state.closed = True
        for group in state.groups.values():
            for subscription in list(group.subscriptions):
                subscription._close(give_back=False)
            group.wake_all()

    async def __aenter__(self) -> Self:
        if self._state is None:
            self._state = _State()
        self._entered += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered > 1:
            self._entered -= 1
        else:
            await self.aclose()

    def __repr__(self) -> str:
        state = "open" if self._state is not None else "closed"
        return f"<InMemoryTransport max_buffer={self._max_buffer} {state}>"
