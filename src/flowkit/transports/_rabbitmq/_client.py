"""The connection to RabbitMQ: opening it, keeping it open, translating its errors.

One AMQP connection per transport, with a channel for publishing (publisher
confirms on) and a channel for declaring and asking (its channel errors, such
as a passive declare of a missing queue, close it; it is opened again). Each
subscription has a channel of its own (its prefetch).

When the connection is lost, a task opens it again with a growing pause
(50 ms to 2 s) and tells the subscriptions to consume again. Every error of
aiormq that leaves the transport goes through :func:`translate` (see
``transports/_translate.py``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq import exceptions as amqp_errors

from ..._errors import TransportClosed, TransportError
from ..._redact import redact_url
from .._backoff import Backoff
from .._translate import cannot_connect, translator
from ._frames import FrameBatcher

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

    from aiormq.abc import AbstractChannel

__all__ = [
    "CLOSING",
    "LOST",
    "TRANSPORT_OPTIONS",
    "Link",
    "amqp_errors",
    "translate",
]

logger = logging.getLogger("flowkit.transport.rabbitmq")

# The transport's own options that a URL may carry in its query string.
TRANSPORT_OPTIONS = frozenset(
    {"prefix", "prefetch", "queue_type", "publish_timeout", "connect_timeout"}
)

# What a lost connection (or a channel closed under it) raises.
LOST: tuple[type[BaseException], ...] = (
    amqp_errors.AMQPConnectionError,
    amqp_errors.ChannelInvalidStateError,
    amqp_errors.ConnectionClosed,
    ConnectionError,
    OSError,
    RuntimeError,  # aiormq: "<Connection> closed" when a channel is asked of a dead one
)

# What closing a channel or a connection may raise, besides a lost connection.
CLOSING: tuple[type[BaseException], ...] = (TimeoutError, amqp_errors.AMQPError, *LOST)


#: A :class:`~flowkit.TransportError` for an error of aiormq, its URLs redacted.
translate = translator("RabbitMQ")


def is_not_found(exc: BaseException) -> bool:
    """Whether ``exc`` is the channel error of a queue or exchange that does not exist."""
    return isinstance(exc, amqp_errors.ChannelNotFoundEntity)


class Link:
    """The transport's connection, opened again whenever it is lost.

    Attributes:
        connection: the open connection (None while reconnecting).
        publisher: its publishing channel, confirms on.
        generation: counts the connections opened; a delivery from an older
            one is settled by the server already (given back when it was lost).
        declared: the exchanges and queues declared on this connection.
    """

    def __init__(
        self,
        url: str,
        *,
        where: str,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.url = url
        self.where = where
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.connection: aiormq.Connection | None = None
        self.publisher: AbstractChannel | None = None
        self._admin: AbstractChannel | None = None
        self._admin_lock = asyncio.Lock()
        self.generation = 0
        self.declared: set[str] = set()
        self.ready = asyncio.Event()
        self.closed = False
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self._watcher: asyncio.Task[None] | None = None
        self.frames = FrameBatcher()
        self.server_version: tuple[int, ...] = (0,)

    async def open(self) -> None:
        """Connect for the first time.

        Raises:
            TransportError: if the server cannot be reached or refuses.
        """
        try:
            await self._connect()
        except Exception as exc:
            raise cannot_connect("RabbitMQ", self.where, exc) from exc
        self._watcher = asyncio.create_task(self._watch())

    async def _connect(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.ssl_context is not None:
            kwargs["context"] = self.ssl_context
        async with asyncio.timeout(self.connect_timeout):
            connection = await aiormq.connect(self.url, **kwargs)
            try:
                publisher = await connection.channel(publisher_confirms=True)
            except BaseException:
                await connection.close()
                raise
        version = connection.server_properties.get("version", "0")
        if isinstance(version, bytes):
            version = version.decode()
        try:
            self.server_version = tuple(int(p) for p in str(version).split(".")[:2])
        except ValueError:
            self.server_version = (0,)
        self.connection = connection
        self.publisher = publisher
        self._admin = None
        self.declared = set()
        self.generation += 1
        self.ready.set()

    async def _watch(self) -> None:
        """Wait for the connection to be lost; open it again with backoff."""
        while not self.closed:
            connection = self.connection
            assert connection is not None
            try:
                await connection.closing
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and self.closed:
                    return
                reason: BaseException | None = exc
            else:
                reason = None
            if self.closed:
                return
            self.ready.clear()
            self.connection = self.publisher = self._admin = None
            logger.warning(
                "RabbitMQ transport lost the connection to %s (%s); reconnecting",
                self.where,
                redact_url(repr(reason)) if reason is not None else "closed",
            )
            backoff = Backoff()
            while not self.closed:
                try:
                    await self._connect()
                except Exception as exc:
                    logger.debug("reconnecting to %s failed: %r", self.where, exc)
                    await backoff.sleep()
                    continue
                break
            if self.closed:
                return
            logger.warning("RabbitMQ transport reconnected to %s", self.where)
            for resume in list(self.on_reconnect):
                try:
                    await resume()
                except Exception as exc:
                    logger.warning("resuming a consumer on %s failed: %r", self.where, exc)

    async def wait_ready(self, deadline: float) -> aiormq.Connection:
        """The open connection, waiting for a reconnection until ``deadline``.

        Raises:
            TransportClosed: if the transport is closed.
            TimeoutError: if the deadline passes first.
        """
        while True:
            if self.closed:
                raise TransportClosed("the transport is closed")
            connection = self.connection
            if connection is not None and not connection.is_closed:
                return connection
            self.ready.clear()
            async with asyncio.timeout_at(deadline):
                await self.ready.wait()

    async def publishing(self, deadline: float) -> AbstractChannel:
        """The publishing channel, opened again when an error closed it."""
        connection = await self.wait_ready(deadline)
        channel = self.publisher
        if channel is not None and not channel.is_closed:
            return channel
        async with self._admin_lock:
            channel = self.publisher
            if channel is None or channel.is_closed:
                async with asyncio.timeout_at(deadline):
                    channel = await connection.channel(publisher_confirms=True)
                self.publisher = channel
        return channel

    async def admin(self, deadline: float) -> AbstractChannel:
        """The channel for declaring and asking, opened again when an error closed it."""
        connection = await self.wait_ready(deadline)
        channel = self._admin
        if channel is not None and not channel.is_closed:
            return channel
        async with self._admin_lock:
            channel = self._admin
            if channel is None or channel.is_closed:
                async with asyncio.timeout_at(deadline):
                    channel = await connection.channel(publisher_confirms=False)
                self._admin = channel
        return channel

    async def retry(
        self,
        action: Callable[[aiormq.Connection], Awaitable[Any]],
        doing: str,
        timeout: float,
    ) -> Any:
        """Run ``action`` on the open connection, again after a reconnection,
        until ``timeout`` seconds have passed.

        Raises:
            TransportClosed: if the transport is closed meanwhile.
            TransportError: if the server refused (a channel error), or it
                could not be done within ``timeout``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                connection = await self.wait_ready(deadline)
                async with asyncio.timeout_at(deadline):
                    return await action(connection)
            except TimeoutError:
                raise TransportError(
                    f"RabbitMQ {doing} on {self.where}: no reply within {timeout:g}s"
                ) from None
            except TransportClosed:
                raise
            except amqp_errors.ChannelClosed as exc:
                raise translate(exc, doing) from exc
            except LOST as exc:
                if self.closed:
                    raise TransportClosed("the transport is closed") from exc
                logger.debug("%s on %s: %r; retrying", doing, self.where, exc)
            await asyncio.sleep(Backoff.FIRST)
            if loop.time() >= deadline:
                raise TransportError(
                    f"RabbitMQ {doing} on {self.where}: no reply within {timeout:g}s"
                )

    async def close(self) -> None:
        """Close the connection and stop reconnecting."""
        self.closed = True
        self.ready.set()
        self.frames.close()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        connection = self.connection
        self.connection = self.publisher = self._admin = None
        if connection is not None:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await connection.close()
            except CLOSING:
                pass
