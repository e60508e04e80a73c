"""What one opening of a Redis transport holds: its client, its groups, its tasks.

A :class:`Connection` lives from ``async with transport`` to ``aclose()``; a
transport entered again after closing starts a new one. A :class:`Group` is a
consumer group this process subscribes to: its three keys, its creation in
Redis, its local subscriptions, and the timer that moves its delayed messages
back when they come due.

Keys, for a topic ``T`` and a group ``G`` under the prefix ``P``:

* ``P:T``, the topic's stream: every publish to ``T`` (each group reads it);
* ``P:T:to:G``, the group's own stream: messages for ``G`` only (a publish
  with ``group=G``, a nacked or given-back message);
* ``P:T:delayed:G``, a sorted set of the messages ``G`` nacked with a delay,
  scored by their due time on the server's clock.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..._errors import TransportClosed, TransportError
from ._retention import Retention
from ._scripts import Scripts

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ._batcher import Batcher
    from ._client import Redis
    from ._subscription import RedisSubscription

__all__ = ["MOVE_MAX", "Connection", "Group", "Options"]

logger = logging.getLogger("flowkit.transport.redis")

# The most delayed messages one call of the mover takes back.
MOVE_MAX = 100
# A timer fires this much after the due time, so the server finds it due.
_SLACK = 0.002


@dataclass(frozen=True, slots=True)
class Options:
    """The settings every part of an open transport reads."""

    where: str
    prefix: str
    prefetch: int
    claim_idle: float
    max_len: int | None
    timeout: float

    @property
    def block(self) -> float:
        """How long one read waits on the server, in seconds."""
        return min(2.0, max(0.05, self.claim_idle / 4))

    @property
    def reclaim_every(self) -> float:
        """How often a subscription looks for entries of dead consumers, in seconds."""
        return max(0.05, self.claim_idle / 2)


class Group:
    """A consumer group this process subscribes to, and its delayed-message timer."""

    __slots__ = (
        "_connection",
        "_timer",
        "_timer_due",
        "delayed",
        "durable",
        "name",
        "own",
        "stream",
        "subscriptions",
        "topic",
    )

    def __init__(self, connection: Connection, topic: str, name: str, durable: bool) -> None:
        prefix = connection.options.prefix
        self._connection = connection
        self.topic = topic
        self.name = name
        self.durable = durable
        self.stream = f"{prefix}:{topic}".encode()
        self.own = f"{prefix}:{topic}:to:{name}".encode()
        self.delayed = f"{prefix}:{topic}:delayed:{name}".encode()
        self.subscriptions: set[RedisSubscription] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    async def create(self, consumer: str) -> None:
        """Create the group on the topic's stream (at its end) and on its own
        stream, and ``consumer`` in both.

        The topic's group starts at ``$``: it gets what is published from now
        on. The group's own stream is read from its start, since everything in
        it is meant for the group. A group that exists already is left as it is.
        The consumer is made at once (not at its first delivery) so that others
        see it: a non-durable group is not removed while it has a consumer.

        Raises:
            redis.RedisError: if the server refused or could not be reached.
        """
        pipe = self._connection.client.pipeline(transaction=False)
        pipe.execute_command("XGROUP", "CREATE", self.stream, self.name, "$", "MKSTREAM")
        pipe.execute_command("XGROUP", "CREATE", self.own, self.name, "0", "MKSTREAM")
        pipe.execute_command("XGROUP", "CREATECONSUMER", self.stream, self.name, consumer)
        pipe.execute_command("XGROUP", "CREATECONSUMER", self.own, self.name, consumer)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and not str(reply).startswith("BUSYGROUP"):
                raise reply

    def schedule_move(self, delay: float) -> None:
        """Move the group's due messages back in ``delay`` seconds (or sooner if set).

        Only while this process has a subscription to the group; the
        subscriptions' reads also move what is due, so a group left by every
        process keeps its delayed messages until a consumer comes back.
        """
        connection = self._connection
        if connection.closed or not self.subscriptions:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + max(delay, 0.0) + _SLACK
        timer = self._timer
        if timer is not None:
            if self._timer_due <= due:
                return
            timer.cancel()
        self._timer_due = due
        self._timer = loop.call_at(due, self._fire)

    def cancel_timer(self) -> None:
        """Stop the timer (the group has no local subscription left)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        if not self._connection.closed and self.subscriptions:
            self._connection.spawn(self._move())

    async def _move(self) -> None:
        connection = self._connection
        try:
            reply = await connection.batcher.call(
                "move of delayed messages",
                "EVALSHA",
                Scripts.move_due,
                2,
                self.delayed,
                self.own,
                MOVE_MAX,
            )
        except TransportClosed:
            return
        except TransportError as exc:
            logger.debug("could not move delayed messages of %r: %s", self.own, exc)
            self.schedule_move(1.0)
            return
        self.moved(reply)

    def moved(self, reply: Any) -> None:
        """Take note of a reply of the mover script: count what it moved, time the next."""
        moved, wait = int(reply[0]), int(reply[1])
        if moved:
            self._connection.retention.note(self.own, moved)
        if wait >= 0:
            self.schedule_move(wait / 1000)


class Connection:
    """Everything one opening of the transport holds."""

    __slots__ = (
        "batcher",
        "client",
        "closed",
        "consumer_prefix",
        "groups",
        "options",
        "retention",
        "tasks",
    )

    def __init__(
        self, client: Redis, batcher: Batcher, options: Options, consumer_prefix: str
    ) -> None:
        self.client = client
        self.batcher = batcher
        self.options = options
        self.consumer_prefix = consumer_prefix
        self.closed = False
        self.groups: dict[tuple[str, str], Group] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.retention = Retention(batcher, self.spawn, options.max_len)

    def group(self, topic: str, name: str, durable: bool) -> Group:
        """The local state of a group, made on its first subscription."""
        found = self.groups.get((topic, name))
        if found is None:
            found = self.groups[(topic, name)] = Group(self, topic, name, durable)
        return found

    def forget(self, group: Group) -> None:
        """Drop a group this process no longer subscribes to."""
        group.cancel_timer()
        if self.groups.get((group.topic, group.name)) is group:
            del self.groups[(group.topic, group.name)]

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a background task until it ends or the connection closes."""
        if self.closed:
            coroutine.close()
            return
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "a background task of the Redis transport failed", exc_info=task.exception()
            )
