"""An in-process transport, for tests and single-process applications.

Everything lives in memory: each consumer group is a queue of messages ready
for delivery, a heap of nacked messages waiting for their delay, and the
deliveries its consumers hold. No background task runs: a receiver that finds
nothing ready waits for a publish or for the earliest delayed message to come
due, whichever is first.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections import deque
from itertools import count
from types import MappingProxyType
from typing import TYPE_CHECKING

import anyio
from anyio.lowlevel import checkpoint

from .._errors import TransportClosed, TransportError
from ._base import Capabilities
from ._headers import NO_HEADERS
from ._lifecycle import ClosesOnExit, Reentrant

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._base import Delivery, Subscription

_CAPABILITIES = Capabilities(crosses_processes=False)
__all__ = ["InMemoryTransport"]

logger = logging.getLogger("flowkit.transport.memory")

# A receive or publish that never has to wait still yields to the event loop
# once every _CHECKPOINT_MASK + 1 calls, so a busy task cannot starve the others.
_CHECKPOINT_MASK = 63


class _Message:
    """One published message, shared by every group it fans out to."""

    __slots__ = ("body", "headers", "number", "topic")

    def __init__(self, topic: str, body: bytes, headers: Mapping[str, str], number: int) -> None:
        self.topic = topic
        self.body = body
        self.headers = headers
        # Counted per opening of the transport: with its token, the broker id.
        self.number = number


class _Group:
    """A consumer group of one topic: what its consumers share."""

    __slots__ = (
        "delayed",
        "durable",
        "ids",
        "limit",
        "name",
        "publishers",
        "ready",
        "receivers",
        "state",
        "subscriptions",
        "topic",
    )

    def __init__(self, topic: str, name: str, limit: int, state: _State, durable: bool) -> None:
        self.topic = topic
        self.name = name
        self.limit = limit
        self.state = state
        self.durable = durable
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

    def remove(self) -> None:
        """Forget this group and everything it holds (a non-durable group left alone)."""
        state = self.state
        if state.groups.get((self.topic, self.name)) is self:
            del state.groups[(self.topic, self.name)]
            siblings = state.topics.get(self.topic, [])
            if self in siblings:
                siblings.remove(self)
            if not siblings:
                state.topics.pop(self.topic, None)
        self.ready.clear()
        self.delayed.clear()
        self.wake_all()

    def wake_publishers(self) -> None:
        """Wake the publishers waiting for room, as many as there is room for."""
        room = self.limit - len(self.ready)
        publishers = self.publishers
        while room > 0 and publishers:
            publishers.popleft().set()
            room -= 1

    def backlog(self) -> int:
        """Messages not settled: ready, delayed, or delivered and not acked or nacked."""
        return (
            len(self.ready)
            + len(self.delayed)
            + sum(len(sub._in_flight) for sub in self.subscriptions)
        )

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
        heapq.heappush(delayed, (anyio.current_time() + delay, next(self.ids), delivery))
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

    __slots__ = ("closed", "groups", "published", "token", "topics")

    def __init__(self) -> None:
        self.closed = False
        # Broker ids: this opening's random token and a count of the messages published.
        self.token = os.urandom(6).hex()
        self.published = count(1)
        self.groups: dict[tuple[str, str], _Group] = {}
        self.topics: dict[str, list[_Group]] = {}


def _groups_of(state: _State, topic: str, only: str | None) -> list[_Group]:
    """The groups of ``topic``, or only the one named ``only`` (if it still exists)."""
    if only is None:
        return state.topics.get(topic, [])
    found = state.groups.get((topic, only))
    return [found] if found is not None else []


class _MemoryDelivery:
    """One delivery of a message to one subscription."""

    __slots__ = ("_message", "_subscription", "attempt", "body", "headers")

    def __init__(self, subscription: _MemorySubscription, message: _Message, attempt: int) -> None:
        self._subscription = subscription
        self._message = message
        self.body = message.body
        self.headers = message.headers
        # How many times this message has been delivered to this group, this time included.
        self.attempt = attempt

    @property
    def topic(self) -> str:
        """The topic the message was published to."""
        return self._message.topic

    @property
    def group(self) -> str:
        """The consumer group it was delivered to."""
        return self._subscription._group.name

    @property
    def broker_id(self) -> str:
        """The message's id: a token of this opening of the transport and the
        message's number among those published on it."""
        return f"{self._subscription._group.state.token}:{self._message.number}"

    async def ack(self) -> None:
        """Mark the message handled; a second ack or nack is a no-op."""
        self._subscription._in_flight.pop(self, None)

    async def nack(self, delay: float = 0.0) -> None:
        """Give the message back, to be delivered again after ``delay`` seconds.

        Args:
            delay: seconds before the message is deliverable again.
        """
        in_flight = self._subscription._in_flight
        if self in in_flight:
            del in_flight[self]
            self._subscription._group.requeue(self, delay)

    def __repr__(self) -> str:
        return (
            f"<InMemoryTransport delivery topic={self.topic!r} group={self.group!r} "
            f"attempt={self.attempt}>"
        )


