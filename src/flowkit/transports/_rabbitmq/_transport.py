"""The RabbitMQ transport: topic exchanges, a queue per group, TTL queues for delays."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import os
from typing import TYPE_CHECKING, Any

from pamqp.commands import Basic

from ..._errors import TransportClosed, TransportError
from ..._redact import redact_url
from .._backoff import Backoff
from .._base import Capabilities
from .._lifecycle import AsyncioReentrant
from .._options import split_options
from ._client import LOST, TRANSPORT_OPTIONS, Link, amqp_errors, translate
from ._subscription import RabbitMQSubscription

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

    import aiormq
    from aiormq.abc import AbstractChannel

    from .._base import Subscription

__all__ = ["RabbitMQTransport"]

#: The longest routing key or exchange name AMQP carries, in bytes.
_MAX_NAME = 255

logger = logging.getLogger("flowkit.transport.rabbitmq")

# RabbitMQ's default largest message (max_message_size, 128 MiB since 3.8).
_MAX_MESSAGE_SIZE = 128 * 1024 * 1024
_CAPABILITIES = Capabilities(
    crosses_processes=True,
    native_delay=False,
    ordered_by_key=False,
    max_message_size=_MAX_MESSAGE_SIZE,
)
_SCHEMES = ("amqp://", "amqps://")
_QUEUE_TYPES = ("quorum", "classic")
# A delay queue unused this long (no declare) is deleted by the server; the
# transport declares it again well before, whenever it sends a message to it.
_DELAY_QUEUE_EXPIRES_MS = 3_600_000
_PERSISTENT = 2
# What a publish retries through a new connection (a channel error, when the
# connection it was on is gone).
_PUBLISH_FAILURES: tuple[type[BaseException], ...] = (amqp_errors.ChannelClosed, *LOST)


# The longest names the client sends (room left in a queue's for a delay suffix).
_MAX_QUEUE_NAME = 200
_MAX_EXCHANGE_NAME = 127
# What a name may hold as it is (the client allows these and ":", "#", "+"; ":"
# separates the parts of a name, "+" starts an escape).
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@,/ ")


def _escape(part: str) -> str:
    """A topic or group for a name: any other character than :data:`_PLAIN` as
    ``+XX`` (its UTF-8 bytes in hex), so that two parts never give one name."""
    if all(c in _PLAIN for c in part):
        return part
    return "".join(c if c in _PLAIN else "".join(f"+{b:02X}" for b in c.encode()) for c in part)


def _safe(name: str, limit: int) -> str:
    """``name``, or if it is longer than ``limit``, its start and a hash of it."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:24]
    return f"{name[: limit - 25]},{digest}"


