"""Reading a flow back from the trace: its causal tree, as text, Mermaid or JSON.

:func:`load_flows` finds the flows an id names (a correlation id, a workflow id
or a business key) and reads a bounded number of entries of each;
:func:`build_tree` rebuilds who published what, who handled it and what that
caused, from the message ids and causation ids the entries carry;
:func:`trace_text`, :func:`trace_mermaid` and :func:`trace_json` show it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..choreography._context import derive_message_id
from ..stores._trace import TRACE_COLUMNS

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..stores._trace import TraceEntry, TraceStore

__all__ = [
    "FlowTrace",
    "build_tree",
    "load_flows",
    "stopped_reasons",
    "trace_json",
    "trace_mermaid",
    "trace_text",
]

#: Entries read per flow by default.
DEFAULT_LIMIT = 2_000
#: Attempts of one handling or step listed; the others are counted.
SHOWN_ATTEMPTS = 5
#: The most statements of a Mermaid diagram.
MERMAID_LINES = 400
#: How many indexes of derived message ids are tried to find which handler
#: published a message (see ``derive_message_id``).
_DERIVED_TRIES = 32


# -- the tree ------------------------------------------------------------------------


@dataclass(eq=False)
class Handling:
    """One handler's attempts at one message."""

    message: Message
    service: str
    handler: str
    attempts: list[TraceEntry] = field(default_factory=list)
    dead_letter: TraceEntry | None = None
    published: list[Message] = field(default_factory=list)
    workflows: list[str] = field(default_factory=list)

    @property
    def consumer(self) -> str:
        return f"{self.service}:{self.handler}"

    @property
    def first_at(self) -> datetime:
        known = [e.at for e in self.attempts] + ([self.dead_letter.at] if self.dead_letter else [])
        return min(known) if known else self.message.at

    @property
    def outcome(self) -> str:
        """``handled``, ``dead-lettered``, ``failed`` (given up without a dead
        letter recorded) or ``retrying`` (its last attempt was retried)."""
        if self.dead_letter is not None:
            return "dead-lettered"
        if not self.attempts:
            return "unknown"
        last = self.attempts[-1].outcome
        return {"handled": "handled", "failed": "failed"}.get(last, "retrying")


@dataclass(eq=False)
class Message:
    """One message of the flow: its publish entry (if recorded) and its handlings."""

    message_id: str
    type: str
    at: datetime
    published: TraceEntry | None = None
    causation_id: str | None = None
    key: str | None = None
    handlings: dict[str, Handling] = field(default_factory=dict)
    caused: list[Message] = field(default_factory=list)  # publisher not known

    @property
    def publisher(self) -> str | None:
        """Who published it, in words."""
        entry = self.published
        if entry is None:
            return None
        if entry.consumer is not None:
            return entry.consumer
        if entry.step is not None:
            what = "compensation" if entry.detail == "compensation" else "step"
            return f"{entry.workflow or 'workflow'} {what} {entry.step}"
        if entry.workflow_id is not None:
            return f"workflow {entry.workflow_id}"
        return None


@dataclass(eq=False)
class Step:
    """One step (or compensation) of a workflow: its attempts and what it sent."""

    name: str
    compensating: bool
    entries: list[TraceEntry] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    waiting: bool = False  # its workflow is parked at it now
    parked: bool = False  # its workflow was parked at it (a wait step)

    @property
    def first_at(self) -> datetime:
        return self.entries[0].at

    @property
    def attempts(self) -> list[TraceEntry]:
        """The entries that end an attempt."""
        return [e for e in self.entries if e.outcome != "started"]

    @property
    def outcome(self) -> str:
        ends = self.attempts
        if not ends:
            return "waiting" if self.waiting else "running"
        return ends[-1].outcome


@dataclass(eq=False)
class Workflow:
    """A workflow of the flow: its own entries, steps and compensations."""

    workflow_id: str
    name: str | None = None
    entries: list[TraceEntry] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    compensations: list[Step] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)  # sent outside any step

    @property
    def end(self) -> TraceEntry | None:
        """Its last entry that ends a run (completed, compensated, failed, stopped,
        or waiting: parked at a wait step)."""
        for entry in reversed(self.entries):
            if entry.outcome not in ("started", "resumed"):
                return entry
        return None

    @property
    def waiting(self) -> TraceEntry | None:
        """Its ``waiting`` entry, if it is parked at a wait step (as far as the
        trace knows); the entry's ``step`` names the step when known."""
        end = self.end
        return end if end is not None and end.outcome == "waiting" else None


