"""``flowkit workflows list``, ``show``, ``cancel``, ``signal`` and ``prune``: an
orchestrator's workflows.

``list`` and ``show`` only read. They work on a copy of the target orchestrator
built on a read-only view of its store (see :func:`.common.readable_store`),
with a requester that sends nothing and no takeover of workflows, so no
transport is opened either. ``cancel`` leaves a cancel request in the store for
the process that runs the workflow (or wakes a waiting one); ``signal`` sends a
signal through such a copy on the store itself, which keeps it in the store's
mailbox; ``prune`` removes old records from the store itself. None opens a
transport.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar, get_args

import anyio
from pydantic import ValidationError
from pydantic_core.core_schema import ErrorType

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
    from ..orchestration._declare import Plan
    from ..stores import StateStore

__all__ = [
    "FINAL_STATUSES",
    "cancel_note",
    "cancel_workflow",
    "info_json",
    "list_workflows",
    "parse_statuses",
    "prune_workflows",
    "show_workflow",
    "signal_workflow",
    "wait_note",
]

M = TypeVar("M", bound="Message")

STATUSES = ", ".join(status.value for status in WorkflowStatus)

#: The statuses ``workflows prune`` removes unless ``--status`` names others.
FINAL_STATUSES = (WorkflowStatus.COMPLETED, WorkflowStatus.COMPENSATED, WorkflowStatus.FAILED)

#: The statuses of the workflows ``workflows cancel`` asks to cancel.
_CANCELLABLE = (WorkflowStatus.RUNNING.value, WorkflowStatus.WAITING.value)

#: The statuses ``workflows cancel --wait`` keeps waiting through.
_UNFINISHED = (*_CANCELLABLE, WorkflowStatus.COMPENSATING.value)


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
            if info.status is WorkflowStatus.WAITING:
                line += f"  {wait_note(info.waiting_for, info.wake_at)}"
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
    it (or whichever process takes it over next; a waiting workflow is made due,
    for the next process running its orchestrator to wake it), and wait for it
    when asked."""
    orchestrator = load_object(args.app, Orchestrator)
    store = chosen_store(orchestrator.store, args)
    async with writable_store(store, args.app, "workflows") as opened:
        record = await opened.load_workflow(args.id)
        if record.name != orchestrator.name:
            raise UsageError(
                f"workflow {args.id!r} belongs to {record.name!r}, not {orchestrator.name!r}"
            )
        if record.status not in _CANCELLABLE:
            print(f"{args.id} is {record.status}: nothing to cancel")
            return 0 if record.status == WorkflowStatus.COMPENSATED.value else 1
        await opened.request_cancel(args.id)
        print(cancel_note(args.id, record.status, record.owner, record.name))
        if args.wait is None:
            return 0
        with anyio.move_on_after(args.wait):
            while True:
                record = await opened.load_workflow(args.id)
                if record.status not in _UNFINISHED:
                    print(f"{args.id} is {record.status}")
                    return 0 if record.status == WorkflowStatus.COMPENSATED.value else 1
                await anyio.sleep(0.2)
    print(f"{args.id} is still {record.status} after {args.wait:g}s", file=sys.stderr)
    return 1


async def signal_workflow(args: argparse.Namespace) -> int:
    """``flowkit workflows signal``: send a signal to a workflow, as
    :meth:`Orchestrator.signal` does, through a copy of the orchestrator on its
    store (no transport, no takeover of workflows).

    The message's fields are checked with its class before the store is opened.
    """
    orchestrator = load_object(args.app, Orchestrator)
    cls = _signal_class(orchestrator, args.type, args.app)
    message = _signal_message(cls, args.fields)
    if args.signal_id is not None and not args.signal_id.strip():
        raise UsageError("--signal-id must not be empty")
    kind = cls.__flowkit_type__
    store = chosen_store(orchestrator.store, args)
    async with writable_store(store, args.app, "workflows") as opened:
        sender = _copy(orchestrator, opened, args.app, "to send a signal")
        async with sender:
            woken = await sender.signal(args.id, message, signal_id=args.signal_id)
    if woken:
        print(f"signal {kind} delivered: {args.id} was waiting for it")
    else:
        print(f"signal {kind} kept: {args.id} gets it when it reaches its wait")
    return 0


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
    if info.status is WorkflowStatus.WAITING:
        print(wait_note(info.waiting_for, info.wake_at))
    if info.reason:
        print(f"reason: {one_line(info.reason)}")
    if info.error is not None:
        print(f"error: {_error_line(info.error)}")
    if info.remaining:
        print(f"remaining: {', '.join(info.remaining)}")
    waits = _waits_of(type(reader)._plan)
    for name, step in info.steps.items():
        what = waits.get(name)
        if what is None:
            line = f"  step {name}: {step.status} after {step.attempts} attempt(s)"
        else:
            line = f"  step {name}: {_wait_step(step.status, what)}"
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


def wait_note(what: str | None, wake_at: datetime | None, *, now: datetime | None = None) -> str:
    """What a waiting workflow waits for, and until when, for a listing line:
    ``waits for signal Approval until 2026-12-02 10:00:00Z``, ``... with no time
    limit``, or ``..., due since ...`` once its time has come (its timer or
    timeout ran out, or a message or a cancel request arrived for it) and it
    waits for a process to take it up.

    Args:
        what: the workflow's ``waiting_for`` (``timer``, ``event X``, ``signal X``).
        wake_at: the workflow's ``wake_at``.
        now: the time to compare ``wake_at`` with (default: now).
    """
    if what is None:
        text = "waits"
    elif what.startswith("timer"):
        text = "waits for a timer"
    else:
        text = f"waits for {what}"
    if wake_at is None:
        return f"{text} with no time limit"
    if wake_at <= (now or datetime.now(UTC)):
        return f"{text}, due since {_when(wake_at)}"
    return f"{text} until {_when(wake_at)}"


