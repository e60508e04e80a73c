from __future__ import annotations

import runpy
from pathlib import Path

import anyio
import pytest

from examples.ecommerce import logistics, notification, order_history, seller
from examples.ecommerce.choreographed import run_choreography
from examples.ecommerce.events import (
    ConfirmationSent,
    OrderPlaced,
    PartnerAssigned,
    SellerAccepted,
    ShipmentPrepared,
)
from examples.ecommerce.orchestrated import SELLER_ANSWERS_WITHIN, run_orchestration
from examples.ecommerce.world import World
from examples.recommendations.__main__ import ask_three_times
from flowkit import Choreography
from flowkit.orchestration import WorkflowStatus
from flowkit.testing import assert_compensation_order, run_in_memory
from flowkit.transports import InMemoryTransport

from .brokers import postgres_url as postgres_url

pytestmark = pytest.mark.anyio

ORDER = OrderPlaced(
    order_id="o-1", user_email="ada@example.com", seller_id="s-1", items=["x"], total=1.0
)


async def test_the_choreographed_demo_runs_every_service(tmp_path: Path) -> None:
    result = await run_choreography(tmp_path / "demo.db")
    assert result.timelines["o-1"][0] == "OrderPlaced"
    assert sorted(result.timelines["o-1"]) == [
        "ConfirmationSent",
        "OrderPlaced",
        "PartnerAssigned",
        "ShipmentPrepared",
    ]
    # the bad email fails notification only: the seller and logistics went on
    assert sorted(result.timelines["o-2"]) == ["OrderPlaced", "PartnerAssigned", "ShipmentPrepared"]
    (letter,) = result.dead_letters
    assert letter.consumer.startswith("notification:")
    assert "not an address" in letter.error
    # logistics retried through the partner API's failures, and booked each order once
    lines = result.world.lines
    assert sum("will deliver order o-1" in line for line in lines) == 1
    assert sum("will deliver order o-2" in line for line in lines) == 1
    assert sum("attempt 2 for order" in line for line in lines) >= 1


async def test_adding_a_subscriber_changes_no_other_service() -> None:
    """The order history is one more subscriber; the others behave the same with or without it."""

    async def run(with_history: bool) -> tuple[list[str], list[str]]:
        world = World()
        bus = Choreography(InMemoryTransport())
        for service in (notification, seller, logistics):
            service.register(bus, world)
        if with_history:
            order_history.register(bus, world)
        async with run_in_memory(bus) as harness:
            await bus.publish(ORDER)
            await harness.drain()
            types = sorted(e.type for e in harness.published)
        return sorted(world.lines), types

    without = await run(False)
    with_it = await run(True)
    assert without == with_it


async def test_one_service_failing_does_not_stop_the_others() -> None:
    world = World()
    bus = Choreography(InMemoryTransport())
    for service in (notification, seller, logistics):
        service.register(bus, world)
    world.fail("warehouse", times=100)  # the seller's warehouse is down for good
    async with run_in_memory(bus) as harness:
        await bus.publish(ORDER)
        await harness.wait_for(ConfirmationSent)
        await harness.wait_for(PartnerAssigned)
        await harness.drain()
        harness.assert_not_published(ShipmentPrepared)
        (letter,) = await harness.dead_letters()
        assert letter.consumer.startswith("seller:")


async def test_the_recommendation_service_degrades_when_inventory_is_slow_or_down() -> None:
    healthy, slow, broken = await ask_three_times()
    assert not healthy.degraded
    assert [i.name for i in healthy.items] and all(i.name for i in healthy.items)
    assert slow.degraded and slow.reason is not None and "did not answer" in slow.reason
    assert broken.degraded and broken.reason is not None and "unavailable" in broken.reason
    assert [i.id for i in slow.items] == [i.id for i in healthy.items]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
def test_the_quickstart_runs(capsys: pytest.CaptureFixture[str], anyio_backend: str) -> None:
    runpy.run_path(
        str(Path(__file__).parents[1] / "examples" / "quickstart.py"), run_name="__main__"
    )
    out = capsys.readouterr().out
    assert "[notification] confirmation sent for o-1" in out
    assert "[seller] shipment prepared for o-1" in out


