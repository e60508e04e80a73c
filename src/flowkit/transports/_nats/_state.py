"""What one open transport shares: the client, its options, and its groups.

A topic ``T`` is the stream ``<prefix>_<T>`` with the one subject
``<prefix>.<T>`` (names encoded by :func:`~._client.encode_name`), kept with
interest retention: a message stays while a group has not acked it, and a
publish to a topic no group subscribes to has no stream to go to and is
dropped. A group ``G`` is the durable pull consumer ``G`` of that stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from ..._errors import TransportClosed, TransportError
from .._backoff import Backoff
from ._client import RECOVERABLE, encode_name, js_error_code, translate

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from ._subscription import NATSSubscription

__all__ = ["Connection", "Group", "Options"]

logger = logging.getLogger("flowkit.transport.nats")

# What a probe of settled acks shrugs off: it only delays a count.
_QUIET: tuple[type[Exception], ...] = (*RECOVERABLE, nats.errors.Error)
_QUIET_OR_TIMEOUT: tuple[type[Exception], ...] = (*_QUIET, TimeoutError)

# JetStream API error codes.
STREAM_NAME_IN_USE = 10058
STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
CONSUMER_NAME_EXISTS = 10013
CONSUMER_EXISTS = 10148

# How long an unused non-durable group's consumer outlives a process that died
# without closing it.
INBOX_INACTIVE = 60.0
# The most messages a group may hold delivered and unacked (nack delays included).
MAX_ACK_PENDING = 100_000
# JetStream's de-duplication header: one id for every attempt at one message.
MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True, slots=True)
class Options:
    """The transport's settings, as validated by :class:`NATSTransport`."""

    where: str
    prefix: str
    prefetch: int
    ack_wait: float
    timeout: float
    storage: StorageType
    max_len: int | None


