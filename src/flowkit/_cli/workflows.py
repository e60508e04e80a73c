"""``flowkit workflows list``, ``show``, ``cancel`` and ``prune``: an
orchestrator's workflows.

``list`` and ``show`` only read. They work on a copy of the target orchestrator
built on a read-only view of its store (see :func:`.common.readable_store`),
with a requester that sends nothing and no takeover of workflows, so no
transport is opened either. ``cancel`` leaves a cancel request in the store for
the process that runs the workflow; ``prune`` removes old records from the
store itself. Neither opens a transport.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ..orchestration import Orchestrator, WorkflowInfo, WorkflowStatus
from .common import (
    UsageError,
    chosen_store,
    describe,
    entered,
    load_object,
    one_line,
    prune_in_batches,
    readable_store,
    text_lines,
    writable_store,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from .._events import Command, Message
    from ..orchestration import StepError, StepInfo, Transition
    from ..stores import StateStore

__all__ = [
    "FINAL_STATUSES",
    "cancel_workflow",
    "info_json",
    "list_workflows",
    "parse_statuses",
    "prune_workflows",
    "show_workflow",
]

M = TypeVar("M", bound="Message")

STATUSES = ", ".join(status.value for status in WorkflowStatus)

#: The statuses ``workflows prune`` removes unless ``--status`` names others.
FINAL_STATUSES = (WorkflowStatus.COMPLETED, WorkflowStatus.COMPENSATED, WorkflowStatus.FAILED)


async def list_workflows(args: argparse.Namespace) -> int:
    """``flowkit workflows list``: print the workflows, oldest first. Reads only."""
    orchestrator = load_object(args.app, Orchestrator)
    statuses = parse_statuses(args.status)
    store, reader = _reader(orchestrator, args.app, args)
    async with entered(reader, store):
        infos = await reader.list(status=statuses, limit=args.limit, after=args.after)
    more = args.limit is not None and len(infos) == args.limit
    if args.json:
        print(_dumps([info_json(info, history=False) for info in infos]))
    elif not infos:
        print("no workflows")
    else:
        for info in infos:
            line = f"{info.id}  {info.status.value}  {_when(info.updated_at)}"
            if info.owner is not None and not info.status.finished:
                line += f"  held by {info.owner}"
            if info.cancel_requested:
                line += "  (cancel requested)"
            if info.reason:
                line += f"  {one_line(info.reason)}"
            print(line)
    if more:
        print(f"next page: --after {infos[-1].cursor}", file=sys.stderr)
    return 0


async def cancel_workflow(args: argparse.Namespace) -> int:
    """``flowkit workflows cancel``: ask the process that runs a workflow to cancel
    it (or whichever process takes it over next), and wait for it when asked."""
    orchestrator = load_object(args.app, Orchestrator)
    store = chosen_store(orchestrator.store, args)
    async with writable_store(store, args.app, "workflows") as opened:
        record = await opened.load_workflow(args.id)
        if record.name != orchestrator.name:
            raise UsageError(
                f"workflow {args.id!r} belongs to {record.name!r}, not {orchestrator.name!r}"
            )
        if record.status != WorkflowStatus.RUNNING.value:
            print(f"{args.id} is {record.status}: nothing to cancel")
            return 0 if record.status == WorkflowStatus.COMPENSATED.value else 1
        await opened.request_cancel(args.id)
        holder = f"process {record.owner}" if record.owner else "the next process to take it over"
        print(f"cancel requested: {holder} compensates {args.id}")
        if args.wait is None:
            return 0
        with anyio.move_on_after(args.wait):
            while True:
                record = await opened.load_workflow(args.id)
                if record.status not in (WorkflowStatus.RUNNING.value, "COMPENSATING"):
                    print(f"{args.id} is {record.status}")
                    return 0 if record.status == WorkflowStatus.COMPENSATED.value else 1
                await anyio.sleep(0.2)
    print(f"{args.id} is still {record.status} after {args.wait:g}s", file=sys.stderr)
    return 1


async def show_workflow(args: argparse.Namespace) -> int:
    """``flowkit workflows show``: one workflow's steps and history. Reads only."""
    orchestrator = load_object(args.app, Orchestrator)
    store, reader = _reader(orchestrator, args.app, args)
    async with entered(reader, store):
        info = await reader.get(args.id)
    if args.json:
        print(_dumps(info_json(info, history=True)))
        return 0
    print(f"{info.name} {info.id}: {info.status.value}")
    print(f"created {_when(info.created_at)}, updated {_when(info.updated_at)}")
    if info.reason:
        print(f"reason: {one_line(info.reason)}")
    if info.error is not None:
        print(f"error: {_error_line(info.error)}")
    if info.remaining:
        print(f"remaining: {', '.join(info.remaining)}")
    for name, step in info.steps.items():
        line = f"  step {name}: {step.status} after {step.attempts} attempt(s)"
        if step.error is not None:
            line += f" ({_error_line(step.error)})"
        if step.compensation:
            line += f", compensation {step.compensation}"
            if step.compensation_error is not None:
                line += f" ({_error_line(step.compensation_error)})"
        print(line)
    for t in info.history:
        parts = [f"{t.at.astimezone(UTC):%H:%M:%S.%f}"[:-3], t.event]
        parts += [p for p in (t.step, f"attempt {t.attempt}" if t.attempt else None) if p]
        parts += [one_line(p) for p in (t.error, t.detail) if p]
        print("    " + "  ".join(parts))
    return 0