@dataclass(eq=False)
class FlowTrace:
    """One flow as read from the trace.

    Attributes:
        correlation_id: the flow.
        entries: the entries read, in the order they were stored.
        total: how many entries the flow has.
        named_by: how the id given named it: ``correlation id``,
            ``workflow id`` or ``business key``.
    """

    correlation_id: str
    entries: list[TraceEntry]
    total: int
    named_by: str = "correlation id"

    @property
    def truncated(self) -> bool:
        """Whether the flow has more entries than were read."""
        return self.total > len(self.entries)

    @property
    def keys(self) -> list[str]:
        """The business keys its messages carry."""
        return sorted({e.key for e in self.entries if e.key})

    @property
    def linked_workflows(self) -> list[str]:
        """Workflows that handlers of this flow started, whose entries are their own flow."""
        found = []
        for e in self.entries:
            if e.kind == "workflow" and e.workflow_id and e.workflow_id != self.correlation_id:
                if e.workflow_id not in found:
                    found.append(e.workflow_id)
        return found


@dataclass(eq=False)
class Tree:
    """A flow's causal tree."""

    flow: FlowTrace
    roots: list[Message | Workflow]
    messages: dict[str, Message]
    workflows: dict[str, Workflow]
    stalled: list[TraceEntry]


def _order(item: Message | Workflow | Handling | Step) -> datetime:
    if isinstance(item, Workflow):
        return item.entries[0].at if item.entries else datetime.min.replace(tzinfo=UTC)
    if isinstance(item, Message):
        return item.at
    return item.first_at


def build_tree(flow: FlowTrace) -> Tree:
    """Rebuild who published what, who handled it and what that caused."""
    entries = sorted(flow.entries, key=lambda e: (e.at, e.seq))
    messages: dict[str, Message] = {}
    workflows: dict[str, Workflow] = {}
    stalled: list[TraceEntry] = []
    steps: dict[tuple[str, str, bool], Step] = {}

    def message(entry: TraceEntry) -> Message:
        assert entry.message_id is not None
        known = messages.get(entry.message_id)
        if known is None:
            known = messages[entry.message_id] = Message(
                entry.message_id,
                entry.message_type or "?",
                entry.at,
                causation_id=entry.causation_id,
            )
        if entry.key and not known.key:
            known.key = entry.key
        return known

    def workflow(workflow_id: str, name: str | None) -> Workflow:
        known = workflows.get(workflow_id)
        if known is None:
            known = workflows[workflow_id] = Workflow(workflow_id, name)
        if name and not known.name:
            known.name = name
        return known

    def handling(msg: Message, entry: TraceEntry) -> Handling:
        consumer = f"{entry.service}:{entry.handler}"
        known = msg.handlings.get(consumer)
        if known is None:
            known = msg.handlings[consumer] = Handling(
                msg, entry.service or "?", entry.handler or "?"
            )
        return known

    links: list[TraceEntry] = []
    for entry in entries:
        kind = entry.kind
        if kind == "publish" and entry.message_id:
            msg = message(entry)
            if msg.published is None:
                msg.published = entry
                msg.at = entry.at
        elif kind in ("handle", "dead_letter") and entry.message_id:
            msg = message(entry)
            found = handling(msg, entry)
            if kind == "handle":
                found.attempts.append(entry)
            else:
                found.dead_letter = entry
        elif kind in ("step", "compensation") and entry.workflow_id and entry.step:
            compensating = kind == "compensation"
            key = (entry.workflow_id, entry.step, compensating)
            step = steps.get(key)
            if step is None:
                step = steps[key] = Step(entry.step, compensating)
                owner = workflow(entry.workflow_id, entry.workflow)
                (owner.compensations if compensating else owner.steps).append(step)
            step.entries.append(entry)
        elif kind == "workflow" and entry.workflow_id:
            if entry.workflow_id == flow.correlation_id:
                workflow(entry.workflow_id, entry.workflow).entries.append(entry)
            else:
                links.append(entry)
        elif kind == "stalled":
            stalled.append(entry)

    for w in workflows.values():
        for entry in w.entries:
            if entry.outcome == "waiting" and entry.step:
                waited = steps.get((w.workflow_id, entry.step, False))
                if waited is not None:
                    waited.parked = True
        parked = w.waiting
        if parked is not None:
            for step in w.steps:
                if not step.attempts and parked.step in (None, step.name):
                    step.waiting = True
    roots: list[Message | Workflow] = [
        w for w in workflows.values() if w.workflow_id == flow.correlation_id
    ]
    for w in workflows.values():
        if w.workflow_id != flow.correlation_id and w not in roots:
            roots.append(w)
    for msg in messages.values():
        parent = _parent(msg, messages, workflows, steps)
        if parent is None:
            roots.append(msg)
        elif isinstance(parent, Handling):
            parent.published.append(msg)
        elif isinstance(parent, (Step, Workflow)):
            parent.sent.append(msg)
        else:
            parent.caused.append(msg)
    for entry in links:
        if entry.causation_id and entry.causation_id in messages:
            msg = messages[entry.causation_id]
            consumer = f"{entry.service}:{entry.handler}"
            if consumer in msg.handlings and entry.workflow_id:
                found = msg.handlings[consumer]
                if entry.workflow_id not in found.workflows:
                    found.workflows.append(entry.workflow_id)
    roots.sort(key=_order)
    return Tree(flow, roots, messages, workflows, stalled)


