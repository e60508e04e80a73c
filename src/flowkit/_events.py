"""Typed messages, the envelope that carries them, and the JSON codec.

A message is a pydantic model: an :class:`Event` states a fact, a
:class:`Command` asks one service to act and names the model of its reply.
On the wire every message travels inside an :class:`Envelope` encoded as JSON;
nothing else is ever decoded from a transport.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType, UnionType
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    NotRequired,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import to_json
from pydantic_core.core_schema import ErrorType
from typing_extensions import TypedDict

from ._errors import DecodeError, DefinitionError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "FLOW",
    "Command",
    "Envelope",
    "Event",
    "Message",
    "business_key",
    "decode",
    "decode_envelope",
    "default_correlation",
    "encode",
    "envelope_key",
    "new_message_id",
    "reply_type_of",
]


class Message(BaseModel):
    """Base of every typed message: a frozen pydantic model with a stable type name.

    The type name defaults to the class name; set it (and the schema version)
    with class keywords::

        class OrderPlaced(Event, type_name="orders.OrderPlaced", version=2):
            order_id: str

    ``correlate_by`` names the field that holds the message's business key
    (a string, integer or UUID field). A message of that class that starts a
    new flow (published without ``correlation_id=``, outside a workflow and a
    handler's ``ctx.publish``) takes the field's value as its correlation id,
    so that the flow can be found again by it (``flowkit trace o-2``); the
    trace records the key of every such message::

        class OrderPlaced(Event, correlate_by="order_id"):
            order_id: str

    Subclasses inherit the keyword; ``correlate_by=None`` turns it off.
    """

    model_config = ConfigDict(frozen=True)

    __flowkit_type__: ClassVar[str] = "Message"
    __flowkit_version__: ClassVar[int] = 1
    __flowkit_correlate_by__: ClassVar[str | None] = None

    def __init_subclass__(
        cls,
        *,
        type_name: str | None = None,
        version: int = 1,
        correlate_by: str | object | None = ...,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if type_name is not None and (not isinstance(type_name, str) or not type_name):
            raise DefinitionError(f"{cls.__qualname__}: type_name must be a non-empty string")
        if not isinstance(version, int) or version < 1:
            raise DefinitionError(f"{cls.__qualname__}: version must be an integer >= 1")
        if (
            correlate_by is not ...
            and correlate_by is not None
            and (not isinstance(correlate_by, str) or not correlate_by)
        ):
            raise DefinitionError(
                f"{cls.__qualname__}: correlate_by must name a field, as a string "
                f'(correlate_by="order_id"), not {correlate_by!r}'
            )
        cls.__flowkit_type__ = type_name or cls.__name__
        cls.__flowkit_version__ = version
        if correlate_by is not ...:
            cls.__flowkit_correlate_by__ = correlate_by

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # The fields are known only now, once pydantic has built the class.
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.__flowkit_correlate_by__
        if field is not None:
            _check_business_key(cls, field)


class Event(Message):
    """A fact that happened, published to every interested service."""


R = TypeVar("R", bound=Message)


class Command(Message, Generic[R]):
    """A request for one service to act, answered by a reply of type ``R``::

    class ReserveStock(Command[StockReserved]):
        order_id: str
    """


# Types whose values make a business key: their str() is the key.
_KEY_TYPES: tuple[type, ...] = (str, int, uuid.UUID)


def _check_business_key(cls: type[Message], field: str) -> None:
    """Check at class definition that ``field`` can hold a message's business key.

    Raises:
        DefinitionError: naming the class, the field and the fix.
    """
    info = cls.model_fields.get(field)
    if info is None:
        known = ", ".join(cls.model_fields) or "none"
        raise DefinitionError(
            f"{cls.__qualname__}: correlate_by={field!r} names no field of the class "
            f"(its fields: {known}); name the field that holds the business key, "
            f"such as correlate_by={next(iter(cls.model_fields), 'order_id')!r}"
        )
    annotation = info.annotation
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    kinds = [a for a in options if a is not type(None)] if options else [annotation]
    if not kinds or not all(
        isinstance(a, type) and issubclass(a, _KEY_TYPES) and a is not bool for a in kinds
    ):
        raise DefinitionError(
            f"{cls.__qualname__}: correlate_by={field!r} names a field of type "
            f"{getattr(annotation, '__name__', annotation)!s}; a business key is a str, "
            "int or UUID field (or None when unknown)"
        )


def business_key(message: Message) -> str | None:
    """The business key of ``message`` (see ``correlate_by``), or None.

    None when its class names no key, or the key field is None.
    """
    field = type(message).__flowkit_correlate_by__
    if field is None:
        return None
    value = getattr(message, field, None)
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def envelope_key(envelope: Envelope) -> str | None:
    """The business key of the message an envelope carries, when the envelope
    was built around the message (by :func:`encode` or a decode); else None."""
    message = envelope._message
    if message is None or type(message).__flowkit_correlate_by__ is None:
        return None
    return business_key(message)


#: The flow that the messages sent from the current task belong to, when none
#: is given: set by the saga engine while it runs a workflow (its id), so that
#: whatever a step publishes or requests joins the workflow's flow.
FLOW: ContextVar[str | None] = ContextVar("flowkit_flow", default=None)


def default_correlation(message: Message, message_id: str) -> str:
    """The flow a message sent without ``correlation_id`` belongs to: the running
    workflow's (:data:`FLOW`), else a new one named by the message's business
    key (``correlate_by``), else by its own id."""
    return FLOW.get() or business_key(message) or message_id


@functools.cache
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
#
# A UUIDv7 is 48 bits of Unix milliseconds, the version, 74 further bits and
# the variant. flowkit fills the 74 bits with a 32-bit sequence (which orders
# the ids one process makes within a millisecond) then 42 bits drawn once per
# process (which keeps processes apart). ``next()`` on an itertools counter is
# atomic, so no lock is needed across threads.

_sequence = itertools.count(random.getrandbits(24))
_process_bits = random.SystemRandom().getrandbits(42)
_last_ms = 0


def _reseed_after_fork() -> None:
    global _process_bits, _sequence
    _process_bits = random.SystemRandom().getrandbits(42)
    _sequence = itertools.count(random.getrandbits(24))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)


def _now_ms() -> int:
    """Milliseconds since the epoch, never going back within this process."""
    global _last_ms
    ms = time.time_ns() // 1_000_000
    if ms < _last_ms:  # the clock stepped back: hold at the last time seen
        return _last_ms
    _last_ms = ms
    return ms


_id_prefix: tuple[int, str] = (-1, "")


def _format_id(ms: int) -> str:
    global _id_prefix
    seq = next(_sequence) & 0xFFFF_FFFF
    cached_ms, prefix = _id_prefix
    if cached_ms != ms:  # the time part changes once per millisecond
        t = f"{ms:012x}"
        prefix = f"{t[:8]}-{t[8:]}-7"
        _id_prefix = (ms, prefix)
    low = f"{0b10 << 62 | (seq & 0xFFFFF) << 42 | _process_bits:016x}"
    return f"{prefix}{seq >> 20:03x}-{low[:4]}-{low[4:]}"


def new_message_id() -> str:
    """A unique, time-ordered id (UUID version 7).

    Ids made in one process sort in the order they were made.
    """
    return _format_id(_now_ms())


_iso_cache: tuple[int, datetime, bytes] = (0, datetime.fromtimestamp(0, UTC), b"")


def _timestamp(ms: int) -> tuple[datetime, bytes]:
    """The UTC time of a millisecond timestamp, and its ISO form (cached per millisecond)."""
    global _iso_cache
    cached_ms, when, text = _iso_cache
    if cached_ms != ms:
        when = datetime.fromtimestamp(ms / 1000, UTC)
        text = when.isoformat(timespec="milliseconds").encode()
        _iso_cache = (ms, when, text)
    return when, text


# -- envelope -----------------------------------------------------------------


class Envelope:
    """What travels on the wire around a message.

    Attributes:
        message_id: unique and time-ordered (UUIDv7).
        type: the message's type name.
        version: the message's schema version.
        correlation_id: shared by every message of one flow: the workflow's id
            for what a workflow sends, else the first message's business key
            (see ``correlate_by``) or id, unless the sender gave one.
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
        correlation_id: the flow it belongs to. If omitted: the running
            workflow's id (:data:`FLOW`), else a new flow named by the
            message's business key (``correlate_by``), else by its own id.
        causation_id: the id of the message that caused this one.
        headers: string metadata to carry.
        message_id: a given id (for idempotent re-sends); a new UUIDv7 if omitted.

    Returns:
        The envelope and its encoded bytes.
    """
    ms = _now_ms()
    cls = type(message)
    if correlation_id is None:
        correlation_id = FLOW.get() or (
            None if cls.__flowkit_correlate_by__ is None else business_key(message)
        )
    occurred, occurred_text = _timestamp(ms)
    if message_id is None:
        mid = _format_id(ms)
        mid_json = b'"' + mid.encode() + b'"'
    else:
        mid = message_id
        mid_json = to_json(mid)
    corr = correlation_id or mid
    hdrs = dict(headers) if headers else {}
    body = b"".join(
        (
            b'{"id":',
            mid_json,
            _type_json(cls),
            mid_json if correlation_id is None else to_json(correlation_id),
            b',"causation_id":',
            b"null" if causation_id is None else to_json(causation_id),
            b',"occurred_at":"',
            occurred_text,
            b'","headers":',
            to_json(hdrs) if hdrs else b"{}",
            b',"payload":',
            cls.__pydantic_serializer__.to_json(message),
            b"}",
        )
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
    occurred_at: datetime
    headers: NotRequired[dict[str, str]]
    payload: dict[str, Any]


_WIRE_JSON = TypeAdapter(_WireEnvelope).validator.validate_json


def _type_json(cls: type[Message]) -> bytes:
    """The fixed part of a class's envelopes, from the type to the correlation id key."""
    cached: bytes | None = cls.__dict__.get("__flowkit_json__")
    if cached is None:
        cached = (
            b',"type":'
            + to_json(cls.__flowkit_type__)
            + b',"version":'
            + str(cls.__flowkit_version__).encode()
            + b',"correlation_id":'
        )
        cls.__flowkit_json__ = cached  # type: ignore[attr-defined]
    return cached


def decode_envelope(body: bytes) -> Envelope:
    """Decode an envelope without validating its payload against a model.

    Raises:
        DecodeError: ``kind="json"`` or ``kind="envelope"``.
    """
    try:
        data = _WIRE_JSON(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
        if first["type"] == "json_invalid":
            raise DecodeError("json", str(first["msg"])) from exc
        raise DecodeError("envelope", describe_errors(exc)) from exc
    return _envelope_of(data, payload=data["payload"])


def _envelope_of(
    data: Mapping[str, Any],
    *,
    payload: Mapping[str, Any] | None = None,
    message: Message | None = None,
) -> Envelope:
    """An envelope from its checked JSON fields (payload raw, or already validated)."""
    return Envelope(
        data["id"],
        data["type"],
        data["version"],
        data["correlation_id"],
        data.get("causation_id"),
        data["occurred_at"],
        data.get("headers", {}),
        payload,
        message=message,
    )


M = TypeVar("M", bound=Message)


def decode(body: bytes, model: type[M]) -> tuple[Envelope, M]:
    """Decode an envelope and validate its payload as ``model``.

    Raises:
        DecodeError: ``kind="json"`` or ``"envelope"`` for a malformed body,
            ``"unknown_type"`` when the envelope names a type other than
            ``model``'s, ``"validation"`` when the payload does not validate.
    """
    fields, message = decode_fields(body, model)
    return envelope_of(fields, message), message


def decode_fields(body: bytes, model: type[M]) -> tuple[Mapping[str, Any], M]:
    """Like :func:`decode`, returning the envelope's checked fields instead of an
    :class:`Envelope` (built by :func:`envelope_of` when someone needs it).

    Raises:
        DecodeError: as :func:`decode`.
    """
    try:
        data = _validator_for(model)(body)
    except Exception:
        # The one-pass check failed (or a validator raised something of its own):
        # decode step by step to say exactly what is wrong.
        envelope = decode_envelope(body)
        message = validate_payload(envelope, model)
        return {
            "id": envelope.message_id,
            "type": envelope.type,
            "version": envelope.version,
            "correlation_id": envelope.correlation_id,
            "causation_id": envelope.causation_id,
            "occurred_at": envelope.occurred_at,
            "headers": envelope.headers,
        }, message
    if data["type"] != model.__flowkit_type__:
        raise DecodeError(
            "unknown_type", f"expected {model.__flowkit_type__!r}", type_name=data["type"]
        )
    return data, data["payload"]


def envelope_of(fields: Mapping[str, Any], message: Message) -> Envelope:
    """The envelope of fields checked by :func:`decode_fields`."""
    return Envelope(
        fields["id"],
        fields["type"],
        fields["version"],
        fields["correlation_id"],
        fields.get("causation_id"),
        fields["occurred_at"],
        fields.get("headers", _NO_HEADERS),
        None,
        message=message,
    )


_validators: dict[type[Message], Callable[[bytes], Any]] = {}
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def _validator_for(model: type[Message]) -> Callable[[bytes], Any]:
    """pydantic-core's JSON validator of a whole envelope whose payload is ``model``:
    one pass, called directly (TypeAdapter's own wrapper costs about as much again)."""
    validate = _validators.get(model)
    if validate is None:
        shape = TypedDict(  # type: ignore[misc]  # noqa: UP013 - the payload type varies
            f"{model.__name__}Envelope",
            {
                "id": str,
                "type": str,
                "version": int,
                "correlation_id": str,
                "causation_id": NotRequired[str | None],
                "occurred_at": datetime,
                "headers": NotRequired[dict[str, str]],
                "payload": model,
            },
        )
        validate = _validators[model] = TypeAdapter(shape).validator.validate_json
    return validate


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
        raise DecodeError("validation", describe_errors(exc), type_name=envelope.type) from exc
    except Exception as exc:
        # pydantic passes on what a validator raises other than ValueError and
        # AssertionError: still this payload's failure, named by type only.
        raise DecodeError(
            "validation",
            f"a validator of {model.__name__} raised {type(exc).__name__}",
            type_name=envelope.type,
        ) from exc


# Error types whose pydantic message is written from the schema alone; the
# others (value_error, assertion_error, custom errors) may quote the input.
_SCHEMA_ONLY_MESSAGES = frozenset(get_args(ErrorType)) - {"value_error", "assertion_error"}
_MAX_LISTED_ERRORS = 10


def describe_errors(exc: ValidationError) -> str:
    """Which fields failed and how, without any value of the input.

    ``total: Input should be a valid number (float_parsing); card: value_error``
    """
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for error in errors[:_MAX_LISTED_ERRORS]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        kind = error["type"]
        if kind in _SCHEMA_ONLY_MESSAGES:
            parts.append(f"{where}: {error['msg']} ({kind})")
        else:
            parts.append(f"{where}: {kind}")
    if len(errors) > _MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_LISTED_ERRORS} more")
    return "; ".join(parts)
