from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic_core import to_json

from flowkit import Command, DecodeError, DefinitionError, Event, Message
from flowkit._events import decode, decode_envelope, encode, new_message_id, reply_type_of


class OrderPlaced(Event):
    order_id: str
    total: float


class Renamed(Event, type_name="orders.renamed", version=3):
    order_id: str


class Reserved(Message):
    ok: bool


class Reserve(Command[Reserved]):
    sku: str


def test_type_name_defaults_to_class_name_and_can_be_overridden() -> None:
    assert OrderPlaced.__flowkit_type__ == "OrderPlaced"
    assert OrderPlaced.__flowkit_version__ == 1
    assert Renamed.__flowkit_type__ == "orders.renamed"
    assert Renamed.__flowkit_version__ == 3


def test_bad_type_options_are_refused() -> None:
    with pytest.raises(DefinitionError, match="version"):

        class Bad(Event, version=0):
            pass

    with pytest.raises(DefinitionError, match="type_name"):

        class Worse(Event, type_name=""):
            pass


def test_events_are_frozen() -> None:
    event = OrderPlaced(order_id="o-1", total=3.5)
    with pytest.raises(ValueError, match="frozen"):
        event.order_id = "o-2"  # type: ignore[misc]


def test_round_trip_keeps_every_envelope_field() -> None:
    envelope, body = encode(
        Renamed(order_id="o-1"),
        correlation_id="corr",
        causation_id="cause",
        headers={"tenant": "t-1"},
    )
    decoded, message = decode(body, Renamed)
    assert message == Renamed(order_id="o-1")
    assert decoded == envelope
    assert decoded.type == "orders.renamed"
    assert decoded.version == 3
    assert decoded.correlation_id == "corr"
    assert decoded.causation_id == "cause"
    assert decoded.headers == {"tenant": "t-1"}
    assert decoded.occurred_at.tzinfo is not None


def test_a_new_flow_is_correlated_to_its_first_message() -> None:
    envelope, _ = encode(OrderPlaced(order_id="o", total=1))
    assert envelope.correlation_id == envelope.message_id
    assert envelope.causation_id is None


def test_message_ids_are_unique_and_time_ordered() -> None:
    ids = [new_message_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(i[14] == "7" for i in ids[:10])  # UUID version 7


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"\xff\xfe not json", "json"),
        (b"[1, 2]", "envelope"),
        (b'{"id": "x"}', "envelope"),
        (
            to_json(
                {
                    "id": "x",
                    "type": "OrderPlaced",
                    "version": "one",
                    "correlation_id": "x",
                    "occurred_at": datetime.now(UTC).isoformat(),
                    "payload": {},
                }
            ),
            "envelope",
        ),
    ],
)
def test_malformed_bodies_raise_decode_error_naming_the_stage(body: bytes, kind: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(body, OrderPlaced)
    assert info.value.kind == kind


def test_unknown_type_and_invalid_payload_are_told_apart() -> None:
    _, body = encode(Renamed(order_id="o"))
    with pytest.raises(
        DecodeError, match=r"'orders\.renamed': unknown message type: expected 'OrderPlaced'"
    ) as info:
        decode(body, OrderPlaced)
    assert info.value.kind == "unknown_type"

    envelope = decode_envelope(body)
    fields = json.loads(encode(OrderPlaced(order_id="o", total=1))[1])
    fields["payload"]["total"] = "lots"  # the wrong type, the rest of the envelope intact
    bad = json.dumps(fields).encode()
    assert envelope.type == "orders.renamed"
    with pytest.raises(DecodeError, match="payload failed validation") as info:
        decode(bad, OrderPlaced)
    assert info.value.kind == "validation"
    assert info.value.type_name == "OrderPlaced"
    assert "total" in info.value.detail


def test_command_names_its_reply_type() -> None:
    assert reply_type_of(Reserve) is Reserved

    class Orphan(Command):  # type: ignore[type-arg]
        pass

    with pytest.raises(DefinitionError, match="must name its reply type"):
        reply_type_of(Orphan)
