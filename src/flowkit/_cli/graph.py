"""``flowkit graph``, ``flowkit lint`` and ``flowkit asyncapi``: the flows the
code declares, drawn, checked and described. They import the target and
read its declarations; no transport or store is opened."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from .._events import Command, Event, Message
from ..choreography import Choreography
from ..observability import asyncapi_document, flow_graph, lint
from ..orchestration import Orchestrator
from .common import UsageError, import_module, load_object, one_line

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable, Sequence

__all__ = [
    "Targets",
    "add_commands",
    "describe_asyncapi",
    "draw_graph",
    "lint_flows",
    "load_targets",
]

P = TypeVar("P", bound="argparse.ArgumentParser")

TARGET_HELP = (
    "what to read, as module:attribute (a Choreography, an Orchestrator class or "
    "instance; the orchestrators at the top level of the module come along) or as a "
    "module name alone (every bus and orchestrator at its top level, and its event and "
    "command classes); several may be given"
)


@dataclass
class Targets:
    """What the command line names: buses, orchestrators, and declared messages."""

    buses: list[Choreography] = field(default_factory=list)
    orchestrators: list[type[Orchestrator[Any]]] = field(default_factory=list)
    declared: list[type[Message]] = field(default_factory=list)

    def add(self, obj: object) -> bool:
        """Add a bus or an orchestrator; whether ``obj`` was one."""
        if isinstance(obj, Choreography):
            if not any(bus is obj for bus in self.buses):
                self.buses.append(obj)
            return True
        cls = obj if isinstance(obj, type) else type(obj)
        if issubclass(cls, Orchestrator) and getattr(cls, "_plan", None) is not None:
            if cls not in self.orchestrators:
                self.orchestrators.append(cls)
            return True
        return False

    def add_module(self, module: ModuleType, *, whole: bool) -> int:
        """Add the orchestrators at the top level of ``module`` and, if ``whole``,
        its buses and its event and command classes; how many buses and
        orchestrators were found."""
        found = 0
        for _, value in sorted(vars(module).items()):
            if isinstance(value, Choreography) and not whole:
                continue
            if self.add(value):
                found += 1
            elif whole and _is_declared_message(value) and value not in self.declared:
                self.declared.append(value)
        return found


def _is_declared_message(value: object) -> bool:
    if not (isinstance(value, type) and issubclass(value, Event | Command)):
        return False
    if value.__module__.split(".")[0] == "flowkit":
        return False  # Event, Command and flowkit's own messages
    meta = getattr(value, "__pydantic_generic_metadata__", None) or {}
    return not meta.get("origin")  # Command[Reply] itself, not a command


def load_targets(paths: Sequence[str]) -> Targets:
    """Import what the command line names.

    Raises:
        UsageError: for a module or attribute that cannot be loaded, an object
            that is neither a bus nor an orchestrator, or a module holding none.
    """
    targets = Targets()
    for path in paths:
        obj: object = load_object(path, object) if ":" in path else import_module(path)
        if isinstance(obj, ModuleType):
            if not targets.add_module(obj, whole=True):
                raise UsageError(f"{path} has no Choreography or Orchestrator at its top level")
        elif targets.add(obj):
            targets.add_module(import_module(path.partition(":")[0]), whole=False)
        else:
            raise UsageError(
                f"{path} is of type {type(obj).__name__}, expected a Choreography, an "
                "Orchestrator (class or instance) or a module"
            )
    return targets


def add_commands(commands: argparse._SubParsersAction[P]) -> None:
    """Add ``graph``, ``lint`` and ``asyncapi`` to the ``flowkit`` command."""
    graph = commands.add_parser(
        "graph",
        help="draw the services, events, commands and orchestrators as Mermaid, DOT or SVG",
        description="Draw the flows the code declares: services and their handlers, the "
        "events they take and emit (emits=), the commands they answer, and orchestrators' "
        "steps. Reads the declarations only.",
    )
    graph.add_argument("targets", nargs="+", metavar="TARGET", help=TARGET_HELP)
    graph.add_argument(
        "--format",
        choices=("mermaid", "dot", "svg"),
        default="mermaid",
        help="mermaid (default), dot, or svg (a picture, drawn without Graphviz)",
    )
    graph.set_defaults(run=draw_graph)

    check = commands.add_parser(
        "lint",
        help="check the flows: events nobody consumes or emits, commands nobody answers",
        description="Check the flows the code declares; print each finding with where it "
        "is, and exit 1 if there is any ('no findings' and exit 0 otherwise). Findings: "
        "event-not-consumed, event-not-emitted, event-unused (a module's event that no "
        "handler names), command-not-handled.",
    )
    check.add_argument("targets", nargs="+", metavar="TARGET", help=TARGET_HELP)
    check.add_argument(
        "--external",
        action="append",
        metavar="TYPE",
        help="an event or command emitted, consumed or answered by code outside these "
        "handlers (another code base, an HTTP endpoint): its type name or class name "
        "(repeatable or comma-separated)",
    )
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(run=lint_flows)

    spec = commands.add_parser(
        "asyncapi",
        help="print an AsyncAPI 3.0 document (JSON) of the flows",
        description="Print an AsyncAPI 3.0 document of the flows the code declares: a "
        "channel per topic, send and receive operations per service, messages with the "
        "JSON schemas of their models inside flowkit's envelope.",
    )
    spec.add_argument("targets", nargs="+", metavar="TARGET", help=TARGET_HELP)
    spec.add_argument("--title", help="info.title (default: the targets)")
    spec.add_argument("--version", default="0.1.0", help="info.version (default: 0.1.0)")
    spec.add_argument(
        "--service",
        action="append",
        metavar="NAME",
        help="only this service's (or orchestrator's) operations (repeatable or comma-separated)",
    )
    spec.set_defaults(run=describe_asyncapi)


def _split(values: Iterable[str] | None) -> list[str]:
    """Repeatable, comma-separated option values, in order, without blanks."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