def _parent(
    msg: Message,
    messages: dict[str, Message],
    workflows: dict[str, Workflow],
    steps: dict[tuple[str, str, bool], Step],
) -> Handling | Step | Workflow | Message | None:
    entry = msg.published
    cause = messages.get(msg.causation_id) if msg.causation_id else None
    if entry is not None:
        if entry.consumer is not None and cause is not None:
            found = cause.handlings.get(entry.consumer)
            if found is not None:
                return found
        if entry.workflow_id and entry.step:
            compensating = entry.detail == "compensation"
            step = steps.get((entry.workflow_id, entry.step, compensating))
            if step is not None:
                return step
        if entry.workflow_id and entry.workflow_id in workflows and cause is None:
            return workflows[entry.workflow_id]
    if cause is None:
        return None
    # A handler's publishes have ids derived from the cause, the handler and an
    # index: find which handler it was when the publish did not say.
    for consumer, found in cause.handlings.items():
        for index in range(1, _DERIVED_TRIES + 1):
            if derive_message_id(cause.message_id, consumer, index) == msg.message_id:
                return found
    return cause


# -- words -----------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 0.001:
        return f"{seconds * 1_000_000:.0f}us"
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds:.2f}s"


def _time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]


def _error(entry: TraceEntry) -> str:
    if entry.error_type is None:
        return ""
    return f"{entry.error_type}: {entry.error}" if entry.error else entry.error_type


def _short(message_id: str | None) -> str:
    return message_id or "?"


def _attempt_line(entry: TraceEntry) -> str:
    took = f" in {_ms(entry.duration)}" if entry.duration is not None else ""
    line = f"attempt {entry.attempt}: {entry.outcome}{took}"
    error = _error(entry)
    if error:
        line += f": {error}"
    if entry.detail:
        line += f" ({entry.detail})"
    return line


def _handling_line(h: Handling) -> str:
    tries = len(h.attempts)
    outcome = h.outcome
    if outcome == "handled":
        last = h.attempts[-1]
        took = _ms(last.duration)
        if tries == 1:
            return f"{h.consumer}  handled (attempt {last.attempt}, {took})"
        return f"{h.consumer}  handled at attempt {last.attempt} ({took}), after {tries - 1} failed"
    if outcome == "dead-lettered":
        letter = h.dead_letter
        assert letter is not None
        count = letter.attempt if letter.attempt is not None else tries
        reason = _error(h.attempts[-1]) if h.attempts else _error(letter)
        if not reason:
            reason = letter.error_type or "?"
        return (
            f"{h.consumer}  DEAD-LETTERED after {count} attempt(s): {reason}  "
            f"(dead letter {letter.detail})"
        )
    if outcome == "failed":
        return f"{h.consumer}  FAILED at attempt {h.attempts[-1].attempt}: {_error(h.attempts[-1])}"
    if outcome == "retrying":
        last = h.attempts[-1]
        return f"{h.consumer}  retrying: attempt {last.attempt} failed: {_error(last)}"
    return f"{h.consumer}  (no attempt recorded)"