@dataclass(eq=False, slots=True)
class Group:
    """One consumer group of one topic, as this process uses it."""

    connection: Connection
    topic: str
    name: str
    durable: bool
    stream: str
    subject: str
    consumer: str
    token: str
    subscriptions: set[NATSSubscription] = field(default_factory=set)
    # The ack subject of the last message acked here, and whether a settle
    # was sent since the last probe (see :meth:`settled`).
    last_ack: str | None = None
    unprobed: bool = False

    @property
    def next_subject(self) -> str:
        """Where pull requests for the group's next messages go."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"

    async def settled(self) -> None:
        """Wait until JetStream has processed the acks and nacks sent for this group.

        Acks go without a reply; the server processes a consumer's acks in
        order, so acking again, with a reply, the last message acked here
        (a no-op) tells when every earlier one was processed.
        """
        if not self.unprobed:
            return
        self.unprobed = False
        client = self.connection.client
        try:
            if self.last_ack is not None:
                await client.request(
                    self.last_ack, b"+ACK", timeout=min(1.0, self.connection.options.timeout)
                )
            else:
                await client.flush(timeout=1)
        except _QUIET:
            pass

    async def create(self) -> None:
        """Create the topic's stream and the group's consumer, if missing.

        Retried through a lost connection until the transport's timeout, and
        when the stream is removed meanwhile (by the last non-durable group of
        the topic, in another process).

        Raises:
            TransportError: if JetStream refused, or could not be reached in time.
        """
        options = self.connection.options
        js = self.connection.js
        stream = StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            retention=RetentionPolicy.INTEREST,
            storage=options.storage,
            max_msgs=options.max_len if options.max_len is not None else -1,
            discard=DiscardPolicy.OLD,
        )
        consumer = ConsumerConfig(
            durable_name=self.consumer,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            ack_wait=options.ack_wait,
            max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING,
            inactive_threshold=None if self.durable else INBOX_INACTIVE,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.timeout
        backoff = Backoff()
        while True:
            try:
                try:
                    await js.add_stream(stream)
                except nats.js.errors.APIError as exc:
                    if js_error_code(exc) != STREAM_NAME_IN_USE:
                        raise
                try:
                    await js.add_consumer(self.stream, consumer)
                except nats.js.errors.APIError as exc:
                    if js_error_code(exc) not in (CONSUMER_NAME_EXISTS, CONSUMER_EXISTS):
                        raise
                return
            except Exception as exc:
                if self.connection.closed:
                    raise TransportClosed("the transport is closed") from exc
                again = isinstance(exc, RECOVERABLE) or js_error_code(exc) == STREAM_NOT_FOUND
                if not again or loop.time() + backoff.pause > deadline:
                    raise translate(
                        exc, f"creating group {self.name!r} of topic {self.topic!r}"
                    ) from exc
                await backoff.sleep()

    async def remove(self) -> None:
        """Delete the group's consumer, and the topic's stream if no group is left."""
        js = self.connection.js
        try:
            await js.delete_consumer(self.stream, self.consumer)
        except nats.js.errors.NotFoundError:
            pass
        try:
            info = await js.stream_info(self.stream)
            if info.state.consumer_count == 0:
                await js.delete_stream(self.stream)
        except nats.js.errors.NotFoundError:
            pass


class Connection:
    """The open client and what the transport's parts share through it."""

    __slots__ = (
        "_ack_inbox",
        "_acks",
        "_next_token",
        "client",
        "closed",
        "groups",
        "js",
        "options",
        "reconnect_listeners",
        "subjects",
    )

    def __init__(self, client: Client, options: Options) -> None:
        self.client = client
        # JetStream's acks of publishes come to one inbox of the connection,
        # ``<inbox>.<token>``, each to the future waiting for it.
        self._ack_inbox = f"{client.new_inbox()}."
        self._acks: dict[str, asyncio.Future[Msg]] = {}
        self._next_token = itertools.count()
        self.js: JetStreamContext = client.jetstream(timeout=options.timeout)
        self.options = options
        self.closed = False
        self.groups: dict[tuple[str, str], Group] = {}
        self.subjects: dict[str, str] = {}
        self.reconnect_listeners: set[Callable[[], None]] = set()

    async def open(self) -> None:
        """Subscribe the inbox of publish acks.

        Raises:
            TransportError: if the subscription fails.
        """
        try:
            await self.client.subscribe(f"{self._ack_inbox}*", cb=self._on_ack)
        except _QUIET as exc:
            raise translate(exc, "subscribing the inbox of publish acks") from exc

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject[len(self._ack_inbox) :], None)
        if future is not None and not future.done():
            future.set_result(msg)

    def subject(self, topic: str) -> str:
        """The subject of a topic (cached: publishing asks for it every time)."""
        subject = self.subjects.get(topic)
        if subject is None:
            subject = f"{self.options.prefix}.{encode_name(topic)}"
            if len(self.subjects) >= 10_000:
                self.subjects.clear()
            self.subjects[topic] = subject
        return subject

    def stream(self, topic: str) -> str:
        """The name of a topic's stream."""
        return f"{self.options.prefix}_{encode_name(topic)}"

    def group(self, topic: str, name: str, durable: bool) -> Group:
        """The local state of a group, made on first use."""
        group = self.groups.get((topic, name))
        if group is None:
            encoded_topic = encode_name(topic)
            token = encode_name(name)
            group = Group(
                connection=self,
                topic=topic,
                name=name,
                durable=durable,
                stream=self.stream(topic),
                subject=f"{self.options.prefix}.{encoded_topic}",
                consumer=token,
                token=token,
                subscriptions=set(),
            )
            self.groups[(topic, name)] = group
        return group

    def forget(self, group: Group) -> None:
        """Drop a group's local state once it has no subscription."""
        if self.groups.get((group.topic, group.name)) is group:
            del self.groups[(group.topic, group.name)]

    def reconnected(self) -> None:
        """Tell every subscription the connection came back (its pull requests are gone)."""
        for listener in list(self.reconnect_listeners):
            listener()

    async def publish(self, topic: str, body: bytes, headers: Mapping[str, str] | None) -> None:
        """Publish to the topic's subject on JetStream and wait for its ack, retrying
        through a lost connection until the timeout.

        Every attempt carries the same ``Nats-Msg-Id``, so JetStream stores the
        message once even when an attempt whose ack came too late was stored.

        A message no stream takes (no group subscribes to the topic) is
        dropped. Nobody answering a publish means that only when JetStream
        says the topic's stream does not exist: a server shutting down stops
        JetStream before it closes its connections, and what is published
        meanwhile is tried again.

        Raises:
            TransportClosed: if the transport closes meanwhile.
            TransportError: if JetStream refused the message, or did not take
                it within the timeout.
        """
        subject = self.subject(topic)
        timeout = self.options.timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt_timeout = max(2.0, timeout / 4)
        backoff = Backoff()
        client = self.client
        acks = self._acks
        message_id = f"{self._ack_inbox}{next(self._next_token)}"
        headers = {**headers, MSG_ID: message_id} if headers else {MSG_ID: message_id}
        while True:
            token = str(next(self._next_token))
            future: asyncio.Future[Msg] = loop.create_future()
            acks[token] = future
            timer = loop.call_later(
                min(attempt_timeout, max(deadline - loop.time(), 0.001)), _expire, future
            )
            try:
                await client.publish(
                    subject,
                    body,
                    reply=self._ack_inbox + token,
                    headers=headers,
                )
                reply = await future
            except RECOVERABLE as exc:
                if self.closed:
                    raise TransportClosed("the transport is closed") from exc
                if loop.time() + backoff.pause >= deadline:
                    raise translate(exc, f"publish to {subject!r}") from exc
                await backoff.sleep()
                continue
            finally:
                timer.cancel()
                acks.pop(token, None)
            data = reply.data
            if not data:
                status = reply.headers.get("Status") if reply.headers else None
                if status == "503":  # no responders
                    if await self._stream_exists(self.stream(topic), deadline) is False:
                        return  # no stream takes the subject: no group listens
                    if loop.time() + backoff.pause >= deadline:
                        raise TransportError(
                            f"NATS JetStream did not take a message to {subject!r} within "
                            f"{timeout:g}s: nobody answered (is JetStream up?)"
                        )
                    await backoff.sleep()
                    continue
            if b'"error"' in data:
                raise TransportError(
                    f"NATS JetStream refused a message to {subject!r}: {_error_of(data)}"
                )
            return

    async def _stream_exists(self, stream: str, deadline: float) -> bool | None:
        """Whether JetStream has the stream; None if it did not say in time."""
        wait = min(max(self.options.timeout / 4, 0.5), deadline - asyncio.get_running_loop().time())
        if wait <= 0:
            return None
        try:
            async with asyncio.timeout(wait):
                await self.js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return False
        except _QUIET_OR_TIMEOUT:
            return None
        return True


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


def _error_of(data: bytes) -> str:
    try:
        error: Any = json.loads(data).get("error", {})
        return f"{error.get('description', error)} (code {error.get('err_code')})"
    except (ValueError, AttributeError):
        return data.decode(errors="replace")[:200]
