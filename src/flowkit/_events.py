"""Typed messages, the envelope that carries them, and the JSON codec.

A message is a pydantic model: an :class:`Event` states a fact, a
:class:`Command` asks one service to act and names the model of its reply.
On the wire every message travels inside an :class:`Envelope` encoded as JSON;
nothing else is ever decoded from a transport.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import from_json, to_json

from ._errors import DecodeError, DefinitionError

__all__ = [
    "Command",
    "Envelope",
    "Event",
    "Message",
    "decode",
    "decode_envelope",
    "encode",
    "new_message_id",
    "reply_type_of",
    "type_name_of",
]


class Message(BaseModel):
    """Base of every typed message: a frozen pydantic model with a stable type name.

    The type name defaults to the class name; set it (and the schema version)
    with class keywords::

        class OrderPlaced(Event, type_name="orders.OrderPlaced", version=2):
            order_id: str
    """

    model_config = ConfigDict(frozen=True)

    __flowkit_type__: ClassVar[str] = "Message"
    __flowkit_version__: ClassVar[int] = 1

    def __init_subclass__(
        cls, *, type_name: str | None = None, version: int = 1, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if type_name is not None and (not isinstance(type_name, str) or not type_name):
            raise DefinitionError(f"{cls.__qualname__}: type_name must be a non-empty string")
        if not isinstance(version, int) or version < 1:
            raise DefinitionError(f"{cls.__qualname__}: version must be an integer >= 1")
        cls.__flowkit_type__ = type_name or cls.__name__
        cls.__flowkit_version__ = version


class Event(Message):
    """A fact that happened, published to every interested service."""


R = TypeVar("R", bound=Message)


class Command(Message, Generic[R]):
    """A request for one service to act, answered by a reply of type ``R``::

        class ReserveStock(Command[StockReserved]):
            order_id: str
    """


def type_name_of(model: type[Message]) -> str:
    """The wire type name of a message class."""
    return model.__flowkit_type__


def reply_type_of(command: type[Command[Any]]) -> type[Message]:
    """The reply model a command class declares with ``Command[Reply]``.

    Raises:
        DefinitionError: if the command class does not name its reply type.
    """
    for base in command.__mro__:
        meta = getattr(base, "__pydantic_generic_metadata__", None)
        if meta and meta.get("origin") is Command and meta.get("args"):
            reply = meta["args"][0]
            if isinstance(reply, type) and issubclass(reply, Message):
                return reply
    raise DefinitionError(
        f"{command.__qualname__} must name its reply type: class "
        f"{command.__name__}(Command[ReplyModel])"
    )


# -- message ids --------------------------------------------------------------

_id_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_message_id() -> str:
    """A unique, time-ordered id (UUID version 7, with a monotonic counter).

    Ids made in one process sort in the order they were made.
    """
    global _last_ms, _counter
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted within this millisecond: borrow the next
                _last_ms += 1
                _counter = 0
            ms = _last_ms
    rand = int.from_bytes(os.urandom(8), "big") & 0x3FFF_FFFF_FFFF_FFFF
    value = (ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# -- envelope -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels on the wire around a message.

    Attributes:
        message_id: unique and time-ordered (UUIDv7).
        type: the message's type name.
        version: the message's schema version.
        correlation_id: shared by every message of one flow (the first message's id).
        causation_id: the id of the message whose handler published this one.
        occurred_at: when the message was created (UTC).
        headers: free string metadata.
        payload: the message's fields as JSON data.
    """

    message_id: str
    type: str
    version: int
    correlation_id: str
    causation_id: str | None
    occurred_at: datetime
    headers: Mapping[str, str] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        """The envelope's JSON encoding."""
        return to_json(
            {
                "id": self.message_id,
                "type": self.type,
                "version": self.version,
                "correlation_id": self.correlation_id,
                "causation_id": self.causation_id,
                "occurred_at": self.occurred_at.isoformat(),
                "headers": dict(self.headers),
                "payload": dict(self.payload),
            }
        )


