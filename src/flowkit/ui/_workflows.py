"""The workflows pages' data: counts, pages of records, one workflow's timeline.

Records are read from the store as they are, without the orchestrator's class,
so that the dashboard shows every orchestrator's workflows; typed values
(input, results) are shown as the JSON they were recorded as. What a waiting
workflow waits for is read from the mailbox channel its record names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .._cli.workflows import wait_note
from ..orchestration import WorkflowStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from ..stores import StateStore, WorkflowRecord

__all__ = [
    "CANCELLABLE",
    "PAGE_SIZE",
    "STATUSES",
    "Counts",
    "Event",
    "StepRow",
    "WorkflowPage",
    "count_workflows",
    "event_tone",
    "list_page",
    "waiting_for",
    "workflow_page",
]

#: Workflows per page of the list.
PAGE_SIZE = 50

STATUSES = tuple(status.value for status in WorkflowStatus)

#: The statuses of the workflows the dashboard offers to cancel.
CANCELLABLE = (WorkflowStatus.RUNNING.value, WorkflowStatus.WAITING.value)

_GOOD = {"step_succeeded", "step_compensated", "completed", "compensated"}
_BAD = {
    "step_failed",
    "step_timed_out",
    "compensation_failed",
    "failed",
    "deadline_exceeded",
    "step_interrupted",
}
_TURN = {
    "compensating",
    "cancel_requested",
    "compensation_retried",
    "forward_retried",
    "wait_timed_out",
}
_WAIT = {"waiting", "woken"}
_ENDS = {
    "step_succeeded": "step_started",
    "step_failed": "step_started",
    "step_timed_out": "step_started",
    "step_interrupted": "step_started",
    "step_compensated": "compensation_started",
    "compensation_failed": "compensation_started",
    "woken": "waiting",
    "wait_timed_out": "waiting",
}


def event_tone(event: str) -> str:
    """The CSS class of a history event: ``good``, ``bad``, ``turn``, ``wait`` or
    ``plain``."""
    if event in _GOOD:
        return "good"
    if event in _BAD:
        return "bad"
    if event in _TURN:
        return "turn"
    if event in _WAIT:
        return "wait"
    return "plain"


@dataclass
class Counts:
    """Workflows by orchestrator and status; None when the store cannot count."""

    by_name: dict[str, dict[str, int]] | None
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The orchestrators that have workflows."""
        return sorted(self.by_name or {})


async def count_workflows(store: StateStore) -> Counts:
    """The workflows by orchestrator and status, through the store's
    ``count_workflows()`` (one grouped query; nothing is listed)."""
    count: Callable[[], Awaitable[Mapping[tuple[str, str], int]]] | None = getattr(
        store, "count_workflows", None
    )
    if count is None:
        return Counts(None)
    by_name: dict[str, dict[str, int]] = {}
    totals = dict.fromkeys(STATUSES, 0)
    for (name, status), n in (await count()).items():
        by_name.setdefault(name, dict.fromkeys(STATUSES, 0))[status] = n
        totals[status] = totals.get(status, 0) + n
    return Counts(by_name, totals)


@dataclass(frozen=True)
class Row:
    """One workflow in the list."""

    id: str
    name: str
    status: str
    created_at: datetime | None
    updated_at: datetime | None
    owner: str | None
    cancel_requested: bool
    reason: str | None
    waiting_for: str | None = None
    wake_at: datetime | None = None
    wait: str | None = None
    """For a ``WAITING`` workflow: ``waits for signal Approval until ...``."""


async def list_page(
    store: StateStore,
    *,
    status: str | None,
    name: str | None,
    after: str | None,
    limit: int = PAGE_SIZE,
) -> tuple[list[Row], str | None]:
    """One page of workflows, oldest first, and the cursor of the next page
    (None on the last one). Reads ``limit + 1`` records at most."""
    records = await store.list_workflows(
        status=None if status is None else [status], name=name, limit=limit + 1, after=after
    )
    more = len(records) > limit
    records = records[:limit]
    rows = [_row(r) for r in records]
    return rows, records[-1].cursor if more and records else None


def waiting_for(channel: str | None, key: str | None) -> str:
    """What a waiting workflow waits for, from its record's ``wait_for`` channel
    and ``wait_key``: ``timer``, ``signal Approval``, ``event SellerAccepted
    with order_id o-1``."""
    if channel is None:
        return "timer"
    kind, _, rest = channel.partition(":")
    if kind == "signal":
        return f"signal {rest}"
    if kind == "event":
        event, _, field_ = rest.rpartition(".")
        what = f"event {event or rest}"
        return f"{what} with {field_} {key}" if event and key is not None else what
    return channel


