"""Signed envelopes on the in-memory transport: the Signing declaration, the round
trip, key rotation, the migration mode, replays, the orchestrator and the outbox,
and the seven abuses of flowkit's control headers, each shown without signing (the
documented behaviour) and refused with it."""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from flowkit import (
    Choreography,
    Command,
    Context,
    DeadLetter,
    DefinitionError,
    Event,
    Message,
    Retry,
    SignatureError,
    Signing,
)
from flowkit._events import encode
from flowkit.choreography._context import derive_message_id
from flowkit.choreography._headers import IDEMPOTENCY_KEY, IN_REPLY_TO, REPLAY_OF, REPLY_TO
from flowkit.orchestration import Orchestrator, Remote, WorkflowStatus
from flowkit.stores import MemoryStore, SQLiteStore
from flowkit.transports import InMemoryTransport

from ._util import wait_until

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

pytestmark = pytest.mark.anyio

KEY = bytes.fromhex("5a" * 32)
OLD_KEY = bytes.fromhex("a5" * 40)
#: The right key id, the wrong key: what someone without the key can make.
FORGER = Signing(keys={"2026-12": bytes(32)}, active="2026-12")
SIGNATURE = "flowkit-signature"


def signing(*, required: bool = True) -> Signing:
    return Signing(keys={"2026-12": KEY, "2026-06": OLD_KEY}, active="2026-12", required=required)


class Placed(Event):
    order_id: str


class Shipped(Event):
    order_id: str


class Total(Message):
    cents: int


class PriceOf(Command[Total]):
    order_id: str


class Charge(Command[Total]):
    order_id: str


