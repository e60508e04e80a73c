"""Deliveries, and reading them from stream entries.

An entry's fields are ``body`` (the bytes as published), ``headers`` (a JSON
object of strings, absent when there are none), ``key`` (when published with
one), ``attempt`` and ``origin`` (on a message the transport added again: how
many times it had been delivered to the group, and its broker id: the stream,
1 for the topic's and 2 for the group's own, and the id of the entry it was
first added as, ``"1:1733000000000-0"``).

Entries written by something else than the transport are delivered as well as
they can be, never crash a consumer: any bytes are a body (the bus
dead-letters what it cannot decode); an entry without a ``body`` field is
delivered with an empty body, headers that are not a JSON object of strings
are delivered as no headers, and a WARNING names the entry each time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._headers import NO_HEADERS, headers_from_json, headers_to_json, read_count

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._subscription import RedisSubscription

__all__ = [
    "OWN_STREAM",
    "TOPIC_STREAM",
    "RedisDelivery",
    "encode_headers",
    "publish_order",
    "read_entries",
]

logger = logging.getLogger("flowkit.transport.redis")

# Which stream an entry was read from.
TOPIC_STREAM = 1
OWN_STREAM = 2


class RedisDelivery:
    """One delivery of a stream entry to one subscription."""

    __slots__ = ("_id", "_origin", "_source", "_subscription", "attempt", "body", "headers")

    def __init__(
        self,
        subscription: RedisSubscription,
        source: int,
        entry_id: bytes,
        body: bytes,
        headers: Mapping[str, str],
        attempt: int,
        origin: str | None = None,
    ) -> None:
        self._subscription = subscription
        self._source = source
        self._id = entry_id
        self._origin = origin
        self.body = body
        self.headers = headers
        # How many times this message has been delivered to this group, this time included.
        self.attempt = attempt

    @property
    def topic(self) -> str:
        """The topic the message was published to."""
        return self._subscription._group.topic

    @property
    def group(self) -> str:
        """The consumer group it was delivered to."""
        return self._subscription._group.name

    @property
    def broker_id(self) -> str:
        """Where the message was first added: its stream (1, the topic's; 2, the
        group's own) and entry id, carried by the copies a nack adds again."""
        if self._origin is not None:
            return self._origin
        return f"{self._source}:{self._id.decode()}"

    async def ack(self) -> None:
        """Mark the message handled (``XACK``); a second ack or nack is a no-op.

        Raises:
            TransportError: if Redis could not be reached within the timeout.
        """
        await self._subscription._ack(self)

    async def nack(self, delay: float = 0.0) -> None:
        """Give the message back, to be delivered again after ``delay`` seconds.

        The entry is acked and a copy, its attempt count carried, goes to the
        group's own stream at once, or to the group's delayed set until it is
        due; both in one script, so it is never lost nor doubled.

        Args:
            delay: seconds before the message is deliverable again.

        Raises:
            TransportError: if Redis could not be reached within the timeout.
        """
        await self._subscription._nack(self, delay)

    def __repr__(self) -> str:
        return (
            f"<RedisTransport delivery topic={self.topic!r} group={self.group!r} "
            f"id={self._id.decode()} attempt={self.attempt}>"
        )


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The ``headers`` field of an entry: a compact JSON object, UTF-8."""
    return headers_to_json(headers, ascii_only=False).encode()


def read_entries(
    subscription: RedisSubscription,
    source: int,
    stream: bytes,
    entries: list[Any],
    out: list[RedisDelivery],
) -> None:
    """Make deliveries of entries read from ``stream`` and append them to ``out``.

    Args:
        subscription: the subscription they are delivered to.
        source: which of the group's streams they come from.
        stream: that stream's key, for warnings.
        entries: ``[id, [field, value, ...]]`` as read by ``XREADGROUP``, or
            ``[id, fields, deliveries]`` as claimed from another consumer (the
            delivery count Redis keeps, this delivery included).
        out: where the deliveries go.
    """
    for entry in entries:
        entry_id = entry[0]
        fields = entry[1]
        deliveries = int(entry[2]) if len(entry) > 2 else 1
        if fields is None:
            continue  # deleted while pending: nothing left to deliver
        if len(fields) == 2 and fields[0] == b"body":
            out.append(
                RedisDelivery(subscription, source, entry_id, fields[1], NO_HEADERS, deliveries)
            )
            continue
        body: bytes | None = None
        headers = NO_HEADERS
        before = 0
        origin: str | None = None
        for index in range(0, len(fields) - 1, 2):
            name = fields[index]
            value = fields[index + 1]
            if name == b"body":
                body = value
            elif name == b"headers":
                headers = _headers(value, stream, entry_id)
            elif name == b"attempt":
                before = read_count(value)
            elif name == b"origin":
                origin = value.decode(errors="replace")
        if body is None:
            logger.warning(
                "entry %s of Redis stream %r has no body field: delivered with an empty body",
                entry_id.decode(),
                stream.decode(errors="replace"),
            )
            body = b""
        out.append(
            RedisDelivery(
                subscription, source, entry_id, body, headers, before + deliveries, origin
            )
        )


def publish_order(delivery: RedisDelivery) -> tuple[int, int, int]:
    """Where an entry read from either stream falls in publish order.

    Entry ids are the server's time in milliseconds and a sequence number
    within that millisecond, counted per stream: within one millisecond the
    entries of the two streams cannot be told apart, and the group's own
    entries come first.
    """
    millis, _, sequence = delivery._id.partition(b"-")
    return int(millis), delivery._source == TOPIC_STREAM, int(sequence)


def _headers(value: bytes, stream: bytes, entry_id: bytes) -> Mapping[str, str]:
    headers = headers_from_json(value)
    if headers is not None:
        return headers
    logger.warning(
        "entry %s of Redis stream %r has headers that are not a JSON object of strings: "
        "delivered without headers",
        entry_id.decode(),
        stream.decode(errors="replace"),
    )
    return NO_HEADERS