def test_the_saga_quickstart_runs(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(
        str(Path(__file__).parents[1] / "examples" / "quickstart_saga.py"), run_name="__main__"
    )
    out = capsys.readouterr().out
    assert "o-1: COMPLETED" in out
    assert "released stock for o-2\no-2: COMPENSATED" in out


def assert_the_sellers_were_waited_for(out: str) -> None:
    """The demo's saga waited for each seller: o-1 went on once seller-9 accepted;
    o-4's seller never answered, and its payment and stock were given back."""
    assert "o-1: COMPLETED\n  waited 0." in out
    assert "for event SellerAccepted: seller-9 accepted the order\n" in out
    assert (
        "o-4: COMPENSATED (step 'wait_for_seller_accepted' failed: WaitTimeout: "
        f"step 'wait_for_seller_accepted' waited {SELLER_ANSWERS_WITHIN:g}s for event "
        "SellerAccepted, which did not come)\n"
        f"  waited {SELLER_ANSWERS_WITHIN:.1f}"
    ) in out
    assert (
        "for event SellerAccepted: seller-7 never answered, the wait timed out\n"
        "  compensated, in order: charge_payment, reserve_stock\n"
        "  undone: payment refunded, stock released\n"
    ) in out
    assert "[seller] order o-4 waits in seller-7's inbox: seller-7 is away" in out
    assert "[order] refunded 60.00\n[order] released ['kettle']\n" in out


def test_the_demo_prints_the_flow(capsys: pytest.CaptureFixture[str]) -> None:
    from examples.ecommerce.__main__ import main

    anyio.run(main, None)
    out = capsys.readouterr().out
    assert "(records kept in SQLite files)" in out
    assert "[notification] emailed ada@example.com about order o-1" in out
    assert "order history of o-1: OrderPlaced" in out
    assert "dead letter: notification:" in out
    assert "o-2: COMPENSATED" in out
    assert "compensated, in order: prepare_shipment, charge_payment, reserve_stock" in out
    assert_the_sellers_were_waited_for(out)


def test_the_demo_runs_on_postgresql(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from examples.ecommerce.__main__ import main

    anyio.run(main, postgres_url, backend="asyncio")
    out = capsys.readouterr().out
    assert "(records kept in schema flowkit_demo_" in out
    assert "order history of o-1: OrderPlaced" in out
    assert "dead letter: notification:" in out
    assert "compensated, in order: prepare_shipment, charge_payment, reserve_stock" in out
    assert_the_sellers_were_waited_for(out)


async def test_the_orchestrated_demo_completes_or_compensates_in_reverse(tmp_path: Path) -> None:
    result = await run_orchestration(tmp_path / "saga.db")
    done, no_partner, declined = (result.outcomes[o] for o in ("o-1", "o-2", "o-3"))
    assert done.status is WorkflowStatus.COMPLETED
    assert no_partner.status is WorkflowStatus.COMPENSATED
    assert_compensation_order(no_partner, [{"prepare_shipment"}, "charge_payment", "reserve_stock"])
    assert declined.status is WorkflowStatus.COMPENSATED
    assert declined.compensated == ("reserve_stock",)
    lines = result.world.lines
    assert lines.count("[order] charged 25.00") == 1  # the second run of o-1 did nothing
    assert "[order] refunded 40.00" in lines
    assert "[seller] seller-9 unpacks parcel-o-2" in lines
    assert not any("refunded 9000" in line for line in lines)  # never charged
    events = [t.event for t in result.infos["o-2"].history]
    assert events[0] == "workflow_started" and events[-1] == "compensated"


async def test_the_orchestrated_demo_waits_for_each_seller_and_gives_up_on_a_silent_one(
    tmp_path: Path,
) -> None:
    result = await run_orchestration(tmp_path / "saga.db", wait_for_sellers=True)
    done, no_partner, declined, unanswered = (
        result.outcomes[o] for o in ("o-1", "o-2", "o-3", "o-4")
    )
    # o-1 went on once its seller accepted, the seller's event as the wait's result
    assert done.status is WorkflowStatus.COMPLETED
    accepted = done.results["wait_for_seller_accepted"]
    assert accepted == SellerAccepted(order_id="o-1", seller_id="seller-9")
    events = [(t.event, t.step) for t in result.infos["o-1"].history]
    waited = events.index(("waiting", "wait_for_seller_accepted"))
    took = events.index(("step_succeeded", "wait_for_seller_accepted"))
    shipped = events.index(("step_started", "prepare_shipment"))
    assert events.index(("step_succeeded", "charge_payment")) < waited < took < shipped
    assert events[-1] == ("completed", None)
    # the three scenarios of before are unchanged
    assert no_partner.status is WorkflowStatus.COMPENSATED
    assert_compensation_order(no_partner, [{"prepare_shipment"}, "charge_payment", "reserve_stock"])
    assert declined.status is WorkflowStatus.COMPENSATED
    assert declined.compensated == ("reserve_stock",)
    # o-4's seller never answered: the wait ran out, the payment and the stock were given back
    assert unanswered.status is WorkflowStatus.COMPENSATED
    assert unanswered.error is not None and unanswered.error.type == "WaitTimeout"
    assert unanswered.error.step == "wait_for_seller_accepted"
    assert unanswered.reason is not None and "WaitTimeout" in unanswered.reason
    assert "for event SellerAccepted, which did not come" in unanswered.reason
    assert_compensation_order(unanswered, ["charge_payment", "reserve_stock"])
    info = result.infos["o-4"]
    assert info.steps["wait_for_seller_accepted"].result is None
    timed_out = [t for t in info.history if t.event == "wait_timed_out"]
    (waiting,) = [t for t in info.history if t.event == "waiting"]
    assert len(timed_out) == 1
    assert (timed_out[0].at - waiting.at).total_seconds() >= SELLER_ANSWERS_WITHIN - 0.01
    lines = result.world.lines
    assert "[seller] seller-9 accepts order o-1" in lines
    assert "[seller] order o-4 waits in seller-7's inbox: seller-7 is away" in lines
    charged, refunded, released = (
        lines.index(line)
        for line in (
            "[order] charged 60.00",
            "[order] refunded 60.00",
            "[order] released ['kettle']",
        )
    )
    assert charged < refunded < released
    assert not any("accepts order o-4" in line or "parcel-o-4" in line for line in lines)
