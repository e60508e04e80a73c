"""Gathering the commands of concurrent callers into pipelines.

Publishes, acks and nacks do not each pay a round trip: a caller queues its
command and waits for its own reply, while one flusher task sends everything
queued as one pipeline, then the next. Under load a pipeline carries as many
commands as callers arrived during the previous round trip. The publishes of
a pipeline travel as calls of the publish script (up to 500 ``XADD`` and
4 MB of bodies in one command and one reply), which costs the client a
fraction of what one command per message does.

Bounds: the queue holds at most ``max_queued`` commands (a caller waits for
room, for at most ``timeout`` seconds); a command fails once ``timeout``
seconds have passed since it was queued without a reply, while the flusher
retries through a lost connection with backoff in the meantime.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from ..._errors import TransportClosed, TransportError
from ..._redact import redact_url
from .._backoff import Backoff
from ._client import RECOVERABLE, redis_errors, translate
from ._scripts import Scripts

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._client import Redis

__all__ = ["Batcher"]

logger = logging.getLogger("flowkit.transport.redis")


# One queued command: its arguments, what it does (for errors), the future of
# its reply, and the loop time by which it must have been sent.
_Item = tuple[tuple[Any, ...], str, "asyncio.Future[Any]", float]


# What a publish is called in errors; queued publishes are told apart by it.
_PUBLISH = "publish"
# The most publishes in one call of the publish script.
_PUBLISH_CHUNK = 500
# The most body bytes in one call of the publish script (a larger body goes alone),
# so one command stays far below what Redis buffers for a client.
_PUBLISH_CHUNK_BYTES = 4 * 1024 * 1024


def _first_key(args: tuple[Any, ...]) -> str:
    """The key a command works on, for error messages (a publish: the stream)."""
    if args[0] == "EVALSHA" and len(args) > 3:
        key = args[3]
    elif isinstance(args[1], int):
        key = args[0]  # a publish: (stream, number of fields, fields...)
    else:
        key = args[1]
    return key.decode(errors="replace") if isinstance(key, bytes) else str(key)


class Batcher:
    """Runs the commands of concurrent callers in shared pipelines.

    Args:
        client: the Redis client (its pool gives each pipeline a connection).
        where: the server's URL, redacted, for logs.
        timeout: the longest a command waits for room in the queue, and to be
            sent, in seconds.
        max_batch: the most commands in one pipeline.
        max_queued: the most commands waiting to be sent.
    """

    __slots__ = (
        "_client",
        "_closed",
        "_max_batch",
        "_max_queued",
        "_outage",
        "_queue",
        "_room",
        "_task",
        "_timeout",
        "_where",
    )

    def __init__(
        self,
        client: Redis,
        *,
        where: str,
        timeout: float,
        max_batch: int = 1000,
        max_queued: int = 10_000,
    ) -> None:
        self._client = client
        self._where = where
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_queued = max_queued
        self._queue: deque[_Item] = deque()
        self._task: asyncio.Task[None] | None = None
        self._room: asyncio.Event | None = None
        self._closed = False
        self._outage = False

    async def call(self, doing: str, *args: Any) -> Any:
        """Run one command in the next pipeline and return its reply.

        Args:
            doing: what the command does, for error messages ("publish").
            *args: the command and its arguments.

        Raises:
            TransportClosed: if the batcher is closed before the reply comes.
            TransportError: if the server refused the command, the connection
                stayed lost, or the command waited ``timeout`` seconds.
        """
        if len(self._queue) >= self._max_queued:
            await self._wait_for_room(doing)
        return await self._enqueue(doing, args)

    async def call_many(self, doing: str, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run several commands, in order, in the next pipeline; return their replies.

        Raises:
            TransportClosed: if the batcher is closed before the replies come.
            TransportError: as :meth:`call`, for the first command that failed.
        """
        if len(self._queue) >= self._max_queued:
            await self._wait_for_room(doing)
        futures = [self._enqueue(doing, args) for args in commands]
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # retrieved: no "never retrieved" report
            raise

    async def publish(self, stream: bytes, fields: tuple[Any, ...]) -> bool:
        """Add one entry to ``stream`` (if it exists) in the next pipeline.

        Args:
            stream: the stream's key.
            fields: the entry's fields and values, alternating.

        Returns:
            Whether the entry was added (False: the stream does not exist).

        Raises:
            TransportClosed: if the batcher is closed before the reply comes.
            TransportError: as :meth:`call`.
        """
        if len(self._queue) >= self._max_queued:
            await self._wait_for_room(_PUBLISH)
        return bool(await self._enqueue(_PUBLISH, (stream, len(fields), *fields)))

    def _enqueue(self, doing: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        if self._closed:
            raise TransportClosed("the transport is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, doing, future, loop.time() + self._timeout))
        if self._task is None:
            self._task = loop.create_task(self._run(), name="flowkit-redis-flusher")
        return future

    async def _wait_for_room(self, doing: str) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                while len(self._queue) >= self._max_queued:
                    if self._closed:
                        raise TransportClosed("the transport is closed")
                    if self._room is None:
                        self._room = asyncio.Event()
                    await self._room.wait()
        except TimeoutError:
            raise TransportError(
                f"Redis {doing} waited {self._timeout}s for room: {self._max_queued} "
                f"commands are queued for {self._where}, which does not keep up"
            ) from None

    def _wake_room(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            room.set()

    async def _run(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        try:
            while queue:
                batch: list[_Item] = []
                now = loop.time()
                while queue and len(batch) < self._max_batch:
                    item = queue.popleft()
                    future = item[2]
                    if future.done():
                        continue
                    if now > item[3]:
                        future.set_exception(
                            TransportError(
                                f"Redis {item[1]} on {_first_key(item[0])} was not sent "
                                f"within {self._timeout}s"
                            )
                        )
                        continue
                    batch.append(item)
                if self._room is not None and len(queue) < self._max_queued:
                    self._wake_room()
                if batch:
                    await self._send(batch)
                    # Let the callers woken by the replies queue their next commands.
                    await asyncio.sleep(0)
        finally:
            self._task = None

    async def _send(self, batch: list[_Item]) -> None:
        """Send one pipeline; retry it through a lost connection until its deadlines."""
        loop = asyncio.get_running_loop()
        backoff = Backoff()
        while True:
            publishes = [item for item in batch if item[1] is _PUBLISH]
            commands = [item for item in batch if item[1] is not _PUBLISH] if publishes else batch
            chunks = _chunks(publishes)
            pipe = self._client.pipeline(transaction=False)
            for chunk in chunks:
                args: list[Any] = ["EVALSHA", Scripts.publish, len(chunk)]
                args += [item[0][0] for item in chunk]
                for item in chunk:
                    args += item[0][1:]
                pipe.execute_command(*args)
            for item in commands:
                pipe.execute_command(*item[0])
            try:
                async with asyncio.timeout_at(min(item[3] for item in batch)):
                    replies = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:
                self._fail(batch, None)
                raise
            except TimeoutError:
                for item in batch:
                    if not item[2].done():
                        item[2].set_exception(
                            TransportError(
                                f"Redis {item[1]} on {_first_key(item[0])}: no reply within "
                                f"{self._timeout}s (the command may have been carried out)"
                            )
                        )
                return
            except RECOVERABLE as exc:
                now = loop.time()
                left = []
                for item in batch:
                    future = item[2]
                    if future.done():
                        continue
                    if self._closed or now >= item[3]:
                        future.set_exception(_failed(item, exc))
                    else:
                        left.append(item)
                if not left:
                    return
                if not self._outage:
                    self._outage = True
                    logger.warning(
                        "lost the connection to Redis at %s (%s: %s); retrying",
                        self._where,
                        type(exc).__name__,
                        redact_url(str(exc)),
                    )
                await backoff.sleep()
                batch = left
                continue
            except redis_errors.RedisError as exc:
                self._fail(batch, exc)
                return
            if self._outage:
                self._outage = False
                logger.warning("connected to Redis at %s again", self._where)
            again: list[_Item] = []
            for chunk, reply in zip(chunks, replies, strict=False):
                if isinstance(reply, redis_errors.NoScriptError):
                    again += chunk
                elif isinstance(reply, Exception):
                    self._fail(chunk, reply)
                else:
                    for item, added in zip(chunk, reply, strict=True):
                        future = item[2]
                        if future.done():
                            continue
                        if isinstance(added, bytes) and added.startswith(b"!"):
                            future.set_exception(
                                _failed(item, redis_errors.ResponseError(added[1:].decode()))
                            )
                        else:
                            future.set_result(added)
            for item, reply in zip(commands, replies[len(chunks) :], strict=True):
                future = item[2]
                if future.done():
                    continue
                if isinstance(reply, redis_errors.NoScriptError):
                    again.append(item)
                elif isinstance(reply, Exception):
                    future.set_exception(_failed(item, reply))
                else:
                    future.set_result(reply)
            if not again:
                return
            try:
                await Scripts.load(self._client)
            except redis_errors.RedisError as exc:
                self._fail(again, exc)
                return
            batch = again

    def _fail(self, batch: list[_Item], exc: BaseException | None) -> None:
        """Fail every command of ``batch`` still awaited (closed, when ``exc`` is None)."""
        for item in batch:
            future = item[2]
            if not future.done():
                if exc is None:
                    future.set_exception(TransportClosed("the transport is closed"))
                else:
                    future.set_exception(_failed(item, exc))

    def close(self) -> asyncio.Task[None] | None:
        """Fail what is queued with TransportClosed and stop the flusher.

        Returns:
            The flusher task, cancelled, for the caller to await; or None.
        """
        self._closed = True
        queue = self._queue
        while queue:
            future = queue.popleft()[2]
            if not future.done():
                future.set_exception(TransportClosed("the transport is closed"))
        self._wake_room()
        task = self._task
        if task is not None:
            task.cancel()
        return task


def _chunks(publishes: list[_Item]) -> list[list[_Item]]:
    """The publishes cut into calls of the publish script, by count and by size."""
    chunks: list[list[_Item]] = []
    chunk: list[_Item] = []
    size = 0
    for item in publishes:
        body = len(item[0][3])  # (stream, number of fields, b"body", body, ...)
        if chunk and (len(chunk) >= _PUBLISH_CHUNK or size + body > _PUBLISH_CHUNK_BYTES):
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += body
    if chunk:
        chunks.append(chunk)
    return chunks


def _failed(item: _Item, exc: BaseException) -> TransportError:
    return translate(exc, f"{item[1]} on {_first_key(item[0])}")
