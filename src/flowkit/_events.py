"""Typed messages, the envelope that carries them, and the JSON codec.

A message is a pydantic model: an :class:`Event` states a fact, a
:class:`Command` asks one service to act and names the model of its reply.
On the wire every message travels inside an :class:`Envelope` encoded as JSON;
nothing else is ever decoded from a transport.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NotRequired, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import to_json
from typing_extensions import TypedDict

from ._errors import DecodeError, DefinitionError

if TYPE_CHECKING:
    from collections.abc import Mapping

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
_rand = random.SystemRandom().getrandbits(64)  # per-process seed mixed into every id


def _next_id_parts() -> tuple[int, int]:
    global _last_ms, _counter
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = random.getrandbits(11)
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted within this millisecond: borrow the next
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        return ms, _counter


def new_message_id() -> str:
    """A unique, time-ordered id (UUID version 7, with a monotonic counter).

    Ids made in one process sort in the order they were made.
    """
    ms, counter = _next_id_parts()
    return _format_id(ms, counter)


def _format_id(ms: int, counter: int) -> str:
    rand = (random.getrandbits(62) ^ _rand) & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{(ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_iso_cache: tuple[int, datetime, str] = (0, datetime.fromtimestamp(0, UTC), "")


def _timestamp(ms: int) -> tuple[datetime, str]:
    """The UTC time of a millisecond timestamp, and its ISO form (cached per millisecond)."""
    global _iso_cache
    cached_ms, when, text = _iso_cache
    if cached_ms != ms:
        when = datetime.fromtimestamp(ms / 1000, UTC)
        text = when.isoformat(timespec="milliseconds")
        _iso_cache = (ms, when, text)
    return when, text


# -- envelope -----------------------------------------------------------------


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

    __slots__ = (
        "_message",
        "_payload",
        "causation_id",
        "correlation_id",
        "headers",
        "message_id",
        "occurred_at",
        "type",
        "version",
    )

    def __init__(
        self,
        message_id: str,
        type: str,
        version: int,
        correlation_id: str,
        causation_id: str | None,
        occurred_at: datetime,
        headers: Mapping[str, str] | None = None,
        payload: Mapping[str, Any] | None = None,
        *,
        message: Message | None = None,
    ) -> None:
        self.message_id = message_id
        self.type = type
        self.version = version
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.occurred_at = occurred_at
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self._payload = payload
        self._message = message

    @property
    def payload(self) -> Mapping[str, Any]:
        """The message's fields as JSON data."""
        if self._payload is None:
            self._payload = self._message.model_dump(mode="json") if self._message else {}
        return self._payload

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
                "payload": self.payload,
            }
        )

    def _key(self) -> tuple[Any, ...]:
        return (
            self.message_id,
            self.type,
            self.version,
            self.correlation_id,
            self.causation_id,
            self.occurred_at,
            dict(self.headers),
            dict(self.payload),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Envelope(message_id={self.message_id!r}, type={self.type!r}, "
            f"version={self.version}, correlation_id={self.correlation_id!r}, "
            f"causation_id={self.causation_id!r}, occurred_at={self.occurred_at.isoformat()!r}, "
            f"headers={dict(self.headers)!r})"
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
    ms, counter = _next_id_parts()
    mid = message_id or _format_id(ms, counter)
    occurred, occurred_text = _timestamp(ms)
    cls = type(message)
    hdrs = dict(headers) if headers else {}
    corr = correlation_id or mid
    body = to_json(
        {
            "id": mid,
            "type": cls.__flowkit_type__,
            "version": cls.__flowkit_version__,
            "correlation_id": corr,
            "causation_id": causation_id,
            "occurred_at": occurred_text,
            "headers": hdrs,
            "payload": message,
        }
    )
    envelope = Envelope(
        mid,
        cls.__flowkit_type__,
        cls.__flowkit_version__,
        corr,
        causation_id,
        occurred,
        hdrs,
        message=message,
    )
    return envelope, body


class _WireEnvelope(TypedDict):
    """The JSON shape of an envelope, checked in one pass by pydantic-core."""

    __pydantic_config__ = ConfigDict(strict=True)  # type: ignore[misc]

    id: str
    type: str
    version: int
    correlation_id: str
    causation_id: NotRequired[str | None]
    occurred_at: str
    headers: NotRequired[dict[str, str]]
    payload: dict[str, Any]


_WIRE = TypeAdapter(_WireEnvelope)


def decode_envelope(body: bytes) -> Envelope:
    """Decode an envelope without validating its payload against a model.

    Raises:
        DecodeError: ``kind="json"`` or ``kind="envelope"``.
    """
    try:
        data = _WIRE.validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise DecodeError("json", str(first["msg"])) from exc
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise DecodeError("envelope", f"{where}: {first['msg']}") from exc
    try:
        occurred = datetime.fromisoformat(data["occurred_at"])
    except ValueError as exc:
        raise DecodeError("envelope", f"occurred_at: {exc}", type_name=data["type"]) from exc
    return Envelope(
        data["id"],
        data["type"],
        data["version"],
        data["correlation_id"],
        data.get("causation_id"),
        occurred,
        data.get("headers", {}),
        data["payload"],
    )


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
