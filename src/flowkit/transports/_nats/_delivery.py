"""Deliveries, and what a JetStream message carries besides its body.

A message's NATS headers are the transport's own: ``Flowkit-Headers`` (the
flowkit headers, a JSON object of strings, absent when there are none),
``Flowkit-Group`` (on a message published to one group: that group's encoded
name) and ``Flowkit-Key`` (the key it was published with, as JSON). Flowkit
headers travel as JSON because NATS headers are ASCII lines: any string a
caller gives arrives as given.

Messages written by something else than the transport are delivered as well
as they can be, never crash a consumer: any bytes are a body (the bus
dead-letters what it cannot decode); headers that are not a JSON object of
strings are delivered as no headers, and a WARNING says so.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .._headers import NO_HEADERS, headers_from_json, headers_to_json

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.aio.msg import Msg

    from ._subscription import NATSSubscription

__all__ = [
    "ACK",
    "GROUP_HEADER",
    "HEADERS_HEADER",
    "KEY_HEADER",
    "NAK",
    "NATSDelivery",
    "attempt_of",
    "decode_headers",
    "encode_headers",
    "sequence_of",
]

logger = logging.getLogger("flowkit.transport.nats")

HEADERS_HEADER = "Flowkit-Headers"
GROUP_HEADER = "Flowkit-Group"
KEY_HEADER = "Flowkit-Key"

ACK = b"+ACK"
NAK = b"-NAK"


class NATSDelivery:
    """One delivery of a JetStream message to one subscription."""

    __slots__ = ("_msg", "_settled", "_subscription", "attempt", "body", "headers")

    def __init__(self, subscription: NATSSubscription, msg: Msg) -> None:
        self._subscription = subscription
        self._msg = msg
        self._settled = False
        self.body: bytes = msg.data
        raw = msg.headers
        self.headers: Mapping[str, str] = (
            decode_headers(raw.get(HEADERS_HEADER), msg.reply) if raw else NO_HEADERS
        )
        # How many times this message has been delivered to this group, this time included.
        self.attempt: int = attempt_of(msg.reply)

    @property
    def broker_id(self) -> str | None:
        """The message's stream and sequence in it, ``"<stream>:<seq>"``, read from
        its ack subject: the same on each redelivery (None if it has no ack subject)."""
        return sequence_of(self._msg.reply)

    @property
    def topic(self) -> str:
        """The topic the message was published to."""
        return self._subscription._group.topic

    @property
    def group(self) -> str:
        """The consumer group it was delivered to."""
        return self._subscription._group.name

    async def ack(self) -> None:
        """Mark the message handled (``+ACK``); a second ack or nack is a no-op.

        Raises:
            TransportError: if the connection is closed, or the client's
                buffer stays full through a reconnection.
        """
        await self._subscription._settle(self, ACK)

    async def nack(self, delay: float = 0.0) -> None:
        """Give the message back (``-NAK``), delivered again after ``delay``
        seconds: the server holds it for the delay.

        Args:
            delay: seconds before the message is deliverable again.

        Raises:
            TransportError: if the connection is closed, or the client's
                buffer stays full through a reconnection.
        """
        if delay > 0:
            payload = b'-NAK {"delay":%d}' % int(delay * 1e9)
        else:
            payload = NAK
        await self._subscription._settle(self, payload)

    def __repr__(self) -> str:
        return (
            f"<NATSTransport delivery topic={self.topic!r} group={self.group!r} "
            f"attempt={self.attempt}>"
        )


def encode_headers(headers: Mapping[str, str]) -> str:
    """The ``Flowkit-Headers`` header: a compact JSON object, ASCII only."""
    return headers_to_json(headers, ascii_only=True)


def decode_headers(value: str | None, reply: str | None) -> Mapping[str, str]:
    """The flowkit headers of a message, from its ``Flowkit-Headers`` header."""
    if value is None:
        return NO_HEADERS
    headers = headers_from_json(value)
    if headers is not None:
        return headers
    logger.warning(
        "JetStream message %s has a Flowkit-Headers header that is not a JSON object of "
        "strings: delivered without headers",
        reply,
    )
    return NO_HEADERS


def attempt_of(reply: str | None) -> int:
    """The delivery count of a JetStream message, from its ack subject.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>``,
    or the longer form with a domain and an account hash before the stream.
    """
    if not reply:
        return 1
    tokens = reply.split(".")
    try:
        if len(tokens) == 9:
            return max(1, int(tokens[4]))
        if len(tokens) >= 12:
            return max(1, int(tokens[6]))
    except ValueError:
        pass
    return 1


def sequence_of(reply: str | None) -> str | None:
    """The stream of a JetStream message and its sequence in it, ``"<stream>:<seq>"``,
    from its ack subject (see :func:`attempt_of`); None for a subject of another form."""
    if not reply:
        return None
    tokens = reply.split(".")
    if len(tokens) == 9:
        stream, sequence = tokens[2], tokens[5]
    elif len(tokens) >= 12:
        stream, sequence = tokens[4], tokens[7]
    else:
        return None
    return f"{stream}:{sequence}" if sequence.isdigit() else None
