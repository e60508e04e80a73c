"""The flow graph, ``flowkit lint`` and the warning for an undeclared emit.

On the e-commerce example and on the crafted flows of tests/graph_app.py
(one of each lint finding) and tests/graph_app_clean.py (none).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import pydot
import pytest

from examples.ecommerce.choreographed import build_bus
from examples.ecommerce.orchestrated import order_saga
from examples.ecommerce.world import World
from flowkit import (
    Choreography,
    Context,
    DefinitionError,
    Event,
    Message,
    Orchestrator,
)
from flowkit.choreography import _context
from flowkit.cli import main
from flowkit.observability import LintFinding, flow_graph, graph_svg, lint
from flowkit.stores import MemoryStore, SQLiteStore
from flowkit.transports import InMemoryTransport

from . import graph_app, graph_app_waits
from ._util import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent


def ecommerce(register_in_reverse: bool = False) -> tuple[Choreography, type[Orchestrator[Any]]]:
    """The e-commerce example's bus (every service) and its PlaceOrder saga."""
    world = World()
    bus, _ = build_bus(world, MemoryStore())
    if register_in_reverse:
        reversed_bus = Choreography(InMemoryTransport())
        for spec in reversed(bus.handlers):
            if spec.kind == "event":
                reversed_bus.on(
                    spec.message_type, service=spec.service, name=spec.name, emits=spec.emits
                )(spec.func)
            else:
                command: Any = spec.message_type
                reversed_bus.handles(command, service=spec.service, name=spec.name)(spec.func)
        bus = reversed_bus
    return bus, order_saga(world)


# -- the graph --------------------------------------------------------------------------


def test_the_graph_of_the_ecommerce_example_names_what_the_code_declares() -> None:
    bus, saga = ecommerce()
    graph = flow_graph(bus, orchestrators=[saga])
    assert graph.services == ("logistics", "notification", "order-history", "seller")
    assert graph.events == (
        "ConfirmationSent",
        "OrderPlaced",
        "PartnerAssigned",
        "ShipmentPrepared",
    )
    assert graph.commands == (
        "AssignPartner",
        "CancelShipment",
        "PrepareShipment",
        "ReleasePartner",
        "SendConfirmation",
    )
    assert [h.consumer for h in graph.consumers("OrderPlaced")] == [
        "logistics:assign-partner",
        "notification:confirm-order",
        "order-history:record-OrderPlaced",
        "seller:prepare-shipment",
    ]
    (assign,) = graph.emitters("PartnerAssigned")
    assert assign.consumer == "logistics:assign-partner"
    assert assign.where.endswith("logistics.register.<locals>.on_order_placed")
    (prepare,) = [h for h in graph.handlers if h.consumer == "seller:prepare"]
    assert (prepare.kind, prepare.message, prepare.reply) == ("command", "PrepareShipment", "Done")

    (place_order,) = graph.orchestrators
    assert (place_order.name, place_order.input) == ("place-order", "OrderPlaced")
    steps = {s.name: s for s in place_order.steps}
    assert [s.name for s in place_order.steps] == [
        "reserve_stock",
        "charge_payment",
        "prepare_shipment",
        "assign_partner",
        "send_confirmation",
    ]
    assert steps["reserve_stock"].compensation == "release_stock"
    assert steps["prepare_shipment"].parallel and steps["assign_partner"].parallel
    assert steps["prepare_shipment"].stage == steps["assign_partner"].stage == 2
    assert steps["assign_partner"].command == "AssignPartner"
    assert steps["assign_partner"].compensation_command == "ReleasePartner"
    assert steps["send_confirmation"].pivot
    assert [o.name for o, _ in graph.senders("CancelShipment")] == ["place-order"]


def test_the_mermaid_graph_draws_handlers_emits_steps_and_compensations() -> None:
    bus, saga = ecommerce()
    text = flow_graph(bus, orchestrators=[saga]).mermaid()
    nodes, edges = check_mermaid(text)
    label = {node: text for node, text in nodes.items()}
    by_label = {text: node for node, text in nodes.items()}
    assert label[by_label["assign-partner"]] == "assign-partner"
    assert (by_label["OrderPlaced"], by_label["assign-partner"], "") in edges
    assert (by_label["assign-partner"], by_label["PartnerAssigned"], "") in edges
    assert (by_label["AssignPartner"], by_label["assign"], "") in edges
    step = by_label["assign_partner"]
    assert (step, by_label["AssignPartner"], "sends") in edges
    assert (step, by_label["ReleasePartner"], "compensate") in edges
    # the steps are chained in order, the parallel group's members side by side
    charge = by_label["charge_payment (undo: refund_payment)"]
    send = by_label["send_confirmation (pivot)"]
    for member in ("prepare_shipment", "assign_partner"):
        assert (charge, by_label[member], "") in edges
        assert (by_label[member], send, "") in edges
    assert re.search(r'subgraph wf0__group2 \["parallel"\]', text)
    assert '-.->|"compensate"|' in text


