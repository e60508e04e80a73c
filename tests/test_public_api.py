from __future__ import annotations

import subprocess
import sys

import flowkit
import flowkit.choreography
import flowkit.observability
import flowkit.stores
import flowkit.testing
import flowkit.transports


def test_top_level_exports_exactly_the_public_names() -> None:
    public = {name for name in dir(flowkit) if not name.startswith(("_", "@"))} - {
        "choreography",
        "cli",
        "observability",
        "orchestration",
        "stores",
        "testing",
        "transports",
        "ui",
    }
    assert set(flowkit.__all__) == public | {"__version__"}


def test_every_exported_name_resolves() -> None:
    for module in (
        flowkit,
        flowkit.choreography,
        flowkit.observability,
        flowkit.stores,
        flowkit.testing,
        flowkit.transports,
    ):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)


def test_observability_exports_exactly_its_public_names() -> None:
    public = {n for n in dir(flowkit.observability) if not n.startswith(("_", "@"))}
    # flowkit.observability.otel is a module of its own (it needs the otel extra).
    public.discard("otel")
    assert set(flowkit.observability.__all__) == public
    assert {"JsonLogFormatter", "LogFormat", "TextLogFormatter", "setup_logging"} <= public


def test_the_opentelemetry_module_exports_exactly_its_public_names() -> None:
    import flowkit.observability.otel as otel

    public = {n for n in dir(otel) if not n.startswith(("_", "@"))}
    assert set(otel.__all__) == public == {"OpenTelemetry"}


def test_observability_exports_the_flow_graph_lint_and_asyncapi() -> None:
    assert {
        "ASYNCAPI_VERSION",
        "FlowGraph",
        "HandlerNode",
        "LintFinding",
        "OrchestratorNode",
        "StepNode",
        "asyncapi_document",
        "flow_graph",
        "graph_svg",
        "lint",
    } <= set(flowkit.observability.__all__)


def test_observability_exports_the_flow_trace_and_expectations() -> None:
    assert {
        "Expectation",
        "FlowTrace",
        "StalledFlow",
        "TraceEntry",
        "TraceOptions",
        "TraceRecorder",
        "TraceStore",
        "find_stalled",
        "load_flows",
        "trace_json",
        "trace_mermaid",
        "trace_of",
        "trace_text",
    } <= set(flowkit.observability.__all__)


def test_ui_exports_the_app_factory_alone() -> None:
    """flowkit.ui is a module of its own (it needs the ui extra)."""
    import flowkit.ui as ui

    assert ui.__all__ == ["create_app"]
    assert {n for n in dir(ui) if not n.startswith(("_", "@"))} == {"create_app"}


def test_importing_flowkit_imports_no_broker_or_database_client() -> None:
    code = (
        "import sys, flowkit, flowkit.transports, flowkit.stores; "
        "print(sorted(m for m in ('redis', 'aio_pika', 'nats', 'aiokafka', 'asyncpg', "
        "'psycopg', 'trio', 'opentelemetry', 'starlette', 'uvicorn', 'jinja2') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_pytest_plugin_is_registered() -> None:
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="pytest11") if e.name == "flowkit"]
    assert plugin.value == "flowkit.testing._plugin"
