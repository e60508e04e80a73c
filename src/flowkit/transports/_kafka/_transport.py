"""The Kafka transport: a Kafka topic per topic, a consumer group per group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ..._errors import TransportClosed, TransportError
from ..._redact import redact_url
from .._backoff import Backoff
from .._base import Capabilities
from .._lifecycle import AsyncioReentrant, subscriptions_of
from .._translate import cannot_connect
from ._client import RECOVERABLE, kafka_errors, kafka_name, parse_url, translate
from ._delivery import encode_headers
from ._group import Group, KafkaSubscription

if TYPE_CHECKING:
    from collections.abc import Coroutine, Mapping, Sequence

    from .._base import Subscription
    from ._delivery import KafkaDelivery

__all__ = ["KafkaTransport"]

logger = logging.getLogger("flowkit.transport.kafka")

# Kafka's default largest record batch (message.max.bytes), less room for headers.
_MAX_MESSAGE_SIZE = 1_000_000
_CAPABILITIES = Capabilities(
    crosses_processes=True,
    native_delay=False,
    ordered_by_key=False,
    max_message_size=_MAX_MESSAGE_SIZE,
)
# The most bytes of records the producer sends to one partition in one batch: the
# publishes of 100 concurrent senders go in one.
_BATCH_SIZE = 128 * 1024
# The most Kafka topic names a transport keeps worked out (forgotten all at once beyond).
_NAMES_KEPT = 1024
# Kafka's error code for a topic that exists already.
_TOPIC_EXISTS = 36


class Connection:
    """An open transport: its producer, its admin client, and this process's groups."""

    def __init__(
        self,
        transport: KafkaTransport,
        producer: AIOKafkaProducer,
        admin: AIOKafkaAdminClient,
    ) -> None:
        self.transport = transport
        self.producer = producer
        self.admin = admin
        self.where = transport._where
        self.prefix = transport._prefix
        self.prefetch = transport._prefetch
        self.timeout = transport._publish_timeout
        self.groups: dict[tuple[str, str], Group] = {}
        self.opening: dict[tuple[str, str], asyncio.Task[Group]] = {}
        self.leaving: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.created: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, cancelled when the transport closes."""
        if self.closed:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def recreate(self, *names: str) -> None:
        """Create ``names`` again if the broker lost them; failures are left to the next try."""
        self.created.difference_update(names)
        try:
            await self.ensure_topics(*names)
        except TransportError as exc:
            logger.debug("could not create topics %s again: %s", names, exc)

    def group_id(self, topic: str, group: str) -> str:
        return kafka_name(self.prefix, topic, group)

    def consumer_options(self) -> dict[str, Any]:
        transport = self.transport
        return {
            "bootstrap_servers": transport._settings.bootstrap,
            "client_id": transport._client_id,
            "max_poll_records": self.prefetch,
            "fetch_max_wait_ms": max(1, int(transport._fetch_wait * 1000)),
            "session_timeout_ms": int(transport._session_timeout * 1000),
            "heartbeat_interval_ms": max(100, int(transport._session_timeout * 1000 / 3)),
            "request_timeout_ms": int(max(self.timeout, transport._session_timeout + 5) * 1000),
            "retry_backoff_ms": 50,
            **transport._settings.client,
        }

    async def ensure_topics(self, *names: str) -> None:
        """Create the Kafka topics not created yet (an existing one is left as it is).

        Raises:
            TransportError: if the broker refused or could not be reached.
        """
        missing = [name for name in names if name not in self.created]
        if not missing:
            return
        partitions = self.transport._partitions
        try:
            response = await asyncio.wait_for(
                self.admin.create_topics([NewTopic(name, partitions, 1) for name in missing]),
                self.timeout,
            )
        except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
            raise translate(exc, f"creation of topics {missing}") from exc
        for item in response.topic_errors:
            name, code = item[0], item[1]
            if code not in (0, _TOPIC_EXISTS):
                raise TransportError(f"Kafka refused to create topic {name!r} (error {code})")
        self.created.update(missing)

    async def partitions(self, *topics: str) -> list[TopicPartition]:
        """Every partition of ``topics``, creating the topics that are missing.

        Raises:
            TransportError: if the broker could not be reached.
        """
        await self.ensure_topics(*topics)
        found: list[TopicPartition] = []
        for topic in topics:
            try:
                numbers = await asyncio.wait_for(self.producer.partitions_for(topic), self.timeout)
            except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
                raise translate(exc, f"metadata of {topic!r}") from exc
            found.extend(TopicPartition(topic, number) for number in sorted(numbers))
        return found

    async def send(
        self,
        topic: str,
        body: bytes,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        """Publish one record, retrying through a lost connection up to the timeout.

        Raises:
            TransportClosed: if the transport closed meanwhile.
            TransportError: if the broker refused it or it was not taken in time.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        backoff: Backoff | None = None
        while True:
            if self.closed:
                raise TransportClosed("the transport is closed")
            try:
                async with asyncio.timeout_at(deadline):
                    if topic not in self.created:
                        await self.ensure_topics(topic)
                    future = await self.producer.send(topic, body, key=key, headers=headers)
                    await future
                return
            except TransportError as exc:
                failure: BaseException = exc.__cause__ or exc
            except TimeoutError as exc:
                raise TransportError(
                    f"Kafka publish to {topic!r} was not taken within {self.timeout}s"
                ) from exc
            except (kafka_errors.KafkaError, OSError) as exc:
                failure = exc
            lost = (kafka_errors.UnknownTopicOrPartitionError, kafka_errors.UnknownError)
            if isinstance(failure, lost):
                # A broker that lost its topics (restarted without storage; Tansu then
                # answers UnknownError for a while): create them again, and retry.
                self.created.discard(topic)
            elif not isinstance(failure, RECOVERABLE):
                raise translate(failure, f"publish to {topic!r}") from failure
            if loop.time() >= deadline:
                raise translate(failure, f"publish to {topic!r}") from failure
            if backoff is None:
                backoff = Backoff()
            await backoff.sleep()

    async def group(self, topic: str, name: str, durable: bool) -> Group:
        """This process's group of ``name`` on ``topic``, opened when it is the first.

        Raises:
            TransportError: if the broker could not be reached.
        """
        key = (topic, name)
        group = self.groups.get(key)
        if group is not None and not group.closed:
            return group
        task = self.opening.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open_group(topic, name, durable))
            self.opening[key] = task
            task.add_done_callback(lambda _: self.opening.pop(key, None))
        return await asyncio.shield(task)

    async def _open_group(self, topic: str, name: str, durable: bool) -> Group:
        key = (topic, name)
        leaving = self.leaving.get(key)
        if leaving is not None:
            await asyncio.shield(leaving)
        prefix = self.prefix
        group = Group(
            self, topic, name, durable, kafka_name(prefix, topic), kafka_name(prefix, topic, name)
        )
        await group.open()
        self.groups[key] = group
        return group

    async def close_group(self, group: Group, held: Sequence[KafkaDelivery]) -> None:
        key = (group.topic, group.name)
        if self.groups.get(key) is group:
            del self.groups[key]
        task = asyncio.get_running_loop().create_task(group.close(held))
        self.leaving[key] = task
        try:
            await asyncio.shield(task)
        finally:
            if self.leaving.get(key) is task:
                del self.leaving[key]

    async def forget_topics(self, group: Group) -> None:
        """Delete what a non-durable group leaves: its own topic, and the topic named
        after it (a reply inbox's)."""
        names = [group.own]
        if group.topic == group.name:
            names.append(group.main)
        self.created.difference_update(names)
        try:
            await asyncio.wait_for(self.admin.delete_topics(names), self.timeout)
        except Exception as exc:
            logger.warning("could not delete topics %s: %s", names, redact_url(str(exc)))