class Tap(InMemoryTransport):
    """The in-memory transport, recording every publish as someone on the broker sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bytes, dict[str, str], str | None]] = []

    async def publish(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
        group: str | None = None,
    ) -> None:
        self.seen.append((topic, body, dict(headers or {}), group))
        await super().publish(topic, body, headers, key=key, group=group)

    def last(self, topic: str) -> tuple[bytes, dict[str, str], str | None]:
        for seen_topic, body, headers, group in reversed(self.seen):
            if seen_topic == topic:
                return body, headers, group
        raise AssertionError(f"nothing was published to {topic!r}")


async def forge(
    transport: InMemoryTransport,
    message: Message,
    *,
    topic: str | None = None,
    headers: Mapping[str, str] | None = None,
    envelope_headers: Mapping[str, str] | None = None,
    message_id: str | None = None,
    group: str | None = None,
    sign_with: Signing | None = None,
) -> None:
    """Publish ``message`` straight to the transport, as someone with access to the
    broker but not to the keys would."""
    envelope, body = encode(message, headers=envelope_headers, message_id=message_id)
    topic = topic or envelope.type
    out = dict(headers or {})
    if sign_with is not None:
        out = sign_with.signed(topic, body, out)
    await transport.publish(topic, body, out, group=group)


async def refused(bus: Choreography) -> list[DeadLetter]:
    """The dead letters of messages that failed their signature check."""
    return [x for x in await bus.dead_letters() if x.error_type == "flowkit.SignatureError"]


# -- the declaration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "active", "required", "says"),
    [
        ({}, "a", True, "dict of key id to key bytes"),
        ({"2026-12": KEY[:16]}, "2026-12", True, "too short (16 bytes): use at least 32"),
        ({"2026-12": KEY.hex()}, "2026-12", True, "must be bytes, not str"),
        ({"no:colons": KEY}, "no:colons", True, "is not a short name"),
        ({"x" * 33: KEY}, "x", True, "is not a short name"),
        ({"2026-12": KEY}, "2026-06", True, "names no key"),
        ({"2026-12": KEY}, "2026-12", "yes", "must be True or False"),
    ],
)
def test_signing_is_checked_when_made_and_never_shows_a_key(
    keys: Any, active: Any, required: Any, says: str
) -> None:
    with pytest.raises(DefinitionError, match=None) as caught:
        Signing(keys=keys, active=active, required=required)
    text = str(caught.value)
    assert says in text
    assert KEY.hex() not in text and "5a5a" not in text and repr(KEY[:16]) not in text


def test_a_signing_shows_its_key_ids_only() -> None:
    made = signing()
    assert repr(made) == "Signing(keys=['2026-06', '2026-12'], active='2026-12', required=True)"
    assert made.key_ids == ("2026-06", "2026-12") and made.active == "2026-12"
    with pytest.raises(TypeError, match="not pickled"):
        import pickle

        pickle.dumps(made)
    with pytest.raises(DefinitionError, match=r"flowkit\.Signing"):
        Choreography(InMemoryTransport(), signing=KEY)  # type: ignore[arg-type]


def test_a_signature_covers_the_topic_the_group_every_control_header_and_the_body() -> None:
    made = signing()
    body = b'{"x":1}'
    headers = made.signed("T", body, {REPLY_TO: "r", "other": "not covered"})
    value = headers[SIGNATURE]
    assert value.startswith("2026-12:") and len(value) == len("2026-12:") + 64
    assert made.verify("T", "g", body, headers) is True
    for topic, group, changed_body, changed in (
        ("U", "g", body, headers),  # moved to another topic
        ("T", "g", b'{"x":2}', headers),  # another body
        ("T", "g", body, {**headers, REPLY_TO: "elsewhere"}),  # a header changed
        ("T", "g", body, {**headers, REPLAY_OF: "d-1"}),  # a header added
        ("T", "g", body, {SIGNATURE: value}),  # a header removed
    ):
        with pytest.raises(SignatureError, match="bad signature"):
            made.verify(topic, group, changed_body, changed)
    assert made.verify("T", "g", body, {**headers, "other": "free"})  # not a control header
    # Signed for one group: that group only.
    to_one = made.signed("T", body, {}, group="billing:bill")
    assert made.verify("T", "billing:bill", body, to_one)
    with pytest.raises(SignatureError):
        made.verify("T", "audit:audit", body, to_one)


# -- the round trip, rotation, the migration mode ----------------------------------------


async def test_signed_events_requests_and_replies_round_trip() -> None:
    transport = Tap()
    bus = Choreography(transport, store=MemoryStore(), signing=signing())
    seen: list[tuple[str, bool | None]] = []

    @bus.on(Placed, service="shipping")
    async def ship(event: Placed, ctx: Context) -> None:
        seen.append((event.order_id, ctx.signed))

    @bus.handles(PriceOf, service="pricing")
    async def price(command: PriceOf) -> Total:
        return Total(cents=100)

    with anyio.fail_after(10):
        async with bus:
            await bus.publish(Placed(order_id="o-1"))
            assert await bus.request(PriceOf(order_id="o-1"), timeout=5) == Total(cents=100)
            await bus.wait_idle()
            assert await bus.dead_letters() == []
    assert seen == [("o-1", True)]
    # Everything the bus sent is signed with the active key: event, request, notice, reply.
    assert transport.seen and all(
        h[SIGNATURE].startswith("2026-12:") for _, _, h, _ in transport.seen
    )


async def test_unsigned_forged_and_moved_messages_are_dead_lettered_and_the_consumer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    transport = InMemoryTransport()
    bus = Choreography(transport, store=MemoryStore(), signing=signing())
    seen: list[str] = []

    @bus.on(Placed, service="shipping")
    async def ship(event: Placed) -> None:
        seen.append(event.order_id)

    with anyio.fail_after(10):
        async with bus:
            await forge(transport, Placed(order_id="unsigned"))
            await forge(transport, Placed(order_id="payload-value-1"), sign_with=FORGER)
            stranger = Signing(keys={"elsewhere": KEY}, active="elsewhere")
            await forge(transport, Placed(order_id="payload-value-2"), sign_with=stranger)
            # Signed for topic Shipped, moved to Placed.
            _, body = encode(Placed(order_id="moved"))
            await transport.publish("Placed", body, signing().signed("Shipped", body))
            await forge(transport, Placed(order_id="bad-header"), headers={SIGNATURE: "x"})
            await bus.publish(Placed(order_id="real"))
            await bus.wait_idle()
            letters = await refused(bus)
    assert seen == ["real"]
    reasons = sorted(letter.error for letter in letters)
    assert len(reasons) == 5
    assert reasons[0].startswith("bad signature (key '2026-12') on topic 'Placed'")  # forged
    assert reasons[1].startswith("bad signature (key '2026-12') on topic 'Placed'")  # moved
    assert reasons[2].startswith("malformed flowkit-signature header")
    assert reasons[3] == (
        "message on topic 'Placed' is signed with key id 'elsewhere', which this bus does "
        "not know (it knows 2026-06, 2026-12); add that key to Signing(keys=...)"
    )
    assert reasons[4].startswith("unsigned message on topic 'Placed'")
    assert all(x.attempts == 0 and x.message_id is None for x in letters)
    # No key, and no payload value of a refused message, in any log line or error.
    text = caplog.text + "".join(x.error for x in letters)
    assert KEY.hex() not in text and OLD_KEY.hex() not in text
    assert "payload-value" not in caplog.text


async def test_old_keys_verify_and_the_active_one_signs() -> None:
    transport = InMemoryTransport()
    # The producer has not rotated yet: it signs with the old key.
    producer = Choreography(transport, signing=Signing(keys={"2026-06": OLD_KEY}, active="2026-06"))
    consumer = Choreography(transport, store=MemoryStore(), signing=signing())
    seen: list[str] = []

    @consumer.on(Placed, service="shipping")
    async def ship(event: Placed) -> None:
        seen.append(event.order_id)

    with anyio.fail_after(10):
        async with consumer, producer.run(services=[]):
            await producer.publish(Placed(order_id="old key"))
            await consumer.publish(Placed(order_id="new key"))
            await consumer.wait_idle()
            assert await refused(consumer) == []
    assert sorted(seen) == ["new key", "old key"]
    # Once the old key is dropped, what it signed is refused, naming the key id.
    retired = Choreography(
        transport, store=MemoryStore(), signing=Signing(keys={"2026-12": KEY}, active="2026-12")
    )
    retired.on(Placed, service="shipping")(ship)
    with anyio.fail_after(10):
        async with retired, producer.run(services=[]):
            await producer.publish(Placed(order_id="too old"))
            await retired.wait_idle()
            (letter,) = await refused(retired)
    assert "key id '2026-06', which this bus does not know" in letter.error
    assert "too old" not in seen


async def test_the_migration_mode_accepts_unsigned_messages_without_their_control_headers() -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport, store=MemoryStore(), signing=signing(required=False))
    seen: list[tuple[str, bool | None, str]] = []

    @bus.handles(Charge, service="payments", name="charge")
    async def charge(command: Charge, ctx: Context) -> Total:
        seen.append((command.order_id, ctx.signed, ctx.idempotency_key))
        return Total(cents=1)

    with anyio.fail_after(10):
        async with bus:
            await forge(
                transport,
                Charge(order_id="old producer"),
                envelope_headers={IDEMPOTENCY_KEY: "w1:charge"},
                message_id="m-1",
            )
            await forge(transport, Charge(order_id="forged"), sign_with=FORGER)
            assert await bus.request(Charge(order_id="signed"), timeout=5) == Total(cents=1)
            await bus.wait_idle()
            (letter,) = await refused(bus)
    assert "bad signature" in letter.error  # signed ones are still verified
    (old, new) = seen
    assert old == ("old producer", False, "payments:charge:m-1/unsigned")
    assert new[:2] == ("signed", True)


# -- replays ----------------------------------------------------------------------------


async def test_a_replay_is_signed_for_its_group_and_a_refused_letter_is_not_replayed() -> None:
    transport = Tap()
    bus = Choreography(transport, store=MemoryStore(), signing=signing())
    down = {"o-1": 1}
    handled: list[tuple[str, str]] = []

    @bus.on(Placed, service="billing", name="bill", retry=Retry(attempts=1))
    async def bill(event: Placed) -> None:
        if down.get(event.order_id):
            down[event.order_id] -= 1
            raise RuntimeError("billing is down")
        handled.append(("billing", event.order_id))

    @bus.on(Placed, service="audit", name="audit")
    async def audit(event: Placed) -> None:
        handled.append(("audit", event.order_id))

    with anyio.fail_after(10):
        async with bus:
            await bus.publish(Placed(order_id="o-1"))
            await forge(transport, Placed(order_id="forged"))
            await bus.wait_idle()
            (failed,) = [x for x in await bus.dead_letters() if x.error_type == "RuntimeError"]
            forged = await refused(bus)
            assert len(forged) == 2  # one per handler
            with pytest.raises(SignatureError, match="is not replayed: unsigned message"):
                await bus.replay(forged[0].id)
            assert len(await refused(bus)) == 2  # kept
            await bus.replay(failed.id)
            await bus.wait_idle()
            body, headers, group = transport.last("Placed")
            assert group == "billing:bill" and headers[REPLAY_OF] == failed.id
            # The signed replay, published to the whole topic: audit refuses it.
            await transport.publish("Placed", body, headers)
            await bus.wait_idle()
            again = [x for x in await refused(bus) if x.consumer == "audit:audit"]
    assert sorted(handled) == [("audit", "o-1"), ("billing", "o-1")]
    assert len(again) == 2 and "bad signature" in again[-1].error


# -- the seven abuses --------------------------------------------------------------------


async def _suppress_a_replay(sign: Signing | None) -> tuple[list[str], int]:
    transport = InMemoryTransport()
    bus = Choreography(transport, store=MemoryStore(), signing=sign)
    down = {"o-1": 1}
    handled: list[str] = []

    @bus.on(Placed, service="billing", name="bill", retry=Retry(attempts=1))
    async def bill(event: Placed) -> None:
        if down.get(event.order_id):
            down[event.order_id] -= 1
            raise RuntimeError("billing is down")
        handled.append(event.order_id)

    with anyio.fail_after(10):
        async with bus:
            envelope = await bus.publish(Placed(order_id="o-1"))
            await bus.wait_idle()
            (letter,) = await bus.dead_letters()
            # Someone who saw the dead letter's id takes the replay's place in the inbox.
            await forge(
                transport,
                Placed(order_id="not the real one"),
                message_id=envelope.message_id,
                headers={REPLAY_OF: letter.id},
                group=letter.consumer,
            )
            await bus.wait_idle()
            await bus.replay(letter.id)
            await bus.wait_idle()
            return handled, len(await refused(bus))


async def test_abuse_1_a_replay_target_header_suppresses_the_real_replay() -> None:
    # Without signing: the forged message claims the replay's inbox entry, and the
    # operator's replay is dropped as its duplicate.
    assert await _suppress_a_replay(None) == (["not the real one"], 0)
    # With signing: the forged message is dead-lettered; the replay is handled.
    assert await _suppress_a_replay(signing()) == (["o-1"], 1)


async def _bypass_the_inbox(sign: Signing | None) -> tuple[list[str], int]:
    transport = Tap()
    bus = Choreography(transport, store=MemoryStore(), signing=sign)
    handled: list[str] = []

    @bus.on(Placed, service="billing")
    async def bill(event: Placed) -> None:
        handled.append(event.order_id)

    with anyio.fail_after(10):
        async with bus:
            await bus.publish(Placed(order_id="o-1"))
            await bus.wait_idle()
            body, headers, _ = transport.last("Placed")
            # The very message again: the inbox drops it.
            await transport.publish("Placed", body, headers)
            # Again with a replay mark: a new inbox entry, so handled again.
            await transport.publish("Placed", body, {**headers, REPLAY_OF: "any"})
            await bus.wait_idle()
            return handled, len(await refused(bus))


async def test_abuse_2_a_replay_header_bypasses_the_inbox() -> None:
    assert await _bypass_the_inbox(None) == (["o-1", "o-1"], 0)
    assert await _bypass_the_inbox(signing()) == (["o-1"], 1)


async def _preempt_a_message_id(sign: Signing | None) -> tuple[list[str], int]:
    transport = InMemoryTransport()
    bus = Choreography(transport, store=MemoryStore(), signing=sign)
    handled: list[str] = []

    @bus.on(Placed, service="billing")
    async def bill(event: Placed) -> None:
        handled.append(event.order_id)

    with anyio.fail_after(10):
        async with bus:
            # The id the shop gives its idempotent publish, used first by someone else.
            await forge(transport, Placed(order_id="someone else's"), message_id="order-o-1")
            await bus.wait_idle()
            await bus.publish(Placed(order_id="o-1"), message_id="order-o-1")
            await bus.wait_idle()
            return handled, len(await refused(bus))


async def test_abuse_3_a_message_id_is_preempted() -> None:
    assert await _preempt_a_message_id(None) == (["someone else's"], 0)
    assert await _preempt_a_message_id(signing()) == (["o-1"], 1)
    # In the migration mode the unsigned message is handled, under an id of its own.
    assert await _preempt_a_message_id(signing(required=False)) == (["someone else's", "o-1"], 0)


async def _preempt_a_derived_id(sign: Signing | None) -> tuple[list[str], int]:
    transport = InMemoryTransport()
    bus = Choreography(transport, store=MemoryStore(), signing=sign)
    mailed: list[str] = []

    @bus.on(Placed, service="orders", name="ship")
    async def ship(event: Placed, ctx: Context) -> None:
        await ctx.publish(Shipped(order_id=event.order_id))

    @bus.on(Shipped, service="mail")
    async def mail(event: Shipped) -> None:
        mailed.append(event.order_id)

    with anyio.fail_after(10):
        async with bus:
            # The id ``ship`` derives for what it publishes is known in advance.
            derived = derive_message_id("p-1", "orders:ship", 1)
            await forge(transport, Shipped(order_id="someone else's"), message_id=derived)
            await bus.wait_idle()
            await bus.publish(Placed(order_id="o-1"), message_id="p-1")
            await bus.wait_idle()
            return mailed, len(await refused(bus))


async def test_abuse_4_a_derived_id_is_preempted() -> None:
    assert await _preempt_a_derived_id(None) == (["someone else's"], 0)
    assert await _preempt_a_derived_id(signing()) == (["o-1"], 1)
    assert await _preempt_a_derived_id(signing(required=False)) == (["someone else's", "o-1"], 0)


async def _forge_a_reply(sign: Signing | None) -> tuple[Total, int]:
    transport = Tap()
    bus = Choreography(transport, store=MemoryStore(), signing=sign)
    answer = anyio.Event()

    @bus.handles(PriceOf, service="pricing")
    async def price(command: PriceOf) -> Total:
        await answer.wait()
        return Total(cents=100)

    got: list[Total] = []
    with anyio.fail_after(10):
        async with bus, anyio.create_task_group() as tg:

            async def call() -> None:
                got.append(await bus.request(PriceOf(order_id="o-1"), timeout=5))

            tg.start_soon(call)
            await wait_until(lambda: any(t == "PriceOf" for t, _, _, _ in transport.seen))
            _, request_headers, _ = transport.last("PriceOf")
            # Someone who saw the request answers first.
            await forge(
                transport,
                Total(cents=0),
                topic=request_headers[REPLY_TO],
                headers={IN_REPLY_TO: request_headers["flowkit-request-id"]},
            )
            await anyio.sleep(0.05)
            answer.set()
            await wait_until(lambda: bool(got))
            return got[0], len(await refused(bus))
    raise AssertionError("unreachable")  # the task group re-raises what a task raised


async def test_abuse_5_a_reply_is_forged() -> None:
    assert await _forge_a_reply(None) == (Total(cents=0), 0)
    forged = await _forge_a_reply(signing())
    assert forged == (Total(cents=100), 1)


async def _redirect_a_reply(sign: Signing | None) -> tuple[int, int, int]:
    """(replies that reached the Placed topic, commands handled, messages refused)"""
    transport = Tap()
    bus = Choreography(transport, store=MemoryStore(), signing=sign)
    priced: list[str] = []

    @bus.handles(PriceOf, service="pricing")
    async def price(command: PriceOf) -> Total:
        priced.append(command.order_id)
        return Total(cents=100)

    with anyio.fail_after(10):
        async with bus:
            spy = await transport.subscribe("Placed", "spy")
            # A command naming any topic as its reply topic.
            await forge(
                transport,
                PriceOf(order_id="o-1"),
                headers={REPLY_TO: "Placed", "flowkit-request-id": "r-1"},
            )
            # A real request, sent again with its reply topic changed.
            assert await bus.request(PriceOf(order_id="o-2"), timeout=5) == Total(cents=100)
            body, headers, _ = transport.last("PriceOf")
            await transport.publish("PriceOf", body, {**headers, REPLY_TO: "Placed"})
            await bus.wait_idle()
            reached = await transport.backlog("Placed", "spy")
            await spy.aclose()
            return reached, len(priced), len(await refused(bus))


async def test_abuse_6_a_reply_is_redirected_to_any_topic() -> None:
    # Without signing: both replies (and the accepted notices) land on Placed.
    reached, handled, refused_ = await _redirect_a_reply(None)
    assert reached >= 2 and handled >= 2 and refused_ == 0
    # With signing: the forged command and the altered request are dead-lettered.
    reached, handled, refused_ = await _redirect_a_reply(signing())
    assert reached == 0 and refused_ == 2
    # In the migration mode the unsigned command is handled, its reply topic ignored.
    reached, handled, refused_ = await _redirect_a_reply(signing(required=False))
    assert reached == 0 and refused_ == 1


async def _set_an_idempotency_key(sign: Signing | None) -> tuple[list[str], int]:
    transport = InMemoryTransport()
    bus = Choreography(transport, store=MemoryStore(), signing=sign)
    keys: list[str] = []

    @bus.handles(Charge, service="payments", name="charge")
    async def charge(command: Charge, ctx: Context) -> Total:
        keys.append(ctx.idempotency_key)  # passed on to the payment provider
        return Total(cents=100)

    with anyio.fail_after(10):
        async with bus:
            await forge(
                transport,
                Charge(order_id="o-1"),
                envelope_headers={IDEMPOTENCY_KEY: "w1:charge"},
                message_id="m-1",
            )
            await bus.wait_idle()
            return keys, len(await refused(bus))


async def test_abuse_7_another_steps_idempotency_key_is_set() -> None:
    assert await _set_an_idempotency_key(None) == (["w1:charge"], 0)
    assert await _set_an_idempotency_key(signing()) == ([], 1)
    assert await _set_an_idempotency_key(signing(required=False)) == (
        ["payments:charge:m-1/unsigned"],
        0,
    )


# -- the orchestrator and the outbox -----------------------------------------------------


class Priced(Orchestrator[Placed]):
    steps = (Remote(PriceOf, lambda ctx, order: PriceOf(order_id=order.order_id), timeout=1),)


def pricing_bus(transport: InMemoryTransport) -> Choreography:
    bus = Choreography(transport, store=MemoryStore(), signing=signing())

    @bus.handles(PriceOf, service="pricing")
    async def price(command: PriceOf, ctx: Context) -> Total:
        assert ctx.signed is True
        return Total(cents=100)

    return bus


async def test_an_orchestrator_signs_the_commands_of_its_remote_steps() -> None:
    transport = InMemoryTransport()
    services = pricing_bus(transport)
    with anyio.fail_after(10):
        async with services, Priced(MemoryStore(), transport=transport, signing=signing()) as o:
            outcome = await o.run(Placed(order_id="o-1"), workflow_id="w1")
        assert outcome.ok
        # Without the keys, its commands are refused and the step times out.
        services = pricing_bus(transport)
        async with services, Priced(MemoryStore(), transport=transport) as unsigned:
            outcome = await unsigned.run(Placed(order_id="o-2"), workflow_id="w2")
            await services.wait_idle()
            assert len(await refused(services)) == 1
    assert outcome.status is not WorkflowStatus.COMPLETED


async def test_an_orchestrator_takes_a_given_buses_signing_and_refuses_another() -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport, signing=signing())
    with pytest.raises(DefinitionError, match="differs from the given bus's own signing"):
        Priced(MemoryStore(), bus=bus, signing=signing())
    with pytest.raises(DefinitionError, match=r"flowkit\.Signing"):
        Priced(MemoryStore(), transport=transport, signing="key")  # type: ignore[arg-type]
    Priced(MemoryStore(), bus=bus, signing=bus.signing)


async def test_the_outbox_relay_publishes_signed_messages(tmp_path: Path) -> None:
    db = str(tmp_path / "shop.db")
    transport = InMemoryTransport()
    bus = Choreography(transport, store=SQLiteStore(db), signing=signing())
    # A process without the keys writes to the same outbox.
    keyless = Choreography(transport, store=SQLiteStore(db), outbox_relay=False)
    got: list[tuple[str, bool | None]] = []

    @bus.on(Placed, service="mail")
    async def mail(event: Placed, ctx: Context) -> None:
        got.append((event.order_id, ctx.signed))

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        with anyio.fail_after(10):
            async with bus:
                for outbox, order_id in ((bus.outbox, "signed"), (keyless.outbox, "unsigned")):
                    conn.execute("BEGIN IMMEDIATE")
                    await outbox.publish(conn, Placed(order_id=order_id))
                    conn.execute("COMMIT")
                await wait_until(lambda: bool(got))
                await bus.wait_idle()
                (letter,) = await refused(bus)
    finally:
        conn.close()
    assert got == [("signed", True)]
    assert letter.error.startswith("unsigned message")
