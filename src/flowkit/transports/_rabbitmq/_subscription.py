"""A consumer of one group's queue, and its deliveries.

Each subscription has a channel of its own with ``basic.qos`` set to the
transport's ``prefetch``: the server hands it at most that many unacked
messages, which wait in a buffer for :meth:`receive` (the buffer is bounded
by the prefetch). Closing the subscription cancels its consumer and closes its
channel: the server puts back everything the channel held unacked, handed out
or only buffered, at its place in the queue.

After a reconnection the subscription consumes again on a new channel; the
deliveries it held from the lost connection were given back by the server, so
settling them is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any

from pamqp.commands import Basic

from ..._errors import TransportClosed, TransportError
from .._headers import NO_HEADERS, read_count
from .._lifecycle import ClosesOnExit
from ._client import CLOSING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from aiormq.abc import AbstractChannel, DeliveredMessage

    from .._base import Delivery
    from ._transport import RabbitMQTransport

__all__ = ["ATTEMPT_HEADER", "RabbitMQDelivery", "RabbitMQSubscription"]

logger = logging.getLogger("flowkit.transport.rabbitmq")

#: The header that carries, on a message the transport published again (a nack),
#: how many times it had been delivered to the group.
ATTEMPT_HEADER = "x-flowkit-attempt"
# Headers RabbitMQ adds (a quorum queue's delivery count, dead-lettering): not the publisher's.
_BROKER_HEADERS = frozenset(
    {
        "x-delivery-count",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
# A receive that never has to wait still yields to the event loop once every
# _CHECKPOINT_MASK + 1 calls, so a busy task cannot starve the others.
_CHECKPOINT_MASK = 63


class RabbitMQDelivery:
    """One delivery of a message from a group's queue to one subscription."""

    __slots__ = (
        "_channel",
        "_settled",
        "_subscription",
        "_tag",
        "attempt",
        "body",
        "broker_id",
        "headers",
    )

    def __init__(
        self,
        subscription: RabbitMQSubscription,
        channel: AbstractChannel,
        tag: int,
        body: bytes,
        headers: Mapping[str, str],
        attempt: int,
        message_id: str | None,
    ) -> None:
        self._subscription = subscription
        self._channel = channel
        self._tag = tag
        self._settled = False
        self.body = body
        self.headers = headers
        # How many times this message has been delivered to this group, this time included.
        self.attempt = attempt
        # The message's AMQP message-id: set by the transport when it publishes, kept
        # by the copies a nack publishes; None on a message published without one.
        self.broker_id = message_id

    @property
    def topic(self) -> str:
        """The topic the message was published to."""
        return self._subscription.topic

    @property
    def group(self) -> str:
        """The consumer group it was delivered to."""
        return self._subscription.group

    async def ack(self) -> None:
        """Mark the message handled (``basic.ack``); a second ack or nack is a no-op.

        The ack goes out with the others of this turn of the event loop (the
        server does not confirm acks). A delivery of a connection since lost
        was given back by the server already: acking it is a no-op (it is
        delivered again).
        """
        if not self._take():
            return
        link = self._subscription._transport._connection
        if link is not None and not self._channel.is_closed:
            link.frames.ack(self._channel, self._tag)
        # Else the connection is gone: the server gave the message back.

    async def nack(self, delay: float = 0.0) -> None:
        """Give the message back, to be delivered again after ``delay`` seconds.

        A copy carrying its attempt count is published (confirmed) to the
        group's queue, or to the group's TTL queue of that delay, which
        dead-letters it into the group's queue when it expires; then the
        original is acked. If the copy cannot be published, the original is
        given back to the queue by the server instead (``basic.nack`` with
        requeue, or the lost channel), so the message is never lost; it may
        be delivered twice.

        Args:
            delay: seconds before the message is deliverable again.

        Raises:
            TransportClosed: if the transport closed meanwhile (the server
                gives the message back).
        """
        if not self._take():
            return
        subscription = self._subscription
        channel = self._channel
        if channel.is_closed:
            return
        headers: dict[str, Any] = dict(self.headers)
        headers[ATTEMPT_HEADER] = str(self.attempt)
        try:
            await subscription._transport._send_back(
                subscription.topic, subscription.group, self.body, headers, delay, self.broker_id
            )
        except TransportError as exc:
            logger.warning(
                "could not publish a nacked message of %r again (%s); the server gives it back",
                subscription.queue,
                exc,
            )
            link = subscription._transport._connection
            if link is not None and not channel.is_closed:
                link.frames.nack(channel, self._tag)
            return
        link = subscription._transport._connection
        if link is not None and not channel.is_closed:
            link.frames.ack(channel, self._tag)
        # Else given back by the server: delivered twice, never lost.

    def _take(self) -> bool:
        """Settle this delivery for its subscription (it holds it no more); False if
        it was settled already (a second ack or nack is a no-op)."""
        if self._settled:
            return False
        self._settled = True
        self._subscription._held.pop(self, None)
        return True

    def __repr__(self) -> str:
        return (
            f"<RabbitMQTransport delivery topic={self.topic!r} group={self.group!r} "
            f"tag={self._tag} attempt={self.attempt}>"
        )