class KafkaTransport(AsyncioReentrant[Connection]):
    """A transport on a Kafka-protocol broker.

    Layout, for a topic ``T`` and a group ``G`` (``prefix`` first, parts
    joined by ``..``; characters Kafka refuses become ``_`` and a hash is
    added):

    * Kafka topic ``prefix..T`` holds what is published to ``T``, created
      with ``partitions`` partitions at the first subscription; a record's
      key (the publish's ``key``) picks its partition;
    * Kafka topic ``prefix..T..G`` is the group's own: publishes naming
      ``G``, and what ``G`` nacked, to be delivered again;
    * a durable group is the Kafka consumer group ``prefix..T..G`` reading
      both topics. A group Kafka has no offsets of starts at the topics'
      ends: :meth:`subscribe` commits them before it returns, so what is
      published from then on reaches the group even while its consumer
      still joins (a join takes seconds);
    * a non-durable group (a reply inbox) is no Kafka group: its consumer is
      assigned every partition, starting at their ends, and commits nothing;
      closing it deletes its own topic, and the topic itself when the group
      is named after it (as the bus's reply inboxes are).

    Delivery and redelivery: offsets are committed only up to each
    partition's oldest record not yet settled. A nack publishes the message
    again to the group's own topic with its attempt count (``flowkit.attempt``)
    and, for a delay, its due time (``flowkit.due``), which the consumer
    waits out in memory. ``attempt`` counts what the transport publishes
    again; a record read again from its offset after a crash or a rebalance
    counts as its count before (Kafka keeps no count of its own).

    Several subscriptions of one group in one process share one Kafka
    consumer; consumers in several processes share the group's partitions.

    It needs asyncio: entering it under trio raises
    :class:`~flowkit.TransportError`.

    Args:
        url: ``kafka://[user:password@]host[:port][,host:port...]``;
            ``kafkas://`` for TLS; credentials mean SASL (``PLAIN``, or
            ``?sasl_mechanism=SCRAM-SHA-256``). The query may set
            ``security_protocol``, ``ssl_cafile``, ``ssl_certfile``,
            ``ssl_keyfile`` and the options below, which then take
            precedence over the keyword arguments. The password never
            appears in a log, a repr or an error.
        prefix: the start of every Kafka topic and group the transport names.
        partitions: how many partitions a topic the transport creates has.
        prefetch: the most records a group reads ahead of its receivers.
        publish_timeout: the longest, in seconds, a publish, nack, commit or
            backlog waits.
        connect_timeout: the longest, in seconds, connecting takes.
        session_timeout: seconds after which Kafka gives the partitions of a
            consumer that stopped (its process died) to the others.
        fetch_wait: the longest, in seconds, the broker holds a consumer's
            fetch while it has nothing new (Kafka's ``fetch.max.wait.ms``):
            shorter is lower latency on a broker that holds fetches that long
            (Tansu does), for more fetches while idle.
        kafka_options: more keyword arguments for aiokafka's producer and
            consumers (``ssl_context``, for one).

    Raises:
        ValueError: if the URL's scheme is not one of the above, or an
            option is out of range.
    """

    _ASYNCIO_ONLY = (
        "KafkaTransport runs on asyncio only: aiokafka does not run on trio or any other event loop"
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "flowkit",
        partitions: int = 4,
        prefetch: int = 200,
        publish_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        session_timeout: float = 10.0,
        fetch_wait: float = 0.02,
        kafka_options: Mapping[str, Any] | None = None,
    ) -> None:
        where = redact_url(url)
        settings = parse_url(url)
        own = settings.own
        prefix = own.text("prefix", prefix)
        partitions = own.integer("partitions", partitions)
        prefetch = own.integer("prefetch", prefetch)
        publish_timeout = own.number("publish_timeout", publish_timeout)
        connect_timeout = own.number("connect_timeout", connect_timeout)
        session_timeout = own.number("session_timeout", session_timeout)
        fetch_wait = own.number("fetch_wait", fetch_wait)
        if not prefix:
            raise ValueError("prefix must not be empty")
        if partitions < 1 or prefetch < 1:
            raise ValueError("partitions and prefetch must be at least 1")
        if not (publish_timeout > 0 and connect_timeout > 0 and session_timeout > 0):
            raise ValueError("publish_timeout, connect_timeout and session_timeout must be > 0")
        if not 0 < fetch_wait <= 10:
            raise ValueError(f"fetch_wait must be > 0 and at most 10 seconds, not {fetch_wait}")
        settings.client.update(kafka_options or {})
        super().__init__()
        self._settings = settings
        self._where = where
        self._prefix = prefix
        self._partitions = partitions
        self._prefetch = prefetch
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._session_timeout = session_timeout
        self._fetch_wait = fetch_wait
        self._client_id = f"flowkit-{socket.gethostname()}-{os.getpid()}"
        # The Kafka topic of each (topic, group) published to, not worked out again
        # at each publish.
        self._names: dict[tuple[str, str | None], str] = {}

    @property
    def capabilities(self) -> Capabilities:
        """Crosses processes; delays kept by the transport; no order by key; 1 MB bodies."""
        return _CAPABILITIES

    @property
    def prefix(self) -> str:
        """The start of every Kafka topic and group the transport names."""
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

        Args:
            topic: where to publish.
            body: the message body.
            headers: string headers, delivered as given.
            key: the record's key: it picks the partition, so one consumer
                reads a key's messages in publish order (not declared as
                ``ordered_by_key``: they are handed out concurrently, and a
                nacked one comes back later).
            group: deliver to this group only, through its own topic.

        Raises:
            TransportClosed: if the transport is not open, or closes meanwhile.
            TransportError: if the broker refused the message, or it could
                not be sent within ``publish_timeout``.
        """
        connection = self._open()
        names = self._names
        name = names.get((topic, group))
        if name is None:
            if len(names) >= _NAMES_KEPT:
                names.clear()
            name = names[topic, group] = (
                kafka_name(self._prefix, topic)
                if group is None
                else kafka_name(self._prefix, topic, group)
            )
        await connection.send(
            name,
            bytes(body),
            key.encode() if key is not None else None,
            encode_headers(headers),
        )

    async def backlog(self, topic: str, group: str) -> int:
        """How many messages ``group`` has not settled yet.

        For each partition of the topic and of the group's own topic, the
        records after the group's committed offset (this process's settled
        records are committed first). Zero for a group that does not exist.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if the broker could not be asked.
        """
        connection = self._open()
        local = connection.groups.get((topic, group))
        if local is not None and not local.closed:
            return await local.backlog()
        main, own = kafka_name(self._prefix, topic), kafka_name(self._prefix, topic, group)
        if main not in connection.created or own not in connection.created:
            try:
                existing = set(await asyncio.wait_for(connection.admin.list_topics(), 10))
            except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
                raise translate(exc, "list of topics") from exc
            if main not in existing:
                return 0
        consumer = AIOKafkaConsumer(
            group_id=connection.group_id(topic, group),
            enable_auto_commit=False,
            **connection.consumer_options(),
        )
        try:
            await asyncio.wait_for(consumer.start(), self._publish_timeout)
            partitions = await connection.partitions(main, own)
            ends = await asyncio.wait_for(consumer.end_offsets(partitions), self._publish_timeout)
            total = 0
            for partition in partitions:
                committed = await asyncio.wait_for(
                    consumer.committed(partition), self._publish_timeout
                )
                if committed is not None:
                    total += max(0, ends[partition] - committed)
            return total
        except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
            raise translate(exc, f"backlog of {topic!r} as {group!r}") from exc
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        """Attach a consumer to ``group`` on ``topic``, creating the group if needed.

        The topics exist and a new group's offsets are set when this returns:
        what is published from then on reaches the group.

        Raises:
            TransportClosed: if the transport is not open.
            TransportError: if the broker could not be reached.
        """
        connection = self._open()
        target = await connection.group(topic, group, durable)
        if connection.closed:
            raise TransportClosed("the transport is closed")
        subscription = KafkaSubscription(target)
        target.subscriptions.add(subscription)
        return subscription

    async def _disconnect(self, connection: Connection) -> None:
        """Close every subscription, once the groups being opened are: what they
        held is published again or left to its offset. Then the producer and the
        admin client."""
        try:
            for opening in list(connection.opening.values()):
                with contextlib.suppress(BaseException):
                    await opening
            subscriptions = subscriptions_of(connection.groups.values())
            await asyncio.gather(
                *(subscription.aclose() for subscription in subscriptions),
                *connection.leaving.values(),
                return_exceptions=True,
            )
        finally:
            connection.closed = True
            for task in list(connection.tasks):
                task.cancel()
            await asyncio.gather(*connection.tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.producer.stop(), self._publish_timeout)
            with contextlib.suppress(Exception):
                await connection.admin.close()

    async def _connect(self) -> Connection:
        settings = self._settings
        common: dict[str, Any] = {
            "bootstrap_servers": settings.bootstrap,
            "client_id": self._client_id,
            "request_timeout_ms": int(self._publish_timeout * 1000),
            "retry_backoff_ms": 50,
            **settings.client,
        }
        producer = AIOKafkaProducer(
            acks="all",
            linger_ms=0,
            max_batch_size=_BATCH_SIZE,
            max_request_size=_MAX_MESSAGE_SIZE + 48_576,
            **common,
        )
        admin = AIOKafkaAdminClient(**common)
        try:
            await asyncio.wait_for(producer.start(), self._connect_timeout)
            await asyncio.wait_for(admin.start(), self._connect_timeout)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
            raise cannot_connect("Kafka", self._where, exc) from exc
        return Connection(self, producer, admin)

    def __repr__(self) -> str:
        return f"<KafkaTransport url={self._where!r} prefix={self._prefix!r} {self._status}>"
