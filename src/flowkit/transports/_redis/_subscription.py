"""A consumer of one group: reading in batches, settling, and leaving.

Reading: a subscription reads only while a task waits in :meth:`receive` or
:meth:`receive_many` and it holds nothing unread. Its reader task sends one
pipeline per read: the mover script (delayed messages that came due go back
to the group's own stream), now and then the reclaim script (entries that
other consumers held idle for ``claim_idle`` seconds), and one
``XREADGROUP ... COUNT n BLOCK ms`` over the topic's stream and the group's
own stream (``n`` entries at most from each, ``ms`` a quarter of
``claim_idle``, at most 2 s). What it reads beyond what the waiting task takes
stays in a buffer, handed out by the next calls; the next read waits until it
is empty. Entries read from both streams at once are handed out in the order
of their ids (the server's clock), the group's own first within one
millisecond.

The read runs in a task of its own, so a receiver that gives up (a timeout,
a cancelled task) never loses what the server already handed over; closing
the subscription cancels it at once. A lost connection is retried with
backoff until the server is back.

Keeping: while the subscription holds entries (handed out or buffered), it
resets their idle time every third of ``claim_idle`` (``XCLAIM ... JUSTID``
to itself, for those it still owns), so the group's other consumers reclaim
only what a stopped process held.

Leaving: :meth:`aclose` gives back every entry this consumer holds in Redis,
delivered or only buffered, by adding it again to the group's own stream with
its attempt count, so the group's other consumers get it at once; then the
consumer is deleted. The last subscription of a non-durable group also
removes the group and its keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from ..._errors import TransportClosed, TransportError
from ..._redact import redact_url
from .._backoff import Backoff
from .._lifecycle import ClosesOnExit
from ._client import RECOVERABLE, is_missing_group, redis_errors, translate
from ._delivery import OWN_STREAM, TOPIC_STREAM, RedisDelivery, publish_order, read_entries
from ._scripts import Scripts
from ._state import MOVE_MAX

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._base import Delivery
    from ._state import Connection, Group

__all__ = ["RedisSubscription"]

logger = logging.getLogger("flowkit.transport.redis")

# A receive that never has to wait still yields to the event loop once every
# _CHECKPOINT_MASK + 1 calls, so a busy task cannot starve the others.
_CHECKPOINT_MASK = 63
_MISSING = object()


class RedisSubscription(ClosesOnExit):
    """A consumer attached to one group of one topic."""

    __slots__ = (
        "_arrived",
        "_buffer",
        "_closed",
        "_connection",
        "_consumer",
        "_cursors",
        "_error",
        "_group",
        "_held",
        "_next_reclaim",
        "_reader",
        "_receives",
        "_touch",
        "_waiting",
        "_want",
    )

    def __init__(self, connection: Connection, group: Group, consumer: str) -> None:
        self._connection = connection
        self._group = group
        self._consumer = consumer
        self._buffer: deque[RedisDelivery] = deque()
        # Deliveries handed out and not settled, in order (a dict used as an ordered set).
        self._held: dict[RedisDelivery, None] = {}
        self._waiting = 0
        self._want = connection.options.prefetch
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._error: TransportError | None = None
        self._next_reclaim = 0.0
        self._cursors: list[bytes] = [b"0-0", b"0-0"]
        self._receives = 0
        self._touch: asyncio.TimerHandle | None = None

    @property
    def consumer(self) -> str:
        """This subscription's consumer name in Redis (host, process id, random part)."""
        return self._consumer

    async def receive(self) -> Delivery:
        """Wait for the next delivery.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
            TransportError: if Redis refused the read (not for a lost
                connection: reads are retried until the server is back).
        """
        return (await self.receive_many(1))[0]

    async def receive_many(self, limit: int) -> list[Delivery]:
        """Wait for at least one delivery, and return up to ``limit`` that are ready.

        Raises:
            TransportClosed: once the subscription or its transport is closed.
            TransportError: if Redis refused the read.
        """
        self._receives += 1
        if not self._receives & _CHECKPOINT_MASK:
            await asyncio.sleep(0)
        limit = max(limit, 1)
        buffer = self._buffer
        while True:
            if self._closed:
                raise TransportClosed("the subscription is closed")
            if buffer:
                held = self._held
                batch: list[Delivery] = []
                for _ in range(min(limit, len(buffer))):
                    delivery = buffer.popleft()
                    held[delivery] = None
                    batch.append(delivery)
                return batch
            error = self._error
            if error is not None:
                self._error = None
                raise error
            if limit > self._want:
                self._want = limit
            arrived = self._arrived
            if self._reader is None:
                self._reader = asyncio.get_running_loop().create_task(
                    self._read(), name=f"flowkit-redis-reader {self._consumer}"
                )
            self._waiting += 1
            try:
                await arrived.wait()
            finally:
                self._waiting -= 1

    def _wake(self) -> None:
        arrived = self._arrived
        self._arrived = asyncio.Event()
        arrived.set()

    async def _read(self) -> None:
        """Read while a receiver waits and nothing is buffered."""
        backoff = Backoff()
        failing = False
        where = self._connection.options.where
        try:
            while not self._closed and self._waiting and not self._buffer:
                try:
                    got = await self._read_once()
                except RECOVERABLE as exc:
                    if not failing:
                        failing = True
                        logger.warning(
                            "consumer %s of %r lost the connection to Redis at %s (%s: %s); "
                            "retrying",
                            self._consumer,
                            self._group.stream.decode(errors="replace"),
                            where,
                            type(exc).__name__,
                            redact_url(str(exc)),
                        )
                    await backoff.sleep()
                    continue
                except redis_errors.RedisError as exc:
                    self._error = translate(exc, f"read of {self._group.stream!r}")
                    break
                if failing:
                    failing = False
                    backoff.reset()
                    logger.warning(
                        "consumer %s reads from Redis at %s again", self._consumer, where
                    )
                if got:
                    self._buffer.extend(got)
                    self._keep_alive()
                    self._wake()
        finally:
            self._reader = None
            self._wake()

    async def _read_once(self) -> list[RedisDelivery]:
        """One pipeline: move due messages, maybe reclaim, read.

        Raises:
            redis.RedisError: what the server or the connection raised.
        """
        connection = self._connection
        options = connection.options
        group = self._group
        loop = asyncio.get_running_loop()
        reclaim = loop.time() >= self._next_reclaim
        count = self._want
        pipe = connection.client.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", Scripts.move_due, 2, group.delayed, group.own, MOVE_MAX)
        if reclaim:
            idle = int(options.claim_idle * 1000)
            pipe.execute_command(
                "EVALSHA",
                Scripts.reclaim,
                2,
                group.stream,
                group.own,
                group.name,
                self._consumer,
                idle,
                count,
                self._cursors[0],
                self._cursors[1],
                max(10 * idle, 3_600_000),
            )
        if reclaim:
            pipe.execute_command(
                "XREADGROUP", "GROUP", group.name, self._consumer, "COUNT", count,
                "STREAMS", group.stream, group.own, ">", ">",
            )  # fmt: skip
        else:
            pipe.execute_command(
                "XREADGROUP", "GROUP", group.name, self._consumer, "COUNT", count,
                "BLOCK", int(options.block * 1000),
                "STREAMS", group.stream, group.own, ">", ">",
            )  # fmt: skip
        replies = await pipe.execute(raise_on_error=False)
        got: list[RedisDelivery] = []
        failure: Exception | None = None
        if reclaim:
            claimed = replies[1]
            if isinstance(claimed, Exception):
                failure = claimed
            else:
                self._next_reclaim = loop.time() + options.reclaim_every
                for index, (source, stream) in enumerate(
                    ((TOPIC_STREAM, group.stream), (OWN_STREAM, group.own))
                ):
                    cursor, entries = claimed[index]
                    self._cursors[index] = cursor
                    if entries:
                        read_entries(self, source, stream, entries, got)
        read = replies[-1]
        if isinstance(read, Exception):
            failure = read
        elif read:
            fresh: list[RedisDelivery] = []
            for stream, entries in read:
                source = TOPIC_STREAM if stream == group.stream else OWN_STREAM
                read_entries(self, source, stream, entries, fresh)
            if len(read) > 1:
                fresh.sort(key=publish_order)
            got.extend(fresh)
        moved = replies[0]
        if isinstance(moved, Exception):
            failure = failure or moved
        else:
            group.moved(moved)
        if failure is not None:
            await self._recover(failure, got)
        return got

    async def _recover(self, failure: Exception, got: list[RedisDelivery]) -> None:
        """Deal with a failed command of a read, once what it read is kept.

        Raises:
            redis.RedisError: ``failure``, if it is neither a forgotten script nor a
                missing group (then only when nothing was read).
        """
        if isinstance(failure, redis_errors.NoScriptError):
            await Scripts.load(self._connection.client)
        elif is_missing_group(failure):
            logger.warning(
                "consumer group %r of %r was missing in Redis (was its data lost?); "
                "created it again",
                self._group.name,
                self._group.stream.decode(errors="replace"),
            )
            await self._group.create(self._consumer)
        elif not got:
            raise failure

    def _keep_alive(self) -> None:
        """Keep what this consumer holds from being reclaimed while it is alive.

        Every third of ``claim_idle`` while it holds entries (handed out or
        buffered), their idle time is reset; so only the entries of a
        consumer whose process died or stopped running are reclaimed, not
        those of one working through a long batch.
        """
        if self._touch is None and not self._closed:
            self._touch = asyncio.get_running_loop().call_later(
                self._connection.options.claim_idle / 3, self._on_touch
            )

    def _on_touch(self) -> None:
        self._touch = None
        if not self._closed and (self._held or self._buffer):
            self._connection.spawn(self._touch_held())

    async def _touch_held(self) -> None:
        group = self._group
        held = [*self._held, *self._buffer]
        in_topic = [d._id for d in held if d._source == TOPIC_STREAM]
        in_own = [d._id for d in held if d._source != TOPIC_STREAM]
        try:
            await self._connection.batcher.call(
                "keep-alive of held entries",
                "EVALSHA",
                Scripts.touch,
                2,
                group.stream,
                group.own,
                group.name,
                self._consumer,
                len(in_topic),
                *in_topic,
                *in_own,
            )
        except TransportError as exc:
            logger.debug("consumer %s could not keep its entries: %s", self._consumer, exc)
        if self._held or self._buffer:
            self._keep_alive()

    async def _ack(self, delivery: RedisDelivery) -> None:
        if self._held.pop(delivery, _MISSING) is _MISSING:
            return
        group = self._group
        stream = group.stream if delivery._source == TOPIC_STREAM else group.own
        try:
            await self._connection.batcher.call("ack", "XACK", stream, group.name, delivery._id)
        except TransportClosed:
            return
        except BaseException:
            self._held[delivery] = None
            raise

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack several deliveries in one round trip; a delivery already settled is skipped.

        Raises:
            TransportError: if Redis could not be reached within the timeout.
        """
        held = self._held
        group = self._group
        topic_ids: list[bytes] = []
        own_ids: list[bytes] = []
        taken: list[RedisDelivery] = []
        others: list[Delivery] = []
        for delivery in deliveries:
            if type(delivery) is not RedisDelivery or delivery._subscription is not self:
                others.append(delivery)
            elif held.pop(delivery, _MISSING) is not _MISSING:
                taken.append(delivery)
                if delivery._source == TOPIC_STREAM:
                    topic_ids.append(delivery._id)
                else:
                    own_ids.append(delivery._id)
        commands: list[tuple[Any, ...]] = []
        if topic_ids:
            commands.append(("XACK", group.stream, group.name, *topic_ids))
        if own_ids:
            commands.append(("XACK", group.own, group.name, *own_ids))
        if commands:
            try:
                await self._connection.batcher.call_many("ack", commands)
            except TransportClosed:
                pass
            except BaseException:
                for delivery in taken:
                    held[delivery] = None
                raise
        for delivery in others:
            await delivery.ack()

    async def _nack(self, delivery: RedisDelivery, delay: float) -> None:
        if self._held.pop(delivery, _MISSING) is _MISSING:
            return
        group = self._group
        topic = delivery._source == TOPIC_STREAM
        delay_ms = max(0, int(delay * 1000 + 0.999))
        try:
            given = await self._connection.batcher.call(
                "nack",
                "EVALSHA",
                Scripts.requeue,
                3,
                group.stream if topic else group.own,
                group.own,
                group.delayed,
                group.name,
                delivery._id,
                delivery.attempt,
                delay_ms,
                b"t" if topic else b"g",
                delivery.broker_id,
            )
        except TransportClosed:
            return
        except BaseException:
            self._held[delivery] = None
            raise
        if given == 1:
            if delay_ms:
                group.schedule_move(delay_ms / 1000)
            else:
                self._connection.retention.note(group.own)

    async def aclose(self) -> None:
        """Detach the consumer; every entry it holds goes back to the group at once.

        Never raises: if Redis cannot be reached, a WARNING says so, and the
        group's other consumers reclaim the entries after ``claim_idle``.
        """
        if self._closed:
            return
        self._closed = True
        if self._touch is not None:
            self._touch.cancel()
            self._touch = None
        reader = self._reader
        if reader is not None:
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
        self._wake()
        connection = self._connection
        group = self._group
        undelivered = [b"%d:%s" % (d._source, d._id) for d in self._buffer]
        self._buffer.clear()
        self._held.clear()
        group.subscriptions.discard(self)
        last = not group.subscriptions
        if last:
            connection.forget(group)
        remove = last and not group.durable
        try:
            given, _removed = await connection.batcher.call(
                "close of a subscription",
                "EVALSHA",
                Scripts.leave,
                3,
                group.stream,
                group.own,
                group.delayed,
                group.name,
                self._consumer,
                b"1" if remove else b"0",
                *undelivered,
            )
        except TransportError as exc:
            logger.warning(
                "consumer %s could not give back what it held (%s); the other consumers of "
                "group %r reclaim it after %ss",
                self._consumer,
                exc,
                group.name,
                connection.options.claim_idle,
            )
            return
        if given and not remove:
            connection.retention.note(group.own, int(given))

    def __repr__(self) -> str:
        group = self._group
        state = "closed" if self._closed else "open"
        return (
            f"<RedisTransport subscription {group.topic!r}/{group.name!r} "
            f"consumer={self._consumer!r} {state}>"
        )
