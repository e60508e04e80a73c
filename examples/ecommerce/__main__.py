"""`make demo`: the order workflow, choreographed then orchestrated, on the embedded
default (in-memory transport, SQLite store).

The records stay in one SQLite file afterwards (``flowkit-demo/ecommerce.db`` in the
system's temporary directory, replaced by the next run), and the demo ends by
printing the ``flowkit ui`` command that opens the dashboard on it.

``python -m examples.ecommerce --store postgresql://user@host/db`` keeps the
records in PostgreSQL instead, in a new schema of their own (``make
demo-postgres`` starts a throwaway server and does this).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from flowkit._redact import redact_url
from flowkit.observability import load_flows, trace_of, trace_text
from flowkit.stores import SQLiteStore, StateStore, from_url

from .choreographed import run_choreography
from .events import SellerAccepted
from .orchestrated import SELLER_ANSWERS_WITHIN, run_orchestration
from .order_service import Orders, PostgresOrders
from .seller import AWAY

if TYPE_CHECKING:
    from collections.abc import Iterator

    from flowkit.orchestration import WorkflowInfo

#: Where ``make demo`` keeps its records, for the dashboard to open afterwards.
DEMO_DIR = Path(tempfile.gettempdir()) / "flowkit-demo"


def stores(
    url: str | None, folder: Path
) -> tuple[StateStore | Path, StateStore | Path, Orders | None, str]:
    """The stores of the two demos (one database, so that one dashboard shows both),
    the order service's database, and where they are, in words."""
    if url is None:
        database = folder / "ecommerce.db"
        for stale in folder.glob("ecommerce.db*"):
            stale.unlink()  # the previous run's records (and its WAL files)
        return database, database, None, "SQLite files"
    if "schema=" in url:
        raise SystemExit("--store: the demo picks its own schema; leave ?schema= out")
    schema = time.strftime("flowkit_demo_%Y%m%d_%H%M%S_") + secrets.token_hex(2)
    orders = PostgresOrders(url, schema)
    return from_url(url, schema=schema), from_url(url, schema=schema), orders, f"schema {schema}"


def dashboard_command(url: str | None, store: StateStore | Path, where: str) -> str:
    """The ``flowkit ui`` command that opens the dashboard on the demo's records
    (a PostgreSQL URL without its password)."""
    if isinstance(store, Path):
        return f"flowkit ui --store sqlite:///{store}"
    schema = where.removeprefix("schema ")
    return f"flowkit ui --store '{redact_url(url or '')}?schema={schema}'"


UNDONE = {
    "reserve_stock": "stock released",
    "charge_payment": "payment refunded",
    "prepare_shipment": "parcel unpacked",
    "assign_partner": "delivery partner released",
}
"""What each compensation of the PlaceOrder saga undoes, in words."""


def waits_of(info: WorkflowInfo) -> Iterator[str]:
    """What the workflow waited for, how long, and how each wait ended."""
    began: dict[str, tuple[float, str]] = {}
    for t in info.history:
        if t.event == "waiting" and t.step is not None:
            what = (t.detail or "").removeprefix("for ").partition(" until ")[0]
            began[t.step] = (t.at.timestamp(), what)
        elif t.event in ("step_succeeded", "wait_timed_out") and t.step in began:
            at, what = began.pop(t.step)
            waited = f"waited {t.at.timestamp() - at:.2f}s for {what}"
            result = info.steps[t.step].result
            if t.event == "wait_timed_out":
                yield f"{waited}: {info.input.seller_id} never answered, the wait timed out"
            elif isinstance(result, SellerAccepted):
                yield f"{waited}: {result.seller_id} accepted the order"
            else:
                yield f"{waited}: it came"


async def print_trace(store: StateStore | Path, flow_id: str, *, workflow: bool = False) -> None:
    """Print what the store's trace recorded of a flow, as ``flowkit trace`` does
    (with ``workflow``, only the flow of the workflow with this id)."""
    opened = SQLiteStore(store) if isinstance(store, Path) else store
    async with opened:
        for flow in await load_flows(trace_of(opened), flow_id):
            if not workflow or any(e.workflow_id == flow_id for e in flow.entries):
                print(trace_text(flow))


async def main(url: str | None, folder: Path | None = None) -> None:
    """Run both demos; keep the SQLite records in ``folder`` (a temporary
    directory removed at the end when None)."""
    # flowkit logs retries and dead letters; show them beside what the services print.
    logging.basicConfig(level=logging.WARNING, format="  (%(levelname)s) %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        kept = Path(tmp) if folder is None else folder
        kept.mkdir(parents=True, exist_ok=True)
        choreography_store, orchestration_store, orders, where = stores(url, kept)
        print(f"(records kept in {where})")
        print("== Choreography: every service reacts to OrderPlaced on its own ==")
        print("(the order service saves each order and its OrderPlaced in one transaction,")
        print(" through the outbox; the bus's relay publishes what was committed)")
        result = await run_choreography(choreography_store, echo=True, orders=orders)
        print()
        for order_id, timeline in sorted(result.timelines.items()):
            print(f"order history of {order_id}: {' -> '.join(timeline)}")
        for letter in result.dead_letters:
            print(
                f"dead letter: {letter.consumer} gave up on {letter.topic} "
                f"after {letter.attempts} attempt(s): {letter.error_type}"
            )
        print()
        print("== What happened to o-2, as the store's trace recorded it (flowkit trace o-2) ==")
        await print_trace(choreography_store, "o-2")

        print()
        print("== Orchestration: the order service runs the PlaceOrder saga ==")
        within = f"{SELLER_ANSWERS_WITHIN:g}s"
        print("(the order service announces each order to its seller; after the charge, the saga")
        print(f" waits for the seller's SellerAccepted: {within} here, a day in a real shop;")
        print(f" {', '.join(sorted(AWAY))}, the seller of o-4, is away and never answers)")
        saga = await run_orchestration(orchestration_store, echo=True, wait_for_sellers=True)
        for order_id, outcome in saga.outcomes.items():
            info = saga.infos[order_id]
            print()
            line = f"{order_id}: {outcome.status.value}"
            if outcome.reason:
                line += f" ({outcome.reason})"
            print(line)
            for wait in waits_of(info):
                print(f"  {wait}")
            if outcome.compensated:
                print(f"  compensated, in order: {', '.join(outcome.compensated)}")
                undone = (UNDONE.get(step, step) for step in outcome.compensated)
                print(f"  undone: {', '.join(undone)}")
            for t in info.history:
                parts = [t.at.strftime("%H:%M:%S.%f")[:-3], t.event]
                if t.step:
                    parts.append(t.step)
                if t.attempt:
                    parts.append(f"attempt {t.attempt}")
                if t.event == "waiting" and t.detail:
                    parts.append(t.detail)
                if t.error:
                    parts.append(f"error: {t.error}")
                print("  " + "  ".join(parts))
        print()
        print("== The o-2 saga, as the store's trace recorded it (flowkit trace o-2) ==")
        await print_trace(orchestration_store, "o-2", workflow=True)
        if folder is not None or url is not None:
            print()
            print("== Look at it all in the dashboard (pip install 'flowkit[ui]') ==")
            print(f"  {dashboard_command(url, orchestration_store, where)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m examples.ecommerce", description=__doc__)
    parser.add_argument(
        "--store",
        metavar="URL",
        help="a postgresql:// URL to keep the records in (default: temporary SQLite files)",
    )
    anyio.run(main, parser.parse_args().store, DEMO_DIR)