class _MemorySubscription(ClosesOnExit):
    """A consumer attached to one group."""

    __slots__ = ("_closed", "_group", "_in_flight", "_limit", "_receives")

    def __init__(self, group: _Group, limit: int) -> None:
        self._group = group
        self._limit = limit
        self._closed = False
        # Deliveries held, in the order they were made (a dict used as an ordered set).
        self._in_flight: dict[_MemoryDelivery, None] = {}
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
                if isinstance(item, _Message):
                    delivery = _MemoryDelivery(self, item, 1)
                else:
                    delivery = _MemoryDelivery(self, item._message, item.attempt + 1)
                self._in_flight[delivery] = None
                return delivery
            await self._wait(group)

    async def receive_many(self, limit: int) -> list[Delivery]:
        """Wait for the next delivery, and return it with up to ``limit - 1``
        more that are ready now.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
        """
        first = await self.receive()
        group = self._group
        ready = group.ready
        if limit <= 1 or not ready:
            return [first]
        batch = [first]
        in_flight = self._in_flight
        for _ in range(min(limit - 1, len(ready))):
            item = ready.popleft()
            if isinstance(item, _Message):
                delivery = _MemoryDelivery(self, item, 1)
            else:
                delivery = _MemoryDelivery(self, item._message, item.attempt + 1)
            in_flight[delivery] = None
            batch.append(delivery)
        if group.publishers and len(ready) < self._limit:
            group.wake_publishers()
        return batch

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries at once; a delivery already settled is skipped."""
        pop = self._in_flight.pop
        for delivery in deliveries:
            pop(delivery, None)  # type: ignore[call-overload]

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
            group.ready.extendleft(reversed(list(in_flight)))
        in_flight.clear()
        # Wakes this subscription's blocked receivers (they raise TransportClosed)
        # and, for given-back messages, the other consumers of the group.
        group.wake_all_receivers()
        if not group.durable and not group.subscriptions:
            group.remove()

    async def aclose(self) -> None:
        """Detach the consumer; unacked deliveries go back to the front of the group."""
        self._close(give_back=True)

    def __repr__(self) -> str:
        group = self._group
        state = "closed" if self._closed else "open"
        return f"<InMemoryTransport subscription {group.topic!r}/{group.name!r} {state}>"


class InMemoryTransport(Reentrant[_State]):
    """A transport that keeps every message in the memory of the current process.

    It follows the whole transport contract: fan-out to groups, competing
    consumers, ack and delayed nack, redelivery of what a closed subscription
    held, and backpressure. It runs on asyncio and trio and starts no task.

    What it keeps and what it loses:

    * a message published to a topic no group subscribes to is dropped;
    * while it is open, every message of a group is kept until a consumer of
      the group acks it, through nacks, retry delays, and consumers that
      close or stop (what they held goes back to the group);
    * closing it (the last ``async with`` leaving) drops everything not yet
      acked: messages ready, delivered, or waiting out a retry delay. A
      warning says how many. Entering it again starts empty;
    * it never reaches another process.

    Args:
        max_buffer: how many undelivered messages a group holds before
            :meth:`publish` waits for its consumers. Redeliveries (nacked or
            given back) never wait, so a group can briefly hold more.
        publish_timeout: the longest a publish waits for room, in seconds;
            then it fails with :class:`~flowkit.TransportError` (a handler
            publishing to its own full topic would otherwise wait for itself).

    Raises:
        ValueError: if ``max_buffer`` is less than 1 or ``publish_timeout``
            is not positive.
    """

    __slots__ = ("_max_buffer", "_publish_timeout", "_publishes")

    def __init__(self, *, max_buffer: int = 10_000, publish_timeout: float = 10.0) -> None:
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, not {max_buffer}")
        if not publish_timeout > 0:
            raise ValueError(f"publish_timeout must be > 0 seconds, not {publish_timeout}")
        super().__init__()
        self._max_buffer = max_buffer
        self._publish_timeout = publish_timeout
        self._publishes = 0

    @property
    def capabilities(self) -> Capabilities:
        """Messages stay in this process: ``crosses_processes`` is False."""
        return _CAPABILITIES

    @property
    def max_buffer(self) -> int:
        """How many undelivered messages a group holds before publishers wait."""
        return self._max_buffer

    @property
    def publish_timeout(self) -> float:
        """The longest a publish waits for room, in seconds."""
        return self._publish_timeout

    def outstanding(self) -> int:
        """How many deliveries are not settled yet, over every group.

        Counts the messages ready for delivery, those waiting out a nack
        delay, and those delivered but neither acked nor nacked. Zero means
        every consumer is done with everything published so far.
        """
        state = self._connection
        if state is None:
            return 0
        return sum(group.backlog() for group in state.groups.values())

    async def backlog(self, topic: str, group: str) -> int:
        """How many messages ``group`` has not settled yet (see :meth:`outstanding`).

        Raises:
            TransportClosed: if the transport is not open.
        """
        found = self._open().groups.get((topic, group))
        return found.backlog() if found is not None else 0

    async def publish(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
        group: str | None = None,
    ) -> None:
        """Publish one message to every group subscribed to ``topic``.

        The message is added to every group at once, after waiting while any of
        them holds ``max_buffer`` undelivered messages, for at most
        ``publish_timeout`` seconds.

        Args:
            topic: where to publish.
            body: the message body.
            headers: string headers, delivered as given.
            key: carried, not used: the transport does not order by key (a
                group's competing consumers take messages as they come).
            group: deliver to this group only (dropped if it does not exist).

        Raises:
            TransportClosed: if the transport is not open, or closes while waiting.
            TransportError: if a group stayed full for ``publish_timeout`` seconds.
        """
        state = self._open()
        self._publishes += 1
        if not self._publishes & _CHECKPOINT_MASK:
            await checkpoint()
            if state.closed:
                raise TransportClosed("the transport is closed")
        if group is None:
            groups = state.topics.get(topic)
            if not groups:
                return
        else:
            target = state.groups.get((topic, group))
            if target is None:
                return
            groups = [target]
        limit = self._max_buffer
        for each in groups:
            if len(each.ready) >= limit:
                groups = await self._wait_for_room(state, topic, group)
                break
        message = _Message(
            topic,
            body if type(body) is bytes else bytes(body),
            MappingProxyType(dict(headers)) if headers else NO_HEADERS,
            next(state.published),
        )
        for each in groups:
            each.ready.append(message)
            if each.receivers:
                each.receivers.popleft().set()

    async def _wait_for_room(self, state: _State, topic: str, only: str | None) -> list[_Group]:
        """Wait until no group of ``topic`` (or the group ``only``) is full; return them.

        Raises:
            TransportError: if a group is still full after ``publish_timeout``.
        """
        with anyio.move_on_after(self._publish_timeout):
            return await self._room(state, topic, only)
        full = [g.name for g in _groups_of(state, topic, only) if len(g.ready) >= self._max_buffer]
        raise TransportError(
            f"publish to {topic!r} waited {self._publish_timeout}s for room: group(s) "
            f"{', '.join(repr(name) for name in full)} still hold {self._max_buffer} "
            "undelivered messages (max_buffer). Their consumers are not keeping up, or "
            "a handler publishes to the topic it consumes"
        )

    async def _room(self, state: _State, topic: str, only: str | None) -> list[_Group]:
        limit = self._max_buffer
        while True:
            if state.closed:
                raise TransportClosed("the transport is closed")
            groups = _groups_of(state, topic, only)
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

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        """Attach a consumer to ``group`` on ``topic``, creating the group if needed.

        Args:
            topic: the topic to consume.
            group: the consumer group; its consumers share its messages.
            durable: False for a group removed, with its messages, when its
                last subscription closes.

        Returns:
            The new subscription; close it to detach the consumer.

        Raises:
            TransportClosed: if the transport is not open.
        """
        state = self._open()
        key = (topic, group)
        target = state.groups.get(key)
        if target is None:
            target = state.groups[key] = _Group(topic, group, self._max_buffer, state, durable)
            state.topics.setdefault(topic, []).append(target)
        subscription = _MemorySubscription(target, self._max_buffer)
        target.subscriptions.add(subscription)
        return subscription

    async def _connect(self) -> _State:
        """A new, empty state: opening waits for nothing, on any event loop."""
        return _State()

    async def _disconnect(self, state: _State) -> None:
        """Drop every message, and close every subscription without giving back.

        Blocked receivers and publishers raise :class:`~flowkit.TransportClosed`.
        """
        state.closed = True
        dropped = sum(group.backlog() for group in state.groups.values())
        if dropped:
            delayed = sum(len(group.delayed) for group in state.groups.values())
            logger.warning(
                "the in-memory transport closed with %d message(s) not yet handled "
                "(%d waiting for a retry); they are dropped, since it keeps nothing "
                "once closed",
                dropped,
                delayed,
            )
        for group in state.groups.values():
            for subscription in list(group.subscriptions):
                subscription._close(give_back=False)
            group.wake_all()

    def __repr__(self) -> str:
        return (
            f"<InMemoryTransport max_buffer={self._max_buffer} "
            f"publish_timeout={self._publish_timeout} {self._status}>"
        )
