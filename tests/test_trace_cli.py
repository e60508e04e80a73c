"""``flowkit trace`` and ``flowkit stalled`` on the e-commerce example, on the
in-memory transport with its records in SQLite files."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from examples.ecommerce.choreographed import run_choreography
from examples.ecommerce.orchestrated import run_orchestration
from examples.ecommerce.order_service import PostgresOrders
from examples.ecommerce.services import CONFIRMATION_WITHIN
from flowkit import Choreography, Event
from flowkit.cli import main
from flowkit.observability import load_flows, trace_mermaid, trace_of
from flowkit.stores import MemoryStore, from_url
from flowkit.transports import InMemoryTransport

from .brokers import drop_schema
from .brokers import postgres_url as postgres_url
from .test_observability_graph import mmdc as mmdc

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    """The two demos, run once: their stores, and when they ended."""
    tmp = tmp_path_factory.mktemp("shop")
    choreography, orchestration = tmp / "choreography.db", tmp / "orchestration.db"
    anyio.run(run_choreography, choreography)
    anyio.run(run_orchestration, orchestration)
    return choreography, orchestration, time.monotonic()


def flowkit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_trace_shows_the_choreographed_o2_flow(
    shop: tuple[Path, Path, float], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = flowkit(capsys, "trace", "o-2", "--store", f"sqlite:///{shop[0]}")
    assert status == 0
    assert out.startswith("flow o-2: ")
    assert "business key o-2" in out
    # the failed delivery partner and its retries
    assert "logistics:assign-partner  handled at attempt 3" in out
    assert "attempt 1: retried" in out and "ConnectionError: partner-api:o-2 is unavailable" in out
    assert "attempt 2: retried" in out
    # what logistics and the seller caused
    assert "PartnerAssigned  published" in out and "by logistics:assign-partner" in out
    assert "order-history:record-PartnerAssigned  handled" in out
    # the dead letter, and where the flow stopped
    assert "notification:confirm-order  DEAD-LETTERED after 1 attempt(s)" in out
    stopped = out.split("where it stopped:")[1]
    assert "notification:confirm-order  DEAD-LETTERED" in stopped
    assert "flowkit.NonRetryableError: cannot email the customer of order o-2" in stopped
    assert "not-an-email" not in out  # the payload's value stays out


def test_trace_shows_the_orchestrated_o2_saga_with_its_compensations_in_order(
    shop: tuple[Path, Path, float], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = flowkit(capsys, "trace", "o-2", "--store", f"sqlite:///{shop[1]}")
    assert status == 0
    assert "workflow place-order o-2  COMPENSATED" in out
    assert "step assign_partner  FAILED at attempt 1" in out
    assert "AssignPartner  sent" in out
    assert "logistics:assign  DEAD-LETTERED after 3 attempt(s)" in out
    assert "attempt 2: retried" in out
    order = [
        out.index(f"compensation {i}: {step}")
        for i, step in enumerate(("prepare_shipment", "charge_payment", "reserve_stock"), start=1)
    ]
    assert order == sorted(order)
    assert "CancelShipment  sent" in out and "seller:cancel  handled" in out
    assert "compensated, in order: prepare_shipment, charge_payment, reserve_stock" in out


def test_trace_draws_mermaid_and_writes_json(
    shop: tuple[Path, Path, float], capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{shop[1]}"
    status, out, _ = flowkit(capsys, "trace", "o-2", "--store", store, "--mermaid")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "sequenceDiagram"
    assert any(line.strip().endswith("as place-order") for line in lines)
    assert any(line.strip().endswith("as logistics") for line in lines)
    assert any("->>" in line and "AssignPartner (assign)" in line for line in lines)
    assert any("--x" in line and "failure" in line for line in lines)
    notes = [line for line in lines if "Note over" in line and "compensate " in line]
    assert [n.split("compensate ")[1].split(":")[0] for n in notes] == [
        "prepare_shipment",
        "charge_payment",
        "reserve_stock",
    ]

    status, out, _ = flowkit(capsys, "trace", "o-2", "--store", store, "--json")
    assert status == 0
    (flow,) = json.loads(out)
    assert flow["correlation_id"] == "o-2" and not flow["truncated"]
    (saga,) = flow["tree"]
    assert saga["outcome"] == "compensated"
    assert [s["step"] for s in saga["compensations"]] == [
        "prepare_shipment",
        "charge_payment",
        "reserve_stock",
    ]


def test_trace_is_bounded_and_says_so(
    shop: tuple[Path, Path, float], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = flowkit(
        capsys, "trace", "o-2", "--store", f"sqlite:///{shop[0]}", "--limit", "3"
    )
    assert status == 0
    assert "(showing the first 3 of " in out and "--after " in out


def test_trace_of_an_unknown_id_or_without_a_store_fails_clearly(
    shop: tuple[Path, Path, float],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, _, err = flowkit(capsys, "trace", "o-404", "--store", f"sqlite:///{shop[0]}")
    assert status == 1
    assert "no flow in the trace has the correlation id, workflow id or business key 'o-404'" in err
    monkeypatch.delenv("FLOWKIT_STORE", raising=False)
    status, _, err = flowkit(capsys, "trace", "o-2")
    assert status == 2 and "give the store holding the trace: --store URL" in err
    status, _, err = flowkit(capsys, "trace", "o-2", "--store", "memory://")
    assert status == 2 and "in memory" in err
    status, _, err = flowkit(capsys, "trace", "o-2", "--store", f"sqlite:///{shop[0]}.missing")
    assert status == 2 and "no such file" in err


def test_stalled_lists_the_order_never_confirmed(
    shop: tuple[Path, Path, float], capsys: pytest.CaptureFixture[str]
) -> None:
    wait = CONFIRMATION_WITHIN.total_seconds() - (time.monotonic() - shop[2]) + 0.2
    if wait > 0:
        time.sleep(wait)
    store = f"sqlite:///{shop[0]}"
    app = "examples.ecommerce.services:bus"
    status, out, _ = flowkit(capsys, "stalled", app, "--store", store)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == (
        "order confirmed: 1 stalled flow(s) (ConfirmationSent expected within 2s of OrderPlaced)"
    )
    assert lines[1].split()[:3] == ["o-2", "OrderPlaced", "published"]
    status, out, _ = flowkit(capsys, "stalled", app, "--store", store, "--json")
    assert status == 0
    (flow,) = json.loads(out)
    assert (flow["expectation"], flow["correlation_id"]) == ("order confirmed", "o-2")
    status, _, err = flowkit(capsys, "stalled", "tests.cli_app:bus", "--store", store)
    assert status == 2 and "declares no expectations" in err


def test_trace_reads_a_postgresql_store(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = f"flowkit_trace_{uuid.uuid4().hex[:8]}"
    try:
        store = from_url(postgres_url, schema=schema)
        orders = PostgresOrders(postgres_url, schema)
        anyio.run(lambda: run_choreography(store, orders=orders), backend="asyncio")
        url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}schema={schema}"
        status, out, _ = flowkit(capsys, "trace", "o-2", "--store", url)
        assert status == 0
        assert "logistics:assign-partner  handled at attempt 3" in out
        assert "notification:confirm-order  DEAD-LETTERED after 1 attempt(s)" in out
    finally:
        anyio.run(drop_schema, postgres_url, schema, backend="asyncio")


def test_the_mermaid_traces_render_with_the_mermaid_cli(
    shop: tuple[Path, Path, float],
    capsys: pytest.CaptureFixture[str],
    mmdc: Callable[[str], str],
) -> None:
    for store, labels in (
        (shop[0], ("OrderPlaced (confirm-order)", "order-history")),
        (shop[1], ("AssignPartner (assign)", "compensate reserve_stock: succeeded")),
    ):
        status, out, _ = flowkit(
            capsys, "trace", "o-2", "--store", f"sqlite:///{store}", "--mermaid"
        )
        assert status == 0
        svg = mmdc(out)
        for label in labels:
            assert label in svg


class Odd(Event, type_name='orders."odd"<1>#2'):
    n: int


def test_odd_names_render_in_a_mermaid_trace(mmdc: Callable[[str], str]) -> None:
    async def flow() -> str:
        store = MemoryStore()
        bus = Choreography(InMemoryTransport(), store=store)

        @bus.on(Odd, service="a-b.c_d", name='h "1" <x>; y')
        async def handle(event: Odd) -> None:
            raise ValueError("a: b; c # d")

        async with bus:
            envelope = await bus.publish(Odd(n=1))
            await bus.wait_idle(10)
        async with store:
            (found,) = await load_flows(trace_of(store), envelope.correlation_id)
        return trace_mermaid(found)

    text = anyio.run(flow)
    assert '#lt;1#gt;#35;2 (h "1" #lt;x#gt;#59; y)' in text
    svg = mmdc(text)
    assert "a-b.c_d" in svg and "ValueError" in svg
    assert 'orders."odd"&lt;1&gt;#2 (h "1" &lt;x&gt;; y)' in svg
