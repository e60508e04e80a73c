"""Sending publishes and acks together: one socket write for all that are ready.

aiormq writes every ``basic_publish`` and every ``basic_ack`` on its own (a system
call each). The transport queues them instead; one task takes everything queued
meanwhile and sends it to each channel as one frame sequence: a publish is its
method, header and body frames, numbered for publisher confirms as aiormq does
(the channel's ``delivery_tag`` and ``confirmations``), so the server's
confirms, which it sends for many publishes at once, settle each publisher's
future through aiormq.

The queue holds what concurrent callers gave in one turn of the event loop; each
publisher waits for its confirm (bounded by the transport's timeout), so the
queue is bounded by the number of publishes in flight.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiormq import exceptions as amqp_errors
from aiormq.abc import ChannelFrame
from pamqp import frame as amqp_frame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

if TYPE_CHECKING:
    from aiormq.abc import AbstractChannel

__all__ = ["FrameBatcher"]

logger = logging.getLogger("flowkit.transport.rabbitmq")

_Frame = Any  # a pamqp frame
_Item = tuple["AbstractChannel", list[_Frame], "asyncio.Future[Any] | None"]


class FrameBatcher:
    """Queues publishes and acks, and sends each channel's in one write."""

    __slots__ = ("_pending", "_task", "_wakeup")

    def __init__(self) -> None:
        # (channel, frames, confirmation or None), in the order given.
        self._pending: list[_Item] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def publish(
        self,
        channel: AbstractChannel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Basic.Properties,
    ) -> asyncio.Future[Any]:
        """Queue a publish on ``channel`` (confirms on); the future is its confirm."""
        frames: list[_Frame] = [
            Basic.Publish(exchange=exchange, routing_key=routing_key),
            ContentHeader(properties=properties, body_size=len(body)),
        ]
        if body:
            size: int = channel.max_content_size  # type: ignore[attr-defined]
            if len(body) <= size:
                frames.append(ContentBody(body))
            else:
                frames.extend(ContentBody(body[i : i + size]) for i in range(0, len(body), size))
        # A future of the channel: it fails with the channel when that closes.
        confirmation: asyncio.Future[Any] = channel.create_future()
        self._queue((channel, frames, confirmation))
        return confirmation

    def ack(self, channel: AbstractChannel, tag: int) -> None:
        """Queue a ``basic.ack`` of ``tag`` on ``channel``."""
        self._queue((channel, [Basic.Ack(delivery_tag=tag)], None))

    def nack(self, channel: AbstractChannel, tag: int) -> None:
        """Queue a ``basic.nack`` of ``tag`` on ``channel``, requeued."""
        self._queue((channel, [Basic.Nack(delivery_tag=tag, requeue=True)], None))

    def _queue(
        self, item: tuple[AbstractChannel, list[_Frame], asyncio.Future[Any] | None]
    ) -> None:
        self._pending.append(item)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            pending, self._pending = self._pending, []
            if not pending:
                continue
            by_channel: dict[AbstractChannel, list[bytes]] = {}
            for channel, frames, confirmation in pending:
                if channel.is_closed:
                    if confirmation is not None and not confirmation.done():
                        confirmation.set_exception(
                            amqp_errors.ChannelInvalidStateError(f"{channel!r} closed")
                        )
                    continue  # an ack on a lost channel: the server gave the message back
                number: int = channel.number
                try:
                    data = b"".join(amqp_frame.marshal(f, number) for f in frames)
                except Exception as exc:  # a frame AMQP cannot carry: that publish fails alone
                    if confirmation is not None and not confirmation.done():
                        confirmation.set_exception(exc)
                    continue  # before it took a delivery tag: the numbering stays in step
                if confirmation is not None:
                    tag = channel.delivery_tag + 1  # type: ignore[attr-defined]
                    channel.delivery_tag = tag  # type: ignore[attr-defined]
                    channel.confirmations[tag] = confirmation  # type: ignore[attr-defined]
                by_channel.setdefault(channel, []).append(data)
            for channel, parts in by_channel.items():
                try:
                    await channel.write_queue.put(  # type: ignore[attr-defined]
                        ChannelFrame(payload=b"".join(parts), should_close=False)
                    )
                except (amqp_errors.AMQPError, ConnectionError, RuntimeError) as exc:
                    # The channel's confirms fail with it; its acks are moot.
                    logger.debug("sending on channel %s failed: %r", channel.number, exc)

    def close(self) -> None:
        """Stop sending; what is queued fails with the channels it was for."""
        if self._task is not None:
            self._task.cancel()
        for _, _, confirmation in self._pending:
            if confirmation is not None and not confirmation.done():
                confirmation.cancel()
        self._pending = []