def _row(record: WorkflowRecord) -> Row:
    reason = record.state.get("reason") if isinstance(record.state, dict) else None
    waiting = record.status == WorkflowStatus.WAITING.value
    what = waiting_for(record.wait_for, record.wait_key) if waiting else None
    return Row(
        id=record.id,
        name=record.name,
        status=record.status,
        created_at=record.created_at,
        updated_at=record.updated_at,
        owner=record.owner,
        cancel_requested=record.cancel_requested,
        reason=reason if isinstance(reason, str) else None,
        waiting_for=what,
        wake_at=record.wake_at if waiting else None,
        wait=wait_note(what, record.wake_at) if waiting else None,
    )


@dataclass(frozen=True)
class Event:
    """One entry of a workflow's history, with how long its attempt took."""

    at: datetime
    event: str
    step: str | None
    attempt: int | None
    error: str | None
    detail: str | None
    took: float | None
    tone: str


@dataclass(frozen=True)
class StepRow:
    """One step's recorded state."""

    name: str
    status: str
    attempts: int
    result: str | None
    error: str | None
    compensation: str | None
    compensation_attempts: int
    compensation_error: str | None


@dataclass(frozen=True)
class WorkflowPage:
    """Everything one workflow's page shows."""

    row: Row
    input: str
    steps: list[StepRow]
    events: list[Event]
    error: str | None
    compensated: list[str]
    remaining: list[str]
    can_cancel: bool
    can_retry_forward: bool
    can_retry_compensation: bool


async def workflow_page(store: StateStore, workflow_id: str) -> WorkflowPage:
    """One workflow read from the store, with its whole history.

    Raises:
        WorkflowNotFound: if no workflow has this id.
    """
    record = await store.load_workflow(workflow_id)
    state: Mapping[str, Any] = record.state if isinstance(record.state, dict) else {}
    steps_data = state.get("steps")
    steps = [
        _step(name, data)
        for name, data in (steps_data.items() if isinstance(steps_data, dict) else ())
        if isinstance(data, dict)
    ]
    direction = state.get("direction")
    failed = record.status == WorkflowStatus.FAILED.value
    return WorkflowPage(
        row=_row(record),
        input=_json(state.get("input")),
        steps=steps,
        events=timeline(record.history),
        error=_error(state.get("error")),
        compensated=_names(state.get("compensated")),
        remaining=_names(state.get("remaining")),
        can_cancel=record.status in CANCELLABLE,
        can_retry_forward=failed and direction == "forward",
        can_retry_compensation=failed and direction == "backward",
    )


def timeline(history: Sequence[Sequence[Any]]) -> list[Event]:
    """The history as events, each end of an attempt with the time since its start."""
    started: dict[tuple[str, str | None, int | None], datetime] = {}
    events: list[Event] = []
    for entry in history:
        fields = [*entry, None, None, None, None, None, None][:6]
        at_ms, event, step, attempt, error, detail = fields
        if not isinstance(at_ms, int | float) or not isinstance(event, str):
            continue
        at = datetime.fromtimestamp(at_ms / 1000, UTC)
        step = step if isinstance(step, str) else None
        attempt = attempt if isinstance(attempt, int) else None
        took = None
        if event in ("step_started", "compensation_started"):
            started[(event, step, attempt)] = at
        elif (begin := started.get((_ENDS.get(event, ""), step, attempt))) is not None:
            took = (at - begin).total_seconds()
        events.append(
            Event(
                at=at,
                event=event,
                step=step,
                attempt=attempt,
                error=error if isinstance(error, str) else None,
                detail=detail if isinstance(detail, str) else None,
                took=took,
                tone=event_tone(event),
            )
        )
    return events


def _step(name: str, data: Mapping[str, Any]) -> StepRow:
    status = data.get("status")
    result = data.get("result")
    return StepRow(
        name=name,
        status=status if isinstance(status, str) else "?",
        attempts=_int(data.get("attempts")),
        result=_json(result) if status == "succeeded" and result is not None else None,
        error=_error(data.get("error")),
        compensation=c if isinstance(c := data.get("compensation"), str) else None,
        compensation_attempts=_int(data.get("compensation_attempts")),
        compensation_error=_error(data.get("compensation_error")),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _error(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    return f"{data.get('type', 'Error')}: {data.get('message', '')}"


def _names(value: Any) -> list[str]:
    return [n for n in value if isinstance(n, str)] if isinstance(value, list) else []


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
