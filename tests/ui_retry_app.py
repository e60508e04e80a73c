"""Orchestrators for the dashboard's retry tests: a step past the pivot that fails
until ``CARRIER["up"]`` is set (and hangs while ``CARRIER["slow"]`` is), and a
compensation that fails until ``REFUNDS["up"]`` is set."""

from __future__ import annotations

import anyio

from flowkit import Event, NonRetryableError, Orchestrator, Step, StepContext

CARRIER = {"up": False, "slow": False}
REFUNDS = {"up": False}


class Order(Event):
    n: int


async def charge(ctx: StepContext, order: Order) -> int:
    return order.n


async def refund(ctx: StepContext, order: Order) -> None:
    if not REFUNDS["up"]:
        raise NonRetryableError("the payment provider refused the refund")


async def ship(ctx: StepContext, order: Order) -> str:
    if not CARRIER["up"]:
        raise NonRetryableError("the carrier refused the parcel")
    if CARRIER["slow"]:
        await anyio.sleep(60)
    return "shipped"


async def reserve(ctx: StepContext, order: Order) -> int:
    return order.n


async def decline(ctx: StepContext, order: Order) -> None:
    raise NonRetryableError("card declined")


class ShipSaga(Orchestrator[Order]):
    name = "ship"
    steps = (Step(charge, pivot=True), Step(ship))


class RefundSaga(Orchestrator[Order]):
    name = "refund"
    steps = (Step(reserve, compensate=refund), Step(decline))