def _delay_ms(delay: float) -> int:
    """A delay in milliseconds, rounded up to two significant digits (so that a
    group uses few delay queues, and no message comes back early)."""
    ms = max(1, math.ceil(delay * 1000))
    if ms < 100:
        return ms
    scale = 10 ** (len(str(ms)) - 2)
    return int(-(-ms // scale) * scale)


class RabbitMQTransport(AsyncioReentrant[Link]):
    """A transport on RabbitMQ (AMQP 0-9-1), shared by every process that uses one server.

    Layout, for a topic ``T`` whose first dot-separated word is ``F`` and a
    consumer group ``G`` (``prefix`` first):

    * ``prefix:F`` is a durable topic exchange, one per topic family; a
      publish goes to it with the routing key ``T``;
    * ``prefix:T:G`` is the group's durable queue, bound to ``prefix:F`` with
      the key ``T``, a quorum queue (``queue_type="quorum"``, the default,
      where the server has them: RabbitMQ 3.8 and later) or a classic one. A
      publish naming the group goes straight to its queue through the
      default exchange (dropped if the queue does not exist). A non-durable
      group (a reply inbox) is a classic queue, exclusive to the connection
      and deleted with its last consumer;
    * ``prefix:T:G:delay:MS`` holds the messages of ``G`` nacked with a delay
      of ``MS`` milliseconds (rounded up to two significant digits): a
      durable queue with ``x-message-ttl`` of ``MS``, dead-lettering into
      ``prefix:T:G`` through the default exchange when a message expires.
      With quorum queues on RabbitMQ 3.10 or later it is a quorum queue that
      dead-letters at least once (``x-dead-letter-strategy``), so a message
      that expires while the node restarts is kept; otherwise a classic
      queue, whose dead-lettering is at most once. No plugin is needed.
      Unused for an hour, it is deleted.

    Delivery and redelivery:

    * every message is persistent (``delivery_mode=2``) and has a
      ``message-id`` of its own (a random prefix of the transport and a
      count), which the copies a nack publishes keep: it is the deliveries'
      ``broker_id``;
    * ``attempt`` counts the deliveries to the group: a nacked message is
      published again (to the queue, or to the delay queue), confirmed, then
      the original is acked; the copy carries its count in the header
      ``x-flowkit-attempt``. What the server gives back itself (a consumer's
      channel closed or its connection lost) counts one more delivery: the
      quorum queue's ``x-delivery-count``, or the classic queue's redelivered
      flag (one, however many times);
    * a consumer holds at most ``prefetch`` unacked messages (``basic.qos``);
      closing its subscription, or its process dying, gives them back at once,
      in their place in the queue. That includes the ones it had received
      but not handed out yet, which then count one delivery more.

    Publishing: each publish is confirmed by the server (publisher
    confirms); concurrent publishes share the channel and are confirmed
    together, the server acking many at once. No publish waits longer than
    ``publish_timeout``: it fails with :class:`~flowkit.TransportError`
    (through a lost connection it is retried until then; a retried publish
    may be delivered twice, as the contract allows).

    Reconnection: when the connection is lost, it is opened again with a
    growing pause (50 ms to 2 s); the subscriptions consume again. What a
    subscription held from the lost connection went back to its queue, and
    settling it is a no-op. Durable queues keep their messages across a
    restart of the server; a reply inbox does not survive one.

    ``backlog`` counts the group's ready messages (the server's count), those
    this process holds unacked, and those waiting in the group's delay queues
    this process used; unacked messages held by another process are not
    counted (AMQP does not report them).

    It needs asyncio: entering it under trio raises :class:`~flowkit.TransportError`.

    Args:
        url: ``amqp://[user[:password]@]host[:port][/vhost]``, or ``amqps://``
            for TLS; the password never appears in a log, a repr or an error.
            Its query string may set the options below (``?prefix=x&prefetch=50``),
            which then take precedence over the keyword arguments; the rest of
            the query goes to aiormq (``heartbeat``, ``cafile``, ``certfile``,
            ``keyfile``, ``no_verify_ssl``...).
        prefix: the start of every exchange and queue name the transport declares.
        prefetch: the most unacked messages one subscription holds.
        queue_type: ``"quorum"`` (the default; classic on a server older than
            3.8) or ``"classic"``, for the durable groups' queues.
        publish_timeout: the longest, in seconds, a publish, nack or
            backlog waits (for a reconnection too).
        connect_timeout: the longest, in seconds, opening a connection takes.
        ssl_context: the TLS context for ``amqps://`` (else the URL's
            ``cafile``/``certfile``/``keyfile``, or the system's defaults).

    Raises:
        ValueError: if the URL's scheme is not one of the above, or an
            option is out of range.
    """

    _ASYNCIO_ONLY = (
        "RabbitMQTransport runs on asyncio only: aio-pika and aiormq do not run on "
        "trio or any other event loop"
    )

    __slots__ = (
        "_connect_timeout",
        "_delay_queues",
        "_id_prefix",
        "_prefetch",
        "_prefix",
        "_publish_timeout",
        "_published",
        "_queue_type",
        "_ssl_context",
        "_subscriptions",
        "_tasks",
        "_url",
        "_where",
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "flowkit",
        prefetch: int = 100,
        queue_type: str = "quorum",
        publish_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        where = redact_url(url)
        if not url.startswith(_SCHEMES):
            raise ValueError(f"RabbitMQTransport needs an amqp:// or amqps:// URL, not {where!r}")
        url, in_url, _ = split_options(url, TRANSPORT_OPTIONS)
        prefix = in_url.text("prefix", prefix)
        queue_type = in_url.text("queue_type", queue_type)
        prefetch = in_url.integer("prefetch", prefetch)
        publish_timeout = in_url.number("publish_timeout", publish_timeout)
        connect_timeout = in_url.number("connect_timeout", connect_timeout)
        if not prefix or not set(prefix) <= _PLAIN or len(prefix) > 64:
            raise ValueError(f"prefix must be 1 to 64 letters, digits or '-_.@,/ ', not {prefix!r}")
        if not 1 <= prefetch <= 65535:
            raise ValueError(f"prefetch must be from 1 to 65535, not {prefetch}")
        if queue_type not in _QUEUE_TYPES:
            raise ValueError(f"queue_type must be 'quorum' or 'classic', not {queue_type!r}")
        if not publish_timeout > 0 or not connect_timeout > 0:
            raise ValueError("publish_timeout and connect_timeout must be > 0 seconds")
        super().__init__()
        self._url = url
        self._where = where
        self._prefix = prefix
        self._prefetch = prefetch
        self._queue_type = queue_type
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._subscriptions: dict[tuple[str, str], set[RabbitMQSubscription]] = {}
        self._id_prefix = os.urandom(8).hex() + "-"
        self._published = itertools.count(1)
        # Delay queues declared, by group: name -> the loop time of the declare.
        self._delay_queues: dict[tuple[str, str], dict[str, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def capabilities(self) -> Capabilities:
        """Crosses processes; delays kept by TTL queues; no order by key; 128 MiB bodies."""
        return _CAPABILITIES

    @property
    def prefix(self) -> str:
        """The start of every exchange and queue name the transport declares."""
        return self._prefix

    def queue_name(self, topic: str, group: str) -> str:
        """The name of a group's queue (see :func:`_safe`)."""
        return _safe(f"{self._prefix}:{_escape(topic)}:{_escape(group)}", _MAX_QUEUE_NAME)

    def exchange_name(self, topic: str) -> str:
        """The name of the topic exchange of a topic's family (its first word)."""
        family = _escape(topic.split(".", 1)[0])
        return _safe(f"{self._prefix}:{family}", _MAX_EXCHANGE_NAME)

    # -- publishing ---------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
        group: str | None = None,
    ) -> None:
        """Publish one message to every group subscribed to ``topic``, and wait
        for the server's confirm.

        Args:
            topic: where to publish (the routing key on the family's exchange).
            body: the message body.
            headers: string headers, delivered as given.
            key: accepted and not used: a group's consumers compete for its
                queue, so no order by key is kept.
            group: deliver to this group only, through its queue (dropped if
                the group was never subscribed).

        Raises:
            TransportClosed: if the transport is not open, or closes meanwhile.
            TransportError: if RabbitMQ refused the message, or did not confirm
                it within ``publish_timeout``.
        """
        link = self._open()
        if group is None:
            exchange = self.exchange_name(topic)
            routing_key = topic
        else:
            exchange = ""
            routing_key = self.queue_name(topic, group)
        properties = Basic.Properties(
            delivery_mode=_PERSISTENT,
            headers=dict(headers) if headers else None,
            message_id=f"{self._id_prefix}{next(self._published)}",
        )
        await self._publish(link, exchange, routing_key, bytes(body), properties, topic)

    async def _publish(
        self,
        link: Link,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
        what: str,
    ) -> None:
        for name, value in (("topic", routing_key), ("exchange", exchange)):
            if len(value.encode()) > _MAX_NAME:
                raise TransportError(
                    f"RabbitMQ publish to {what[:60]!r}...: the {name} is "
                    f"{len(value.encode())} bytes; AMQP names hold {_MAX_NAME} at most"
                )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout
        while True:
            connection = link.connection
            try:
                channel = link.publisher
                if channel is None or channel.is_closed:
                    channel = await link.publishing(deadline)
                if exchange and exchange not in link.declared:
                    await self._declare_exchange(link, exchange, deadline)
                confirmation = link.frames.publish(channel, exchange, routing_key, body, properties)
                async with asyncio.timeout_at(deadline):
                    confirm = await confirmation
            except TimeoutError:
                raise TransportError(
                    f"RabbitMQ publish to {what!r} on {self._where}: no confirm within "
                    f"{self._publish_timeout:g}s"
                ) from None
            except amqp_errors.ChannelNotFoundEntity as exc:
                # An exchange deleted behind the transport's back: declare it again.
                link.declared.discard(exchange)
                if loop.time() >= deadline:
                    raise translate(exc, f"publish to {what!r}") from exc
                continue
            except _PUBLISH_FAILURES as exc:
                lost = (
                    connection is None or connection.is_closed or link.connection is not connection
                )
                if isinstance(exc, amqp_errors.ChannelClosed) and not lost:
                    raise translate(exc, f"publish to {what!r}") from exc
                if link.closed:
                    raise TransportClosed("the transport is closed") from exc
                if loop.time() >= deadline:
                    raise translate(exc, f"publish to {what!r}") from exc
                await asyncio.sleep(Backoff.FIRST)
                continue
            if not isinstance(confirm, Basic.Ack):
                raise TransportError(
                    f"RabbitMQ refused the message published to {what!r}: {confirm!r}"
                )
            return

    async def _declare_exchange(self, link: Link, exchange: str, deadline: float) -> None:
        admin = await link.admin(deadline)
        async with asyncio.timeout_at(deadline):
            await admin.exchange_declare(exchange, exchange_type="topic", durable=True)
        link.declared.add(exchange)

    async def _send_back(
        self,
        topic: str,
        group: str,
        body: bytes,
        headers: dict[str, Any],
        delay: float,
        message_id: str | None,
    ) -> None:
        """Publish a nacked message again, to its group's queue or delay queue,
        with its ``message-id``."""
        link = self._open()
        queue = self.queue_name(topic, group)
        properties = Basic.Properties(
            delivery_mode=_PERSISTENT, headers=headers, message_id=message_id
        )
        if delay <= 0:
            await self._publish(link, "", queue, body, properties, topic)
            return
        ms = _delay_ms(delay)
        delay_queue = f"{queue}:delay:{ms}"
        declared = self._delay_queues.setdefault((topic, group), {})
        now = asyncio.get_running_loop().time()
        if (
            delay_queue not in link.declared
            or now - declared.get(delay_queue, 0.0) > _DELAY_QUEUE_EXPIRES_MS / 2000
        ):
            arguments: dict[str, Any] = {
                "x-message-ttl": ms,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue,
                "x-expires": max(_DELAY_QUEUE_EXPIRES_MS, 2 * ms),
            }
            if self._queue_type == "quorum" and link.server_version >= (3, 10):
                # Dead-lettered at least once: a message that expires while the
                # group's queue is unavailable (a node restarting) is kept.
                arguments["x-queue-type"] = "quorum"
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"
            else:
                arguments["x-queue-type"] = "classic"

            async def declare(connection: aiormq.Connection) -> None:
                admin = await link.admin(now + self._publish_timeout)
                await admin.queue_declare(delay_queue, durable=True, arguments=arguments)

            await link.retry(declare, f"declaring {delay_queue!r}", self._publish_timeout)
            link.declared.add(delay_queue)
            declared[delay_queue] = now
        await self._publish(link, "", delay_queue, body, properties, topic)

    # -- groups -----------------------------------------------------------------------------

    async def backlog(self, topic: str, group: str) -> int:
        """How many messages ``group`` has not settled yet.

        Its queue's ready messages, the messages this process's subscriptions
        of it hold unacked, and the messages in the delay queues of the group
        this transport used. Zero for a group that does not exist.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if RabbitMQ could not be asked.
        """
        link = self._open()
        queues = [self.queue_name(topic, group), *self._delay_queues.get((topic, group), ())]

        async def count(connection: aiormq.Connection) -> int:
            total = 0
            for queue in queues:
                admin = await link.admin(asyncio.get_running_loop().time() + 5)
                try:
                    declared = await admin.queue_declare(queue, passive=True)
                except amqp_errors.ChannelNotFoundEntity:
                    continue
                total += declared.message_count or 0
            return total

        ready: int = await link.retry(count, f"backlog of {group!r}", self._publish_timeout)
        held = sum(s.unsettled for s in self._subscriptions.get((topic, group), ()))
        return ready + held

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        """Attach a consumer to ``group`` on ``topic``, creating its queue if needed.

        The queue is bound to the topic when this returns: what is published
        from then on reaches it.

        Args:
            topic: the topic to consume; its words ``*`` and ``#`` would be
                wildcards of the binding, so they are refused.
            group: the consumer group; its consumers share its queue.
            durable: False for a reply inbox: an exclusive queue deleted, with
                its messages, when its last subscription closes.

        Returns:
            The new subscription; close it to detach the consumer.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if RabbitMQ refused the queue (one of another type
                or other arguments may exist under that name).
            ValueError: for a topic with a word ``*`` or ``#``.
        """
        if {"*", "#"} & set(topic.split(".")):
            raise ValueError(f"a topic cannot have the word '*' or '#': {topic!r}")
        link = self._open()
        subscription = RabbitMQSubscription(
            self, topic, group, self.queue_name(topic, group), durable
        )
        await link.retry(
            lambda _: self._declare_group(link, subscription),
            f"subscribe to {topic!r} as {group!r}",
            self._publish_timeout,
        )
        if link.closed:
            raise TransportClosed("the transport is closed")
        self._subscriptions.setdefault((topic, group), set()).add(subscription)
        try:
            await link.retry(
                lambda _: subscription.consume(
                    self._prefetch, asyncio.get_running_loop().time() + self._publish_timeout
                ),
                f"consume {subscription.queue!r}",
                self._publish_timeout,
            )
        except BaseException:
            await subscription.aclose()
            raise
        return subscription

    async def _declare_group(self, link: Link, subscription: RabbitMQSubscription) -> None:
        deadline = asyncio.get_running_loop().time() + self._publish_timeout
        exchange = self.exchange_name(subscription.topic)
        await self._declare_exchange(link, exchange, deadline)
        admin = await link.admin(deadline)
        if subscription.durable:
            quorum = self._queue_type == "quorum" and link.server_version >= (3, 8)
            await admin.queue_declare(
                subscription.queue,
                durable=True,
                arguments={"x-queue-type": "quorum" if quorum else "classic"},
            )
        else:
            await admin.queue_declare(subscription.queue, exclusive=True, auto_delete=True)
        await admin.queue_bind(subscription.queue, exchange, routing_key=subscription.topic)

    async def _resume(self) -> None:
        """After a reconnection: declare every subscribed group again and consume."""
        for subscriptions in list(self._subscriptions.values()):
            for subscription in list(subscriptions):
                self._recover(subscription)

    def _recover(self, subscription: RabbitMQSubscription) -> None:
        """Declare a subscription's group again and consume, in a task of its own,
        retried with a growing pause until it works, the subscription or the
        transport closes, or the connection is lost (the reconnection then
        starts it again)."""
        link = self._connection
        if link is None:
            return
        task = asyncio.get_running_loop().create_task(self._consume_again(link, subscription))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume_again(self, link: Link, subscription: RabbitMQSubscription) -> None:
        generation = link.generation
        backoff = Backoff()
        while not (subscription.closed or link.closed) and link.generation == generation:
            connection = link.connection
            if connection is None or connection.is_closed:
                return
            loop = asyncio.get_running_loop()
            try:
                await self._declare_group(link, subscription)
                await subscription.consume(self._prefetch, loop.time() + self._publish_timeout)
            except Exception as exc:
                logger.debug("consuming %r again failed: %r", subscription.queue, exc)
                await backoff.sleep()
                continue
            return

    def _forget(self, subscription: RabbitMQSubscription) -> None:
        key = (subscription.topic, subscription.group)
        subscriptions = self._subscriptions.get(key)
        if subscriptions is not None:
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._subscriptions[key]

    def _has_subscription(self, topic: str, group: str) -> bool:
        return bool(self._subscriptions.get((topic, group)))

    async def _delete_queue(self, queue: str) -> None:
        link = self._open()

        async def delete(connection: aiormq.Connection) -> None:
            admin: AbstractChannel = await link.admin(asyncio.get_running_loop().time() + 5)
            await admin.queue_delete(queue)

        await link.retry(delete, f"deleting {queue!r}", self._publish_timeout)

    # -- opening and closing ------------------------------------------------------------

    async def _disconnect(self, link: Link) -> None:
        """Close every subscription (the server gives back what each held), the
        tasks consuming again, then the connection."""
        subscriptions = [s for group in self._subscriptions.values() for s in group]
        try:
            await asyncio.gather(*(s.aclose() for s in subscriptions), return_exceptions=True)
        finally:
            self._subscriptions.clear()
            self._delay_queues.clear()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await link.close()

    async def _connect(self) -> Link:
        link = Link(
            self._url,
            where=self._where,
            connect_timeout=self._connect_timeout,
            ssl_context=self._ssl_context,
        )
        await link.open()
        link.on_reconnect.append(self._resume)
        return link

    def __repr__(self) -> str:
        return f"<RabbitMQTransport url={self._where!r} prefix={self._prefix!r} {self._status}>"