def _message_line(msg: Message, *, sent: bool = False) -> str:
    entry = msg.published
    parts = [msg.type]
    if entry is None:
        parts.append("(its publish was not recorded)")
    else:
        verb = "sent" if sent else "published"
        by = msg.publisher
        parts.append(f"{verb} {_time(entry.at)}" + (f" by {by}" if by and not sent else ""))
    parts.append(f"message {msg.message_id}")
    if msg.key:
        parts.append(f"key {msg.key}")
    return "  ".join(parts)


def _step_line(step: Step, index: int | None = None) -> str:
    ends = step.attempts
    label = f"compensation {index}: {step.name}" if step.compensating else f"step {step.name}"
    if not ends:
        if step.waiting:
            return f"{label}  waiting"
        return f"{label}  started, no end recorded"
    last = ends[-1]
    took = f" ({_ms(last.duration)})" if last.duration is not None else ""
    if last.outcome == "succeeded":
        if step.parked and last.duration is None:
            waited = (last.at - step.first_at).total_seconds()
            took = f" (waited {_ms(max(waited, 0.0))})"
        if len(ends) == 1:
            return f"{label}  succeeded{took}"
        return f"{label}  succeeded at attempt {last.attempt}{took}, after {len(ends) - 1} failed"
    if last.outcome == "failed":
        return f"{label}  FAILED at attempt {last.attempt}{took}: {_error(last)}"
    if last.outcome == "interrupted":
        return f"{label}  interrupted at attempt {last.attempt}{took}"
    return f"{label}  {last.outcome} at attempt {last.attempt}{took}: {_error(last)}"


def _workflow_line(w: Workflow) -> str:
    name = w.name or "workflow"
    end = w.end
    if end is None:
        started = w.entries[0].at if w.entries else None
        when = f" at {_time(started)}" if started else ""
        return f"workflow {name} {w.workflow_id}  running (started{when})"
    if end.outcome == "waiting":
        at = f" at step {end.step}" if end.step else ""
        what = f" {end.detail}," if end.detail else ""
        return f"workflow {name} {w.workflow_id}  waiting{at}{what} since {_time(end.at)}"
    took = f" in {_ms(end.duration)}" if end.duration is not None else ""
    line = f"workflow {name} {w.workflow_id}  {end.outcome.upper()}{took}"
    if end.detail:
        line += f": {end.detail}"
    return line


# -- text ------------------------------------------------------------------------------


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, prefix: str, last: bool, text: str) -> str:
        self.lines.append(f"{prefix}{'└── ' if last else '├── '}{text}")
        return prefix + ("    " if last else "│   ")

    def note(self, prefix: str, text: str) -> None:
        self.lines.append(f"{prefix}      {text}")


def _attempt_notes(out: _Lines, prefix: str, attempts: list[TraceEntry]) -> None:
    shown = attempts
    hidden = 0
    if len(attempts) > SHOWN_ATTEMPTS:
        shown = [*attempts[: SHOWN_ATTEMPTS - 1], attempts[-1]]
        hidden = len(attempts) - SHOWN_ATTEMPTS
    for i, entry in enumerate(shown):
        if hidden and i == len(shown) - 1:
            out.note(prefix, f"... {hidden} more attempt(s)")
        out.note(prefix, _attempt_line(entry))


def _children_of(item: Message | Handling | Step | Workflow) -> list[Any]:
    if isinstance(item, Message):
        return sorted([*item.handlings.values(), *item.caused], key=_order)
    if isinstance(item, Handling):
        return sorted(item.published, key=_order)
    if isinstance(item, Step):
        return sorted(item.sent, key=_order)
    return []


def _text_node(out: _Lines, tree: Tree, item: Any, prefix: str, last: bool) -> None:
    if isinstance(item, Message):
        inner = out.add(prefix, last, _message_line(item))
        children = _children_of(item)
        for i, child in enumerate(children):
            _text_node(out, tree, child, inner, i == len(children) - 1)
    elif isinstance(item, Handling):
        inner = out.add(prefix, last, _handling_line(item))
        if len(item.attempts) > 1:
            _attempt_notes(out, inner, item.attempts)
        for workflow_id in item.workflows:
            out.note(inner, f"started workflow {workflow_id} (flowkit trace {workflow_id})")
        children = _children_of(item)
        for i, child in enumerate(children):
            _text_node(out, tree, child, inner, i == len(children) - 1)
    elif isinstance(item, Workflow):
        _text_workflow(out, tree, item, prefix, last)


