"""The Redis transport: streams, consumer groups and a few Lua scripts."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..._errors import TransportClosed
from ..._redact import redact_url
from .._base import Capabilities
from .._lifecycle import AsyncioReentrant, subscriptions_of
from .._options import split_options
from ._batcher import Batcher
from ._client import TRANSPORT_OPTIONS, open_client, redis_errors, translate
from ._delivery import encode_headers
from ._scripts import Scripts
from ._state import Connection, Options
from ._subscription import RedisSubscription

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._base import Subscription

__all__ = ["RedisTransport"]

logger = logging.getLogger("flowkit.transport.redis")

# The largest bulk string Redis accepts by default (proto-max-bulk-len).
_MAX_MESSAGE_SIZE = 512 * 1024 * 1024
_CAPABILITIES = Capabilities(
    crosses_processes=True,
    native_delay=False,
    ordered_by_key=False,
    max_message_size=_MAX_MESSAGE_SIZE,
)
_SCHEMES = ("redis://", "rediss://", "unix://")


class RedisTransport(AsyncioReentrant[Connection]):
    """A transport on Redis Streams, shared by every process that uses one server.

    Layout, for a topic ``T`` and a consumer group ``G`` (``prefix`` first):

    * ``prefix:T`` is the topic's stream; each flowkit group is a Redis
      consumer group on it, created at the stream's end (``$``) before
      :meth:`subscribe` returns, so it gets what is published from then on.
      A publish to a topic no group subscribes to is dropped (``XADD
      NOMKSTREAM``);
    * ``prefix:T:to:G`` is the group's own stream, read together with the
      topic's stream in one ``XREADGROUP``: it holds what is meant for ``G``
      only (a publish with ``group=G``, a nacked message, what a closed
      subscription gave back);
    * ``prefix:T:delayed:G`` is a sorted set of the messages ``G`` nacked
      with a delay, scored by their due time on the server's clock. A Lua
      script moves the due ones back to ``prefix:T:to:G`` atomically; the
      group's subscriptions run it at each read and when a local timer says
      one is due.

    Each subscription is a consumer named after the host, the process id and
    a random part. Entries carry the fields ``body``, ``headers`` (JSON),
    ``key`` and, on a message added again, ``attempt``.

    Delivery and redelivery:

    * ``attempt`` is 1 for a fresh message; a message added again (nacked,
      given back) carries its count in its ``attempt`` field; an entry
      reclaimed from a dead consumer counts Redis's own delivery count;
    * a live subscription resets the idle time of what it holds every third
      of ``claim_idle``; the entries of a consumer whose process died or
      stopped running stay idle, and after ``claim_idle`` seconds the
      group's live consumers claim them (``XAUTOCLAIM``) and deliver them
      again;
    * closing a subscription gives back at once everything it held, and
      deletes its consumer; closing the last subscription of a group
      subscribed with ``durable=False`` removes the group, its own stream
      and its delayed set (and the topic's stream, if no group is left).

    Publishing: concurrent publishes, acks and nacks are sent together, one
    pipeline per round trip, the publishes of a pipeline as one call of a
    script that adds each entry. No publish waits longer than
    ``publish_timeout``: it fails with :class:`~flowkit.TransportError`
    (through a lost connection it is retried until then; a retried publish
    may be delivered twice, as the contract allows).

    Retention: every thousand entries added to a stream (or a tenth of
    ``max_len``), the stream is trimmed (``XTRIM MINID``) to the oldest entry
    any group still needs: its oldest pending entry, else its last delivered
    one. What a group has not read or not acked is never trimmed unless the
    stream then holds more than ``max_len`` entries; then the oldest go, and
    a WARNING says how many unsettled messages were dropped.

    Reconnection: reads, publishes and acks retry through a lost connection
    with a growing pause (50 ms to 2 s); a consumer group found missing (a
    server that lost its data) is created again. Nothing acked or pending is
    lost across a restart of a server that persists (``appendonly yes``).

    It needs Redis 7.0 or later, a single server (not Redis Cluster), and
    asyncio: entering it under trio raises :class:`~flowkit.TransportError`.

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
            for TLS, or ``unix://``; the password never appears in a log, a
            repr or an error. Its query string may set the options below
            (``?claim_idle=5&max_len=100000``, ``max_len=`` for None), which
            then take precedence over the keyword arguments; the rest of the
            query goes to redis-py.
        prefix: the start of every key the transport writes.
        prefetch: the most entries one read takes from each of the group's
            two streams; what the caller does not take at once is held for
            the next receive.
        claim_idle: seconds after which the entries of a consumer that
            stopped (its process died or hangs) go to another consumer of the
            group.
        max_len: the most entries a stream keeps (None: no limit: only what
            every group has settled is trimmed).
        publish_timeout: the longest, in seconds, a publish, ack, nack or
            backlog waits for its reply (room in the queue of commands
            included).
        connect_timeout: the longest, in seconds, opening a connection takes.
        redis_options: more keyword arguments for
            ``redis.asyncio.Redis.from_url`` (TLS certificates, for one).

    Raises:
        ValueError: if the URL's scheme is not one of the above, or an
            option is out of range.
    """

    _ASYNCIO_ONLY = (
        "RedisTransport runs on asyncio only: redis-py's asyncio client does not run on "
        "trio or any other event loop"
    )

    __slots__ = (
        "_claim_idle",
        "_connect_timeout",
        "_max_len",
        "_prefetch",
        "_prefix",
        "_publish_timeout",
        "_redis_options",
        "_url",
        "_where",
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "flowkit",
        prefetch: int = 100,
        claim_idle: float = 30.0,
        max_len: int | None = None,
        publish_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        redis_options: Mapping[str, Any] | None = None,
    ) -> None:
        where = redact_url(url)
        if not url.startswith(_SCHEMES):
            raise ValueError(
                f"RedisTransport needs a redis://, rediss:// or unix:// URL, not {where!r}"
            )
        url, in_url, _ = split_options(url, TRANSPORT_OPTIONS)
        fixed = {"decode_responses", "protocol"} & (
            set(redis_options or ()) | set(parse_qs(urlsplit(url).query))
        )
        if fixed:
            raise ValueError(
                f"RedisTransport sets {', '.join(sorted(fixed))} itself (it reads raw "
                f"RESP2 replies); leave it out of the URL and of redis_options: {where!r}"
            )
        prefix = in_url.text("prefix", prefix)
        prefetch = in_url.integer("prefetch", prefetch)
        claim_idle = in_url.number("claim_idle", claim_idle)
        max_len = in_url.limit("max_len", max_len)
        publish_timeout = in_url.number("publish_timeout", publish_timeout)
        connect_timeout = in_url.number("connect_timeout", connect_timeout)
        if not prefix:
            raise ValueError("prefix must not be empty")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        if not claim_idle > 0:
            raise ValueError(f"claim_idle must be > 0 seconds, not {claim_idle}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be at least 1 (or None), not {max_len}")
        if not publish_timeout > 0 or not connect_timeout > 0:
            raise ValueError("publish_timeout and connect_timeout must be > 0 seconds")
        super().__init__()
        self._url = url
        self._where = where
        self._prefix = prefix
        self._prefetch = prefetch
        self._claim_idle = claim_idle
        self._max_len = max_len
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._redis_options = dict(redis_options or {})

    @property
    def capabilities(self) -> Capabilities:
        """Crosses processes; delays kept by the transport; no order by key; 512 MB bodies."""
        return _CAPABILITIES

    @property
    def prefix(self) -> str:
        """The start of every key the transport writes."""
        return self._prefix

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

        Sent with the other commands queued meanwhile, in one pipeline.

        Args:
            topic: where to publish.
            body: the message body.
            headers: string headers, delivered as given.
            key: carried in the entry, not used for order: a group's
                consumers compete for its entries.
            group: deliver to this group only, through its own stream
                (dropped if the group was never subscribed).

        Raises:
            TransportClosed: if the transport is not open, or closes meanwhile.
            TransportError: if Redis refused the message, or it could not be
                sent within ``publish_timeout``.
        """
        connection = self._open()
        prefix = self._prefix
        stream = (f"{prefix}:{topic}" if group is None else f"{prefix}:{topic}:to:{group}").encode()
        if type(body) is not bytes:
            body = bytes(body)
        if headers:
            if key is None:
                fields: tuple[Any, ...] = (b"body", body, b"headers", encode_headers(headers))
            else:
                fields = (b"body", body, b"headers", encode_headers(headers), b"key", key)
        elif key is None:
            fields = (b"body", body)
        else:
            fields = (b"body", body, b"key", key)
        if await connection.batcher.publish(stream, fields):
            connection.retention.note(stream)

    async def backlog(self, topic: str, group: str) -> int:
        """How many messages ``group`` has not settled yet.

        The group's lag (unread entries) and pending entries, over the
        topic's stream and its own, plus its delayed messages. Zero for a
        group that does not exist.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if Redis could not be asked.
        """
        connection = self._open()
        prefix = self._prefix
        return int(
            await connection.batcher.call(
                "backlog",
                "EVALSHA",
                Scripts.backlog,
                3,
                f"{prefix}:{topic}",
                f"{prefix}:{topic}:to:{group}",
                f"{prefix}:{topic}:delayed:{group}",
                group,
            )
        )

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        """Attach a consumer to ``group`` on ``topic``, creating the group if needed.

        The group exists in Redis when this returns: what is published from
        then on reaches it.

        Args:
            topic: the topic to consume.
            group: the consumer group; its consumers share its messages.
            durable: False for a group removed from Redis, with its messages,
                when its last subscription closes (in this process, and no
                consumer of it is left in another).

        Returns:
            The new subscription; close it to detach the consumer.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if Redis could not create the group.
        """
        connection = self._open()
        target = connection.group(topic, group, durable)
        consumer = f"{connection.consumer_prefix}:{secrets.token_hex(4)}"
        try:
            await target.create(consumer)
        except redis_errors.RedisError as exc:
            if not target.subscriptions:
                connection.forget(target)
            raise translate(exc, f"subscribe to {topic!r} as {group!r}") from exc
        if connection.closed:
            raise TransportClosed("the transport is closed")
        # The same group, unless its last local subscription left meanwhile.
        target = connection.group(topic, group, durable)
        subscription = RedisSubscription(connection, target, consumer)
        target.subscriptions.add(subscription)
        return subscription

    async def _disconnect(self, connection: Connection) -> None:
        """Close every subscription (each gives back what it held), the
        background tasks, the queue of commands and the client."""
        subscriptions = subscriptions_of(connection.groups.values())
        try:
            await asyncio.gather(*(subscription.aclose() for subscription in subscriptions))
        finally:
            connection.closed = True
            for group in connection.groups.values():
                group.cancel_timer()
            tasks = list(connection.tasks)
            for task in tasks:
                task.cancel()
            flusher = connection.batcher.close()
            if flusher is not None:
                tasks.append(flusher)
            await asyncio.gather(*tasks, return_exceptions=True)
            await connection.client.aclose()

    async def _connect(self) -> Connection:
        client = await open_client(
            self._url,
            socket_timeout=max(self._publish_timeout, 7.0),
            connect_timeout=self._connect_timeout,
            options=self._redis_options,
        )
        try:
            await Scripts.load(client)
        except redis_errors.RedisError as exc:
            await client.aclose()
            raise translate(exc, f"loading of scripts on {self._where}") from exc
        options = Options(
            where=self._where,
            prefix=self._prefix,
            prefetch=self._prefetch,
            claim_idle=self._claim_idle,
            max_len=self._max_len,
            timeout=self._publish_timeout,
        )
        batcher = Batcher(client, where=self._where, timeout=self._publish_timeout)
        return Connection(client, batcher, options, f"{socket.gethostname()}:{os.getpid()}")

    def __repr__(self) -> str:
        return f"<RedisTransport url={self._where!r} prefix={self._prefix!r} {self._status}>"