def test_the_dot_graph_parses_and_has_the_same_nodes_and_edges() -> None:
    bus, saga = ecommerce()
    graph = flow_graph(bus, orchestrators=[saga])
    mermaid_nodes, mermaid_edges = check_mermaid(graph.mermaid())
    (dot,) = parse_dot(graph.dot())
    nodes = dot_nodes(dot)
    edges = {
        (e.get_source(), e.get_destination(), (e.get("label") or '""').strip('"'))
        for e in dot.get_edge_list()
    }
    assert nodes == mermaid_nodes
    assert edges == mermaid_edges
    clusters = {s.get_name() for s in all_subgraphs(dot)}
    assert {"cluster_sv__logistics", "cluster_wf0", "cluster_wf0__group2"} <= clusters


def test_the_graph_is_the_same_whatever_the_order_of_declaration() -> None:
    bus, saga = ecommerce()
    other, _ = ecommerce(register_in_reverse=True)
    graph, again = flow_graph(bus, orchestrators=[saga]), flow_graph(other, orchestrators=[saga])
    assert graph.mermaid() == again.mermaid()
    assert graph.dot() == again.dot()
    twice = flow_graph(bus, bus, orchestrators=[saga, saga])
    assert twice.mermaid() == graph.mermaid()


class Odd(Event, type_name='orders."odd"<1>#2 \\ end'):
    order_id: str


class Odder(Event, type_name="orders.odd_1_2"):
    order_id: str


def test_names_with_any_characters_give_valid_distinct_identifiers() -> None:
    bus = Choreography(InMemoryTransport())

    @bus.on(Odd, service="a-b.c_d", emits=[Odder], name='h "1" <x> & y')
    async def first(event: Odd) -> None:
        pass

    @bus.on(Odder, service="a-b.c_d", emits=[Odd], name="h_1_x")
    async def second(event: Odder) -> None:
        pass

    graph = flow_graph(bus)
    nodes, edges = check_mermaid(graph.mermaid())
    assert sorted(nodes.values()) == sorted(
        ['h "1" <x> & y', "h_1_x", 'orders."odd"<1>#2 \\ end', "orders.odd_1_2"]
    )
    assert len(edges) == 4
    (dot,) = parse_dot(graph.dot())
    assert sorted(unquote_dot(n.get("label")) for n in all_nodes(dot)) == sorted(nodes.values())
    # the picture escapes them too, and draws the cycle: each node once, each edge once
    text = graph.svg()
    assert "<x>" not in text and "&amp;" in text
    svg_nodes, svg_edges = svg_parts(text)
    assert {key: svg_label(node) for key, node in svg_nodes.items()} == nodes
    assert len(svg_edges) == 4


# -- the picture -------------------------------------------------------------------------

SVG = "{http://www.w3.org/2000/svg}"


def svg_parts(
    text: str,
) -> tuple[dict[str, ElementTree.Element], list[ElementTree.Element]]:
    """The node groups of an SVG drawing, by id, and its edge paths, in order."""
    root = ElementTree.fromstring(text)
    assert root.tag == f"{SVG}svg"
    nodes = {
        g.get("data-id", ""): g
        for g in root.iter(f"{SVG}g")
        if "node" in g.get("class", "").split()
    }
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    return nodes, edges


def svg_label(node: ElementTree.Element) -> str:
    (label,) = [t for t in node.iter(f"{SVG}text") if t.get("class") == "label"]
    return label.text or ""