def _text_workflow(out: _Lines, tree: Tree, w: Workflow, prefix: str, last: bool) -> None:
    inner = out.add(prefix, last, _workflow_line(w))
    compensations = sorted(w.compensations, key=_order)
    items: list[tuple[str, Any]] = [("step", s) for s in sorted(w.steps, key=_order)]
    items += [("sent", m) for m in sorted(w.sent, key=_order)]
    items += [("compensation", s) for s in compensations]
    for i, (what, item) in enumerate(items):
        end = i == len(items) - 1
        if what == "sent":
            _text_node(out, tree, item, inner, end)
            continue
        index = compensations.index(item) + 1 if what == "compensation" else None
        step_prefix = out.add(inner, end, _step_line(item, index))
        if len(item.attempts) > 1:
            _attempt_notes(out, step_prefix, item.attempts)
        sent = sorted(item.sent, key=_order)
        for j, msg in enumerate(sent):
            sent_prefix = out.add(step_prefix, j == len(sent) - 1, _message_line(msg, sent=True))
            children = _children_of(msg)
            for k, child in enumerate(children):
                _text_node(out, tree, child, sent_prefix, k == len(children) - 1)


def stopped_reasons(tree: Tree) -> list[str]:
    """Where the flow stopped and why, one line each: dead letters, handlings
    given up, failed steps, workflows that did not complete or wait (with their
    compensations in order), expectations not met."""
    reasons: list[str] = []
    for msg in sorted(tree.messages.values(), key=_order):
        for h in sorted(msg.handlings.values(), key=_order):
            if h.outcome in ("dead-lettered", "failed", "retrying"):
                reasons.append(f"{msg.type} {msg.message_id}: {_handling_line(h)}")
    for w in tree.workflows.values():
        for step in sorted(w.steps, key=_order):
            if step.outcome in ("failed", "interrupted"):
                reasons.append(f"workflow {w.workflow_id}: {_step_line(step)}")
        end = w.end
        if end is not None and end.outcome != "completed":
            reasons.append(_workflow_line(w))
        compensations = sorted(w.compensations, key=_order)
        if compensations:
            done = ", ".join(
                s.name if s.outcome == "succeeded" else f"{s.name} ({s.outcome})"
                for s in compensations
            )
            reasons.append(f"workflow {w.workflow_id}: compensated, in order: {done}")
    for entry in tree.stalled:
        within = f" within {entry.duration:g}s" if entry.duration is not None else ""
        reasons.append(
            f"stalled: {entry.message_type} {entry.message_id} was not followed in time"
            f"{within} (expectation {entry.detail})"
        )
    return reasons


def _heading(flow: FlowTrace) -> str:
    entries = flow.entries
    span = ""
    if entries:
        first = min(e.at for e in entries)
        last = max(e.at for e in entries)
        span = f", {first:%Y-%m-%d %H:%M:%S}.{first.microsecond // 1000:03d}Z to {_time(last)}"
    keys = flow.keys
    if flow.named_by == "correlation id":
        named = ""
    elif flow.named_by in ("workflow id", "business key"):
        named = f" (found by its {flow.named_by})"
    else:
        named = f" ({flow.named_by})"
    keyed = f", business key {', '.join(keys)}" if keys else ""
    return f"flow {flow.correlation_id}{named}: {flow.total} entries{keyed}{span}"


def trace_text(flow: FlowTrace) -> str:
    """The flow's causal tree, and where it stopped and why, as text."""
    tree = build_tree(flow)
    out = _Lines()
    out.lines.append(_heading(flow))
    if flow.truncated:
        out.lines.append(
            f"(showing the first {len(flow.entries)} of {flow.total} entries; "
            f"--limit N for more, --after {flow.entries[-1].seq} for the next page)"
        )
    for i, root in enumerate(tree.roots):
        _text_node(out, tree, root, "", i == len(tree.roots) - 1)
    reasons = stopped_reasons(tree)
    out.lines.append("")
    if reasons:
        out.lines.append("where it stopped:")
        out.lines.extend(f"  - {line}" for line in reasons)
    else:
        out.lines.append("where it stopped: nowhere, every handling and step that ran succeeded")
    for workflow_id in flow.linked_workflows:
        out.lines.append(f"linked: workflow {workflow_id} has a flow of its own")
    return "\n".join(out.lines)


# -- Mermaid ---------------------------------------------------------------------------

