from __future__ import annotations

from typing import Any

import pytest

from flowkit import Choreography, Command, Context, DefinitionError, Event, Message, Retry
from flowkit.transports import InMemoryTransport


class OrderPlaced(Event):
    order_id: str


class Shipped(Event):
    order_id: str


class Stock(Message):
    count: int


class CheckStock(Command[Stock]):
    sku: str


@pytest.fixture
def bus() -> Choreography:
    return Choreography(InMemoryTransport())


def test_a_valid_handler_is_recorded_with_its_options(bus: Choreography) -> None:
    @bus.on(OrderPlaced, service="notification", retry=Retry(attempts=5), emits=[Shipped])
    async def notify(event: OrderPlaced, ctx: Context) -> None:
        pass

    (spec,) = bus.handlers
    assert (
        spec.consumer
        == "notification:test_a_valid_handler_is_recorded_with_its_options.<locals>.notify"
    )
    assert spec.topic == "OrderPlaced"
    assert spec.retry.attempts == 5
    assert spec.emits == (Shipped,)
    assert bus.services == {"notification"}


def test_a_handler_may_skip_the_context(bus: Choreography) -> None:
    @bus.on(OrderPlaced, service="s", name="plain")
    async def plain(event: OrderPlaced) -> None:
        pass

    assert bus.handlers[0].takes_context is False


@pytest.mark.parametrize(
    ("decorate", "match"),
    [
        (lambda bus: bus.on(Stock, service="s"), "expected a subclass of flowkit.Event"),
        (lambda bus: bus.on(OrderPlaced, service=""), "service must be"),
        (lambda bus: bus.on(OrderPlaced, service="has space"), "service must be"),
        (lambda bus: bus.on(OrderPlaced, service="s", concurrency=0), "concurrency"),
        (lambda bus: bus.on(OrderPlaced, service="s", timeout=0), "timeout"),
        (lambda bus: bus.on(OrderPlaced, service="s", emits=[Stock]), "emits"),
        (lambda bus: bus.handles(OrderPlaced, service="s"), "flowkit.Command"),
    ],
)
def test_bad_declarations_fail_at_decoration(decorate: Any, match: str, bus: Choreography) -> None:
    async def handler(event: Any, ctx: Context) -> None:
        pass

    with pytest.raises(DefinitionError, match=match):
        decorate(bus)(handler)


def test_sync_functions_and_wrong_arity_are_refused(bus: Choreography) -> None:
    with pytest.raises(DefinitionError, match="async def"):

        @bus.on(OrderPlaced, service="s")  # type: ignore[type-var]
        def sync(event: OrderPlaced, ctx: Context) -> None:
            pass

    with pytest.raises(DefinitionError, match="required positional"):

        @bus.on(OrderPlaced, service="s")
        async def three(event: OrderPlaced, ctx: Context, extra: int) -> None:
            pass


def test_a_mismatched_annotation_is_refused(bus: Choreography) -> None:
    with pytest.raises(DefinitionError, match="does not accept OrderPlaced"):

        @bus.on(OrderPlaced, service="s")
        async def wrong(event: Shipped, ctx: Context) -> None:
            pass


def test_a_command_handler_must_return_the_reply_type(bus: Choreography) -> None:
    with pytest.raises(DefinitionError, match="must return Stock"):

        @bus.handles(CheckStock, service="inventory")
        async def check(command: CheckStock, ctx: Context) -> Shipped:
            return Shipped(order_id="x")


def test_a_command_has_exactly_one_handler(bus: Choreography) -> None:
    @bus.handles(CheckStock, service="inventory")
    async def check(command: CheckStock) -> Stock:
        return Stock(count=1)

    with pytest.raises(DefinitionError, match="already handled"):

        @bus.handles(CheckStock, service="warehouse")
        async def check_again(command: CheckStock) -> Stock:
            return Stock(count=2)


def test_names_are_unique_per_service(bus: Choreography) -> None:
    @bus.on(OrderPlaced, service="s", name="h")
    async def first(event: OrderPlaced) -> None:
        pass

    with pytest.raises(DefinitionError, match="already has a handler named 'h'"):

        @bus.on(Shipped, service="s", name="h")
        async def second(event: Shipped) -> None:
            pass


def test_two_classes_cannot_share_a_type_name(bus: Choreography) -> None:
    class OtherOrderPlaced(Event, type_name="OrderPlaced"):
        x: int

    @bus.on(OrderPlaced, service="a")
    async def first(event: OrderPlaced) -> None:
        pass

    with pytest.raises(DefinitionError, match="two different classes"):

        @bus.on(OtherOrderPlaced, service="b")
        async def second(event: OtherOrderPlaced) -> None:
            pass


def test_running_unknown_services_is_refused(bus: Choreography) -> None:
    @bus.on(OrderPlaced, service="a")
    async def first(event: OrderPlaced) -> None:
        pass

    with pytest.raises(DefinitionError, match=r"service\(s\) \['nope'\]"):
        bus.run(services=["nope"])
