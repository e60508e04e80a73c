"""Remote steps: commands to other services, over a fake requester and over the real bus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from flowkit import (
    Choreography,
    Command,
    Context,
    Event,
    Message,
    NonRetryableError,
    RemoteError,
    RequestTimeout,
    Retry,
)
from flowkit.orchestration import (
    Orchestrator,
    Parallel,
    Remote,
    Step,
    StepContext,
    WorkflowStatus,
)
from flowkit.transports._memory import InMemoryTransport

if TYPE_CHECKING:
    from collections.abc import Callable

    from flowkit.stores._memory import MemoryStore

pytestmark = pytest.mark.anyio


class OrderPlaced(Event):
    order_id: str
    sku: str
    quantity: int = 1


class StockReserved(Message):
    reservation_id: str


class ReserveStock(Command[StockReserved]):
    order_id: str
    sku: str
    quantity: int


class StockReleased(Message):
    released: bool


class ReleaseStock(Command[StockReleased]):
    reservation_id: str | None


class PartnerAssigned(Message):
    partner: str


class AssignPartner(Command[PartnerAssigned]):
    order_id: str


def build_release(ctx: StepContext, order: OrderPlaced) -> ReleaseStock:
    reserved = ctx.results.get("reserve_stock")
    return ReleaseStock(reservation_id=reserved.reservation_id if reserved else None)


async def confirm(ctx: StepContext, order: OrderPlaced) -> str:
    reserved = ctx.result(RESERVE)
    return f"confirmed {reserved.reservation_id}"


RESERVE = Remote(
    ReserveStock,
    lambda ctx, order: ReserveStock(order_id=order.order_id, sku=order.sku, quantity=2),
    compensate=Remote(ReleaseStock, build_release),
    timeout=2,
)


class PlaceOrder(Orchestrator[OrderPlaced]):
    steps = (RESERVE, Remote(AssignPartner, retry=Retry(attempts=3, backoff=0)), Step(confirm))


ORDER = OrderPlaced(order_id="o-1", sku="sku-9")


class FakeBus:
    """A requester answering from functions, recording every request."""

    def __init__(self, answers: dict[type[Message], Callable[[Any], Any]]) -> None:
        self.answers = answers
        self.calls: list[tuple[Message, float, str | None, str | None]] = []

    async def request(
        self,
        command: Command[Any],
        *,
        timeout: float = 30.0,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> Any:
        self.calls.append((command, timeout, idempotency_key, correlation_id))
        answer = self.answers[type(command)](command)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def reserved(command: ReserveStock) -> StockReserved:
    return StockReserved(reservation_id=f"r-{command.order_id}")


def partner(command: AssignPartner) -> PartnerAssigned:
    return PartnerAssigned(partner="p-1")


def released(command: ReleaseStock) -> StockReleased:
    return StockReleased(released=command.reservation_id is not None)


async def test_a_remote_step_sends_its_command_and_records_the_typed_reply(
    memory_store: MemoryStore,
) -> None:
    bus = FakeBus({ReserveStock: reserved, AssignPartner: partner})
    async with PlaceOrder(store=memory_store, bus=bus) as orders:
        outcome = await orders.run(ORDER, workflow_id="w1")
        info = await orders.get("w1")
    assert outcome.ok
    assert outcome.result(RESERVE) == StockReserved(reservation_id="r-o-1")
    assert outcome.result("assign_partner") == PartnerAssigned(partner="p-1")
    assert outcome.result(confirm) == "confirmed r-o-1"
    assert info.steps["reserve_stock"].result == StockReserved(reservation_id="r-o-1")
    command, timeout, key, correlation = bus.calls[0]
    assert command == ReserveStock(order_id="o-1", sku="sku-9", quantity=2)
    assert (timeout, key, correlation) == (2.0, "w1:reserve_stock", "w1")
    # without a build function the command is validated from the input's fields
    assert bus.calls[1][0] == AssignPartner(order_id="o-1")
    assert bus.calls[1][1] == 30.0


async def test_a_lost_reply_counts_as_acted_and_is_compensated_remotely(
    memory_store: MemoryStore,
) -> None:
    bus = FakeBus(
        {
            ReserveStock: lambda c: RequestTimeout("no reply"),
            ReleaseStock: released,
        }
    )
    async with PlaceOrder(store=memory_store, bus=bus) as orders:
        outcome = await orders.run(ORDER, workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.type == "RequestTimeout"
    assert outcome.compensated == ("reserve_stock",)
    command, _, key, _ = bus.calls[-1]
    assert command == ReleaseStock(reservation_id=None)  # no reply: no result to undo by
    assert key == "w1:reserve_stock:compensate"


async def test_remote_errors_are_retried_unless_marked_not_retryable(
    memory_store: MemoryStore,
) -> None:
    failures = iter(
        [RemoteError("IOError", "busy", service="logistics"), PartnerAssigned(partner="p-2")]
    )
    bus = FakeBus(
        {ReserveStock: reserved, AssignPartner: lambda c: next(failures), ReleaseStock: released}
    )
    async with PlaceOrder(store=memory_store, bus=bus) as orders:
        outcome = await orders.run(ORDER, workflow_id="w1")
    assert outcome.ok and outcome.result("assign_partner").partner == "p-2"

    bus = FakeBus(
        {
            ReserveStock: reserved,
            AssignPartner: lambda c: RemoteError(
                "ValueError", "unknown region", service="logistics", retryable=False
            ),
            ReleaseStock: released,
        }
    )
    async with PlaceOrder(store=memory_store, bus=bus) as orders:
        outcome = await orders.run(ORDER, workflow_id="w2")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert [type(c[0]) for c in bus.calls] == [ReserveStock, AssignPartner, ReleaseStock]
    assert bus.calls[-1][0] == ReleaseStock(reservation_id="r-o-1")


async def test_a_build_function_returning_another_command_fails_the_step(
    memory_store: MemoryStore,
) -> None:
    class Wrong(Orchestrator[OrderPlaced]):
        steps = (
            Remote(
                ReserveStock,
                lambda ctx, order: AssignPartner(order_id=order.order_id),
                retry=Retry(attempts=3, backoff=0),
            ),
        )

    bus = FakeBus({})
    async with Wrong(store=memory_store, bus=bus) as orders:
        outcome = await orders.run(ORDER, workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and "returned AssignPartner" in outcome.error.message
    assert bus.calls == []


def inventory_bus(transport: InMemoryTransport, seen: list[tuple[str, str, str]]) -> Choreography:
    bus = Choreography(transport)

    @bus.handles(ReserveStock, service="inventory")
    async def reserve(command: ReserveStock, ctx: Context) -> StockReserved:
        seen.append(("reserve", ctx.idempotency_key, ctx.envelope.correlation_id))
        if command.sku == "discontinued":
            raise NonRetryableError("discontinued")
        return StockReserved(reservation_id=f"r-{command.order_id}")

    @bus.handles(ReleaseStock, service="inventory")
    async def release(command: ReleaseStock, ctx: Context) -> StockReleased:
        seen.append(("release", ctx.idempotency_key, ctx.envelope.correlation_id))
        return StockReleased(released=True)

    @bus.handles(AssignPartner, service="logistics")
    async def assign(command: AssignPartner, ctx: Context) -> PartnerAssigned:
        seen.append(("assign", ctx.idempotency_key, ctx.envelope.correlation_id))
        if command.order_id == "o-2":
            raise NonRetryableError("no partner in that region")
        return PartnerAssigned(partner="p-7")

    return bus


async def test_remote_steps_over_the_bus_and_the_in_memory_transport(
    memory_store: MemoryStore,
) -> None:
    seen: list[tuple[str, str, str]] = []
    transport = InMemoryTransport()
    services = inventory_bus(transport, seen)
    async with services, PlaceOrder(store=memory_store, transport=transport) as orders:
        with anyio.fail_after(10):
            ok = await orders.run(ORDER, workflow_id="w1")
            failed = await orders.run(OrderPlaced(order_id="o-2", sku="s"), workflow_id="w2")
    assert ok.ok and ok.result(confirm) == "confirmed r-o-1"
    assert failed.status is WorkflowStatus.COMPENSATED
    assert failed.error is not None and failed.error.type == "RemoteError"
    assert "no partner in that region" in failed.error.message
    assert seen == [
        ("reserve", "w1:reserve_stock", "w1"),
        ("assign", "w1:assign_partner", "w1"),
        ("reserve", "w2:reserve_stock", "w2"),
        ("assign", "w2:assign_partner", "w2"),
        ("release", "w2:reserve_stock:compensate", "w2"),
    ]


async def test_an_orchestrator_can_share_a_running_bus(memory_store: MemoryStore) -> None:
    seen: list[tuple[str, str, str]] = []
    transport = InMemoryTransport()
    bus = inventory_bus(transport, seen)

    class Parallel2(Orchestrator[OrderPlaced]):
        steps = (Parallel(RESERVE, Remote(AssignPartner)),)

    async with bus, Parallel2(store=memory_store, bus=bus) as orders:
        with anyio.fail_after(10):
            outcome = await orders.run(
                OrderPlaced(order_id="o-3", sku="discontinued"), workflow_id="w3"
            )
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.step == "reserve_stock"
    assert outcome.compensated == ()  # the reservation raised; the partner has no compensation