def svg_box(node: ElementTree.Element) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a node's shape."""
    shape = next(e for e in node if e.tag in (f"{SVG}rect", f"{SVG}polygon"))
    if shape.tag == f"{SVG}rect":
        x, y = float(shape.get("x", "")), float(shape.get("y", ""))
        return x, y, x + float(shape.get("width", "")), y + float(shape.get("height", ""))
    points = [tuple(map(float, p.split(","))) for p in shape.get("points", "").split()]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def test_the_svg_graph_has_a_box_per_node_and_a_path_per_edge() -> None:
    bus, saga = ecommerce()
    graph = flow_graph(bus, orchestrators=[saga])
    mermaid_nodes, mermaid_edges = check_mermaid(graph.mermaid())
    text = graph.svg()
    assert text == graph_svg(graph)
    nodes, edges = svg_parts(text)
    assert {key: svg_label(node) for key, node in nodes.items()} == mermaid_nodes
    kinds = {key: node.get("class") for key, node in nodes.items()}
    assert kinds["ev__OrderPlaced"] == "node event"
    assert kinds["cm__AssignPartner"] == "node command"
    assert kinds["hd__logistics__assign"] == "node handler"
    assert kinds["wf0__assign_5f_partner"] == "node step"
    # a handler is drawn under its service's name, a step under its orchestrator's
    captions = {
        key: [t.text for t in node.iter(f"{SVG}text") if t.get("class") == "caption"]
        for key, node in nodes.items()
    }
    assert captions["hd__logistics__assign"] == ["logistics"]
    assert captions["wf0__assign_5f_partner"] == ["place-order · parallel"]
    assert captions["ev__OrderPlaced"] == []
    ends = [(p.get("data-source"), p.get("data-target")) for p in edges]
    assert len(ends) == len(mermaid_edges)
    assert set(ends) == {(source, target) for source, target, _ in mermaid_edges}
    dashed = {
        (p.get("data-source"), p.get("data-target")) for p in edges if p.get("stroke-dasharray")
    }
    assert dashed == {(s, t) for s, t, label in mermaid_edges if label == "compensate"}
    # every arrow points right (the example has no cycle), and no two boxes overlap
    boxes = {key: svg_box(node) for key, node in nodes.items()}
    for source, target in ends:
        assert boxes[source or ""][2] < boxes[target or ""][0], (source, target)
    for (a, one), (b, other) in itertools.combinations(boxes.items(), 2):
        apart = one[2] <= other[0] or other[2] <= one[0] or one[3] <= other[1] or other[3] <= one[1]
        assert apart, (a, b)
    root = ElementTree.fromstring(text)
    width, height = float(root.get("width", "")), float(root.get("height", ""))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    assert all(box[2] <= width and box[3] <= height for box in boxes.values())
    legend = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend"]
    assert len(legend) == 1
    assert {t.text for t in legend[0].iter(f"{SVG}text")} >= {"event", "command", "handler", "step"}


def test_the_svg_graph_is_the_same_whatever_the_order_of_declaration() -> None:
    bus, saga = ecommerce()
    other, _ = ecommerce(register_in_reverse=True)
    graph = flow_graph(bus, orchestrators=[saga])
    assert graph.svg() == flow_graph(other, orchestrators=[saga]).svg() == graph.svg()
    assert flow_graph().svg() == flow_graph().svg()
    _, edges = svg_parts(flow_graph().svg())
    assert edges == []


def test_an_orchestrator_s_waits_are_drawn_as_steps_and_an_event_waited_for_leads_to_one() -> None:
    graph = flow_graph(graph_app_waits.bus, orchestrators=[graph_app_waits.Fulfil])
    (fulfil,) = graph.orchestrators
    steps = {step.name: step for step in fulfil.steps}
    accepted = steps["wait_for_seller_accepted"]
    assert (accepted.wait, accepted.waits_for, accepted.match) == (
        "event",
        "SellerAccepted",
        "order_id",
    )
    assert accepted.timeout == 4 * 3600
    assert accepted.wait_handler == "wait.SellerAccepted.order_id"
    assert (steps["cooling_off"].wait, steps["cooling_off"].timeout) == ("timer", 86400)
    assert (steps["wait_for_approved"].wait, steps["wait_for_approved"].waits_for) == (
        "signal",
        "Approved",
    )
    assert steps["reserve"].wait is None
    assert fulfil.receives == (
        ("Paid", "wait.Paid.ref"),
        ("SellerAccepted", "wait.SellerAccepted.order_id"),
    )
    assert [s.name for _, s in graph.waiters("SellerAccepted")] == ["wait_for_seller_accepted"]
    # an event waited for is an event of the graph; a signal is not a message of the bus
    assert graph.events == ("OrderPlaced", "Paid", "SellerAccepted")

    text = graph.mermaid()
    nodes, edges = check_mermaid(text)
    by_label = {label: node for node, label in nodes.items()}
    wait = by_label["wait_for_seller_accepted (waits for event SellerAccepted, 4h at most)"]
    timer = by_label["cooling_off (timer 1d)"]
    signal = by_label["wait_for_approved (waits for signal Approved, 10m at most)"]
    paid = by_label["wait_for_paid (waits for event Paid)"]
    assert (by_label["SellerAccepted"], wait, "wait") in edges
    assert (by_label["Paid"], paid, "wait") in edges
    assert (by_label["accept"], by_label["SellerAccepted"], "") in edges
    assert (wait, timer, "") in edges and (timer, signal, "") in edges
    assert not [edge for edge in edges if signal == edge[1] and edge[2]]
    (dot,) = parse_dot(graph.dot())
    assert dot_nodes(dot) == nodes
    nodes_svg, paths = svg_parts(graph.svg())
    assert set(nodes_svg) == set(nodes)
    assert (by_label["SellerAccepted"], wait) in {
        (p.get("data-source"), p.get("data-target")) for p in paths
    }


