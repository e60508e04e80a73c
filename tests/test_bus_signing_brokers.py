"""Signed envelopes on each broker: the round trip of events, requests and replies, a
signed replay to one group, and unsigned or forged messages dead-lettered while the
consumers go on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from flowkit import Choreography, Command, Context, Event, Message, Retry, Signing
from flowkit._events import encode
from flowkit.choreography._headers import REPLY_TO
from flowkit.stores import MemoryStore
from flowkit.transports import from_url

from .brokers import on_brokers, with_query
from .brokers import prefix as prefix
from .brokers import url as url

if TYPE_CHECKING:
    from .brokers import Broker

pytestmark = pytest.mark.anyio

KEY = bytes.fromhex("3c" * 32)
SIGNING = Signing(keys={"2026-12": KEY}, active="2026-12")
FORGER = Signing(keys={"2026-12": bytes(32)}, active="2026-12")


class Placed(Event):
    order_id: str


class Total(Message):
    cents: int


class PriceOf(Command[Total]):
    order_id: str


@on_brokers()
async def test_signed_round_trip_and_refused_messages(
    broker: Broker, url: str, prefix: str
) -> None:
    transport = from_url(with_query(url, prefix=prefix, **broker.options))
    bus = Choreography(transport, store=MemoryStore(), signing=SIGNING)
    down = {"o-2": 1}
    handled: list[tuple[str, str, bool | None]] = []

    @bus.on(Placed, service="billing", name="bill", retry=Retry(attempts=1))
    async def bill(event: Placed, ctx: Context) -> None:
        if down.get(event.order_id):
            down[event.order_id] -= 1
            raise RuntimeError("billing is down")
        handled.append(("billing", event.order_id, ctx.signed))

    @bus.on(Placed, service="audit", name="audit")
    async def audit(event: Placed, ctx: Context) -> None:
        handled.append(("audit", event.order_id, ctx.signed))

    @bus.handles(PriceOf, service="pricing")
    async def price(command: PriceOf) -> Total:
        return Total(cents=len(command.order_id) * 100)

    with anyio.fail_after(30 + broker.wait):
        async with bus:
            await bus.publish(Placed(order_id="o-1"))
            await bus.publish(Placed(order_id="o-2"))
            total = await bus.request(PriceOf(order_id="o-123"), timeout=broker.wait + 10)
            # Someone on the broker without the keys: unsigned, forged, and a command
            # whose reply would go to the Placed topic.
            _, body = encode(Placed(order_id="unsigned"))
            await transport.publish("Placed", body)
            _, body = encode(Placed(order_id="forged"))
            await transport.publish("Placed", body, FORGER.signed("Placed", body))
            _, body = encode(PriceOf(order_id="redirected"))
            await transport.publish("PriceOf", body, {REPLY_TO: "Placed"})
            await bus.wait_idle(30)
            letters = await bus.dead_letters(limit=100)
            refused = [x for x in letters if x.error_type == "flowkit.SignatureError"]
            # unsigned and forged for each of two handlers, and the command
            assert len(refused) == 5
            assert sorted(x.error.split(" ")[0] for x in refused) == [
                "bad",
                "bad",
                "unsigned",
                "unsigned",
                "unsigned",
            ]
            (failed,) = [x for x in letters if x.error_type == "RuntimeError"]
            await bus.replay(failed.id)
            await bus.wait_idle(30)
    # The replay, signed for billing's group, reached billing only.
    assert total == Total(cents=500)
    assert sorted(handled) == [
        ("audit", "o-1", True),
        ("audit", "o-2", True),
        ("billing", "o-1", True),
        ("billing", "o-2", True),
    ]