async def draw_graph(args: argparse.Namespace) -> int:
    """``flowkit graph``: print the flow graph as Mermaid, DOT or SVG."""
    targets = load_targets(args.targets)
    graph = flow_graph(*targets.buses, orchestrators=targets.orchestrators)
    drawings = {"mermaid": graph.mermaid, "dot": graph.dot, "svg": graph.svg}
    sys.stdout.write(drawings[args.format]())
    return 0


async def lint_flows(args: argparse.Namespace) -> int:
    """``flowkit lint``: print each finding; exit 1 if there is any."""
    targets = load_targets(args.targets)
    try:
        findings = lint(
            *targets.buses,
            orchestrators=targets.orchestrators,
            external=_split(args.external),
            declared=targets.declared,
        )
    except ValueError as exc:
        raise UsageError(one_line(str(exc))) from None
    if args.json:
        rows = [
            {"code": f.code, "type": f.message_type, "where": f.where, "text": f.text}
            for f in findings
        ]
        print(json.dumps(rows, indent=2))
    elif findings:
        for finding in findings:
            print(finding)
    else:
        print("no findings")
    if findings:
        print(
            f"flowkit: {len(findings)} finding(s); an event published or consumed by other "
            "code (or a command answered there) is external: pass --external TYPE",
            file=sys.stderr,
        )
        return 1
    return 0


async def describe_asyncapi(args: argparse.Namespace) -> int:
    """``flowkit asyncapi``: print the AsyncAPI 3.0 document as JSON."""
    targets = load_targets(args.targets)
    services = _split(args.service) or None
    try:
        document = asyncapi_document(
            *targets.buses,
            orchestrators=targets.orchestrators,
            title=args.title or " ".join(args.targets),
            version=args.version,
            services=services,
        )
    except ValueError as exc:
        raise UsageError(one_line(str(exc))) from None
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0
