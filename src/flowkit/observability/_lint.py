"""Checks of a flow graph: messages sent into the void, handlers and waits waiting
for nothing, commands nobody answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._events import Command, Event, Message
from ._graph import FlowGraph, HandlerNode, flow_graph

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..choreography import Choreography
    from ..orchestration import Orchestrator
    from ._graph import OrchestratorNode, StepNode

__all__ = ["LintFinding", "lint"]

FindingCode = Literal[
    "event-not-consumed", "event-not-emitted", "event-unused", "command-not-handled"
]


@dataclass(frozen=True, slots=True)
class LintFinding:
    """One thing :func:`lint` found wrong.

    Attributes:
        code: what kind of finding: ``event-not-consumed`` (emitted, and no
            handler takes it nor orchestrator waits for it),
            ``event-not-emitted`` (handled or waited for, and nothing emits
            it), ``event-unused`` (declared, neither emitted nor handled)
            or ``command-not-handled`` (sent or declared, and no service
            answers it).
        message_type: the type name of the event or command concerned.
        where: where it was found: a handler (``service:name`` and its
            function), an orchestrator's step, or a message class.
        text: what is wrong, in one sentence.
    """

    code: FindingCode
    message_type: str
    where: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.code}: {self.text}"


def lint(
    *buses: Choreography,
    orchestrators: Iterable[type[Orchestrator[Any]] | Orchestrator[Any]] = (),
    external: Iterable[type[Message] | str] = (),
    declared: Iterable[type[Message]] = (),
) -> tuple[LintFinding, ...]:
    """Check the flows that buses and orchestrators declare.

    Findings:

    * ``event-not-consumed``: a handler declares it emits an event (``emits=``)
      that no handler consumes and no orchestrator waits for
      (:class:`~flowkit.orchestration.WaitForEvent`).
    * ``event-not-emitted``: a handler consumes an event, or an orchestrator's
      step waits for one, that no handler declares in ``emits=``.
    * ``command-not-handled``: an orchestrator's step or compensation sends a
      command, or ``declared`` names one, that no ``@bus.handles`` answers.
    * ``event-unused``: ``declared`` names an event that no handler emits or
      consumes and no orchestrator waits for.

    Only handlers' declarations are known: an event published by other code
    (an HTTP endpoint, the outbox write of a request) or consumed by another
    code base is *external*: name it in ``external`` and it is taken as
    emitted and consumed elsewhere.

    Args:
        *buses: the buses whose handlers to check.
        orchestrators: orchestrator classes (or instances) whose steps to check.
        external: events and commands emitted, consumed or answered outside
            these buses: classes, or type names (``__flowkit_type__``, or the
            class name).
        declared: message classes the code base declares, checked even when
            no handler names them (the messages of a module, say).

    Returns:
        The findings, sorted by where they were found; empty when all is well.

    Raises:
        TypeError: as :func:`flow_graph` raises it, or for a ``declared``
            entry that is not a message class.
        ValueError: if ``external`` names a type the graph does not know.
        DefinitionError: if two different classes use one message type name.
    """
    graph = flow_graph(*buses, orchestrators=orchestrators)
    declared_types: dict[str, type[Message]] = {}
    for cls in declared:
        if not (isinstance(cls, type) and issubclass(cls, Message)):
            raise TypeError(f"declared= takes message classes, got {cls!r}")
        if issubclass(cls, Event | Command):
            declared_types[cls.__flowkit_type__] = cls
    outside = _external_names(external, {**declared_types, **graph.messages})
    findings = [
        *_event_findings(graph, outside),
        *_command_findings(graph, outside),
        *_declared_findings(graph, declared_types, outside),
    ]
    return tuple(sorted(findings, key=lambda f: (f.where, f.code, f.message_type)))


def _event_findings(graph: FlowGraph, outside: set[str]) -> list[LintFinding]:
    findings = []
    for handler in graph.handlers:
        for event in handler.emits or ():
            if event not in outside and not graph.consumers(event) and not graph.waiters(event):
                findings.append(
                    LintFinding(
                        "event-not-consumed",
                        event,
                        handler_location(handler),
                        f"emits {event}, which no handler consumes",
                    )
                )
        if (
            handler.kind == "event"
            and handler.message not in outside
            and not graph.emitters(handler.message)
        ):
            findings.append(
                LintFinding(
                    "event-not-emitted",
                    handler.message,
                    handler_location(handler),
                    f"handles {handler.message}, which no handler emits",
                )
            )
    for orchestrator in graph.orchestrators:
        for step in orchestrator.steps:
            waited = step.waits_for
            if step.wait == "event" and waited is not None:
                if waited not in outside and not graph.emitters(waited):
                    findings.append(
                        LintFinding(
                            "event-not-emitted",
                            waited,
                            step_location(orchestrator, step),
                            f"waits for {waited}, which no handler emits",
                        )
                    )
    return findings


def _command_findings(graph: FlowGraph, outside: set[str]) -> list[LintFinding]:
    answered = {h.message for h in graph.handlers if h.kind == "command"}
    findings = []
    for orchestrator in graph.orchestrators:
        for step in orchestrator.steps:
            for command, what in (
                (step.command, "sends"),
                (step.compensation_command, "compensates by sending"),
            ):
                if command is not None and command not in answered and command not in outside:
                    findings.append(
                        LintFinding(
                            "command-not-handled",
                            command,
                            step_location(orchestrator, step),
                            f"{what} {command}, which no service handles",
                        )
                    )
    return findings


def _declared_findings(
    graph: FlowGraph, declared: dict[str, type[Message]], outside: set[str]
) -> list[LintFinding]:
    findings = []
    for name, cls in declared.items():
        if name in outside or graph.consumers(name) or graph.waiters(name):
            continue  # checked where it is handled or waited for
        where = f"{cls.__module__}.{cls.__qualname__}"
        if issubclass(cls, Command):
            if not graph.senders(name):  # those are found at their steps
                findings.append(
                    LintFinding("command-not-handled", name, where, f"no service handles {name}")
                )
        elif not graph.emitters(name):
            findings.append(
                LintFinding(
                    "event-unused",
                    name,
                    where,
                    f"{name} is neither emitted nor consumed by any handler",
                )
            )
    return findings


def _external_names(
    external: Iterable[type[Message] | str], known: dict[str, type[Message]]
) -> set[str]:
    by_class_name: dict[str, set[str]] = {}
    for name, cls in known.items():
        by_class_name.setdefault(cls.__name__, set()).add(name)
    names: set[str] = set()
    for item in external:
        if isinstance(item, type) and issubclass(item, Message):
            names.add(item.__flowkit_type__)
            continue
        if not isinstance(item, str):
            raise TypeError(f"external= takes message classes or type names, got {item!r}")
        if item in known:
            names.add(item)
        elif len(by_class_name.get(item, ())) == 1:
            names |= by_class_name[item]
        elif item in by_class_name:
            raise ValueError(
                f"external: {item!r} is the class name of several message types "
                f"({', '.join(sorted(by_class_name[item]))}); give the type name"
            )
        else:
            raise ValueError(
                f"external: no event or command named {item!r} in these flows; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
    return names


def handler_location(handler: HandlerNode) -> str:
    """Where a handler is, for a finding: ``service:name (module.function)``."""
    return f"{handler.consumer} ({handler.where})"


def step_location(orchestrator: OrchestratorNode, step: StepNode) -> str:
    """Where a step is, for a finding: ``orchestrator step 'name' (module.Class)``."""
    return f"{orchestrator.name} step {step.name!r} ({orchestrator.where})"
