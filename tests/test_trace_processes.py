"""``flowkit trace`` and ``flowkit stalled`` on the e-commerce example with each service
in its own ``flowkit worker`` process, on Redis, sharing one SQLite store: the trace
of a flow is put together from what every process recorded."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import anyio
import pytest

from examples.ecommerce import logistics, notification, order_history, seller
from examples.ecommerce.events import OrderPlaced
from examples.ecommerce.ledger import SharedWorld
from examples.ecommerce.orchestrated import ORDERS, order_saga
from examples.ecommerce.processes import ROOT, Workers, dead_letters, place_orders, wait_until
from flowkit.orchestration import WorkflowStatus
from flowkit.stores import SQLiteStore
from flowkit.transports import from_url

from .brokers import redis_url as redis_url
from .test_processes import _forget_redis

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The Redis client runs on asyncio only."""
    return "asyncio"


@pytest.fixture
async def workers(redis_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    """Workers on a Redis prefix of their own, sharing one SQLite store and one ledger;
    the prefix's keys are deleted afterwards."""
    prefix = f"flowkit-test-{uuid.uuid4().hex[:8]}"
    url = f"{redis_url}?{urlencode({'claim_idle': 1.0, 'prefix': prefix})}"
    running = Workers(
        transport=url,
        store=tmp_path / "flowkit.db",
        ledger=tmp_path / "ledger.db",
        logs=tmp_path / "logs",
        grace=5.0,
    )
    try:
        yield running
    finally:
        await running.stop()
        await _forget_redis(redis_url, prefix)


async def flowkit(workers: Workers, *args: str) -> str:
    """``python -m flowkit ARGS --store`` the workers' store; its output (exit status 0)."""
    command = [sys.executable, "-m", "flowkit", *args, "--store", f"sqlite:///{workers.store}"]
    with anyio.fail_after(60):
        done = await anyio.run_process(
            command, cwd=ROOT, env=workers.env("cli"), stderr=subprocess.STDOUT, check=False
        )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out
    return out


async def test_the_choreographed_o2_flow_is_traced_across_processes(workers: Workers) -> None:
    await workers.start_all(
        (
            notification.SERVICE,
            seller.SERVICE,
            order_history.SERVICE,
            logistics.SERVICE,
            logistics.SERVICE,
        )
    )
    world = SharedWorld(workers.ledger, process="order")
    world.fail("partner-api:o-2", times=2)  # the delivery partner fails twice on o-2
    orders = [
        OrderPlaced(
            order_id="o-1", user_email="ada@example.com", seller_id="s-9", items=["x"], total=1
        ),
        OrderPlaced(
            order_id="o-2", user_email="not-an-email", seller_id="s-9", items=["y"], total=2
        ),
    ]
    try:
        await place_orders(workers.transport, orders, store=workers.store)
        booked = "will deliver order o-2"
        await wait_until(
            lambda: any(booked in e.line for e in world.applied()), timeout=30, what="o-2 booked"
        )
        with anyio.fail_after(30):
            while not await dead_letters(workers.store):
                await anyio.sleep(0.1)
        # One of the workers reports o-2, never confirmed, once between them all.
        await wait_until(
            lambda: any("stalled: flow o-2" in w.output() for w in workers.started),
            timeout=30,
            what="the stalled o-2 reported",
        )
        await anyio.sleep(1.5)  # every worker has checked since
    finally:
        world.close()
    await workers.stop()  # each worker writes what it still holds of the trace
    reports = sum(w.output().count("stalled: flow o-2") for w in workers.started)
    assert reports == 1, [w.output() for w in workers.started]

    out = await flowkit(workers, "trace", "o-2")
    assert out.startswith("flow o-2: ")
    assert "OrderPlaced  published" in out
    assert "logistics:assign-partner  handled at attempt 3" in out
    assert "attempt 1: retried" in out and "partner-api:o-2 is unavailable" in out
    assert "notification:confirm-order  DEAD-LETTERED after 1 attempt(s)" in out
    assert "PartnerAssigned  published" in out and "ShipmentPrepared  published" in out
    stopped = out.split("where it stopped:")[1]
    assert "notification:confirm-order  DEAD-LETTERED" in stopped
    assert "stalled: OrderPlaced" in stopped and "expectation order confirmed" in stopped

    mermaid = await flowkit(workers, "trace", "o-2", "--mermaid")
    assert mermaid.startswith("sequenceDiagram")
    assert "confirm-order: dead-lettered after 1 attempt(s)" in mermaid

    listed = await flowkit(workers, "stalled", "examples.ecommerce.services:bus")
    assert listed.splitlines()[0].startswith("order confirmed: 1 stalled flow(s)")
    assert listed.splitlines()[1].split()[0] == "o-2"


async def test_the_o2_saga_is_traced_with_its_compensations_in_order(workers: Workers) -> None:
    await workers.start_all(
        (notification.SERVICE, seller.SERVICE, logistics.SERVICE, logistics.SERVICE)
    )
    world = SharedWorld(workers.ledger, process="order")
    place_order = order_saga(world)
    order = next(o for o in ORDERS if o.order_id == "o-2")
    try:
        world.fail("partner-api", times=100)  # no partner can be booked
        async with place_order(
            SQLiteStore(workers.store), transport=from_url(workers.transport)
        ) as saga:
            outcome = await saga.run(order, workflow_id="o-2")
    finally:
        world.close()
    assert outcome.status is WorkflowStatus.COMPENSATED
    await workers.stop()

    out = await flowkit(workers, "trace", "o-2")
    assert "workflow place-order o-2  COMPENSATED" in out
    assert "step assign_partner  FAILED at attempt 1" in out
    assert "AssignPartner  sent" in out
    assert "logistics:assign  DEAD-LETTERED after 3 attempt(s)" in out
    assert "attempt 2: retried" in out
    steps = ("prepare_shipment", "charge_payment", "reserve_stock")
    places = [out.index(f"compensation {i}: {step}") for i, step in enumerate(steps, start=1)]
    assert places == sorted(places)
    assert "seller:cancel  handled" in out
    assert "compensated, in order: prepare_shipment, charge_payment, reserve_stock" in out
