"""Fuzzed wire input for a running bus: Hypothesis strategies of raw bodies and
transport headers, and what the bus must make of each.

An :class:`Input` is what a program other than flowkit might publish to a bus's
topic: an envelope valid or broken in one of many ways, a payload with wrong,
missing or extra fields, huge strings, deep nesting, text that is not JSON or not
UTF-8, nothing at all, a body over the bus's ``max_message_size``, forged
``flowkit-*`` headers. Every payload value that is text carries :data:`MARKER`,
so a test can check that no payload value reaches a dead letter's reason or a log
record.

:func:`outcome` says what the bus must do with an input (handle it, dead-letter it
for a named reason, or drop an expired request); its decode step is flowkit's own
decoder, and each strategy also states what it meant to build (:attr:`Input.intent`),
which the tests check against it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from hypothesis import strategies as st
from pydantic import Field

from flowkit import Command, DecodeError, Event, Message
from flowkit._events import decode
from flowkit.choreography._headers import (
    DEADLINE,
    IDEMPOTENCY_KEY,
    REPLAY_OF,
    REPLY_TO,
    REQUEST_ID,
    deadline_of,
)

MARKER = "mk-7f3a9c"
"""Put in every payload value that is text: it must never show in a reason or a log."""

MAX_MESSAGE_SIZE = 24 * 1024
"""The ``max_message_size`` of the fuzzed buses: small, so that bodies over it stay cheap."""


class Fuzzed(Event, type_name="fuzz.Fuzzed"):
    """The event the fuzzed bus handles."""

    n: int
    note: str
    tags: list[str] = Field(default_factory=list)
    data: dict[str, Any] = Field(default_factory=dict)


class Answer(Message, type_name="fuzz.Answer"):
    n: int


class Probe(Command[Answer], type_name="fuzz.Probe"):
    """The command the fuzzed bus answers (its reply goes where ``flowkit-reply-to`` says)."""

    n: int
    note: str


EVENT_TOPIC = Fuzzed.__flowkit_type__
COMMAND_TOPIC = Probe.__flowkit_type__
MODELS: dict[str, type[Message]] = {EVENT_TOPIC: Fuzzed, COMMAND_TOPIC: Probe}

Intent = Literal["valid", "invalid", "either"]


@dataclass
class Input:
    """One fuzzed publish: where, the raw body, the headers, what it was meant to be."""

    topic: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    intent: Intent = "either"
    what: str = ""

    def with_id(self, message_id: str) -> Input:
        """The same input with the id placeholder ``@ID@`` replaced (ids must not repeat:
        the inbox drops a second message of one id)."""
        body = self.body.replace(b"@ID@", message_id.encode())
        return Input(self.topic, body, dict(self.headers), self.intent, self.what)


Outcome = Literal["handled", "dead", "expired"]


def outcome(item: Input) -> tuple[Outcome, str]:
    """What the bus must make of ``item``, and for a dead letter the words its reason
    must contain."""
    if len(item.body) > MAX_MESSAGE_SIZE:
        return "dead", "max_message_size"
    model = MODELS[item.topic]
    try:
        envelope, _ = decode(item.body, model)
    except DecodeError as exc:
        return "dead", _KIND_WORDS[exc.kind]
    del envelope
    if model is Probe:
        deadline = deadline_of(item.headers)
        if deadline is not None and time.time() >= deadline:
            return "expired", ""
    return "handled", ""


_KIND_WORDS = {
    "json": "body is not valid JSON",
    "envelope": "body is not a flowkit envelope",
    "unknown_type": "unknown message type",
    "validation": "payload failed validation",
}

# -- strategies ------------------------------------------------------------------

_short_text = st.text(max_size=12)
_marked = st.builds(lambda s: f"{MARKER}{s}", _short_text)
_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _marked,
)
_json = st.recursive(
    _json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_short_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def _deep(depth: int, kind: str) -> str:
    """JSON text nested ``depth`` deep (written out: json.dumps would recurse as deep)."""
    opening, closing = ("[", "]") if kind == "list" else ('{"k": ', "}")
    return opening * depth + json.dumps(MARKER) + closing * depth


def _payload(topic: str, n: int, note: str, tags: list[str], data: Any) -> dict[str, Any]:
    if topic == COMMAND_TOPIC:
        return {"n": n, "note": note}
    return {"n": n, "note": note, "tags": tags, "data": data}


def _envelope(topic: str, payload: Any, headers: Any = None) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "id": "@ID@",
        "type": topic,
        "version": 1,
        "correlation_id": "c-@ID@",
        "causation_id": None,
        "occurred_at": "2024-05-01T12:00:00.000+00:00",
        "headers": {} if headers is None else headers,
        "payload": payload,
    }
    return envelope


def _dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


_topics = st.sampled_from([EVENT_TOPIC, COMMAND_TOPIC])

ODD_TOPICS = [
    "",
    " ",
    "#",
    "*",
    ">",
    "a.*.b",
    "flowkit.reply.nobody",
    "../../etc/passwd",
    "white space",
    "ünïcödé.tópic",
    "nul\x00byte",
    "x" * 300,
]
GARBAGE_DEADLINES = ["", "nan", "NaN", "inf", "-inf", "1e309", "soon", "0x10", "1_0", " 1 "]

_odd_topics = st.one_of(
    st.sampled_from(ODD_TOPICS),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40).filter(
        lambda t: t not in MODELS
    ),
)

_garbage_deadlines = st.one_of(
    st.sampled_from(GARBAGE_DEADLINES),
    st.text(max_size=20),
    # far enough from now that the test and the bus agree on which side it is
    st.builds(lambda d: f"{time.time() + d:.3f}", st.sampled_from([-1e6, -3600.0, 3600.0, 1e6])),
    st.builds(str, st.integers(min_value=-(2**64), max_value=2**64)),
)

_header_names = st.one_of(
    st.sampled_from([REPLY_TO, REQUEST_ID, DEADLINE, REPLAY_OF, IDEMPOTENCY_KEY]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_0123456789", min_size=1, max_size=24),
)
_header_values = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80
)


@st.composite
def _forged_headers(draw: st.DrawFn) -> dict[str, str]:
    """Transport headers: none, random ones, and forged flowkit ones."""
    headers = draw(st.dictionaries(_header_names, _header_values, max_size=4))
    if draw(st.booleans()):
        headers[REPLY_TO] = draw(_odd_topics)
        headers[REQUEST_ID] = draw(_header_values)
    if draw(st.booleans()):
        headers[DEADLINE] = draw(_garbage_deadlines)
    if draw(st.booleans()):
        headers[REPLAY_OF] = draw(_header_values)
    if draw(st.booleans()):
        headers[IDEMPOTENCY_KEY] = draw(_header_values)
    for name, value in headers.items():
        if name == DEADLINE:
            continue
        if name == REPLY_TO and value in MODELS:
            # A reply to one of the bus's own topics would be a message of its own.
            headers[name] = f"{value}.elsewhere"
    return headers


@st.composite
def valid_inputs(draw: st.DrawFn) -> Input:
    """A well-formed envelope and payload, with extra fields here and there."""
    topic = draw(_topics)
    payload = _payload(
        topic,
        draw(st.integers(min_value=-(2**63), max_value=2**63)),
        draw(_marked),
        draw(st.lists(_marked, max_size=3)),
        draw(st.dictionaries(_short_text, _json, max_size=3)),
    )
    payload.update(draw(st.dictionaries(st.sampled_from(["extra", "x-y", "ñ"]), _json)))
    envelope = _envelope(topic, payload, draw(st.dictionaries(_short_text, _short_text)))
    envelope.update(draw(st.dictionaries(st.sampled_from(["extra", "trace"]), _json)))
    if draw(st.booleans()):
        del envelope["causation_id"]
    if draw(st.booleans()):
        del envelope["headers"]
    return Input(topic, _dump(envelope), draw(_forged_headers()), "valid", "valid")


_ENVELOPE_FIELDS = ["id", "type", "version", "correlation_id", "occurred_at", "payload"]
_wrong_values: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(st.none(), st.integers(), st.lists(_marked, max_size=2), st.booleans()),
    "type": st.one_of(st.none(), st.integers(), st.dictionaries(_short_text, _marked, max_size=2)),
    "version": st.one_of(st.text(max_size=5), st.floats(allow_nan=False), st.booleans()),
    "correlation_id": st.one_of(st.none(), st.integers(), st.floats(allow_nan=False)),
    "occurred_at": st.one_of(
        st.sampled_from(["", "yesterday", "2024-13-45T99:99:99", "0000-00-00"]),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
    "payload": st.one_of(st.none(), st.lists(_marked, max_size=2), _marked, st.integers()),
    "headers": st.one_of(
        st.lists(_short_text, max_size=2),
        st.dictionaries(_short_text, st.integers(), min_size=1, max_size=2),
        _marked,
    ),
    "causation_id": st.one_of(st.integers(), st.lists(st.none(), max_size=1)),
}


@st.composite
def broken_envelopes(draw: st.DrawFn) -> Input:
    """An envelope with a missing field, a field of the wrong type, or another type name."""
    topic = draw(_topics)
    envelope = _envelope(topic, _payload(topic, 1, MARKER, [MARKER], {"k": MARKER}))
    how = draw(st.sampled_from(["missing", "wrong type", "unknown type"]))
    if how == "missing":
        del envelope[draw(st.sampled_from(_ENVELOPE_FIELDS))]
        intent: Intent = "invalid"
    elif how == "wrong type":
        name = draw(st.sampled_from(sorted(_wrong_values)))
        envelope[name] = draw(_wrong_values[name])
        intent = "either"  # the strict envelope still reads some (a float version of 1.0?)
    else:
        envelope["type"] = draw(
            st.one_of(st.sampled_from(["", "fuzz.Other", "Fuzzed", "fuzz.fuzzed"]), _short_text)
        )
        intent = "invalid" if envelope["type"] != topic else "valid"
    return Input(topic, _dump(envelope), draw(_forged_headers()), intent, f"envelope: {how}")


@st.composite
def broken_payloads(draw: st.DrawFn) -> Input:
    """A readable envelope whose payload has missing fields or fields of the wrong type."""
    topic = draw(_topics)
    payload = _payload(topic, 1, MARKER, [MARKER], {})
    how = draw(st.sampled_from(["missing", "wrong type"]))
    if how == "missing":
        del payload[draw(st.sampled_from(["n", "note"]))]
        intent: Intent = "invalid"
    else:
        name = draw(st.sampled_from(sorted(payload)))
        payload[name] = draw(
            st.one_of(
                _marked,
                st.lists(_marked, min_size=1, max_size=2),
                st.dictionaries(_short_text, _marked, min_size=1, max_size=2),
                st.floats(),
                st.none(),
            )
        )
        intent = "either"  # lax validation takes "1" for an int
    return Input(topic, _dump(_envelope(topic, payload)), {}, intent, f"payload: {how}")


@st.composite
def huge_inputs(draw: st.DrawFn) -> Input:
    """A valid envelope with one huge string: under, at or over ``max_message_size``."""
    topic = draw(_topics)
    body = _dump(_envelope(topic, _payload(topic, 1, MARKER, [], {})))
    room = MAX_MESSAGE_SIZE - len(body)
    extra = draw(st.sampled_from([room - 64, room, room + 1, room * 3, 4 * MAX_MESSAGE_SIZE]))
    note = MARKER + "é" * ((extra - len(MARKER) - 8) // 2 + 4)
    body = _dump(_envelope(topic, _payload(topic, 1, note, [], {})))
    over = extra >= room * 3  # else the id's length decides which side of the limit it is
    return Input(topic, body, {}, "invalid" if over else "either", "huge string")


@st.composite
def deep_inputs(draw: st.DrawFn) -> Input:
    """A payload nested deeply, as data (allowed) or where a string is expected."""
    topic = EVENT_TOPIC
    depth = draw(st.sampled_from([10, 60, 150, 250, 600, 3000]))
    kind = draw(st.sampled_from(["list", "dict"]))
    where = draw(st.sampled_from(["data", "note"]))
    payload = _payload(topic, 1, MARKER, [], {})
    payload[where] = "@DEEP@"
    deep = _deep(depth, kind)
    text = json.dumps(_envelope(topic, payload)).replace(
        '"@DEEP@"', deep if where == "note" else '{"deep": ' + deep + "}"
    )
    return Input(topic, text.encode(), {}, "invalid" if where == "note" else "either", "deep")


@st.composite
def not_json(draw: st.DrawFn) -> Input:
    """Text that is not JSON, JSON that is not an object, bytes that are not UTF-8, nothing."""
    topic = draw(_topics)
    valid = _dump(_envelope(topic, _payload(topic, 1, MARKER, [], {})))
    how = draw(
        st.sampled_from(
            ["empty", "bytes", "truncated", "trailing", "not utf-8", "utf-16", "scalar", "nan"]
        )
    )
    if how == "empty":
        body = b""
    elif how == "bytes":
        body = draw(st.binary(max_size=64))
    elif how == "truncated":
        body = valid[: draw(st.integers(min_value=1, max_value=len(valid) - 1))]
    elif how == "trailing":
        body = valid + draw(st.sampled_from([b"}", b",", b" x", b"\x00", b"{}"]))
    elif how == "not utf-8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
        body = valid.replace(MARKER.encode(), MARKER.encode() + bad, 1)
    elif how == "utf-16":
        body = valid.decode().encode("utf-16")
    elif how == "scalar":
        body = _dump(draw(_json_scalar))
    else:
        body = valid.replace(b'"version": 1', b'"version": NaN')
    intent: Intent = "either" if how == "bytes" else "invalid"
    return Input(topic, body, draw(_forged_headers()), intent, f"not json: {how}")


fuzzed_inputs: st.SearchStrategy[Input] = st.one_of(
    valid_inputs(),
    broken_envelopes(),
    broken_payloads(),
    huge_inputs(),
    deep_inputs(),
    not_json(),
)
"""Any fuzzed input; ``@ID@`` in its body stands for an id of the test's choosing."""


def forged_requests() -> list[Input]:
    """Valid requests whose reply goes to each odd topic, and whose deadline is each
    garbage value (the fuzzed ones reach only some of them)."""
    body = _dump(_envelope(COMMAND_TOPIC, _payload(COMMAND_TOPIC, 1, MARKER, [], {})))
    forged = [
        Input(COMMAND_TOPIC, body, {REPLY_TO: topic, REQUEST_ID: "r-1"}, "valid", "odd reply-to")
        for topic in ODD_TOPICS
    ]
    forged += [
        Input(COMMAND_TOPIC, body, {DEADLINE: deadline, REPLY_TO: "flowkit.reply.nobody"})
        for deadline in GARBAGE_DEADLINES
    ]
    return forged