def _decode(message: DeliveredMessage) -> tuple[Mapping[str, str], int]:
    """The publisher's headers, and how many deliveries to the group came before."""
    deliver = message.delivery
    before = 1 if getattr(deliver, "redelivered", False) else 0
    raw = message.header.properties.headers
    if not raw:
        return NO_HEADERS, before
    headers: dict[str, str] = {}
    carried = 0
    for name, value in raw.items():
        if name in _BROKER_HEADERS:
            if name == "x-delivery-count":
                before = read_count(value)
        elif name == ATTEMPT_HEADER:
            carried = read_count(value)
        elif isinstance(value, str):
            headers[name] = value
        elif isinstance(value, (bytes, bytearray)):
            headers[name] = bytes(value).decode(errors="replace")
        else:
            headers[name] = str(value)
    return headers, carried + before


class RabbitMQSubscription(ClosesOnExit):
    """A consumer attached to one group's queue."""

    __slots__ = (
        "_arrived",
        "_buffer",
        "_channel",
        "_closed",
        "_consuming",
        "_held",
        "_receives",
        "_tag",
        "_transport",
        "durable",
        "group",
        "queue",
        "topic",
    )

    def __init__(
        self, transport: RabbitMQTransport, topic: str, group: str, queue: str, durable: bool
    ) -> None:
        self._transport = transport
        self.topic = topic
        self.group = group
        self.queue = queue
        self.durable = durable
        self._buffer: deque[RabbitMQDelivery] = deque()
        # Deliveries handed out and not settled (a dict used as an ordered set).
        self._held: dict[RabbitMQDelivery, None] = {}
        self._arrived = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self._tag = f"flowkit.{secrets.token_hex(8)}"
        self._closed = False
        self._receives = 0
        self._consuming = asyncio.Lock()

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def unsettled(self) -> int:
        """How many deliveries this subscription holds: buffered, or handed out unsettled."""
        return len(self._buffer) + len(self._held)

    async def consume(self, prefetch: int, deadline: float) -> None:
        """Open a channel and consume the group's queue on it, closing the one
        it consumed on before (which gives back what that one held)."""
        async with self._consuming:
            if self._closed:
                return
            old, self._channel = self._channel, None
            self._buffer.clear()
            if old is not None and not old.is_closed:
                try:
                    async with asyncio.timeout_at(deadline):
                        await old.close()
                except CLOSING:
                    pass
            connection = await self._transport._open().wait_ready(deadline)
            async with asyncio.timeout_at(deadline):
                channel = await connection.channel(publisher_confirms=False)
                try:
                    await channel.basic_qos(prefetch_count=prefetch)
                    self._channel = channel
                    await channel.basic_consume(
                        self.queue, self._on_message, consumer_tag=self._tag
                    )
                except BaseException:
                    self._channel = None
                    if not channel.is_closed:
                        await channel.close()
                    raise
            channel.on_consumer_cancel_callbacks.add(self._on_cancelled)
            channel.closing.add_done_callback(lambda _: self._on_lost(channel))

    async def _on_cancelled(self, frame: Any) -> None:
        """The server cancelled the consumer (its queue was deleted): consume again."""
        channel = self._channel
        if channel is not None:
            self._on_lost(channel)

    def _on_lost(self, channel: AbstractChannel) -> None:
        """The channel closed, or its consumer was cancelled, without the subscription
        closing: declare the group again and consume on a new channel. (When the
        whole connection was lost, the reconnection does it.)"""
        if self._closed or channel is not self._channel:
            return
        link = self._transport._connection
        if link is None or link.closed or link.connection is None or link.connection.is_closed:
            return
        logger.warning("the consumer of %r stopped; consuming again", self.queue)
        self._transport._recover(self)

    async def _on_message(self, message: DeliveredMessage) -> None:
        channel = message.channel
        if channel is not self._channel or self._closed:
            return  # a late delivery on a channel given up: the server gives it back
        headers, before = _decode(message)
        deliver = message.delivery
        assert isinstance(deliver, Basic.Deliver)
        self._buffer.append(
            RabbitMQDelivery(
                self,
                channel,
                deliver.delivery_tag or 0,
                message.body,
                headers,
                before + 1,
                message.header.properties.message_id or None,
            )
        )
        self._arrived.set()

    async def receive(self) -> Delivery:
        """Wait for the next delivery.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
        """
        return (await self.receive_many(1))[0]

    async def receive_many(self, limit: int) -> list[Delivery]:
        """Wait for at least one delivery, and return up to ``limit`` that are ready.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        buffer = self._buffer
        while not buffer:
            if self._closed:
                raise TransportClosed("the subscription is closed")
            self._arrived.clear()
            await self._arrived.wait()
        if self._closed:
            raise TransportClosed("the subscription is closed")
        self._receives += 1
        if not self._receives & _CHECKPOINT_MASK:
            await asyncio.sleep(0)
        taken: list[Delivery] = []
        held = self._held
        while buffer and len(taken) < limit:
            delivery = buffer.popleft()
            held[delivery] = None
            taken.append(delivery)
        if buffer:
            self._arrived.set()  # another waiting receiver takes the rest
        return taken

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries of this subscription (acks are not confirmed by
        the server: they go out together, in one write, without a round trip).

        Raises:
            ValueError: for a delivery of another subscription.
        """
        for delivery in deliveries:
            if not isinstance(delivery, RabbitMQDelivery) or delivery._subscription is not self:
                raise ValueError(f"{delivery!r} is not a delivery of this subscription")
            await delivery.ack()

    async def aclose(self) -> None:
        """Cancel the consumer and close its channel: the server gives back
        everything it held unacked. The last local subscription of a
        non-durable group deletes its queue."""
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        transport = self._transport
        transport._forget(self)
        try:
            async with asyncio.timeout(transport._publish_timeout):
                await self._consuming.acquire()  # a consume under way ends first
        except TimeoutError:
            pass
        else:
            self._consuming.release()
        channel, self._channel = self._channel, None
        self._buffer.clear()
        self._held.clear()
        if channel is not None and not channel.is_closed:
            try:
                async with asyncio.timeout(transport._publish_timeout):
                    await channel.basic_cancel(self._tag)
                    await channel.close()
            except CLOSING as exc:
                logger.debug("closing the consumer of %r: %r", self.queue, exc)
        if not self.durable and not transport._has_subscription(self.topic, self.group):
            try:
                await transport._delete_queue(self.queue)
            except (TransportError, TransportClosed) as exc:
                # Exclusive and auto-delete: gone with its consumer or its connection anyway.
                logger.debug("deleting the queue %r: %r", self.queue, exc)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<RabbitMQTransport subscription queue={self.queue!r} {state}>"
