"""Orchestrators that wait, for the command-line tests of waiting workflows, on the
SQLite file named by the FLOWKIT_CLI_DB environment variable (as tests/cli_app.py).

``approvals`` reserves, waits up to a day for an ``Approval`` signal, then
ships to whoever approved; ``open_approvals`` waits for one with no time limit.
"""

from __future__ import annotations

import os
from datetime import timedelta

from pydantic import Field

from flowkit import Event, Orchestrator, Step, StepContext
from flowkit.orchestration import WaitForSignal
from flowkit.stores import SQLiteStore

DB = os.environ.get("FLOWKIT_CLI_DB", "flowkit-cli-test.db")

#: What the compensations undid, in order.
RELEASED: list[int] = []


class Order(Event):
    n: int


class Approval(Event):
    by: str
    amount: int = Field(default=0, ge=0)


async def reserve(ctx: StepContext, order: Order) -> int:
    return order.n


async def release(ctx: StepContext, order: Order) -> None:
    RELEASED.append(order.n)


async def ship(ctx: StepContext, order: Order) -> str:
    approval = ctx.results["wait_for_approval"]
    assert isinstance(approval, Approval)
    return f"approved by {approval.by}"


class ApprovalSaga(Orchestrator[Order]):
    steps = (
        Step(reserve, compensate=release),
        WaitForSignal(Approval, timeout=timedelta(days=1)),
        Step(ship),
    )


class OpenApprovalSaga(Orchestrator[Order]):
    steps = (WaitForSignal(Approval), Step(ship))


approvals = ApprovalSaga(store=SQLiteStore(DB))
open_approvals = OpenApprovalSaga(store=SQLiteStore(DB))
