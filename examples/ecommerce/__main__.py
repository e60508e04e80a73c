"""`make demo`: the order workflow, choreographed then orchestrated, on the embedded
default (in-memory transport, SQLite store).

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

import anyio

from flowkit.observability import load_flows, trace_of, trace_text
from flowkit.stores import SQLiteStore, StateStore, from_url

from .choreographed import run_choreography
from .orchestrated import run_orchestration
from .order_service import Orders, PostgresOrders


def stores(
    url: str | None, tmp: Path
) -> tuple[StateStore | Path, StateStore | Path, Orders | None, str]:
    """The stores of the two demos, the order service's database, and where they
    are, in words."""
    if url is None:
        return tmp / "choreography.db", tmp / "orchestration.db", None, "SQLite files"
    if "schema=" in url:
        raise SystemExit("--store: the demo picks its own schema; leave ?schema= out")
    schema = time.strftime("flowkit_demo_%Y%m%d_%H%M%S_") + secrets.token_hex(2)
    orders = PostgresOrders(url, schema)
    return from_url(url, schema=schema), from_url(url, schema=schema), orders, f"schema {schema}"


async def print_trace(store: StateStore | Path, flow_id: str) -> None:
    """Print what the store's trace recorded of a flow, as ``flowkit trace`` does."""
    opened = SQLiteStore(store) if isinstance(store, Path) else store
    async with opened:
        for flow in await load_flows(trace_of(opened), flow_id):
            print(trace_text(flow))


async def main(url: str | None) -> None:
    # flowkit logs retries and dead letters; show them beside what the services print.
    logging.basicConfig(level=logging.WARNING, format="  (%(levelname)s) %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        choreography_store, orchestration_store, orders, where = stores(url, Path(tmp))
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
        saga = await run_orchestration(orchestration_store, echo=True)
        for order_id, outcome in saga.outcomes.items():
            print()
            line = f"{order_id}: {outcome.status.value}"
            if outcome.reason:
                line += f" ({outcome.reason})"
            print(line)
            if outcome.compensated:
                print(f"  compensated, in order: {', '.join(outcome.compensated)}")
            for t in saga.infos[order_id].history:
                parts = [t.at.strftime("%H:%M:%S.%f")[:-3], t.event]
                if t.step:
                    parts.append(t.step)
                if t.attempt:
                    parts.append(f"attempt {t.attempt}")
                if t.error:
                    parts.append(f"error: {t.error}")
                print("  " + "  ".join(parts))
        print()
        print("== The o-2 saga, as the store's trace recorded it (flowkit trace o-2) ==")
        await print_trace(orchestration_store, "o-2")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m examples.ecommerce", description=__doc__)
    parser.add_argument(
        "--store",
        metavar="URL",
        help="a postgresql:// URL to keep the records in (default: temporary SQLite files)",
    )
    anyio.run(main, parser.parse_args().store)