def test_flow_graph_refuses_what_it_cannot_draw() -> None:
    with pytest.raises(TypeError, match="Choreography"):
        flow_graph(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Orchestrator"):
        flow_graph(orchestrators=[object()])  # type: ignore[list-item]

    class Twin(Event, type_name="OrderPlaced"):
        order_id: str

    bus = Choreography(InMemoryTransport())

    @bus.on(Twin, service="s")
    async def twin(event: Twin) -> None:
        pass

    with pytest.raises(DefinitionError, match="two different classes use the message type name"):
        flow_graph(bus, graph_app.bus)
    assert repr(flow_graph(graph_app.bus)).startswith("<FlowGraph 3 service(s), 4 handler(s)")


MERMAID_CLI = "@mermaid-js/mermaid-cli@11"
MERMAID_CACHE = Path.home() / ".cache" / "flowkit" / "mermaid-cli-11"


@pytest.fixture(scope="session")
def mmdc(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """Render Mermaid text to SVG with the Mermaid CLI, on Debian's Chromium.

    The CLI is installed once from npm into ``~/.cache/flowkit/mermaid-cli-11``
    without puppeteer's own browser (``PUPPETEER_SKIP_DOWNLOAD``). Skipped
    when npm or Chromium (``apt-get install chromium``) is missing.
    """
    npm, chromium = shutil.which("npm"), shutil.which("chromium")
    if npm is None or chromium is None:
        why = "rendering Mermaid needs npm and Chromium (Debian: apt-get install npm chromium)"
        if os.environ.get("FLOWKIT_REQUIRE_BROKERS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    binary = MERMAID_CACHE / "node_modules" / ".bin" / "mmdc"
    if not binary.exists():
        MERMAID_CACHE.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(MERMAID_CACHE),
                MERMAID_CLI,
            ],
            env={**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert installed.returncode == 0, installed.stderr[-2000:]
    work = tmp_path_factory.mktemp("mermaid")
    config = work / "puppeteer.json"
    config.write_text(json.dumps({"executablePath": chromium, "args": ["--no-sandbox"]}))

    def render(text: str) -> str:
        source, target = work / "graph.mmd", work / "graph.svg"
        source.write_text(text)
        target.unlink(missing_ok=True)
        done = subprocess.run(
            [str(binary), "-i", str(source), "-o", str(target), "-p", str(config), "-q"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return target.read_text()

    return render


def test_the_mermaid_graph_renders_with_the_mermaid_cli(mmdc: Callable[[str], str]) -> None:
    bus, saga = ecommerce()
    svg = mmdc(flow_graph(bus, orchestrators=[saga]).mermaid())
    for label in ("assign-partner", "OrderPlaced", "send_confirmation (pivot)", "compensate"):
        assert f"<p>{label}</p>" in svg
    odd = Choreography(InMemoryTransport())

    @odd.on(Odd, service="a-b.c_d", emits=[Odder], name='h "1" <x>')
    async def first(event: Odd) -> None:
        pass

    svg = mmdc(flow_graph(odd).mermaid())
    assert '<p>orders."odd"&lt;1&gt;#2 \\ end</p>' in svg
    assert '<p>h "1" &lt;x&gt;</p>' in svg


# -- lint -------------------------------------------------------------------------------


def test_lint_finds_each_kind_of_mistake_with_where_it_is() -> None:
    findings = lint(graph_app.bus, orchestrators=[graph_app.Checkout])
    assert [(f.code, f.message_type, f.where) for f in findings] == [
        ("command-not-handled", "Charge", "checkout step 'charge' (tests.graph_app.Checkout)"),
        ("command-not-handled", "Release", "checkout step 'reserve' (tests.graph_app.Checkout)"),
        ("event-not-emitted", "Refunded", "mail:mail-refund (tests.graph_app.mail_refund)"),
        ("event-not-consumed", "Lost", "shipping:ship (tests.graph_app.ship)"),
        ("event-not-emitted", "OrderPlaced", "shipping:ship (tests.graph_app.ship)"),
    ]
    assert str(findings[1]) == (
        "checkout step 'reserve' (tests.graph_app.Checkout): command-not-handled: "
        "compensates by sending Release, which no service handles"
    )


def test_lint_checks_declared_messages_that_no_handler_names() -> None:
    findings = lint(graph_app.bus, declared=[graph_app.Audited, graph_app.Forgotten])
    assert {(f.code, f.where) for f in findings} >= {
        ("event-unused", "tests.graph_app.Audited"),
        ("command-not-handled", "tests.graph_app.Forgotten"),
    }
    # a declared message that a handler names is checked at the handler, once
    named = lint(graph_app.bus, declared=[graph_app.Refunded, graph_app.Lost, graph_app.Ack])
    assert sorted(f.message_type for f in named) == ["Lost", "OrderPlaced", "Refunded"]
    with pytest.raises(TypeError, match="message classes"):
        lint(declared=[int])  # type: ignore[list-item]


def test_external_types_are_taken_as_emitted_consumed_and_answered_elsewhere() -> None:
    everything: list[type[Message] | str] = [
        graph_app.OrderPlaced,  # a class
        "Refunded",  # a type name
        "Lost",
        "Charge",
        "Release",
        "Audited",
    ]
    assert (
        lint(
            graph_app.bus,
            orchestrators=[graph_app.Checkout],
            external=everything,
            declared=[graph_app.Audited],
        )
        == ()
    )

    class Renamed(Event, type_name="billing.Refund"):
        order_id: str

    bus = Choreography(InMemoryTransport())

    @bus.on(Renamed, service="billing")
    async def refund(event: Renamed) -> None:
        pass

    assert lint(bus, external=["Renamed"]) == ()  # the class name, when it is unambiguous
    assert lint(bus, external=["billing.Refund"]) == ()
    with pytest.raises(ValueError, match=r"no event or command named 'Refundd'.*billing\.Refund"):
        lint(bus, external=["Refundd"])
    with pytest.raises(TypeError, match="external= takes"):
        lint(bus, external=[3])  # type: ignore[list-item]


def test_lint_of_the_ecommerce_example() -> None:
    bus, saga = ecommerce()
    findings = lint(bus, orchestrators=[saga])
    # the order service publishes OrderPlaced from its own write, not from a handler
    assert {f.code for f in findings} == {"event-not-emitted"}
    assert sorted(f.where.split(" ")[0] for f in findings) == [
        "logistics:assign-partner",
        "notification:confirm-order",
        "order-history:record-OrderPlaced",
        "seller:prepare-shipment",
    ]
    assert lint(bus, orchestrators=[saga], external=["OrderPlaced"]) == ()


def test_lint_counts_a_wait_for_an_event_as_consuming_it() -> None:
    fulfil = "fulfil step 'wait_for_paid' (tests.graph_app_waits.Fulfil)"
    findings = lint(graph_app_waits.bus, orchestrators=[graph_app_waits.Fulfil])
    # SellerAccepted is emitted by seller:accept and waited for by fulfil: no finding
    assert [(f.code, f.message_type, f.where) for f in findings] == [
        ("event-not-emitted", "Paid", fulfil),
        ("event-not-emitted", "OrderPlaced", "seller:accept (tests.graph_app_waits.accept)"),
    ]
    assert findings[0].text == "waits for Paid, which no handler emits"
    # without the orchestrator, nothing takes SellerAccepted
    alone = lint(graph_app_waits.bus)
    assert ("event-not-consumed", "SellerAccepted") in {(f.code, f.message_type) for f in alone}
    # a declared event that a wait names is checked at the wait, once
    declared = lint(
        graph_app_waits.bus,
        orchestrators=[graph_app_waits.Fulfil],
        external=["OrderPlaced"],
        declared=[graph_app_waits.Paid, graph_app_waits.SellerAccepted],
    )
    assert [(f.code, f.where) for f in declared] == [("event-not-emitted", fulfil)]
    # an event published elsewhere
    assert (
        lint(
            graph_app_waits.bus,
            orchestrators=[graph_app_waits.Fulfil],
            external=["Paid", "OrderPlaced"],
        )
        == ()
    )


def test_lint_finding_is_plain_data() -> None:
    finding = LintFinding("event-unused", "X", "m.X", "X is neither emitted nor consumed")
    assert str(finding) == "m.X: event-unused: X is neither emitted nor consumed"


# -- the commands -----------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_flowkit_graph_prints_mermaid_or_dot(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "graph", "tests.graph_app:bus")
    assert status == 0
    # the module's orchestrator comes along with the bus
    assert out == flow_graph(graph_app.bus, orchestrators=[graph_app.Checkout]).mermaid()
    status, out, _ = run_cli(capsys, "graph", "tests.graph_app:bus", "--format", "dot")
    assert status == 0
    assert out == flow_graph(graph_app.bus, orchestrators=[graph_app.Checkout]).dot()
    status, out, _ = run_cli(capsys, "graph", "tests.graph_app:bus", "--format", "svg")
    assert status == 0
    assert out == flow_graph(graph_app.bus, orchestrators=[graph_app.Checkout]).svg()
    ElementTree.fromstring(out)
    # an orchestrator alone, as a class
    status, out, _ = run_cli(capsys, "graph", "tests.graph_app:Checkout")
    assert status == 0 and "subgraph wf0" in out and "hd__" not in out.split("subgraph wf0")[0]


def test_flowkit_lint_exits_1_and_prints_each_finding(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "lint", "tests.graph_app:bus")
    assert status == 1
    assert out.splitlines() == [
        str(f) for f in lint(graph_app.bus, orchestrators=[graph_app.Checkout])
    ]
    assert "5 finding(s)" in err and "--external" in err
    # a module as the target: its buses, orchestrators and messages
    status, out, _ = run_cli(capsys, "lint", "tests.graph_app")
    assert status == 1
    assert "tests.graph_app.Audited: event-unused" in out
    assert "tests.graph_app.Forgotten: command-not-handled" in out
    status, out, _ = run_cli(capsys, "lint", "tests.graph_app", "--json")
    rows = json.loads(out)
    assert status == 1 and len(rows) == 7
    assert set(rows[0]) == {"code", "type", "where", "text"}


def test_flowkit_lint_exits_0_without_findings(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "lint", "tests.graph_app_clean:bus")
    assert (status, out, err) == (0, "no findings\n", "")
    external = "OrderPlaced,Refunded,Lost"
    status, out, _ = run_cli(
        capsys, "lint", "tests.graph_app", "--external", external, "--external", "Charge"
    )
    assert status == 1 and len(out.splitlines()) == 3  # Release, Audited, Forgotten left
    status, out, _ = run_cli(
        capsys,
        "lint",
        "tests.graph_app",
        "--external",
        f"{external},Charge,Release,Audited,Forgotten",
    )
    assert (status, out) == (0, "no findings\n")


def test_flowkit_lint_of_a_module_whose_saga_waits(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "lint", "tests.graph_app_waits")
    assert status == 1
    assert out.splitlines() == [
        "fulfil step 'wait_for_paid' (tests.graph_app_waits.Fulfil): event-not-emitted: "
        "waits for Paid, which no handler emits",
        "seller:accept (tests.graph_app_waits.accept): event-not-emitted: "
        "handles OrderPlaced, which no handler emits",
    ]
    status, out, _ = run_cli(
        capsys, "lint", "tests.graph_app_waits", "--external", "Paid,OrderPlaced"
    )
    assert (status, out) == (0, "no findings\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lint", "tests.graph_app:not_a_bus"], "is of type int, expected a Choreography"),
        (["lint", "tests.graph_app:nothing"], "has no attribute 'nothing'"),
        (["lint", "tests.no_such_module"], "no module named 'tests.no_such_module'"),
        (["graph", "tests._util"], "has no Choreography or Orchestrator at its top level"),
        (["lint", "tests.graph_app:bus", "--external", "Nope"], "no event or command named"),
        (["graph", "tests.graph_app:bus", "--format", "png"], "invalid choice"),
        (["asyncapi", "tests.graph_app:bus", "--service", "nobody"], "no operations of nobody"),
    ],
)
def test_the_commands_refuse_a_target_they_cannot_read(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run_cli(capsys, *argv)
    assert status == 2
    assert out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def run_flowkit(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m flowkit ARGV`` in the repository, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "flowkit", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_commands_on_the_ecommerce_example_as_a_user_runs_them() -> None:
    lint_run = run_flowkit("lint", "examples.ecommerce.services:bus")
    assert lint_run.returncode == 1, lint_run.stderr
    assert len(lint_run.stdout.splitlines()) == 4
    assert all(
        "event-not-emitted: handles OrderPlaced" in line for line in lint_run.stdout.splitlines()
    )
    clean = run_flowkit("lint", "examples.ecommerce.services:bus", "--external", "OrderPlaced")
    assert (clean.returncode, clean.stdout) == (0, "no findings\n"), clean.stderr
    drawn = run_flowkit("graph", "examples.ecommerce.services:bus", "--format", "dot")
    assert drawn.returncode == 0, drawn.stderr
    (dot,) = parse_dot(drawn.stdout)
    assert len(dot_nodes(dot)) == 4 + 5 + 12  # events, commands, handlers
    drawn = run_flowkit("graph", "examples.ecommerce.services:bus")
    assert drawn.returncode == 0, drawn.stderr
    check_mermaid(drawn.stdout)


def test_the_docs_show_the_graph_of_the_ecommerce_example() -> None:
    """The Mermaid block of docs/observing.md is what flow_graph draws today."""
    bus, saga = ecommerce()
    page = (ROOT / "docs" / "observing.md").read_text()
    blocks = re.findall(r"```mermaid\n(flowchart LR\n.*?)```", page, re.S)
    assert flow_graph(bus, orchestrators=[saga]).mermaid() in blocks


# -- the warning for an undeclared emit ---------------------------------------------------


class OrderPlaced(Event):
    order_id: str


class Shipped(Event):
    order_id: str


class Billed(Event):
    order_id: str


def flowkit_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "flowkit.bus" and r.levelno == logging.WARNING]


@pytest.mark.anyio
async def test_publishing_an_undeclared_event_warns_once_and_publishes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowkit.bus")
    bus = Choreography(InMemoryTransport(), store=MemoryStore())
    billed: list[Context] = []

    @bus.on(OrderPlaced, service="shipping", emits=[Shipped], name="ship")
    async def ship(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(Shipped(order_id=event.order_id))
        await ctx.publish(Billed(order_id=event.order_id))  # not declared

    @bus.on(OrderPlaced, service="quiet", name="free")  # declares nothing: never warned
    async def free(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(Billed(order_id=event.order_id))

    @bus.on(Billed, service="billing")
    async def bill(event: Billed, ctx: Context) -> None:
        billed.append(ctx)

    async with bus:
        for n in range(3):
            await bus.publish(OrderPlaced(order_id=f"secret-{n}"))
        await wait_until(lambda: len(billed) == 6)
        await bus.wait_idle(10)
        assert await bus.dead_letters() == []
    (record,) = flowkit_warnings(caplog)
    message = record.getMessage()
    assert "handler shipping:ship declared emits=[Shipped] but published Billed" in message
    assert "secret" not in message  # no payload value
    assert record.__dict__["flowkit_handler"] == "ship"
    assert record.__dict__["flowkit_event_type"] == "Billed"


@pytest.mark.anyio
async def test_the_undeclared_emit_warnings_are_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="flowkit.bus")
    monkeypatch.setattr(_context, "UNDECLARED_EMITS_WARNED", 2)
    bus = Choreography(InMemoryTransport())
    done: list[str] = []

    @bus.on(OrderPlaced, service="shipping", emits=[], name="ship")
    async def ship(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(Shipped(order_id=event.order_id))
        await ctx.publish(Billed(order_id=event.order_id))

    @bus.on(OrderPlaced, service="billing", emits=[], name="bill")
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(Billed(order_id=event.order_id))
        done.append(event.order_id)

    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await wait_until(lambda: bool(done))
        await bus.wait_idle(10)
    assert len(flowkit_warnings(caplog)) == 2  # three pairs, two warned


@pytest.mark.anyio
async def test_an_undeclared_event_through_the_outbox_warns_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="flowkit.bus")
    db = str(tmp_path / "flowkit.db")
    bus = Choreography(InMemoryTransport(), store=SQLiteStore(db))
    billed: list[str] = []
    conn = sqlite3.connect(db, isolation_level=None)
    try:

        @bus.on(OrderPlaced, service="shipping", emits=[Shipped], name="ship")
        async def ship(event: OrderPlaced, ctx: Context) -> None:
            conn.execute("BEGIN IMMEDIATE")
            await ctx.outbox_publish(conn, Billed(order_id=event.order_id))
            await ctx.record_handled(conn)
            conn.execute("COMMIT")

        @bus.on(Billed, service="billing")
        async def bill(event: Billed) -> None:
            billed.append(event.order_id)

        async with bus:
            await bus.publish(OrderPlaced(order_id="o-1"))
            await wait_until(lambda: billed == ["o-1"])
    finally:
        conn.close()
    (record,) = flowkit_warnings(caplog)
    assert "declared emits=[Shipped] but published Billed" in record.getMessage()


# -- helpers ----------------------------------------------------------------------------

_MERMAID_ID = r"[A-Za-z][A-Za-z0-9_]*"
_LABEL = r'"[^"]*"'
_NODE = re.compile(
    rf"^(?P<id>{_MERMAID_ID})(?:\[(?P<box>{_LABEL})\]|\(\[(?P<round>{_LABEL})\]\)"
    rf"|\[/(?P<para>{_LABEL})/\])$"
)
_EDGE = re.compile(rf"^({_MERMAID_ID}) (-->|-\.->)(?:\|({_LABEL})\|)? ({_MERMAID_ID})$")
_SUBGRAPH = re.compile(rf"^subgraph ({_MERMAID_ID}) \[({_LABEL})\]$")
_ENTITY = re.compile(r"#(quot|lt|gt|amp|35);")


def unquote_mermaid(label: str) -> str:
    entities = {"quot": '"', "lt": "<", "gt": ">", "amp": "&", "35": "#"}
    return _ENTITY.sub(lambda m: entities[m[1]], label[1:-1])


def check_mermaid(text: str) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    """Check a Mermaid flowchart line by line, the way its grammar reads it; return
    its nodes (id to label) and edges (source, target, label).

    Every line is a header, a node, an edge, or a subgraph's start or end;
    subgraphs are balanced; identifiers are plain and unique; every edge joins
    declared nodes; no label holds a quote or a bracket Mermaid would read.
    """
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    assert text.endswith("\n")
    nodes: dict[str, str] = {}
    subgraphs: set[str] = set()
    edges: set[tuple[str, str, str]] = set()
    depth = 0
    for line in lines[1:]:
        stripped = line.strip()
        if stripped == "end":
            depth -= 1
            assert depth >= 0, line
        elif match := _SUBGRAPH.match(stripped):
            assert match[1] not in subgraphs and match[1] not in nodes, line
            subgraphs.add(match[1])
            depth += 1
        elif match := _NODE.match(stripped):
            assert match["id"] not in nodes and match["id"] not in subgraphs, line
            label = match["box"] or match["round"] or match["para"]
            nodes[match["id"]] = unquote_mermaid(label)
        elif match := _EDGE.match(stripped):
            assert depth == 0, f"an edge inside a subgraph moves its nodes: {line}"
            edges.add((match[1], match[4], unquote_mermaid(match[3]) if match[3] else ""))
        else:
            raise AssertionError(f"not a Mermaid line this graph should have: {line!r}")
    assert depth == 0
    for source, target, _ in edges:
        assert source in nodes and target in nodes, (source, target)
    return nodes, edges


def parse_dot(text: str) -> list[pydot.Dot]:
    """The graphs of a DOT text, parsed by pydot (whose parser, on a recent
    pyparsing, warns of pyparsing names it still uses)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        graphs = pydot.graph_from_dot_data(text)
    assert graphs is not None, "pydot could not parse the DOT text"
    return graphs


def all_subgraphs(graph: pydot.Graph) -> list[pydot.Subgraph]:
    found = []
    for sub in graph.get_subgraph_list():
        found.append(sub)
        found.extend(all_subgraphs(sub))
    return found


def all_nodes(graph: pydot.Graph) -> list[pydot.Node]:
    nodes = [n for n in graph.get_node_list() if n.get_name() not in ("node", "edge", "graph")]
    for sub in graph.get_subgraph_list():
        nodes.extend(all_nodes(sub))
    return nodes


def unquote_dot(value: str) -> str:
    assert value.startswith('"') and value.endswith('"')
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def dot_nodes(graph: pydot.Graph) -> dict[str, str]:
    return {n.get_name(): unquote_dot(n.get("label")) for n in all_nodes(graph)}
