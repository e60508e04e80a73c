"""The 3-step workflow as DBOS Transact runs it, shared by the SQLite and the
PostgreSQL benchmarks (DBOS registers a function once per process)."""

from __future__ import annotations

import functools
import importlib
from typing import Any

__all__ = ["DbosWorkflow", "dbos_workflow"]


class DbosWorkflow:
    """The DBOS class, and the same 3-step workflow the flowkit benchmarks run."""

    def __init__(self) -> None:
        dbos_module: Any = importlib.import_module("dbos")
        self.DBOS: Any = dbos_module.DBOS
        DBOS = self.DBOS

        async def reserve(amount: int) -> dict[str, Any]:
            return {"step": "reserve", "value": amount}

        async def charge(amount: int) -> dict[str, Any]:
            return {"step": "charge", "value": amount + 1}

        async def ship(amount: int) -> dict[str, Any]:
            return {"step": "ship", "value": amount + 2}

        d_reserve: Any = DBOS.step()(reserve)
        d_charge: Any = DBOS.step()(charge)
        d_ship: Any = DBOS.step()(ship)

        async def three_steps(order: dict[str, Any]) -> dict[str, Any]:
            await d_reserve(order["amount"])
            await d_charge(order["amount"])
            return dict(await d_ship(order["amount"]))

        self.workflow: Any = DBOS.workflow()(three_steps)


@functools.cache
def dbos_workflow() -> DbosWorkflow:
    """The workflow, registered with DBOS on first use.

    Raises:
        ImportError: if DBOS is not installed (it is in the benchmarks' environment).
    """
    return DbosWorkflow()