def encode(
    message: Message,
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    message_id: str | None = None,
) -> tuple[Envelope, bytes]:
    """Wrap a message in a new envelope and encode it as JSON.

    Args:
        message: the message to send.
        correlation_id: the flow it belongs to; a new flow (its own id) if omitted.
        causation_id: the id of the message that caused this one.
        headers: string metadata to carry.
        message_id: a given id (for idempotent re-sends); a new UUIDv7 if omitted.

    Returns:
        The envelope and its encoded bytes.
    """
    mid = message_id or new_message_id()
    cls = type(message)
    occurred = datetime.now(UTC)
    hdrs = dict(headers) if headers else {}
    body = to_json(
        {
            "id": mid,
            "type": cls.__flowkit_type__,
            "version": cls.__flowkit_version__,
            "correlation_id": correlation_id or mid,
            "causation_id": causation_id,
            "occurred_at": occurred.isoformat(),
            "headers": hdrs,
            "payload": message,
        }
    )
    envelope = Envelope(
        message_id=mid,
        type=cls.__flowkit_type__,
        version=cls.__flowkit_version__,
        correlation_id=correlation_id or mid,
        causation_id=causation_id,
        occurred_at=occurred,
        headers=hdrs,
        payload=message.model_dump(mode="json"),
    )
    return envelope, body


_ENVELOPE_KEYS = ("id", "type", "version", "correlation_id", "occurred_at", "payload")


def decode_envelope(body: bytes) -> Envelope:
    """Decode an envelope without validating its payload against a model.

    Raises:
        DecodeError: ``kind="json"`` or ``kind="envelope"``.
    """
    try:
        data = from_json(body)
    except ValueError as exc:
        raise DecodeError("json", str(exc)) from exc
    return _envelope_from(data)


def _envelope_from(data: Any) -> Envelope:
    if not isinstance(data, dict):
        raise DecodeError("envelope", f"expected a JSON object, got {type(data).__name__}")
    missing = [k for k in _ENVELOPE_KEYS if k not in data]
    if missing:
        raise DecodeError("envelope", f"missing field(s): {', '.join(missing)}")
    try:
        mid, type_, version = data["id"], data["type"], data["version"]
        corr, cause = data["correlation_id"], data.get("causation_id")
        headers, payload = data.get("headers") or {}, data["payload"]
        if not (isinstance(mid, str) and isinstance(type_, str) and isinstance(corr, str)):
            raise TypeError("id, type and correlation_id must be strings")
        if not isinstance(version, int) or isinstance(version, bool):
            raise TypeError("version must be an integer")
        if cause is not None and not isinstance(cause, str):
            raise TypeError("causation_id must be a string or null")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise TypeError("headers must map strings to strings")
        if not isinstance(payload, dict):
            raise TypeError("payload must be a JSON object")
        occurred = datetime.fromisoformat(data["occurred_at"])
    except (TypeError, ValueError) as exc:
        raise DecodeError("envelope", str(exc), type_name=data.get("type")) from exc
    return Envelope(mid, type_, version, corr, cause, occurred, headers, payload)


M = TypeVar("M", bound=Message)


def decode(body: bytes, model: type[M]) -> tuple[Envelope, M]:
    """Decode an envelope and validate its payload as ``model``.

    Raises:
        DecodeError: ``kind="json"`` or ``"envelope"`` for a malformed body,
            ``"unknown_type"`` when the envelope names a type other than
            ``model``'s, ``"validation"`` when the payload does not validate.
    """
    envelope = decode_envelope(body)
    return envelope, validate_payload(envelope, model)


def validate_payload(envelope: Envelope, model: type[M]) -> M:
    """Validate an envelope's payload as ``model`` (see :func:`decode`)."""
    if envelope.type != model.__flowkit_type__:
        raise DecodeError(
            "unknown_type",
            f"expected {model.__flowkit_type__!r}",
            type_name=envelope.type,
        )
    try:
        return model.model_validate(envelope.payload)
    except ValidationError as exc:
        raise DecodeError("validation", str(exc), type_name=envelope.type) from exc
