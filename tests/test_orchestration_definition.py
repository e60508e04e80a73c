"""Declaration checks: a wrong saga fails when its class is created, not when it runs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from flowkit import Command, DefinitionError, Message, Retry
from flowkit.orchestration import Orchestrator, Parallel, Remote, Step, StepContext
from flowkit.stores._memory import MemoryStore


class Order(BaseModel):
    order_id: str


class SpecialOrder(Order):
    rush: bool = True


class Reserved(Message):
    sku: str


class ReserveStock(Command[Reserved]):
    order_id: str


class Untyped(Command):  # type: ignore[type-arg]
    order_id: str


async def reserve(ctx: StepContext, order: Order) -> Reserved:
    return Reserved(sku="s")


async def release(ctx: StepContext, order: Order) -> None:
    return None


async def charge(ctx: StepContext, order: Order) -> int:
    return 1


async def ship(ctx: StepContext, order: Order) -> None:
    return None


def test_a_valid_declaration_compiles_with_names_in_order() -> None:
    class PlaceOrder(Orchestrator[Order]):
        steps = (
            Step(reserve, compensate=release),
            Parallel(Step(charge), Remote(ReserveStock, compensate=release)),
            Step(ship, name="ship_it", pivot=True),
        )

    assert PlaceOrder.step_names() == ("reserve", "charge", "reserve_stock", "ship_it")
    assert PlaceOrder.name == "PlaceOrder"


def test_name_and_policies_are_class_attributes() -> None:
    class PlaceOrder(Orchestrator[Order]):
        name = "orders.place"
        deadline = 30
        compensation_retry = Retry(attempts=2)
        steps = (Step(reserve, compensate=release),)

    assert PlaceOrder.name == "orders.place"
    spec = PlaceOrder._plan.by_name["reserve"]
    assert spec.compensation_retry.attempts == 2
    assert spec.retry.attempts == 1


def test_duplicate_step_names_are_refused() -> None:
    with pytest.raises(DefinitionError, match="two steps named 'reserve'"):

        class Twice(Orchestrator[Order]):
            steps = (Step(reserve), Step(reserve))


def test_duplicate_names_inside_a_parallel_group_are_refused() -> None:
    with pytest.raises(DefinitionError, match="two steps named 'charge'"):

        class Twice(Orchestrator[Order]):
            steps = (Parallel(Step(charge), Step(charge)),)


def test_a_function_can_be_used_twice_under_two_names() -> None:
    class Twice(Orchestrator[Order]):
        steps = (Step(charge), Step(charge, name="charge_again"))

    assert Twice.step_names() == ("charge", "charge_again")


def test_a_lambda_needs_a_name() -> None:
    with pytest.raises(DefinitionError, match="give the step a name"):

        class Anonymous(Orchestrator[Order]):
            steps = (Step(lambda ctx, order: reserve(ctx, order)),)


def test_a_sync_function_is_refused() -> None:
    def sync_step(ctx: StepContext, order: Order) -> None:
        return None

    with pytest.raises(DefinitionError, match="must be an async function"):

        class Sync(Orchestrator[Order]):
            steps = (Step(sync_step),)  # type: ignore[arg-type]


def test_a_step_must_take_ctx_and_input() -> None:
    async def one_param(ctx: StepContext) -> None:
        return None

    async def three_params(ctx: StepContext, order: Order, extra: int) -> None:
        return None

    async def keyword_only(ctx: StepContext, order: Order, *, extra: int) -> None:
        return None

    for bad in (one_param, three_params, keyword_only):
        with pytest.raises(DefinitionError, match="two positional parameters"):

            class Bad(Orchestrator[Order]):
                steps = (Step(bad),)  # type: ignore[arg-type]


def test_optional_extra_parameters_are_allowed() -> None:
    async def with_default(ctx: StepContext, order: Order, extra: int = 1) -> None:
        return None

    class Fine(Orchestrator[Order]):
        steps = (Step(with_default),)

    assert Fine.step_names() == ("with_default",)


def test_missing_annotations_are_refused() -> None:
    async def no_input_annotation(ctx: StepContext, order) -> None:  # type: ignore[no-untyped-def]
        return None

    async def no_return_annotation(ctx: StepContext, order: Order):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(DefinitionError, match=r"missing: order"):

        class A(Orchestrator[Order]):
            steps = (Step(no_input_annotation),)

    with pytest.raises(DefinitionError, match=r"missing: return"):

        class B(Orchestrator[Order]):
            steps = (Step(no_return_annotation),)


def test_the_first_parameter_must_be_the_step_context() -> None:
    async def wrong_ctx(ctx: int, order: Order) -> None:
        return None

    with pytest.raises(DefinitionError, match="must be annotated StepContext"):

        class Bad(Orchestrator[Order]):
            steps = (Step(wrong_ctx),)  # type: ignore[arg-type]


def test_the_input_annotation_must_accept_the_workflow_input() -> None:
    async def wants_special(ctx: StepContext, order: SpecialOrder) -> None:
        return None

    async def wants_str(ctx: StepContext, order: str) -> None:
        return None

    async def wants_base(ctx: StepContext, order: Order) -> None:
        return None

    async def wants_optional(ctx: StepContext, order: Order | None) -> None:
        return None

    async def wants_any(ctx: StepContext, order: Any) -> None:
        return None

    for bad in (wants_special, wants_str):
        with pytest.raises(DefinitionError, match="but the workflow's input is"):

            class Bad(Orchestrator[Order]):
                steps = (Step(bad),)

    class Fine(Orchestrator[SpecialOrder]):
        steps = (Step(wants_base), Step(wants_optional), Step(wants_any), Step(wants_special))

    assert len(Fine.step_names()) == 4


def test_parameter_types_imported_only_for_type_checkers_are_accepted() -> None:
    # as after moving imports under `if TYPE_CHECKING:` (ruff's TC rules suggest it)
    async def lazy(ctx: orchestration.StepContext, order: models.Order) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 1

    class Lazy(Orchestrator[Order]):
        steps = (Step(lazy),)

    assert Lazy.step_names() == ("lazy",)


def test_an_unresolvable_context_or_result_type_is_reported() -> None:
    async def not_a_context(ctx: Elsewhere, order: Order) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 1

    async def lazy_result(ctx: StepContext, order: Order) -> models.Result:  # type: ignore[name-defined]  # noqa: F821
        return 1

    with pytest.raises(DefinitionError, match="must be annotated StepContext"):

        class Bad(Orchestrator[Order]):
            steps = (Step(not_a_context),)

    with pytest.raises(DefinitionError, match="must be importable at run time"):

        class Bad2(Orchestrator[Order]):
            steps = (Step(lazy_result),)


class Opaque:
    pass


def test_a_result_type_that_cannot_be_json_is_refused() -> None:
    async def opaque(ctx: StepContext, order: Order) -> Opaque:
        return Opaque()

    with pytest.raises(DefinitionError, match="cannot be recorded as JSON"):

        class Bad(Orchestrator[Order]):
            steps = (Step(opaque),)


def test_the_input_type_is_required() -> None:
    with pytest.raises(DefinitionError, match="must name its input type"):

        class NoInput(Orchestrator):  # type: ignore[type-arg]
            steps = (Step(reserve),)


def test_steps_are_required_and_must_be_steps() -> None:
    with pytest.raises(DefinitionError, match="must declare its steps"):

        class NoSteps(Orchestrator[Order]):
            pass

    with pytest.raises(DefinitionError, match="non-empty list"):

        class Empty(Orchestrator[Order]):
            steps = ()

    with pytest.raises(DefinitionError, match=r"steps\[1\] must be a Step"):

        class Wrong(Orchestrator[Order]):
            steps = (Step(reserve), reserve)  # type: ignore[assignment]


def test_parallel_groups_are_checked() -> None:
    with pytest.raises(DefinitionError, match="two or more"):
        Parallel(Step(reserve))
    with pytest.raises(DefinitionError, match="do not nest"):
        Parallel(Step(reserve), Parallel(Step(charge), Step(ship)))  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="pivot step cannot be part"):
        Parallel(Step(reserve), Step(charge, pivot=True))
    with pytest.raises(DefinitionError, match="takes Step or Remote"):
        Parallel(Step(reserve), charge)  # type: ignore[arg-type]


def test_one_pivot_and_nothing_to_compensate_after_it() -> None:
    with pytest.raises(DefinitionError, match="two pivot steps"):

        class TwoPivots(Orchestrator[Order]):
            steps = (Step(reserve, pivot=True), Step(charge, pivot=True))

    with pytest.raises(DefinitionError, match="after the pivot 'reserve' and is never"):

        class CompensatedAfterPivot(Orchestrator[Order]):
            steps = (Step(reserve, pivot=True), Step(charge, compensate=release))


def test_step_options_are_checked() -> None:
    with pytest.raises(DefinitionError, match="timeout"):
        Step(reserve, timeout=0)
    with pytest.raises(DefinitionError, match="timeout"):
        Step(reserve, timeout=True)
    with pytest.raises(DefinitionError, match="must be a Retry"):
        Step(reserve, retry=3)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="name"):
        Step(reserve, name="has:colon")
    with pytest.raises(DefinitionError, match="takes an async function"):
        Step(42)  # type: ignore[arg-type]


def test_compensations_are_checked_like_steps() -> None:
    async def bad_compensation(ctx: StepContext) -> None:
        return None

    with pytest.raises(DefinitionError, match="compensation of step 'reserve'"):

        class Bad(Orchestrator[Order]):
            steps = (Step(reserve, compensate=bad_compensation),)  # type: ignore[arg-type]

    with pytest.raises(DefinitionError, match="async function or a Remote"):

        class Bad2(Orchestrator[Order]):
            steps = (Step(reserve, compensate=Step(release)),)  # type: ignore[arg-type]


def test_remote_steps_are_checked() -> None:
    with pytest.raises(DefinitionError, match="takes a Command class"):
        Remote(Order)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="must name its reply type"):
        Remote(Untyped)
    with pytest.raises(DefinitionError, match="not an async one"):

        async def build(ctx: StepContext, order: Order) -> ReserveStock:
            return ReserveStock(order_id=order.order_id)

        Remote(ReserveStock, build)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="two positional parameters"):
        Remote(ReserveStock, lambda order: ReserveStock(order_id="x"))  # type: ignore[arg-type,misc]
    with pytest.raises(DefinitionError, match="it takes no compensate"):

        class Bad(Orchestrator[Order]):
            steps = (Step(reserve, compensate=Remote(ReserveStock, name="undo")),)

    with pytest.raises(DefinitionError, match="give its retry policy once"):

        class Bad2(Orchestrator[Order]):
            steps = (
                Step(
                    reserve,
                    compensate=Remote(ReserveStock, retry=Retry(attempts=2)),
                    compensation_retry=Retry(attempts=3),
                ),
            )


def test_class_attributes_are_checked() -> None:
    with pytest.raises(DefinitionError, match="deadline"):

        class BadDeadline(Orchestrator[Order]):
            deadline = -1
            steps = (Step(reserve),)

    with pytest.raises(DefinitionError, match="name must be a non-empty string"):

        class BadName(Orchestrator[Order]):
            name = ""
            steps = (Step(reserve),)

    with pytest.raises(DefinitionError, match="compensation_retry must be a Retry"):

        class BadRetry(Orchestrator[Order]):
            compensation_retry = 3  # type: ignore[assignment]
            steps = (Step(reserve),)


def test_constructor_arguments_are_checked() -> None:
    class Local(Orchestrator[Order]):
        steps = (Step(reserve),)

    class WithRemote(Orchestrator[Order]):
        steps = (Step(reserve), Remote(ReserveStock))

    with pytest.raises(DefinitionError, match="has remote steps: pass transport"):
        WithRemote(store=MemoryStore())
    with pytest.raises(DefinitionError, match="concurrency"):
        Local(store=MemoryStore(), concurrency=0)
    with pytest.raises(DefinitionError, match="base class"):
        Orchestrator(store=MemoryStore())


def test_a_subclass_inherits_input_type_and_steps() -> None:
    class PlaceOrder(Orchestrator[Order]):
        steps = (Step(reserve, compensate=release),)

    class PlaceOrderFast(PlaceOrder):
        deadline = 5

    assert PlaceOrderFast.name == "PlaceOrderFast"
    assert PlaceOrderFast.step_names() == ("reserve",)
    assert PlaceOrderFast._input_type is Order