async def prune_workflows(args: argparse.Namespace) -> int:
    """``flowkit workflows prune``: remove the orchestrator's records last updated
    before a cutoff, in the final statuses or those ``--status`` names.

    They go in batches (see :func:`.common.prune_in_batches`); with
    ``--dry-run`` they are only counted, through a read-only view of the store.
    """
    orchestrator = load_object(args.app, Orchestrator)
    statuses = [status.value for status in parse_statuses(args.status) or FINAL_STATUSES]
    store = chosen_store(orchestrator.store, args)
    name = orchestrator.name
    cutoff = datetime.now(UTC) - args.older_than
    what = f"{'/'.join(dict.fromkeys(statuses))} workflow(s) of {name}"
    when = f"updated before {cutoff:%Y-%m-%d %H:%M:%S}Z"
    if args.dry_run:
        reader = readable_store(store, args.app, "workflows")
        count = 0
        async with entered(reader, reader):
            after = None
            while page := await reader.list_workflows(
                status=statuses, name=name, limit=1000, after=after
            ):
                count += sum(1 for r in page if r.updated_at is not None and r.updated_at < cutoff)
                after = page[-1].cursor
        print(f"would prune {count:,} {what} {when}")
        return 0
    async with writable_store(store, args.app, "workflows") as opened:
        total = await prune_in_batches(
            lambda limit: opened.prune_workflows(cutoff, statuses=statuses, name=name, limit=limit),
            "workflows",
        )
    print(f"pruned {total:,} {what} {when}")
    return 0


def parse_statuses(values: Sequence[str] | None) -> list[WorkflowStatus] | None:
    """The statuses given with ``--status`` (repeated or comma-separated, any case).

    Raises:
        UsageError: naming an unknown status and the valid ones.
    """
    if not values:
        return None
    statuses: list[WorkflowStatus] = []
    for value in values:
        for name in value.split(","):
            try:
                statuses.append(WorkflowStatus(name.strip().upper()))
            except ValueError:
                raise UsageError(
                    f"unknown status {name.strip()!r}; the statuses are {STATUSES} (any case)"
                ) from None
    return statuses


class _NoCommands:
    """The requester of an orchestrator that only reads: it sends no command."""

    async def request(
        self,
        command: Command[M],
        *,
        timeout: float = 30.0,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
    ) -> M:
        raise RuntimeError("an orchestrator opened for reading sends no command")


def _reader(
    orchestrator: Orchestrator[Any], target: str, args: argparse.Namespace
) -> tuple[StateStore, Orchestrator[Any]]:
    """The store to read and an orchestrator of the same class that reads it."""
    store = readable_store(chosen_store(orchestrator.store, args), target, "workflows")
    cls = type(orchestrator)
    try:
        reader = cls(store, bus=_NoCommands(), recover=False)
    except Exception as exc:
        raise UsageError(
            f"cannot open {target} for reading: {cls.__name__}(store, bus=...) "
            f"raised {describe(exc)}"
        ) from None
    return store, reader


# -- JSON ------------------------------------------------------------------------------


def info_json(info: WorkflowInfo, *, history: bool) -> dict[str, Any]:
    """A workflow as JSON data: typed values (input, results) as their JSON form."""
    data: dict[str, Any] = {
        "id": info.id,
        "name": info.name,
        "status": info.status.value,
        "reason": _clean(info.reason),
        "error": _error_json(info.error),
        "input": plain(info.input),
        "remaining": list(info.remaining),
        "compensated": list(info.compensated),
        "created_at": plain(info.created_at),
        "updated_at": plain(info.updated_at),
        "version": info.version,
        "steps": {name: _step_json(step) for name, step in info.steps.items()},
    }
    if history:
        data["history"] = [_transition_json(t) for t in info.history]
    return data


def _step_json(step: StepInfo) -> dict[str, Any]:
    return {
        "status": step.status,
        "attempts": step.attempts,
        "result": plain(step.result),
        "error": _error_json(step.error),
        "may_have_acted": step.may_have_acted,
        "compensation": step.compensation,
        "compensation_attempts": step.compensation_attempts,
        "compensation_error": _error_json(step.compensation_error),
    }


def _transition_json(t: Transition) -> dict[str, Any]:
    return {
        "at": plain(t.at),
        "event": t.event,
        "step": t.step,
        "attempt": t.attempt,
        "error": _clean(t.error),
        "detail": _clean(t.detail),
    }


def _error_json(error: StepError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"step": error.step, "type": error.type, "message": _clean(error.message)}


def plain(value: Any) -> Any:
    """JSON data from typed values: pydantic models, dataclasses, enums, datetimes,
    bytes (as ``{"base64": ...}``), sets; anything else unknown as its ``str``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return str(value)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def _clean(text: str | None) -> str | None:
    return None if text is None else "\n".join(text_lines(text))


def _error_line(error: StepError) -> str:
    return f"{error.type}: {one_line(error.message)}"


def _when(at: datetime | None) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z" if at is not None else "-"