def cancel_note(workflow_id: str, status: str, owner: str | None, name: str) -> str:
    """Who compensates a workflow a cancel was requested for, as
    ``workflows cancel`` and the dashboard say it."""
    if status == WorkflowStatus.WAITING.value:
        return (
            f"cancel requested: {workflow_id} is WAITING; the next process running {name} "
            "wakes it and compensates it"
        )
    holder = f"process {owner}" if owner else "the next process to take it over"
    return f"cancel requested: {holder} compensates {workflow_id}"


def _waits_of(plan: Plan) -> dict[str, str]:
    """The wait steps of a plan: what each waits for, by step name."""
    return {spec.name: spec.wait.what for spec in plan.waits if spec.wait is not None}


def _wait_step(status: str, what: str) -> str:
    """A wait step's status, for ``workflows show``."""
    if what.startswith("timer"):
        what = "a timer"
    if status == "waiting":
        return f"waiting for {what}"
    if status == "succeeded":
        return f"succeeded (waited for {what})"
    if status == "expired":
        return f"expired (the wait for {what} ran out; no result)"
    return f"{status} (a wait for {what})"


# -- signals ---------------------------------------------------------------------------

#: Validation errors whose pydantic message may quote the value given.
_QUOTING_ERRORS = frozenset({"value_error", "assertion_error", "union_tag_invalid"})
_KNOWN_ERRORS = frozenset(get_args(ErrorType))


def _signal_class(orchestrator: Orchestrator[Any], given: str, target: str) -> type[Message]:
    """The message class of the orchestrator's ``WaitForSignal`` steps named
    ``given``: by its type name (``__flowkit_type__``), else its class name.

    Raises:
        UsageError: if the orchestrator waits for no such signal (naming those
            it waits for), or the class name is ambiguous.
    """
    classes = list(type(orchestrator)._plan.signal_waits)
    if not classes:
        raise UsageError(f"{target} waits for no signal: it has no WaitForSignal step")
    found = [c for c in classes if c.__flowkit_type__ == given] or [
        c for c in classes if c.__name__ == given
    ]
    if not found:
        known = ", ".join(sorted(c.__flowkit_type__ for c in classes))
        raise UsageError(f"{target} waits for no signal {given!r}; it waits for {known}")
    if len(found) > 1:
        names = ", ".join(sorted(c.__flowkit_type__ for c in found))
        raise UsageError(f"signal {given!r} names several classes: give its type name ({names})")
    return found[0]


def _signal_message(cls: type[Message], text: str | None) -> Message:
    """The signal ``cls`` with the fields the JSON object ``text`` gives
    (none: ``{}``), validated by the class.

    Raises:
        UsageError: for text that is not a JSON object, a field the class does
            not have, or fields the class refuses (naming them, and why,
            without their values).
    """
    kind = cls.__flowkit_type__
    data: Any = {}
    if text is not None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"the fields of signal {kind} are not valid JSON: {exc.msg} "
                f"(line {exc.lineno}, column {exc.colno})"
            ) from None
    if not isinstance(data, dict):
        example = '{"field": "value"}'
        raise UsageError(
            f"the fields of signal {kind} must be a JSON object, such as '{example}', "
            f"not a JSON {_json_kind(data)}"
        )
    if cls.model_config.get("extra") != "allow":
        names = set(cls.model_fields)
        names |= {f.alias for f in cls.model_fields.values() if f.alias is not None}
        unknown = sorted(key for key in data if key not in names)
        if unknown:
            fields_ = ", ".join(sorted(cls.model_fields)) or "none"
            raise UsageError(
                f"signal {kind} has no field {', '.join(map(repr, unknown))}; "
                f"its fields are: {fields_}"
            )
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False, include_context=False)
        failed = "; ".join(_problem(kind, p["loc"], p["type"], p["msg"]) for p in problems)
        raise UsageError(f"signal {kind} is not valid: {failed}") from None


def _problem(kind: str, loc: tuple[int | str, ...], error_type: str, msg: str) -> str:
    """One validation error: where and why, without the value given."""
    where = ".".join(str(part) for part in loc) or "the message"
    if error_type in _QUOTING_ERRORS or error_type not in _KNOWN_ERRORS:
        return f"{where}: refused by a validator of {kind} ({error_type})"
    return f"{where}: {one_line(msg)}"


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


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
    return store, _copy(orchestrator, store, target, "for reading")


def _copy(
    orchestrator: Orchestrator[Any], store: StateStore, target: str, purpose: str
) -> Orchestrator[Any]:
    """An orchestrator of the same class on ``store`` that sends no command,
    takes no workflow over and subscribes to nothing (``recover=False``)."""
    cls = type(orchestrator)
    try:
        return cls(store, bus=_NoCommands(), recover=False)
    except Exception as exc:
        raise UsageError(
            f"cannot open {target} {purpose}: {cls.__name__}(store, bus=...) raised {describe(exc)}"
        ) from None


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
        "waiting_for": info.waiting_for,
        "wake_at": plain(info.wake_at),
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
