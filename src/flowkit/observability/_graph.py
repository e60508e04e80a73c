"""The flow graph drawn from the code: who handles, emits and sends what.

What a bus knows of its handlers (``@bus.on``, ``@bus.handles``, ``emits=``)
and what orchestrators declare in their step lists (their waits included:
timers, events waited for, signals), gathered into one
:class:`FlowGraph` and drawn as Mermaid or DOT. Nothing is run: no transport
or store is opened.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._errors import DefinitionError
from .._events import Command, Event, Message
from ..choreography import Choreography
from ..orchestration import Orchestrator

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

__all__ = ["FlowGraph", "HandlerNode", "OrchestratorNode", "StepNode", "flow_graph"]


@dataclass(frozen=True, slots=True)
class HandlerNode:
    """One handler, as its bus declares it.

    Attributes:
        service: the service it belongs to.
        name: its name in the service.
        kind: ``"event"`` (``@bus.on``) or ``"command"`` (``@bus.handles``).
        message: the type name of the message it takes.
        emits: the type names of the events it declares in ``emits=``, sorted
            (None: it declares nothing).
        reply: for a command handler, the type name of its reply.
        where: the handler function, as ``module.qualname``.
    """

    service: str
    name: str
    kind: Literal["event", "command"]
    message: str
    emits: tuple[str, ...] | None
    reply: str | None
    where: str

    @property
    def consumer(self) -> str:
        """Its consumer group: ``service:name``."""
        return f"{self.service}:{self.name}"


@dataclass(frozen=True, slots=True)
class StepNode:
    """One step of an orchestrator.

    Attributes:
        name: the step's name.
        stage: the index of its entry in the ``steps`` list (the members of
            a :class:`~flowkit.Parallel` group share one).
        parallel: whether it is a member of a parallel group.
        command: the type name of the command a remote step sends (None for a
            local step).
        compensation: the name of the local function compensating it, if any.
        compensation_command: the type name of the command compensating it, if any.
        pivot: whether it is the point of no return.
        wait: for a wait step, what it waits for: ``timer``
            (:class:`~flowkit.orchestration.Sleep`), ``event``
            (:class:`~flowkit.orchestration.WaitForEvent`) or ``signal``
            (:class:`~flowkit.orchestration.WaitForSignal`); None for another step.
        waits_for: the type name of the event or signal it waits for.
        match: for an event wait, the event's field holding the workflow's key.
        timeout: seconds: a timer's duration, or how long an event or signal
            wait waits (None: until a time, or no limit).
    """

    name: str
    stage: int
    parallel: bool
    command: str | None
    compensation: str | None
    compensation_command: str | None
    pivot: bool
    wait: Literal["timer", "event", "signal"] | None = None
    waits_for: str | None = None
    match: str | None = None
    timeout: float | None = None

    @property
    def wait_handler(self) -> str | None:
        """For an event wait, the handler its orchestrator receives the event with:
        ``wait.<event>.<field>`` (in the service named after the orchestrator)."""
        if self.wait != "event" or self.waits_for is None:
            return None
        return f"wait.{self.waits_for}.{self.match}"


@dataclass(frozen=True, slots=True)
class OrchestratorNode:
    """One orchestrator and its steps, in declaration order.

    Attributes:
        name: the orchestrator's name (its ``name`` class attribute).
        input: the name of its input type.
        where: the orchestrator class, as ``module.qualname``.
        steps: its steps, in the order they are declared.
    """

    name: str
    input: str
    where: str
    steps: tuple[StepNode, ...]

    @property
    def sends(self) -> tuple[str, ...]:
        """The type names of the commands its steps and compensations send, sorted."""
        sent = {step.command for step in self.steps} | {
            step.compensation_command for step in self.steps
        }
        return tuple(sorted(name for name in sent if name is not None))

    @property
    def receives(self) -> tuple[tuple[str, str], ...]:
        """The events its waits take, as (type name, handler) pairs, sorted: the
        orchestrator subscribes to each as service ``name``, handler
        ``wait.<event>.<field>``."""
        found = {
            (step.waits_for, step.wait_handler)
            for step in self.steps
            if step.waits_for is not None and step.wait_handler is not None
        }
        return tuple(sorted(found))


class FlowGraph:
    """Services, events, commands, handlers and orchestrators, from the code.

    Build one with :func:`flow_graph`. Everything in it is sorted (services,
    handlers and messages by name; steps in declaration order), so the same
    code always draws the same graph.

    Attributes:
        handlers: every handler, sorted by service, then name.
        orchestrators: every orchestrator, sorted by name.
        messages: every event and command class the graph names, by type name
            (sorted), replies left out.
    """

    __slots__ = ("handlers", "messages", "orchestrators")

    def __init__(
        self,
        handlers: Iterable[HandlerNode],
        orchestrators: Iterable[OrchestratorNode],
        messages: Mapping[str, type[Message]],
    ) -> None:
        self.handlers = tuple(sorted(set(handlers), key=_handler_key))
        self.orchestrators = tuple(sorted(orchestrators, key=lambda o: (o.name, o.where)))
        self.messages: Mapping[str, type[Message]] = dict(sorted(messages.items()))

    @property
    def services(self) -> tuple[str, ...]:
        """The names of the services with handlers, sorted."""
        return tuple(sorted({h.service for h in self.handlers}))

    @property
    def events(self) -> tuple[str, ...]:
        """The type names of the events, sorted."""
        return tuple(n for n, cls in self.messages.items() if issubclass(cls, Event))

    @property
    def commands(self) -> tuple[str, ...]:
        """The type names of the commands, sorted."""
        return tuple(n for n, cls in self.messages.items() if issubclass(cls, Command))

    def consumers(self, message: str) -> tuple[HandlerNode, ...]:
        """The handlers that take messages of type ``message``."""
        return tuple(h for h in self.handlers if h.message == message)

    def emitters(self, event: str) -> tuple[HandlerNode, ...]:
        """The handlers that declare ``event`` in ``emits=``."""
        return tuple(h for h in self.handlers if h.emits is not None and event in h.emits)

    def waiters(self, event: str) -> tuple[tuple[OrchestratorNode, StepNode], ...]:
        """The orchestrator steps that wait for ``event`` (:class:`WaitForEvent`)."""
        return tuple(
            (orchestrator, step)
            for orchestrator in self.orchestrators
            for step in orchestrator.steps
            if step.wait == "event" and step.waits_for == event
        )

    def senders(self, command: str) -> tuple[tuple[OrchestratorNode, StepNode], ...]:
        """The orchestrator steps whose action or compensation sends ``command``."""
        return tuple(
            (orchestrator, step)
            for orchestrator in self.orchestrators
            for step in orchestrator.steps
            if command in (step.command, step.compensation_command)
        )

    # -- drawing --------------------------------------------------------------------

    def mermaid(self) -> str:
        """The graph as a Mermaid flowchart (``flowchart LR``).

        Events are rounded nodes, commands parallelograms, handlers boxes
        inside their service; an orchestrator is a box of its steps (a
        parallel group nested in it, waits labelled with what they wait
        for), chained in order. A solid arrow is a message handled, emitted,
        sent or waited for; a dotted one a compensation.
        """
        lines = ["flowchart LR"]
        depth = 1
        for item in self._layout():
            indent = "  " * depth
            if item.kind == "open":
                lines.append(f"{indent}subgraph {item.id} [{_mermaid_text(item.label)}]")
                depth += 1
            elif item.kind == "close":
                lines.append(f"{'  ' * (depth - 1)}end")
                depth -= 1
            else:
                left, right = _MERMAID_SHAPES[item.kind]
                lines.append(f"{indent}{item.id}{left}{_mermaid_text(item.label)}{right}")
        for source, target, label, dashed in self._edges():
            arrow = "-.->" if dashed else "-->"
            text = f"|{_mermaid_text(label)}|" if label else ""
            lines.append(f"  {source} {arrow}{text} {target}")
        return "\n".join(lines) + "\n"

    def dot(self) -> str:
        """The graph in Graphviz's DOT language (``digraph flowkit``), drawn as
        :meth:`mermaid` draws it."""
        lines = [
            "digraph flowkit {",
            "  rankdir=LR;",
            '  node [fontname="Helvetica", fontsize=11];',
            '  edge [fontname="Helvetica", fontsize=10];',
        ]
        depth = 1
        for item in self._layout():
            indent = "  " * depth
            if item.kind == "open":
                lines.append(f"{indent}subgraph cluster_{item.id} {{")
                lines.append(f"{indent}  label={_dot_text(item.label)};")
                depth += 1
            elif item.kind == "close":
                lines.append(f"{'  ' * (depth - 1)}}}")
                depth -= 1
            else:
                label = _dot_text(item.label)
                lines.append(f"{indent}{item.id} [label={label}, {_DOT_SHAPES[item.kind]}];")
        for source, target, label, dashed in self._edges():
            attributes = []
            if label:
                attributes.append(f"label={_dot_text(label)}")
            if dashed:
                attributes.append("style=dashed")
            suffix = f" [{', '.join(attributes)}]" if attributes else ""
            lines.append(f"  {source} -> {target}{suffix};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def svg(self) -> str:
        """The graph drawn as an SVG picture; see :func:`~flowkit.observability.graph_svg`."""
        from ._graph_svg import graph_svg

        return graph_svg(self)

    def _layout(self) -> Iterator[_Item]:
        """What both drawings show but the edges, in order: each service's
        box of handlers, the events, the commands, each orchestrator's box
        of steps (with a box per parallel group)."""
        for service in self.services:
            yield _Item("open", _id("sv", service), service)
            for handler in self.handlers:
                if handler.service == service:
                    yield _Item("handler", _handler_id(handler), handler.name)
            yield _CLOSE
        for name in self.events:
            yield _Item("event", _id("ev", name), name)
        for name in self.commands:
            yield _Item("command", _id("cm", name), name)
        for index, orchestrator in enumerate(self.orchestrators):
            title = f"{orchestrator.name} (input {orchestrator.input})"
            yield _Item("open", _orchestrator_id(index), title)
            for stage in _stages(orchestrator):
                if stage[0].parallel:
                    yield _Item("open", _group_id(index, stage[0].stage), "parallel")
                for step in stage:
                    yield _Item("step", _step_id(index, step), _step_label(step))
                if stage[0].parallel:
                    yield _CLOSE
            yield _CLOSE

    def _edges(self) -> list[tuple[str, str, str, bool]]:
        """Every edge as (source id, target id, label, dashed), in a fixed order."""
        edges: list[tuple[str, str, str, bool]] = []
        for handler in self.handlers:
            prefix = "ev" if handler.kind == "event" else "cm"
            edges.append((_id(prefix, handler.message), _handler_id(handler), "", False))
            for event in handler.emits or ():
                edges.append((_handler_id(handler), _id("ev", event), "", False))
        for index, orchestrator in enumerate(self.orchestrators):
            stages = _stages(orchestrator)
            for before, after in itertools.pairwise(stages):
                for a in before:
                    for b in after:
                        edges.append((_step_id(index, a), _step_id(index, b), "", False))
            for step in orchestrator.steps:
                if step.wait == "event" and step.waits_for is not None:
                    edges.append((_id("ev", step.waits_for), _step_id(index, step), "wait", False))
                if step.command is not None:
                    edges.append((_step_id(index, step), _id("cm", step.command), "sends", False))
                if step.compensation_command is not None:
                    edges.append(
                        (
                            _step_id(index, step),
                            _id("cm", step.compensation_command),
                            "compensate",
                            True,
                        )
                    )
        return edges

    def __repr__(self) -> str:
        return (
            f"<FlowGraph {len(self.services)} service(s), {len(self.handlers)} handler(s), "
            f"{len(self.events)} event(s), {len(self.commands)} command(s), "
            f"{len(self.orchestrators)} orchestrator(s)>"
        )


def flow_graph(
    *buses: Choreography,
    orchestrators: Iterable[type[Orchestrator[Any]] | Orchestrator[Any]] = (),
) -> FlowGraph:
    """The flow graph of some buses and orchestrators, from their declarations.

    ::

        graph = flow_graph(bus, orchestrators=[PlaceOrder])
        print(graph.mermaid())

    Args:
        *buses: the buses whose handlers to draw. A handler declared the same
            way on several of them is drawn once.
        orchestrators: orchestrator classes (or instances) whose steps to draw,
            their waits too (an event waited for is an event of the graph).

    Returns:
        The graph.

    Raises:
        TypeError: if an argument is not a bus, or not an orchestrator.
        DefinitionError: if two different classes use one message type name.
    """
    messages: dict[str, type[Message]] = {}
    handlers: list[HandlerNode] = []
    for bus in buses:
        if not isinstance(bus, Choreography):
            raise TypeError(f"flow_graph() takes Choreography buses, got {type(bus).__name__}")
        for spec in bus.handlers:
            _add_message(messages, spec.message_type)
            for emitted in spec.emits or ():
                _add_message(messages, emitted)
            handlers.append(
                HandlerNode(
                    service=spec.service,
                    name=spec.name,
                    kind=spec.kind,
                    message=spec.topic,
                    emits=None
                    if spec.emits is None
                    else tuple(sorted({e.__flowkit_type__ for e in spec.emits})),
                    reply=None if spec.reply_type is None else spec.reply_type.__flowkit_type__,
                    where=_where(spec.func),
                )
            )
    nodes = [_orchestrator_node(cls, messages) for cls in orchestrator_classes(orchestrators)]
    return FlowGraph(handlers, nodes, messages)


def orchestrator_classes(
    orchestrators: Iterable[type[Orchestrator[Any]] | Orchestrator[Any]],
) -> list[type[Orchestrator[Any]]]:
    """The orchestrator classes of classes or instances, each once, in the order given.

    Raises:
        TypeError: if one is neither an orchestrator class nor an instance of one.
    """
    classes: list[type[Orchestrator[Any]]] = []
    for item in orchestrators:
        cls = item if isinstance(item, type) else type(item)
        if not issubclass(cls, Orchestrator) or getattr(cls, "_plan", None) is None:
            raise TypeError(
                f"expected an Orchestrator subclass declaring steps (or an instance), got {item!r}"
            )
        if cls not in classes:
            classes.append(cls)
    return classes


def _orchestrator_node(
    cls: type[Orchestrator[Any]], messages: dict[str, type[Message]]
) -> OrchestratorNode:
    plan = cls._plan
    steps: list[StepNode] = []
    for stage_index, stage in enumerate(plan.stages):
        for spec in stage:
            command = spec.action.command
            compensation = spec.compensation
            compensation_command = compensation.command if compensation is not None else None
            for sent in (command, compensation_command):
                if sent is not None:
                    _add_message(messages, sent)
            local = compensation.fn if compensation is not None else None
            wait = spec.wait
            waited = None if wait is None else wait.message_type
            if wait is not None and wait.kind == "event" and waited is not None:
                _add_message(messages, waited)  # a signal is no message of the bus
            steps.append(
                StepNode(
                    name=spec.name,
                    stage=stage_index,
                    parallel=len(stage) > 1,
                    command=None if command is None else command.__flowkit_type__,
                    compensation=None if local is None else _function_name(local),
                    compensation_command=None
                    if compensation_command is None
                    else compensation_command.__flowkit_type__,
                    pivot=spec.pivot,
                    wait=None if wait is None else wait.kind,
                    waits_for=None if waited is None else waited.__flowkit_type__,
                    match=None if wait is None else wait.match,
                    timeout=None if wait is None else wait.duration,
                )
            )
    input_type = cls._input_type
    return OrchestratorNode(
        name=cls.name,
        input=getattr(input_type, "__name__", None) or repr(input_type),
        where=_where(cls),
        steps=tuple(steps),
    )


def _add_message(messages: dict[str, type[Message]], cls: type[Message]) -> None:
    name = cls.__flowkit_type__
    known = messages.setdefault(name, cls)
    if known is not cls:
        raise DefinitionError(
            f"two different classes use the message type name {name!r} "
            f"({_where(known)} and {_where(cls)})"
        )


def _where(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or repr(obj)
    return f"{module}.{qualname}" if module else qualname


def _function_name(fn: object) -> str:
    return str(getattr(fn, "__name__", None) or getattr(fn, "__qualname__", None) or fn)


def _handler_key(handler: HandlerNode) -> tuple[str, ...]:
    return (handler.service, handler.name, handler.message, handler.where)


def _stages(orchestrator: OrchestratorNode) -> list[tuple[StepNode, ...]]:
    stages: dict[int, list[StepNode]] = {}
    for step in orchestrator.steps:
        stages.setdefault(step.stage, []).append(step)
    return [tuple(stages[index]) for index in sorted(stages)]


def _step_label(step: StepNode) -> str:
    label = step.name
    if step.wait == "timer":
        label += f" (timer {'until a time' if step.timeout is None else _seconds(step.timeout)})"
    elif step.wait is not None:
        label += f" (waits for {step.wait} {step.waits_for}"
        if step.timeout is not None:
            label += f", {_seconds(step.timeout)} at most"
        label += ")"
    if step.compensation is not None:
        label += f" (undo: {step.compensation})"
    if step.pivot:
        label += " (pivot)"
    return label


def _seconds(value: float) -> str:
    """A duration in its largest whole unit: ``90s``, ``15m``, ``2h``, ``7d``."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