_LINES = re.compile(r"[\n\r]+")
_ID = re.compile(r"[^A-Za-z0-9_]")
# What Mermaid would read as syntax or markup, written as its entity codes.
_ENTITIES = {"#": "#35;", ";": "#59;", "<": "#lt;", ">": "#gt;"}


def _label(text: str) -> str:
    """``text`` as a Mermaid label: on one line, its syntax characters escaped."""
    text = _LINES.sub(" ", text).strip() or "?"
    return "".join(_ENTITIES.get(char, char) for char in text)


class _Participants:
    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        known = self.ids.get(name)
        if known is None:
            known = self.ids[name] = f"p{len(self.ids) + 1}_{_ID.sub('_', name)[:24]}"
        return known


def trace_mermaid(flow: FlowTrace) -> str:
    """The flow as a Mermaid sequence diagram: services, workflows and what went between them."""
    tree = build_tree(flow)
    who = _Participants()
    statements: list[tuple[datetime, int, str]] = []
    order = 0

    def say(at: datetime, line: str) -> None:
        nonlocal order
        order += 1
        statements.append((at, order, line))

    def sender(msg: Message) -> str:
        entry = msg.published
        if entry is not None and entry.service:
            return entry.service
        if entry is not None and entry.workflow:
            return entry.workflow
        if entry is not None and entry.workflow_id and entry.workflow_id in tree.workflows:
            return tree.workflows[entry.workflow_id].name or "workflow"
        return "publisher"

    for w in tree.workflows.values():
        me = who(w.name or "workflow")
        for step in sorted([*w.steps, *w.compensations], key=_order):
            what = "compensate" if step.compensating else "step"
            outcome = step.outcome
            say(step.entries[-1].at, f"Note over {me}: {_label(f'{what} {step.name}: {outcome}')}")
        end = w.end
        if end is not None:
            say(end.at, f"Note over {me}: {_label(f'{w.workflow_id} {end.outcome}')}")
    for msg in tree.messages.values():
        source = sender(msg)
        src = who(source)
        request = msg.published is not None and msg.published.workflow_id is not None
        for h in sorted(msg.handlings.values(), key=_order):
            dst = who(h.service)
            say(h.first_at, f"{src}->>{dst}: {_label(f'{msg.type} ({h.handler})')}")
            failed = [a for a in h.attempts if a.outcome != "handled"]
            if h.dead_letter is not None:
                reason = failed[-1].error_type if failed else h.dead_letter.error_type
                text = f"{h.handler}: dead-lettered after {len(h.attempts)} attempt(s), {reason}"
                say(h.dead_letter.at, f"Note over {dst}: {_label(text)}")
            elif failed:
                then = "then handled" if h.outcome == "handled" else h.outcome
                text = (
                    f"{h.handler}: {len(failed)} attempt(s) failed, {failed[-1].error_type}, {then}"
                )
                say(h.attempts[-1].at, f"Note over {dst}: {_label(text)}")
            if request and h.attempts:
                done = h.dead_letter.at if h.dead_letter is not None else h.attempts[-1].at
                arrow = "-->>" if h.outcome == "handled" else "--x"
                answer = "reply" if h.outcome == "handled" else "failure"
                say(done, f"{dst}{arrow}{src}: {answer}")
        if not msg.handlings:
            say(msg.at, f"Note over {src}: {_label(f'{msg.type} published, not handled')}")
    for entry in tree.stalled:
        say(entry.at, f"Note over {who('publisher')}: {_label(f'stalled ({entry.detail})')}")
    statements.sort()
    lines = ["sequenceDiagram"]
    for name, ident in who.ids.items():
        lines.append(f"    participant {ident} as {_label(name)}")
    shown = statements[:MERMAID_LINES]
    lines.extend(f"    {line}" for _, _, line in shown)
    if len(statements) > len(shown) or flow.truncated:
        first = next(iter(who.ids.values()), None)
        if first is not None:
            lines.append(f"    Note over {first}: the diagram stops here (more in the trace)")
    return "\n".join(lines)


# -- JSON ------------------------------------------------------------------------------


def _entry_json(entry: TraceEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "at": entry.at.isoformat(),
        "kind": entry.kind,
        "outcome": entry.outcome,
        **{
            name: value for name in TRACE_COLUMNS[4:] if (value := getattr(entry, name)) is not None
        },
    }


