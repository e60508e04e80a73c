"""A subscription: one pull consumer's stream of messages into a bounded buffer.

Each subscription has an inbox of its own and keeps one pull request on the
group's consumer outstanding, for as many messages as its buffer has room for
(``prefetch``), expiring after a second; a new one goes out as soon as the
last is fulfilled or expires, and whenever the connection comes back. Several
subscriptions of one group, in one process or many, compete for the group's
messages: JetStream gives each to one pull request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors

from ..._errors import TransportClosed, TransportError
from .._backoff import Backoff
from .._lifecycle import ClosesOnExit
from ._client import RECOVERABLE, js_error_code, translate
from ._delivery import ACK, GROUP_HEADER, NAK, NATSDelivery
from ._state import CONSUMER_NOT_FOUND, STREAM_NOT_FOUND

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription as NATSInbox

    from .._base import Delivery
    from ._state import Group

__all__ = ["NATSSubscription"]

logger = logging.getLogger("flowkit.transport.nats")

# How long one pull request waits on the server for messages, seconds.
PULL_EXPIRES = 1.0
# How long past its expiry a pull request may stay silent before it is taken for lost.
PULL_GRACE = 2.0


class NATSSubscription(ClosesOnExit):
    """A consumer of one group: a pull request loop feeding a bounded buffer."""

    __slots__ = (
        "__weakref__",
        "_arrived",
        "_buffer",
        "_closed",
        "_closing",
        "_done",
        "_group",
        "_held",
        "_inbox",
        "_missing",
        "_outstanding",
        "_puller",
        "_room",
    )

    def __init__(self, group: Group) -> None:
        self._group = group
        self._buffer: deque[Msg] = deque()
        self._held: set[NATSDelivery] = set()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._done = asyncio.Event()
        self._outstanding = 0
        self._missing = False
        self._closing = False
        self._closed = False
        self._inbox: NATSInbox | None = None
        self._puller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the inbox and start pulling.

        Raises:
            TransportError: if the inbox cannot be subscribed.
        """
        connection = self._group.connection
        client = connection.client
        try:
            self._inbox = await client.subscribe(client.new_inbox(), cb=self._on_message)
        except RECOVERABLE as exc:
            raise translate(exc, f"subscribe to {self._group.topic!r}") from exc
        connection.reconnect_listeners.add(self._on_reconnect)
        self._puller = asyncio.create_task(
            self._pull(), name=f"flowkit-nats-pull-{self._group.name}"
        )

    # -- receiving ----------------------------------------------------------------

    async def receive(self) -> Delivery:
        """Wait for the next delivery.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
        """
        return (await self.receive_many(1))[0]

    async def receive_many(self, limit: int) -> Sequence[Delivery]:
        """Wait for at least one delivery, and return up to ``limit`` of those buffered.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
        """
        buffer = self._buffer
        while True:
            if self._closed:
                raise TransportClosed("the subscription is closed")
            if buffer:
                out: list[Delivery] = []
                held = self._held
                for _ in range(min(limit, len(buffer))):
                    delivery = NATSDelivery(self, buffer.popleft())
                    held.add(delivery)
                    out.append(delivery)
                self._room.set()
                return out
            self._arrived.clear()
            await self._arrived.wait()

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries; the acks go out together with the client's next write.

        Raises:
            TransportError: if the connection is closed.
        """
        for delivery in deliveries:
            await delivery.ack()

    async def _settle(self, delivery: NATSDelivery, payload: bytes) -> None:
        if delivery._settled:
            return
        delivery._settled = True
        self._held.discard(delivery)
        reply = delivery._msg.reply
        group = self._group
        group.unprobed = True
        if payload is ACK:
            group.last_ack = reply
        try:
            await self._group.connection.client.publish(reply, payload)
        except (nats.errors.Error, OSError) as exc:
            raise translate(exc, f"settling a message of {self._group.topic!r}") from exc

    # -- the inbox ----------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        reply = msg.reply
        if not reply:
            self._on_status(msg)
            return
        if self._outstanding > 0:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._done.set()
        headers = msg.headers
        if headers is not None:
            to = headers.get(GROUP_HEADER)
            if to is not None and to != self._group.token:
                # Published to another group of the topic: this one settles it unseen.
                await self._group.connection.client.publish(reply, b"+ACK")
                return
        self._buffer.append(msg)
        self._arrived.set()

    def _on_status(self, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "100":  # an idle heartbeat
            return
        if status in ("503", "409") or (
            status == "404" and "Consumer" in headers.get("Description", "")
        ):
            description = headers.get("Description", "")
            if status == "503" or "Deleted" in description or "not found" in description.lower():
                self._missing = True
            elif status == "409":
                logger.debug(
                    "pull request of group %r of topic %r ended: %s",
                    self._group.name,
                    self._group.topic,
                    description,
                )
        self._outstanding = 0
        self._done.set()

    def _on_reconnect(self) -> None:
        self._outstanding = 0
        self._done.set()

    async def _pull(self) -> None:
        group = self._group
        connection = group.connection
        client = connection.client
        prefetch = connection.options.prefetch
        low = max(1, prefetch // 2)
        progress_every = connection.options.ack_wait / 3
        loop = asyncio.get_running_loop()
        next_progress = loop.time() + progress_every
        backoff = Backoff()
        inbox = self._inbox
        assert inbox is not None
        while not self._closing:
            now = loop.time()
            if now >= next_progress:
                await self._progress()
                next_progress = now + progress_every
            if self._missing:
                self._missing = False
                try:
                    await group.create()
                except TransportError as exc:
                    logger.warning("%s; trying again", exc)
                    await backoff.sleep()
                    self._missing = True
                    continue
            room = prefetch - len(self._buffer)
            if room < low:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), max(0.01, next_progress - now))
                continue
            self._done.clear()
            self._outstanding = room
            request = b'{"batch":%d,"expires":%d}' % (room, int(PULL_EXPIRES * 1e9))
            try:
                await client.publish(group.next_subject, request, reply=inbox.subject)
            except (nats.errors.Error, OSError) as exc:
                self._outstanding = 0
                if connection.closed:
                    return
                logger.debug("pull request failed: %s", exc)
                await backoff.sleep()
                continue
            backoff.reset()
            expiry = loop.time() + PULL_EXPIRES + PULL_GRACE
            while not self._done.is_set() and not self._closing:
                now = loop.time()
                if now >= expiry:
                    # Lost (a server restart, a dropped connection): ask whether
                    # the consumer is still there, and pull again.
                    self._outstanding = 0
                    await self._check_consumer()
                    break
                if now >= next_progress:
                    await self._progress()
                    next_progress = now + progress_every
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._done.wait(), max(0.01, min(expiry, next_progress) - now)
                    )
            if self._missing:
                await backoff.sleep()

    async def _check_consumer(self) -> None:
        group = self._group
        try:
            await group.connection.js.consumer_info(group.stream, group.consumer)
        except nats.js.errors.NotFoundError:
            self._missing = True
        except nats.js.errors.APIError as exc:
            if js_error_code(exc) in (CONSUMER_NOT_FOUND, STREAM_NOT_FOUND):
                self._missing = True
        except RECOVERABLE:
            pass

    async def _progress(self) -> None:
        """Tell the server the messages held here are still being worked on."""
        client = self._group.connection.client
        try:
            for msg in self._buffer:
                await client.publish(msg.reply, b"+WPI")
            for delivery in list(self._held):
                await client.publish(delivery._msg.reply, b"+WPI")
        except (nats.errors.Error, OSError) as exc:
            logger.debug("in-progress acks not sent: %s", exc)

    # -- closing ------------------------------------------------------------------

    async def aclose(self) -> None:
        """Detach the consumer; what it held goes back to the group (``-NAK``).

        The pull request still outstanding is let run out first (within
        ``PULL_EXPIRES``): NATS 2.9 would deliver to it after the inbox is
        gone, and a message given back could land there, unseen until
        ``ack_wait``. Closing the last subscription of a non-durable group
        deletes its consumer (and the topic's stream, when no group is left
        on it).
        """
        if self._closing:
            return
        self._closing = True
        self._closed = True
        self._arrived.set()
        group = self._group
        connection = group.connection
        client = connection.client
        connection.reconnect_listeners.discard(self._on_reconnect)
        puller = self._puller
        if puller is not None:
            puller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await puller
        inbox = self._inbox
        try:
            if inbox is not None and not client.is_closed:
                if self._outstanding > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._done.wait(), PULL_EXPIRES + PULL_GRACE)
                with contextlib.suppress(*RECOVERABLE, nats.errors.Error):
                    await inbox.unsubscribe()
            given_back = [msg.reply for msg in self._buffer]
            given_back.extend(d._msg.reply for d in self._held if not d._settled)
            for delivery in self._held:
                delivery._settled = True
            self._buffer.clear()
            self._held.clear()
            if not client.is_closed:
                with contextlib.suppress(*RECOVERABLE, nats.errors.Error):
                    for reply in given_back:
                        if reply:
                            await client.publish(reply, NAK)
                    await client.flush(timeout=math.ceil(connection.options.timeout))
        finally:
            group.subscriptions.discard(self)
            if not group.subscriptions:
                connection.forget(group)
                if not group.durable and not client.is_closed:
                    try:
                        await group.remove()
                    except Exception as exc:
                        logger.warning(
                            "could not remove non-durable group %r of topic %r: %s",
                            group.name,
                            group.topic,
                            exc,
                        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<NATSTransport subscription topic={self._group.topic!r} "
            f"group={self._group.name!r} {state}>"
        )
