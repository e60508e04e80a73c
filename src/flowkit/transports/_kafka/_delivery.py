"""Deliveries, and the headers the transport adds to a message it publishes again.

A record's value is the body (a record without one, a tombstone, is an empty
body) and its headers are the message's headers, UTF-8 encoded. Every record
the transport publishes carries ``flowkit.sent``, the time it was sent
(nanoseconds since the epoch), by which records of several partitions read
together are handed out in publish order. A message the transport publishes
again (nacked, given back) carries three more: ``flowkit.attempt``, how many
times it had been delivered to the group, ``flowkit.due``, when it may be
delivered (milliseconds since the epoch), for a nack with a delay, and
``flowkit.origin``, the message's broker id (the topic, partition and offset
of the record it was first published as). The four are stripped before
delivery.

Records written by another program never crash a consumer: a header that is
not UTF-8 is delivered with its undecodable bytes replaced, and a WARNING says
so once per record; the bus dead-letters a body it cannot decode.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .._headers import NO_HEADERS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from aiokafka import TopicPartition

    from ._group import Group, Track

__all__ = ["ATTEMPT", "DUE", "ORIGIN", "KafkaDelivery", "decode_headers", "encode_headers"]

logger = logging.getLogger("flowkit.transport.kafka")

ATTEMPT = "flowkit.attempt"
DUE = "flowkit.due"
SENT = "flowkit.sent"
ORIGIN = "flowkit.origin"
_OWN_HEADERS = frozenset({ATTEMPT, DUE, SENT})


def encode_headers(headers: Mapping[str, str] | None) -> list[tuple[str, bytes]]:
    """A message's headers as Kafka record headers, with the time it is sent."""
    sent = (SENT, str(time.time_ns()).encode())
    if not headers:
        return [sent]
    return [sent, *((name, value.encode()) for name, value in headers.items())]


def decode_headers(
    raw: Sequence[tuple[str, bytes]], where: str
) -> tuple[Mapping[str, str], int, int, int, str | None]:
    """A record's headers: the message's own, its attempts so far, its due time (ms),
    the time it was sent (ns) and its origin.

    Returns:
        The headers (without the transport's), the attempts before this
        delivery (0 for a fresh message), the due time (0: now), the time it
        was sent (0: not said) and the broker id it carries (None on a record
        published first).
    """
    if not raw:
        return NO_HEADERS, 0, 0, 0, None
    headers: dict[str, str] = {}
    attempts = due = sent = 0
    origin: str | None = None
    damaged = False
    for name, value in raw:
        if name == ORIGIN:
            origin = value.decode(errors="replace") if value else None
            continue
        if name in _OWN_HEADERS:
            try:
                number = int(value)
            except (TypeError, ValueError):
                damaged = True
                continue
            if name == SENT:
                sent = number
            elif name == ATTEMPT:
                attempts = number
            else:
                due = number
            continue
        try:
            headers[name] = value.decode() if value is not None else ""
        except UnicodeDecodeError:
            headers[name] = value.decode(errors="replace")
            damaged = True
    if damaged:
        logger.warning("record %s has headers that are not UTF-8 text or numbers", where)
    return (headers or NO_HEADERS), attempts, due, sent, origin


class KafkaDelivery:
    """One delivery of one record to one subscription."""

    __slots__ = (
        "_group",
        "_holder",
        "_origin",
        "_settled",
        "_track",
        "attempt",
        "body",
        "headers",
        "key",
        "offset",
        "partition",
    )

    def __init__(
        self,
        group: Group,
        track: Track,
        partition: TopicPartition,
        offset: int,
        body: bytes,
        headers: Mapping[str, str],
        key: bytes | None,
        attempt: int,
        origin: str | None,
    ) -> None:
        self._group = group
        self._track = track
        self.partition = partition
        self.offset = offset
        self.body = body
        self.headers = headers
        self.key = key
        self.attempt = attempt
        self._origin = origin
        self._holder: Any = None
        self._settled = False

    @property
    def broker_id(self) -> str:
        """The record the message was first published as, carried by its copies:
        ``"<topic>:<partition>:<offset>"``."""
        if self._origin is not None:
            return self._origin
        partition = self.partition
        return f"{partition.topic}:{partition.partition}:{self.offset}"

    @property
    def topic(self) -> str:
        """The topic the message was published to."""
        return self._group.topic

    @property
    def group(self) -> str:
        """The consumer group it was delivered to."""
        return self._group.name

    async def ack(self) -> None:
        """Mark the message handled: its offset may be committed.

        The offset is committed with the others shortly after (at once when
        the subscription closes); acking twice is a no-op.
        """
        self._group.ack(self)

    async def nack(self, delay: float = 0.0) -> None:
        """Publish the message again to the group's own topic, then settle this record.

        Raises:
            TransportError: if the message could not be published again within
                the publish timeout (the record stays unsettled: it is
                delivered again).
        """
        await self._group.nack(self, delay)

    def __repr__(self) -> str:
        return (
            f"<KafkaDelivery {self.partition.topic}[{self.partition.partition}]@{self.offset} "
            f"group={self._group.name!r} attempt={self.attempt}>"
        )