def _node_json(item: Any) -> dict[str, Any]:
    if isinstance(item, Message):
        return {
            "message": item.message_id,
            "type": item.type,
            "published_by": item.publisher,
            "key": item.key,
            "handlings": [_node_json(h) for h in sorted(item.handlings.values(), key=_order)],
            "caused": [_node_json(m) for m in sorted(item.caused, key=_order)],
        }
    if isinstance(item, Handling):
        return {
            "consumer": item.consumer,
            "outcome": item.outcome,
            "attempts": [_entry_json(a) for a in item.attempts],
            "dead_letter": item.dead_letter.detail if item.dead_letter else None,
            "workflows": item.workflows,
            "published": [_node_json(m) for m in sorted(item.published, key=_order)],
        }
    if isinstance(item, Step):
        return {
            "step": item.name,
            "compensating": item.compensating,
            "outcome": item.outcome,
            "attempts": [_entry_json(a) for a in item.attempts],
            "sent": [_node_json(m) for m in sorted(item.sent, key=_order)],
        }
    assert isinstance(item, Workflow)
    end = item.end
    return {
        "workflow": item.name,
        "workflow_id": item.workflow_id,
        "outcome": end.outcome if end else "running",
        "reason": end.detail if end else None,
        "waiting_at": end.step if end is not None and end.outcome == "waiting" else None,
        "steps": [_node_json(s) for s in sorted(item.steps, key=_order)],
        "compensations": [_node_json(s) for s in sorted(item.compensations, key=_order)],
        "sent": [_node_json(m) for m in sorted(item.sent, key=_order)],
    }


def trace_json(flow: FlowTrace) -> dict[str, Any]:
    """The flow for machines: its entries, its tree, and where it stopped."""
    tree = build_tree(flow)
    return {
        "correlation_id": flow.correlation_id,
        "named_by": flow.named_by,
        "total": flow.total,
        "shown": len(flow.entries),
        "truncated": flow.truncated,
        "next_after": flow.entries[-1].seq if flow.truncated and flow.entries else None,
        "keys": flow.keys,
        "tree": [_node_json(root) for root in tree.roots],
        "stopped": stopped_reasons(tree),
        "linked_workflows": flow.linked_workflows,
        "entries": [_entry_json(e) for e in flow.entries],
    }


# -- loading ---------------------------------------------------------------------------


async def load_flows(
    trace: TraceStore,
    value: str,
    *,
    limit: int = DEFAULT_LIMIT,
    after: int | None = None,
    flows: int = 5,
) -> list[FlowTrace]:
    """The flows ``value`` names, each with at most ``limit`` entries.

    ``value`` is tried as a correlation id, a workflow id and a business key
    (see :meth:`TraceStore.find`); the flows found first come first. The
    workflows that handlers of those flows started are read too (they are
    flows of their own), as long as fewer than ``flows`` flows were read.

    Args:
        trace: the store's trace.
        value: a correlation id, a workflow id or a business key.
        limit: the most entries read per flow.
        after: a :attr:`TraceEntry.seq`: read the first flow's entries after it.
        flows: the most flows read.

    Raises:
        StoreError: if the store fails.
    """
    found = await trace.find(value, limit=flows)
    result: list[FlowTrace] = []
    seen: set[str] = set()
    queue: list[tuple[str, str]] = []
    for flow_id in found:
        if flow_id == value:
            how = "correlation id"
        elif await _is_workflow(trace, flow_id, value):
            how = "workflow id"
        else:
            how = "business key"
        queue.append((flow_id, how))
    while queue and len(result) < flows:
        flow_id, how = queue.pop(0)
        if flow_id in seen:
            continue
        seen.add(flow_id)
        first = not result
        entries = await trace.read(flow_id, limit=limit, after=after if first else None)
        total = await trace.count(flow_id)
        flow = FlowTrace(flow_id, entries, total, how)
        result.append(flow)
        queue.extend(
            (linked, f"workflow started in flow {flow_id}")
            for linked in flow.linked_workflows
            if linked not in seen
        )
    return result


async def _is_workflow(trace: TraceStore, flow_id: str, value: str) -> bool:
    """Whether the flow ``flow_id`` was found as the flow of workflow ``value``."""
    entries = await trace.read(flow_id, limit=20)
    return any(e.workflow_id == value for e in entries)


def describe_flows(flows: Iterable[FlowTrace]) -> str:
    """The flows found, one per line, for a short listing."""
    return "\n".join(
        f"{flow.correlation_id}  {flow.total} entries  ({flow.named_by})" for flow in flows
    )