# -- drawing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    """A box opening or closing, or a node, as :meth:`FlowGraph._layout` lists them."""

    kind: Literal["open", "close", "handler", "event", "command", "step"]
    id: str = ""
    label: str = ""


_CLOSE = _Item("close")
_MERMAID_SHAPES = {
    "handler": ("[", "]"),
    "event": ("([", "])"),
    "command": ("[/", "/]"),
    "step": ("[", "]"),
}
_DOT_SHAPES = {
    "handler": 'shape=box, style="rounded"',
    "event": "shape=ellipse",
    "command": "shape=parallelogram",
    "step": "shape=box",
}

# -- identifiers and labels ----------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9]")


def _escape(text: str) -> str:
    """``text`` in letters, digits and ``_``: every other character (``_`` too)
    becomes ``_<hex>_``, so that two names never give one identifier."""
    return _UNSAFE.sub(lambda m: f"_{ord(m[0]):x}_", text)


def _id(prefix: str, *parts: str) -> str:
    return "__".join((prefix, *(_escape(p) for p in parts)))


def _handler_id(handler: HandlerNode) -> str:
    return _id("hd", handler.service, handler.name)


def _orchestrator_id(index: int) -> str:
    return f"wf{index}"


def _group_id(index: int, stage: int) -> str:
    return f"wf{index}__group{stage}"


def _step_id(index: int, step: StepNode) -> str:
    return _id(f"wf{index}", step.name)


def _mermaid_text(text: str) -> str:
    """A quoted Mermaid label; characters Mermaid would read as markup are entities."""
    escaped = (
        text.replace("#", "#35;")
        .replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
    )
    return f'"{escaped}"'


def _dot_text(text: str) -> str:
    """A quoted DOT string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
