"""One flowkit group of one topic in this process: its Kafka consumer, shared by its subscriptions.

Reading: a group's consumer reads the topic's Kafka topic and the group's own
topic (what is meant for it alone: publishes naming it, nacked messages) in a
task of its own, ``prefetch`` records at a time, into a buffer the group's
subscriptions take from; while the buffer is full the consumer's partitions
are paused (it keeps polling, so it stays in its Kafka group). A record whose
``flowkit.due`` time is still ahead waits in a timer heap (at most
``10 * prefetch`` of them; beyond that the group's own topic is paused).

Settling and commits: every record read is tracked by its partition and
offset until it is acked or nacked; the offset committed for a partition is
the one of its oldest record not settled yet (or the next to read), so a
record handed out and not settled is never skipped, whatever was settled
after it. Commits are sent together shortly after an ack (at most one
commit in flight) and at once when the group closes, before its backlog is
counted, and when Kafka takes partitions away.

Subscriptions of one group in one process share its buffer: each delivery
goes to one of them; closing one gives back what it held to the others at
once (attempt counted). Closing the last one publishes again to the group's
own topic what was handed out and not settled (with its attempt count) and
what waited out a delay, commits, and leaves the Kafka group; a non-durable
group then deletes its own topic.

Rebalances (durable groups, several processes): when Kafka takes partitions
away, the records of those partitions still buffered are dropped, those
handed out get a few seconds to be settled, the offsets are committed, and
the records not settled by then are delivered to the partitions' next owner
(the bus's inbox makes that harmless); their late ack or nack is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ..._errors import TransportClosed, TransportError
from .._backoff import Backoff
from .._lifecycle import ClosesOnExit
from ._client import kafka_errors, translate
from ._delivery import ATTEMPT, DUE, ORIGIN, KafkaDelivery, decode_headers, encode_headers

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from .._base import Delivery
    from ._transport import Connection

__all__ = ["Group", "KafkaSubscription", "Track"]

logger = logging.getLogger("flowkit.transport.kafka")

# How long after an ack its offset is committed (acks meanwhile go along).
_COMMIT_DELAY = 0.05
# The longest a revoked partition's handed-out records are waited for.
_REVOKE_WAIT = 5.0
# How often a consumer with a full buffer polls anyway (to stay in its group).
_FULL_POLL = 5.0
# A receive that never has to wait still yields to the event loop now and then.
_CHECKPOINT_MASK = 63


# A commit outside the group is refused with one of these once the group has members.
_GROUP_LIVE = (
    kafka_errors.CommitFailedError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.RebalanceInProgressError,
)


def _take(delivery: KafkaDelivery) -> bool:
    """Settle ``delivery`` for its subscription (it holds it no more); False if it
    was settled already (a second ack or nack is a no-op)."""
    if delivery._settled:
        return False
    delivery._settled = True
    holder = delivery._holder
    if holder is not None:
        holder.held.pop(delivery, None)
    return True


class Track:
    """The records read from one partition and not yet committed past."""

    __slots__ = ("committed", "live", "offsets", "settled", "upto")

    def __init__(self, upto: int) -> None:
        self.offsets: deque[int] = deque()
        self.settled: set[int] = set()
        self.upto = upto
        self.committed = -1
        self.live = True

    def point(self) -> int:
        """The offset to commit: the oldest record not settled, else the next to read."""
        offsets = self.offsets
        settled = self.settled
        while offsets and offsets[0] in settled:
            settled.discard(offsets.popleft())
        return offsets[0] if offsets else self.upto


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, group: Group) -> None:
        self._group = group

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._group.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None


class Group:
    """The consumer of one group of one topic, shared by this process's subscriptions."""

    def __init__(
        self, connection: Connection, topic: str, name: str, durable: bool, main: str, own: str
    ) -> None:
        self.connection = connection
        self.topic = topic
        self.name = name
        self.durable = durable
        self.main = main
        self.own = own
        self.subscriptions: set[KafkaSubscription] = set()
        self.buffer: deque[KafkaDelivery] = deque()
        self.tracks: dict[TopicPartition, Track] = {}
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.closed = False
        self.consumer: AIOKafkaConsumer | None = None
        self._delayed: list[tuple[int, int, KafkaDelivery]] = []
        self._sequence = 0
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._commit_task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._paused = False
        self._own_paused = False

    @property
    def where(self) -> str:
        return f"{self.topic!r} as {self.name!r}"

    # -- opening -----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the consumer; a new group starts at the topics' ends.

        Raises:
            TransportError: if the broker could not be reached.
        """
        connection = self.connection
        partitions = await connection.partitions(self.main, self.own)
        options = connection.consumer_options()
        if self.durable:
            group_id = connection.group_id(self.topic, self.name)
            consumer = AIOKafkaConsumer(
                group_id=group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **options,
            )
        else:
            consumer = AIOKafkaConsumer(enable_auto_commit=False, **options)
        try:
            await asyncio.wait_for(consumer.start(), connection.timeout)
            if self.durable:
                await self._start_at_end(consumer, partitions)
                consumer.subscribe([self.main, self.own], listener=_Listener(self))
            else:
                consumer.assign(partitions)
                ends = await asyncio.wait_for(consumer.end_offsets(partitions), connection.timeout)
                for partition in partitions:
                    consumer.seek(partition, ends[partition])
                    self.tracks[partition] = Track(ends[partition])
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            if isinstance(exc, (kafka_errors.KafkaError, OSError, TimeoutError)):
                raise translate(exc, f"subscribe to {self.where}") from exc
            raise
        self.consumer = consumer
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name=f"flowkit-kafka-reader {self.main}/{self.name}"
        )

    async def _start_at_end(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> None:
        """A group Kafka has no offsets of gets the topics' current ends as its offsets.

        So what is published once :meth:`open` returns reaches the group,
        however long its first join takes. Kafka refuses the commit when
        another process of the group joined meanwhile: that one set the
        offsets before it joined, and they stand.
        """
        timeout = self.connection.timeout
        for partition in partitions:
            if await asyncio.wait_for(consumer.committed(partition), timeout) is not None:
                return
        ends = await asyncio.wait_for(consumer.end_offsets(partitions), timeout)
        consumer.assign(partitions)
        try:
            await asyncio.wait_for(
                consumer.commit({tp: OffsetAndMetadata(ends[tp], "") for tp in partitions}),
                timeout,
            )
        except _GROUP_LIVE as exc:
            logger.debug("%s already has members, which set its offsets: %s", self.where, exc)
        consumer.unsubscribe()

    # -- reading -----------------------------------------------------------------------

    async def _read(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        prefetch = self.connection.prefetch
        backoff = Backoff()
        failing = False
        while not self.closed:
            if self._pause(consumer, prefetch):
                # Full: wait for room, but poll now and then (paused: nothing comes), so
                # the consumer stays in its group however long its receivers take.
                self.room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.room.wait(), _FULL_POLL)
                if len(self.buffer) >= prefetch:
                    with contextlib.suppress(Exception):
                        await consumer.getmany(timeout_ms=0)
                continue
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=prefetch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    failing = True
                    logger.warning(
                        "consumer of %s lost its way to Kafka at %s (%s: %s); retrying",
                        self.where,
                        self.connection.where,
                        type(exc).__name__,
                        translate(exc, "read"),
                    )
                await backoff.sleep()
                continue
            if failing:
                failing = False
                backoff.reset()
                logger.warning("consumer of %s reads from Kafka again", self.where)
            if batches:
                self._take(batches)

    def _pause(self, consumer: AIOKafkaConsumer, prefetch: int) -> bool:
        """Pause the partitions while the buffer is full (the group's own topic while
        too many records wait out a delay); whether the buffer is full."""
        full = len(self.buffer) >= prefetch
        if full != self._paused:
            self._paused = full
            assigned = consumer.assignment()
            if full:
                consumer.pause(*assigned)
            else:
                consumer.resume(*assigned)
                self._own_paused = False
        if not full:
            own_full = len(self._delayed) >= 10 * prefetch
            if own_full != self._own_paused:
                self._own_paused = own_full
                own = [tp for tp in consumer.assignment() if tp.topic == self.own]
                if own_full:
                    consumer.pause(*own)
                else:
                    consumer.resume(*own)
        return full

    def _take(self, batches: dict[TopicPartition, list[Any]]) -> None:
        now = int(time.time() * 1000)
        tracks = self.tracks
        fresh: list[tuple[int, bool, KafkaDelivery]] = []
        own = self.own
        for partition, records in batches.items():
            track = tracks.get(partition)
            if track is None or not track.live:
                track = tracks[partition] = Track(records[0].offset)
            offsets = track.offsets
            for record in records:
                offset = record.offset
                offsets.append(offset)
                track.upto = offset + 1
                headers, attempts, due, sent, origin = decode_headers(
                    record.headers, f"{partition.topic}[{partition.partition}]@{offset}"
                )
                value = record.value
                delivery = KafkaDelivery(
                    self,
                    track,
                    partition,
                    offset,
                    value if value is not None else b"",
                    headers,
                    record.key,
                    attempts + 1,
                    origin,
                )
                if due > now:
                    self._delay(delivery, due)
                else:
                    order = sent or record.timestamp * 1_000_000
                    fresh.append((order, partition.topic != own, delivery))
        if fresh:
            if len(batches) > 1:
                # Records of several partitions read together go out in publish
                # order (the publishers' clocks), the group's own topic first.
                fresh.sort(key=lambda item: (item[0], item[1]))
            self.buffer.extend(item[2] for item in fresh)
            self.wake()

    def _delay(self, delivery: KafkaDelivery, due: int) -> None:
        self._sequence += 1
        heapq.heappush(self._delayed, (due, self._sequence, delivery))
        if self._delayed[0][2] is delivery:
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._delayed and not self.closed:
            wait = max(0.0, self._delayed[0][0] / 1000 - time.time())
            self._timer = asyncio.get_running_loop().call_later(wait, self._release)

    def _release(self) -> None:
        self._timer = None
        now = int(time.time() * 1000) + 1
        delayed = self._delayed
        released = False
        while delayed and delayed[0][0] <= now:
            self.buffer.append(heapq.heappop(delayed)[2])
            released = True
        self._arm()
        if released:
            self.wake()

    def wake(self) -> None:
        arrived = self.arrived
        self.arrived = asyncio.Event()
        arrived.set()

    # -- settling ----------------------------------------------------------------------

    def ack(self, delivery: KafkaDelivery) -> None:
        if _take(delivery):
            self._settle(delivery)

    def _settle(self, delivery: KafkaDelivery) -> None:
        track = delivery._track
        if not track.live:
            return
        track.settled.add(delivery.offset)
        if self._commit_task is None and not self.closed:
            self._commit_task = asyncio.get_running_loop().create_task(self._commit_soon())

    async def nack(self, delivery: KafkaDelivery, delay: float) -> None:
        if not _take(delivery):
            return
        holder = delivery._holder
        if not delivery._track.live:
            # Its partition went to another consumer, which reads it again: a no-op.
            return
        try:
            await self._again(delivery, delivery.attempt, delay)
        except BaseException:
            delivery._settled = False
            if holder is not None and not holder.closed:
                holder.held[delivery] = None
            raise
        self._settle(delivery)

    async def _again(self, delivery: KafkaDelivery, attempts: int, delay: float = 0.0) -> None:
        """Publish ``delivery`` to the group's own topic, with its attempts so far."""
        headers = encode_headers(delivery.headers)
        headers.append((ATTEMPT, str(attempts).encode()))
        headers.append((ORIGIN, delivery.broker_id.encode()))
        if delay > 0:
            headers.append((DUE, str(int((time.time() + delay) * 1000)).encode()))
        await self.connection.send(self.own, delivery.body, delivery.key, headers)

    async def _commit_soon(self) -> None:
        try:
            await asyncio.sleep(_COMMIT_DELAY)
        finally:
            self._commit_task = None
        try:
            await self.commit()
        except TransportError as exc:
            logger.debug("commit of %s failed, retried at the next ack: %s", self.where, exc)

    async def commit(
        self, partitions: Iterable[TopicPartition] | None = None, timeout: float | None = None
    ) -> None:
        """Commit each partition's offset up to its oldest record not settled.

        A commit that fails has the group's topics created again, should the
        broker have lost them (a restart without storage).

        Raises:
            TransportError: if Kafka refused the commit or could not be reached.
        """
        async with self._commit_lock:
            offsets: dict[TopicPartition, int] = {}
            tracks = self.tracks
            for partition in tracks if partitions is None else partitions:
                track = tracks.get(partition)
                if track is None or not track.live:
                    continue
                point = track.point()
                if point > track.committed:
                    offsets[partition] = point
            if not offsets:
                return
            consumer = self.consumer
            if self.durable and consumer is not None:
                try:
                    await asyncio.wait_for(
                        consumer.commit(
                            {tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()}
                        ),
                        timeout or self.connection.timeout,
                    )
                except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
                    self.connection.spawn(self.connection.recreate(self.main, self.own))
                    raise translate(exc, f"commit of {self.where}") from exc
            for partition, offset in offsets.items():
                tracks[partition].committed = offset

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        """Kafka takes partitions away: settle what can be, commit, forget them."""
        if not revoked:
            return
        self.buffer = deque(d for d in self.buffer if d.partition not in revoked)
        kept = [item for item in self._delayed if item[2].partition not in revoked]
        if len(kept) != len(self._delayed):
            heapq.heapify(kept)
            self._delayed = kept
            self._arm()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _REVOKE_WAIT
        # Settling wakes no one: the handed-out records are looked at every 20 ms.
        while loop.time() < deadline and any(  # noqa: ASYNC110
            d.partition in revoked for s in self.subscriptions for d in s.held
        ):
            await asyncio.sleep(0.02)
        if not any(partition in self.tracks for partition in revoked):
            pass
        elif self._member_lost():
            # The coordinator forgot this member (its session expired, or the broker
            # restarted and may have lost its logs): what was read is not committed,
            # it is read again by the partitions' next owner.
            logger.warning(
                "consumer of %s lost its membership; what it did not commit is delivered again",
                self.where,
            )
        else:
            try:
                await self.commit(revoked, timeout=_REVOKE_WAIT)
            except TransportError as exc:
                logger.warning("could not commit %s before a rebalance: %s", self.where, exc)
        for partition in revoked:
            track = self.tracks.pop(partition, None)
            if track is not None:
                track.live = False

    def _member_lost(self) -> bool:
        """Whether the group's coordinator reset this consumer's membership (aiokafka
        sets its generation back to -1 when the coordinator no longer knows it)."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        return getattr(coordinator, "generation", 0) == -1

    # -- leaving -----------------------------------------------------------------------

    def give_back(self, deliveries: Iterable[KafkaDelivery]) -> None:
        """What a closed subscription held goes to the group's other subscriptions."""
        again = []
        for delivery in deliveries:
            if delivery._settled:
                continue
            delivery._settled = True
            copy = KafkaDelivery(
                self,
                delivery._track,
                delivery.partition,
                delivery.offset,
                delivery.body,
                delivery.headers,
                delivery.key,
                delivery.attempt + 1,
                delivery.broker_id,
            )
            again.append(copy)
        if again:
            self.buffer.extendleft(reversed(again))
            self.wake()

    async def close(self, held: Sequence[KafkaDelivery]) -> None:
        """Leave: publish again what was handed out or delayed, commit, stop the consumer."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._commit_task is not None:
            self._commit_task.cancel()
            self._commit_task = None
        consumer = self.consumer
        try:
            if self.durable:
                await self._hand_on(held)
                try:
                    await self.commit()
                except TransportError as exc:
                    logger.warning("could not commit %s on close: %s", self.where, exc)
        finally:
            self.wake()
            if consumer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), self.connection.timeout)
            if not self.durable:
                await self.connection.forget_topics(self)

    async def _hand_on(self, held: Sequence[KafkaDelivery]) -> None:
        """Publish again, to the group's own topic, what this process cannot finish.

        Handed out and not settled: with the attempts so far. Given back and
        buffered, or waiting out a delay: with the attempts before this one
        (and the due time). Records only buffered are left to their offsets.
        """
        work: list[tuple[KafkaDelivery, int, float]] = []
        for delivery in held:
            if not delivery._settled:
                delivery._settled = True
                work.append((delivery, delivery.attempt, 0.0))
        for delivery in self.buffer:
            if delivery.attempt > 1 and not delivery._settled and delivery._track.live:
                work.append((delivery, delivery.attempt - 1, 0.0))
        now = time.time()
        for due, _, delivery in self._delayed:
            work.append((delivery, delivery.attempt - 1, max(0.0, due / 1000 - now)))
        self.buffer.clear()
        self._delayed = []

        async def one(delivery: KafkaDelivery, attempts: int, delay: float) -> None:
            try:
                await self._again(delivery, attempts, delay)
            except TransportError as exc:
                logger.warning(
                    "could not give back %r on close (it is delivered again from its offset): %s",
                    delivery,
                    exc,
                )
                return
            track = delivery._track
            if track.live:
                track.settled.add(delivery.offset)

        await asyncio.gather(*(one(*item) for item in work))

    async def backlog(self) -> int:
        """How many records the group has not settled: read and not settled, or not read.

        Raises:
            TransportError: if Kafka could not be asked.
        """
        consumer = self.consumer
        if consumer is None:
            return 0
        if self.durable:
            await self.commit()
            partitions = await self.connection.partitions(self.main, self.own)
            try:
                ends = await asyncio.wait_for(
                    consumer.end_offsets(partitions), self.connection.timeout
                )
                total = 0
                for partition in partitions:
                    track = self.tracks.get(partition)
                    if track is not None and track.live:
                        # Read here: what is settled past the commit point is not counted.
                        total += max(0, ends[partition] - track.point() - len(track.settled))
                        continue
                    committed = await asyncio.wait_for(
                        consumer.committed(partition), self.connection.timeout
                    )
                    if committed is not None:
                        total += max(0, ends[partition] - committed)
            except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
                raise translate(exc, f"backlog of {self.where}") from exc
            return total
        partitions = list(self.tracks)
        try:
            ends = await asyncio.wait_for(consumer.end_offsets(partitions), self.connection.timeout)
        except (kafka_errors.KafkaError, OSError, TimeoutError) as exc:
            raise translate(exc, f"backlog of {self.where}") from exc
        tracks = self.tracks
        return sum(
            max(0, ends[tp] - tracks[tp].point() - len(tracks[tp].settled)) for tp in partitions
        )


class KafkaSubscription(ClosesOnExit):
    """A consumer attached to one group of one topic (sharing the group's Kafka consumer)."""

    __slots__ = ("_group", "_receives", "closed", "held")

    def __init__(self, group: Group) -> None:
        self._group = group
        self.held: dict[KafkaDelivery, None] = {}
        self.closed = False
        self._receives = 0

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
        self._receives += 1
        if not self._receives & _CHECKPOINT_MASK:
            await asyncio.sleep(0)
        group = self._group
        limit = max(limit, 1)
        while True:
            if self.closed or group.closed:
                raise TransportClosed("the subscription is closed")
            buffer = group.buffer
            if buffer:
                held = self.held
                batch: list[Delivery] = []
                for _ in range(min(limit, len(buffer))):
                    delivery = buffer.popleft()
                    delivery._holder = self
                    held[delivery] = None
                    batch.append(delivery)
                if len(buffer) < group.connection.prefetch:
                    group.room.set()
                return batch
            await group.arrived.wait()

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries (no round trip: their offsets are committed together)."""
        for delivery in deliveries:
            await delivery.ack()

    async def aclose(self) -> None:
        """Detach; what this subscription held goes to the group's other subscriptions,
        or, for the group's last one, back to Kafka."""
        if self.closed:
            return
        self.closed = True
        group = self._group
        held = list(self.held)
        self.held.clear()
        group.subscriptions.discard(self)
        if group.subscriptions or group.closed:
            group.give_back(held)
            group.wake()
            return
        await group.connection.close_group(group, held)
