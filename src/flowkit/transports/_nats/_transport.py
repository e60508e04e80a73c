"""The NATS transport: JetStream streams and durable pull consumers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from typing import TYPE_CHECKING, Any

import nats.js.errors
from nats.js.api import StorageType

from ..._errors import TransportClosed
from ..._redact import redact_url
from .._base import Capabilities
from .._lifecycle import AsyncioReentrant, subscriptions_of
from ._client import RECOVERABLE, encode_name, js_error_code, open_client, own_options, translate
from ._delivery import GROUP_HEADER, HEADERS_HEADER, KEY_HEADER, encode_headers
from ._state import CONSUMER_NOT_FOUND, STREAM_NOT_FOUND, Connection, Options
from ._subscription import NATSSubscription

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._base import Subscription

__all__ = ["NATSTransport"]

logger = logging.getLogger("flowkit.transport.nats")

# nats-server's default max_payload; an open transport reads the server's own.
_DEFAULT_MAX_PAYLOAD = 1024 * 1024
# Room left in a message for the transport's NATS headers (and a caller's).
_HEADER_ROOM = 8 * 1024
_SCHEMES = ("nats://", "tls://")
_PREFIX = re.compile(r"[A-Za-z0-9-]+")


class NATSTransport(AsyncioReentrant[Connection]):
    """A transport on NATS JetStream, shared by every process that uses one server.

    Layout, for a topic ``T`` and a consumer group ``G`` (``prefix`` first; a
    name other than letters, digits and ``-`` is encoded, ``.`` as ``_2E``):

    * the stream ``prefix_T`` takes the subject ``prefix.T``; it keeps each
      message until every group of the topic has acked it (interest
      retention). It is made by the first :meth:`subscribe` to the topic: a
      publish to a topic no group ever subscribed is dropped;
    * each group is a durable pull consumer ``G`` of the stream, created at
      the stream's end before :meth:`subscribe` returns (it gets what is
      published from then on), with explicit acks, no limit on deliveries
      (the bus decides when a message is dead), and ``ack_wait``;
    * a publish to one group (``group=G``) goes to the same subject with the
      header ``Flowkit-Group: G``: the topic's other groups ack it unseen.
      NATS 2.9 filters a consumer on one subject only, so a subject per
      group would need a stream or a consumer per (topic, group) pair to
      route; these publishes are rare (dead-letter replays).

    Each subscription has its own inbox and keeps one pull request for up to
    ``prefetch`` messages outstanding; the group's subscriptions (in every
    process) compete for its messages.

    Delivery and redelivery:

    * ``attempt`` is JetStream's delivery count of the message to the group;
    * a nack is ``-NAK`` with the delay: the server holds the message and
      delivers it again (natively, ``native_delay``);
    * a live subscription sends ``+WPI`` (in progress) for what it holds
      every third of ``ack_wait``, so a long handler keeps its message; a
      consumer whose process died stops, and after ``ack_wait`` seconds the
      server delivers its messages to the group's other consumers;
    * closing a subscription gives back at once everything it held
      (``-NAK``); closing the last subscription of a group subscribed with
      ``durable=False`` deletes its consumer (and the topic's stream, when no
      group is left on it). Should its process die first, the server deletes
      the consumer after a minute unused.

    Publishing: a publish waits for JetStream's ack. Concurrent publishes are
    written together by nats-py. No publish waits longer than
    ``publish_timeout``: it fails with :class:`~flowkit.TransportError`
    (through a lost connection it is retried until then; a retried publish
    may be delivered twice, as the contract allows).

    Reconnection: nats-py reconnects without end, every half second; pull
    requests go out again when the connection is back, and a stream or
    consumer found missing (a server that lost its data) is created again.
    What JetStream stored is kept across a restart of the server
    (``storage="file"``).

    It needs nats-server 2.9 or later with JetStream (``-js``), and asyncio:
    entering it under trio raises :class:`~flowkit.TransportError`.

    Args:
        url: ``nats://[user:password@|token@]host[:port]``, or ``tls://`` for
            TLS; several servers of a cluster as a comma-separated list. The
            password or token never appears in a log, a repr or an error. Its
            query string may set the options below (``?ack_wait=5&prefix=app``),
            which then take precedence over the keyword arguments.
        prefix: the start of every stream name and subject the transport
            uses (letters, digits, ``-``).
        prefetch: the most messages one pull request asks for; what the
            caller does not take at once is held for the next receive.
        ack_wait: seconds after which a delivery neither acked nor marked in
            progress goes to another consumer of the group.
        publish_timeout: the longest, in seconds, a publish or a JetStream
            request waits for its reply.
        connect_timeout: the longest, in seconds, opening the connection takes.
        storage: ``"file"`` (kept across restarts) or ``"memory"``, for the
            streams the transport creates.
        max_len: the most messages a topic's stream keeps (None: no limit);
            beyond it the oldest go, settled or not.
        nats_options: more keyword arguments for nats-py's ``connect``
            (``tls=`` an ``ssl.SSLContext``, ``user_credentials=``,
            ``nkeys_seed=``, ``name=``...).

    Raises:
        ValueError: if the URL's scheme is not one of the above, or an
            option is out of range.
    """

    _ASYNCIO_ONLY = (
        "NATSTransport runs on asyncio only: nats-py does not run on trio or any other event loop"
    )

    __slots__ = ("_connect_timeout", "_nats_options", "_options", "_url")

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "flowkit",
        prefetch: int = 100,
        ack_wait: float = 30.0,
        publish_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        storage: str = "file",
        max_len: int | None = None,
        nats_options: Mapping[str, Any] | None = None,
    ) -> None:
        where = redact_url(url)
        if not url.startswith(_SCHEMES):
            raise ValueError(f"NATSTransport needs a nats:// or tls:// URL, not {where!r}")
        url, in_url = own_options(url)
        prefix = in_url.text("prefix", prefix)
        prefetch = in_url.integer("prefetch", prefetch)
        ack_wait = in_url.number("ack_wait", ack_wait)
        publish_timeout = in_url.number("publish_timeout", publish_timeout)
        connect_timeout = in_url.number("connect_timeout", connect_timeout)
        storage = in_url.text("storage", storage)
        max_len = in_url.limit("max_len", max_len)
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"prefix must be letters, digits and '-', not {prefix!r}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        if not ack_wait >= 1:
            raise ValueError(f"ack_wait must be at least 1 second, not {ack_wait}")
        if not publish_timeout > 0 or not connect_timeout > 0:
            raise ValueError("publish_timeout and connect_timeout must be > 0 seconds")
        if storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', not {storage!r}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be at least 1 (or None), not {max_len}")
        if "servers" in (nats_options or {}):
            raise ValueError("give the servers in the URL, not in nats_options")
        super().__init__()
        self._url = url
        self._options = Options(
            where=where,
            prefix=prefix,
            prefetch=prefetch,
            ack_wait=ack_wait,
            timeout=publish_timeout,
            storage=StorageType.FILE if storage == "file" else StorageType.MEMORY,
            max_len=max_len,
        )
        self._connect_timeout = connect_timeout
        self._nats_options = dict(nats_options or {})

    @property
    def capabilities(self) -> Capabilities:
        """Crosses processes; delays kept by the server; no order by key; the
        server's largest payload (1 MB by default) less room for headers."""
        connection = self._connection
        payload = _DEFAULT_MAX_PAYLOAD
        if connection is not None and connection.client.max_payload:
            payload = connection.client.max_payload
        return Capabilities(
            crosses_processes=True,
            native_delay=True,
            ordered_by_key=False,
            max_message_size=payload - _HEADER_ROOM,
        )

    @property
    def prefix(self) -> str:
        """The start of every stream name and subject the transport uses."""
        return self._options.prefix

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
        for JetStream to have stored it.

        Args:
            topic: where to publish.
            body: the message body.
            headers: string headers, delivered as given.
            key: carried in the message, not used for order: a group's
                consumers compete for its messages.
            group: deliver to this group only (dropped if the group was
                never subscribed).

        Raises:
            TransportClosed: if the transport is not open, or closes meanwhile.
            TransportError: if JetStream refused the message, or it could not
                be stored within ``publish_timeout``.
        """
        connection = self._open()
        nats_headers: dict[str, str] | None = None
        if headers:
            nats_headers = {HEADERS_HEADER: encode_headers(headers)}
        if group is not None or key is not None:
            if nats_headers is None:
                nats_headers = {}
            if group is not None:
                nats_headers[GROUP_HEADER] = encode_name(group)
            if key is not None:
                nats_headers[KEY_HEADER] = json.dumps(key)
        if type(body) is not bytes:
            body = bytes(body)
        await connection.publish(topic, body, nats_headers)

    async def backlog(self, topic: str, group: str) -> int:
        """How many messages ``group`` has not settled yet: the consumer's
        pending messages and those delivered and not acked (nack delays
        included). Zero for a group that does not exist.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if JetStream could not be asked.
        """
        connection = self._open()
        local = connection.groups.get((topic, group))
        if local is not None:
            await local.settled()
        target = connection.group(topic, group, True)
        try:
            info = await connection.js.consumer_info(target.stream, target.consumer)
        except nats.js.errors.NotFoundError:
            return 0
        except nats.js.errors.APIError as exc:
            if js_error_code(exc) in (CONSUMER_NOT_FOUND, STREAM_NOT_FOUND):
                return 0
            raise translate(exc, f"backlog of {group!r} on {topic!r}") from exc
        except RECOVERABLE as exc:
            raise translate(exc, f"backlog of {group!r} on {topic!r}") from exc
        finally:
            if not target.subscriptions:
                connection.forget(target)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        """Attach a consumer to ``group`` on ``topic``, creating the group if needed.

        The topic's stream and the group's consumer exist when this returns:
        what is published from then on reaches the group.

        Args:
            topic: the topic to consume.
            group: the consumer group; its consumers share its messages.
            durable: False for a group deleted, with its messages, when its
                last subscription in this process closes.

        Returns:
            The new subscription; close it to detach the consumer.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if JetStream could not create the stream or the consumer.
        """
        connection = self._open()
        target = connection.group(topic, group, durable)
        try:
            await target.create()
            if connection.closed:
                raise TransportClosed("the transport is closed")
            target = connection.group(topic, group, durable)
            subscription = NATSSubscription(target)
            await subscription.start()
        except BaseException:
            if not target.subscriptions:
                connection.forget(target)
            raise
        target.subscriptions.add(subscription)
        return subscription

    async def _disconnect(self, connection: Connection) -> None:
        """Close every subscription (each gives back what it held), then the client,
        once what it has to send is sent."""
        subscriptions = subscriptions_of(connection.groups.values())
        try:
            await asyncio.gather(*(subscription.aclose() for subscription in subscriptions))
        finally:
            connection.closed = True
            with contextlib.suppress(Exception):
                await connection.client.flush(timeout=math.ceil(self._options.timeout))
            with contextlib.suppress(Exception):
                await connection.client.close()

    async def _connect(self) -> Connection:
        holder: list[Connection] = []

        def on_reconnect() -> None:
            if holder:
                holder[0].reconnected()

        client = await open_client(
            self._url,
            connect_timeout=self._connect_timeout,
            options=self._nats_options,
            on_reconnect=on_reconnect,
        )
        connection = Connection(client, self._options)
        try:
            await connection.open()
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close()
            raise
        holder.append(connection)
        return connection

    def __repr__(self) -> str:
        options = self._options
        return f"<NATSTransport url={options.where!r} prefix={options.prefix!r} {self._status}>"
