"""The state of one workflow run: kept in memory, checkpointed as JSON, restored.

The record's ``state`` is plain JSON data::

    {
      "format": 1,
      "input": {...},                      # the input, as JSON
      "deadline_at": 1767225600.0,         # optional: the deadline (Unix time)
      "steps": {"reserve_stock": {"status": "succeeded", "attempts": 1,
                                  "result": {...}}, ...},
      "error": {"step": "charge", "type": "ValueError", "message": "..."},
      "reason": "...", "remaining": [...], "direction": "backward",
      "compensated": ["reserve_stock", ...]
    }

The history is kept beside the state, appended to by each checkpoint (a
checkpoint costs the same however long the history is). An entry is a list
``[at, event, step, attempt, error, detail]``: ``at`` in milliseconds since the
Unix epoch, then the fields of :class:`~flowkit.orchestration.Transition`,
trailing nulls left out. A step retried many times keeps a bounded record: past
its :data:`RECORDED_ATTEMPTS`-th attempt, its attempts are not recorded one by
one; the attempt that ends it is, after an ``attempts_unrecorded`` entry
saying how many were left out (the step's state keeps the count and the last
error).

Nothing but JSON values is read back: results and input are validated against
the declared types, and a state that does not have this shape is refused with
:class:`~flowkit.InvalidWorkflowState`, whose message names the problem but
never a recorded value.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, get_args

from .._errors import InvalidWorkflowState
from ..stores._base import WorkflowRecord
from ._model import (
    Outcome,
    StepError,
    StepInfo,
    StepStatus,
    Transition,
    WorkflowInfo,
    WorkflowStatus,
)

if TYPE_CHECKING:
    import anyio

    from ._declare import Plan, StepSpec

__all__ = ["RECORDED_ATTEMPTS", "Run", "StepState", "error_of", "step_error"]

FORMAT = 1

#: The attempts of a step (or of its compensation) recorded one by one in the
#: history; later ones are summarised.
RECORDED_ATTEMPTS = 10
_ATTEMPT_STARTS = frozenset({"step_started", "compensation_started"})
_RETRYING = "retrying in "
_MAY_HAVE_ACTED = frozenset({"succeeded", "running", "timed_out", "interrupted"})
_STEP_STATUSES = frozenset(get_args(StepStatus))
_DONE = frozenset({"succeeded", "expired"})
_COMP_STATUSES = frozenset({"running", "retrying", "compensated", "failed"})
_DIRECTIONS = frozenset({"forward", "backward"})


class _Unreadable(Exception):
    """A record's state is not one this orchestrator can read.

    Its message names the problem and where it is, never a recorded value (a
    record holds the workflow's input and results, which may be personal data).
    """


def error_of(step: str, exc: BaseException) -> dict[str, str]:
    """The JSON form of an error."""
    return {"step": step, "type": type(exc).__name__, "message": str(exc)}


def step_error(data: dict[str, str] | None) -> StepError | None:
    """The public form of a recorded error."""
    if data is None:
        return None
    return StepError(step=data["step"], type=data["type"], message=data["message"])


class StepState:
    """One step's state; every change goes through a method so the cached JSON stays right."""

    __slots__ = (
        "_json",
        "acted",
        "attempts",
        "clock",
        "comp",
        "comp_attempts",
        "comp_error",
        "comp_failures",
        "error",
        "failures",
        "result",
        "spec",
        "status",
        "wait_key",
        "wait_until",
    )

    def __init__(self, spec: StepSpec) -> None:
        self.spec = spec
        # process-local: when the current attempt was reported started (monotonic)
        self.clock: float | None = None
        self.reset()

    def reset(self) -> None:
        self.status = "pending"
        self.attempts = 0
        self.failures = 0
        self.acted = False
        self.result: Any = None
        self.error: dict[str, str] | None = None
        self.comp: str | None = None
        self.comp_attempts = 0
        self.comp_failures = 0
        self.comp_error: dict[str, str] | None = None
        self.wait_until: float | None = None  # a wait's due time (Unix time)
        self.wait_key: str | None = None  # the key an event or signal wait takes
        self._json: dict[str, Any] | None = None

    # -- forward ---------------------------------------------------------------

    def begin(self) -> None:
        if self.status == "running":  # a crash interrupted the previous attempt
            self.acted = True
        self.status = "running"
        self.attempts += 1
        self._json = None

    def succeed(self, result: Any) -> None:
        self.status = "succeeded"
        self.result = result
        self._json = None

    def attempt_failed(self, error: dict[str, str], acted: bool, final: bool) -> None:
        self.failures += 1
        self.error = error
        if acted:
            self.acted = True
        if final:
            self.status = "timed_out" if acted else "failed"
        else:
            self.status = "retrying"
        self._json = None

    def wait_begin(self, until: float | None, key: str | None) -> None:
        """A wait step starts waiting: until ``until`` (Unix time) for ``key``."""
        self.status = "waiting"
        self.wait_until = until
        self.wait_key = key
        self._json = None

    def expire(self) -> None:
        """A wait ran out and the workflow goes on without its result."""
        self.status = "expired"
        self._json = None

    @property
    def done(self) -> bool:
        """Whether the step is behind the workflow (succeeded, or a wait that expired)."""
        return self.status in _DONE

    def interrupt(self) -> bool:
        """Mark a step stopped from outside; True if it was running (or waiting)."""
        if self.status == "waiting":
            self.status = "interrupted"
            self._json = None
            return True
        if self.status == "running":
            self.status = "interrupted"
            self.acted = True
            self._json = None
            return True
        if self.status == "retrying":
            self.status = "failed"
            self._json = None
        return False

    def reset_failures(self) -> None:
        self.failures = 0
        if self.status in ("failed", "timed_out", "interrupted"):
            self.status = "retrying"
        self._json = None

    @property
    def may_have_acted(self) -> bool:
        if self.spec.wait is not None:  # a wait acts on nothing
            return self.status == "succeeded"
        return self.acted or self.status in _MAY_HAVE_ACTED

    @property
    def needs_undo(self) -> bool:
        return (
            self.spec.compensation is not None
            and self.comp != "compensated"
            and (self.acted or self.status in _MAY_HAVE_ACTED)
        )

    # -- compensation ------------------------------------------------------------

    def comp_begin(self) -> None:
        self.comp = "running"
        self.comp_attempts += 1
        self._json = None

    def comp_succeed(self) -> None:
        self.comp = "compensated"
        self._json = None

    def comp_attempt_failed(self, error: dict[str, str], final: bool) -> None:
        self.comp_failures += 1
        self.comp_error = error
        self.comp = "failed" if final else "retrying"
        self._json = None

    def comp_reset(self) -> None:
        self.comp_failures = 0
        if self.comp == "failed":
            self.comp = "retrying"
        self._json = None

    # -- JSON --------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = self._json
        if data is None:
            data = {"status": self.status}
            if self.attempts:
                data["attempts"] = self.attempts
            if self.failures:
                data["failures"] = self.failures
            if self.acted:
                data["acted"] = True
            if self.status == "succeeded":
                data["result"] = self.result
            if self.error is not None:
                data["error"] = self.error
            if self.wait_until is not None:
                data["until"] = self.wait_until
            if self.wait_key is not None:
                data["key"] = self.wait_key
            if self.comp is not None:
                data["compensation"] = self.comp
                data["compensation_attempts"] = self.comp_attempts
                if self.comp_failures:
                    data["compensation_failures"] = self.comp_failures
                if self.comp_error is not None:
                    data["compensation_error"] = self.comp_error
            self._json = data
        return data

    def load(self, data: Mapping[str, Any]) -> None:
        """Replace this step's state with a record's.

        Raises:
            _Unreadable: if the data is not a step state.
        """
        where = f"step {self.spec.name!r}"
        status = data.get("status")
        if not isinstance(status, str) or status not in _STEP_STATUSES:
            raise _Unreadable(f"{where} has no known status")
        comp = data.get("compensation")
        if comp is not None and (not isinstance(comp, str) or comp not in _COMP_STATUSES):
            raise _Unreadable(f"{where} has no known compensation status")
        acted = data.get("acted", False)
        if not isinstance(acted, bool):
            raise _Unreadable(f"{where}: 'acted' is not a boolean")
        self.status = status
        self.attempts = _count(data, "attempts", where)
        self.failures = _count(data, "failures", where)
        self.acted = acted
        self.result = data.get("result")
        self.error = _checked_error(data.get("error"), f"{where}: 'error'")
        self.comp = comp
        self.comp_attempts = _count(data, "compensation_attempts", where)
        self.comp_failures = _count(data, "compensation_failures", where)
        self.comp_error = _checked_error(
            data.get("compensation_error"), f"{where}: 'compensation_error'"
        )
        until = data.get("until")
        if until is not None and (isinstance(until, bool) or not isinstance(until, int | float)):
            raise _Unreadable(f"{where}: 'until' is not a number")
        key = data.get("key")
        if key is not None and not isinstance(key, str):
            raise _Unreadable(f"{where}: 'key' is not a string")
        if status == "waiting" and self.spec.wait is None:
            raise _Unreadable(f"{where} is waiting, but it is not a wait")
        self.wait_until = None if until is None else float(until)
        self.wait_key = key
        self._json = None

    def info(self, typed_result: Any) -> StepInfo:
        return StepInfo(
            name=self.spec.name,
            status=self.status,  # type: ignore[arg-type]
            attempts=self.attempts,
            result=typed_result,
            error=step_error(self.error),
            may_have_acted=self.may_have_acted,
            compensation=self.comp,  # type: ignore[arg-type]
            compensation_attempts=self.comp_attempts,
            compensation_error=step_error(self.comp_error),
        )


def _count(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Unreadable(f"{where}: {key!r} is not a count")
    return value


def _checked_error(data: Any, what: str) -> dict[str, str] | None:
    if data is None:
        return None
    if not isinstance(data, Mapping) or not all(
        isinstance(data.get(k), str) for k in ("step", "type", "message")
    ):
        raise _Unreadable(f"{what} is not an error (step, type, message)")
    return {"step": data["step"], "type": data["type"], "message": data["message"]}


_LAST_MS = 253_402_300_799_999  # the last millisecond of the year 9999
_ENTRY_TYPES: tuple[type | tuple[type, ...], ...] = (
    str,
    (str, type(None)),
    (int, type(None)),
    (str, type(None)),
    (str, type(None)),
)


def _checked_history(history: Any) -> list[list[Any]]:
    """The history, checked entry by entry: ``[at, event, step, attempt, error, detail]``."""
    if not isinstance(history, list):
        raise _Unreadable("'history' is not a list")
    for entry in history:
        if (
            not isinstance(entry, list)
            or not 2 <= len(entry) <= 6
            or isinstance(entry[0], bool)
            or not isinstance(entry[0], int | float)
            or not 0 <= entry[0] <= _LAST_MS
            or not all(
                isinstance(field, kinds) and not isinstance(field, bool)
                for field, kinds in zip(entry[1:], _ENTRY_TYPES, strict=False)
            )
        ):
            raise _Unreadable("'history' has an entry that is not a transition")
    return history


class Run:
    """One workflow being run (or inspected) by this process."""

    __slots__ = (
        "begun",
        "cancel_asked",
        "cancel_requested",
        "clock",
        "compensated",
        "created_at",
        "deadline_at",
        "direction",
        "done",
        "error",
        "fresh",
        "halted",
        "history",
        "id",
        "input",
        "input_json",
        "lease_until",
        "lock",
        "outcome",
        "owner",
        "parked",
        "pivot_done",
        "plan",
        "reason",
        "released",
        "remaining",
        "results",
        "results_view",
        "saved",
        "scope",
        "status",
        "steps",
        "superseded",
        "updated_at",
        "version",
        "wake_at",
    )

    def __init__(
        self, plan: Plan, workflow_id: str, input: Any, input_json: Any, deadline_at: float | None
    ) -> None:
        self.plan = plan
        self.id = workflow_id
        self.input = input
        self.input_json = input_json
        self.deadline_at = deadline_at
        self.status = WorkflowStatus.RUNNING
        self.version = 0
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.steps: dict[str, StepState] = {spec.name: StepState(spec) for spec in plan.specs}
        self.history: list[list[Any]] = []
        self.saved = 0  # how many history entries the store has
        self.owner: str | None = None  # the process holding the lease
        self.lease_until: datetime | None = None  # as last read from the store
        self.cancel_asked = False  # as last read from the store
        self.wake_at: datetime | None = None  # as last read from the store
        self.results: dict[str, Any] = {}
        self.results_view: Mapping[str, Any] = MappingProxyType(self.results)
        self.error: dict[str, str] | None = None
        self.reason: str | None = None
        self.remaining: list[str] = []
        self.compensated: list[str] = []
        self.direction: str | None = None
        self.pivot_done = False
        self.begun = -1
        # process-local
        self.fresh = False  # created by this process, not loaded from a record
        self.clock: float | None = None  # when it was reported started (monotonic)
        self.scope: anyio.CancelScope | None = None
        self.cancel_requested = False
        self.halted = False  # the orchestrator stops it where it stands
        self.superseded = False  # another process took its lease
        self.parked = False  # saved WAITING: it left this process until it is due
        self.lock: anyio.Lock | None = None
        self.done: anyio.Event | None = None
        self.outcome: Outcome | None = None
        self.released = False

    # -- transitions -------------------------------------------------------------

    def event(
        self,
        event: str,
        step: str | None = None,
        attempt: int | None = None,
        error: dict[str, str] | None = None,
        detail: str | None = None,
    ) -> None:
        at = int(time.time() * 1000)
        if attempt is not None and attempt > RECORDED_ATTEMPTS and step is not None:
            if event in _ATTEMPT_STARTS or (detail is not None and detail.startswith(_RETRYING)):
                return  # one more attempt of a long run of retries: summarised at its end
            if event not in ("step_interrupted",) and attempt > RECORDED_ATTEMPTS + 1:
                first, last = RECORDED_ATTEMPTS + 1, attempt - 1
                self.history.append(
                    [at, "attempts_unrecorded", step, attempt, None, f"attempts {first} to {last}"]
                )
        if detail is not None or error is not None:
            text = None if error is None else f"{error['type']}: {error['message']}"
            entry: list[Any] = [at, event, step, attempt, text]
            if detail is not None:
                entry.append(detail)
        elif attempt is not None:
            entry = [at, event, step, attempt]
        elif step is not None:
            entry = [at, event, step]
        else:
            entry = [at, event]
        self.history.append(entry)

    def next_stage(self) -> int:
        """The index of the first stage with a step that has not succeeded."""
        steps = self.steps
        for index, stage in enumerate(self.plan.stages):
            for spec in stage:
                if not steps[spec.name].done:
                    return index
        return len(self.plan.stages)

    def begin_stage(self, index: int) -> None:
        for spec in self.plan.stages[index]:
            state = self.steps[spec.name]
            if not state.done and state.status != "waiting":
                state.begin()
                self.event("step_started", spec.name, state.attempts)
        self.begun = index

    def interrupt_running(self) -> list[StepState]:
        """Mark the running steps interrupted; return them."""
        interrupted = []
        for name, state in self.steps.items():
            if state.interrupt():
                self.event("step_interrupted", name, state.attempts)
                interrupted.append(state)
        return interrupted

    def waiting_step(self) -> StepState | None:
        """The wait step the workflow is waiting at, if any."""
        for state in self.steps.values():
            if state.status == "waiting":
                return state
        return None

    def wake(self) -> None:
        """A waiting workflow is taken up again: it runs (forward) from here."""
        if self.status is WorkflowStatus.WAITING:
            self.status = WorkflowStatus.RUNNING

    def turn_back(self, error: dict[str, str], reason: str) -> None:
        self.status = WorkflowStatus.COMPENSATING
        self.error = error
        self.reason = reason
        self.event("compensating", error=error, detail=reason)

    def fail(self, reason: str, remaining: list[str], direction: str) -> None:
        self.status = WorkflowStatus.FAILED
        self.reason = reason
        self.remaining = remaining
        self.direction = direction
        self.event("failed", detail=reason)

    def finish(self, status: WorkflowStatus) -> None:
        self.status = status
        self.remaining = []
        self.direction = None
        self.event(status.value.lower())

    def undo_list(self) -> list[str]:
        """The compensations still to run, in the order they will run."""
        names: list[str] = []
        for stage in reversed(self.plan.stages):
            names.extend(s.name for s in stage if self.steps[s.name].needs_undo)
        return names

    def todo_list(self) -> list[str]:
        """The forward steps still to run."""
        return [s.name for s in self.plan.specs if not self.steps[s.name].done]

    # -- records -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": FORMAT,
            "input": self.input_json,
            "steps": {name: s.to_json() for name, s in self.steps.items()},
        }
        if self.deadline_at is not None:
            state["deadline_at"] = self.deadline_at
        if self.error is not None:
            state["error"] = self.error
        if self.reason is not None:
            state["reason"] = self.reason
        if self.remaining:
            state["remaining"] = list(self.remaining)
        if self.direction is not None:
            state["direction"] = self.direction
        state["compensated"] = list(self.compensated)
        return state

    def record(self, name: str) -> WorkflowRecord:
        """The record to write; its history is the entries the store lacks.

        A ``WAITING`` run is written without an owner, due at its wait's time
        (or its deadline, if sooner), with the channel and key it waits on.
        """
        waiting = self.status is WorkflowStatus.WAITING
        wake_at = wait_for = wait_key = None
        state = self.waiting_step() if waiting else None
        if state is not None:
            wait = state.spec.wait
            assert wait is not None
            due = state.wait_until
            if self.deadline_at is not None and not self.pivot_done:
                due = self.deadline_at if due is None else min(due, self.deadline_at)
            wake_at = None if due is None else datetime.fromtimestamp(due, UTC)
            wait_for, wait_key = wait.channel, state.wait_key if wait.channel else None
        return WorkflowRecord(
            id=self.id,
            name=name,
            status=self.status.value,
            state=self.snapshot(),
            version=self.version,
            created_at=self.created_at,
            owner=None if self.status.finished or waiting else self.owner,
            history=self.history[self.saved :],
            wake_at=wake_at,
            wait_for=wait_for,
            wait_key=wait_key,
        )

    def stored(self, record: WorkflowRecord, written: int) -> None:
        """A write of ``written`` history entries returned ``record``."""
        self.version = record.version
        self.wake_at = record.wake_at
        self.saved += written

    def load(self, record: WorkflowRecord) -> None:
        """Replace this run's state with a record's.

        Raises:
            InvalidWorkflowState: if the record's state is not one this
                orchestrator can read. The message names the workflow and the
                problem, never a recorded value.
        """
        try:
            self._load(record)
        except _Unreadable as exc:
            raise InvalidWorkflowState(
                f"the record of workflow {record.id!r} ({record.name}) cannot be read: {exc}"
            ) from None

    def _load(self, record: WorkflowRecord) -> None:
        plan = self.plan
        state = record.state
        if not isinstance(state, Mapping):
            raise _Unreadable("its state is not a mapping")
        if state.get("format") != FORMAT:
            raise _Unreadable("its state format is unknown")
        try:
            status = WorkflowStatus(record.status)
        except ValueError:
            raise _Unreadable("its status is unknown") from None
        steps_data = state.get("steps")
        if not isinstance(steps_data, Mapping):
            raise _Unreadable("'steps' is missing or not a mapping")
        if any(not isinstance(name, str) or name not in self.steps for name in steps_data):
            raise _Unreadable(f"it records steps that {plan.owner} does not declare")
        if "input" not in state:
            raise _Unreadable("'input' is missing")
        input_json = state["input"]
        try:
            typed_input = plan.input_adapter.validate_python(input_json)
        except Exception:
            raise _Unreadable(f"'input' does not match the input type of {plan.owner}") from None
        results: dict[str, Any] = {}
        for name, state_obj in self.steps.items():
            data = steps_data.get(name)
            if data is None:
                state_obj.reset()
                continue
            if not isinstance(data, Mapping):
                raise _Unreadable(f"step {name!r} is not a mapping")
            state_obj.load(data)
            if state_obj.status == "succeeded":
                load = state_obj.spec.action.load
                try:
                    results[name] = None if load is None else load(state_obj.result)
                except Exception:
                    raise _Unreadable(
                        f"the result of step {name!r} does not match its annotation"
                    ) from None
        history = _checked_history(list(record.history))
        error = _checked_error(state.get("error"), "'error'")
        deadline_at = state.get("deadline_at")
        if deadline_at is not None and (
            isinstance(deadline_at, bool) or not isinstance(deadline_at, int | float)
        ):
            raise _Unreadable("'deadline_at' is not a number")
        remaining = state.get("remaining", [])
        if not isinstance(remaining, list) or not all(
            isinstance(n, str) and n in self.steps for n in remaining
        ):
            raise _Unreadable("'remaining' is not a list of its steps")
        reason = state.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise _Unreadable("'reason' is not a string")
        direction = state.get("direction")
        if direction is not None and (
            not isinstance(direction, str) or direction not in _DIRECTIONS
        ):
            raise _Unreadable("'direction' is neither 'forward' nor 'backward'")
        compensated = state.get("compensated")
        if compensated is None:  # recorded before the state kept it
            compensated = [e[2] for e in history if e[1] == "step_compensated" and len(e) > 2]
        elif not isinstance(compensated, list) or not all(
            isinstance(n, str) and n in self.steps for n in compensated
        ):
            raise _Unreadable("'compensated' is not a list of its steps")
        self.status = status
        self.version = record.version
        self.created_at = record.created_at
        self.updated_at = record.updated_at
        self.input = typed_input
        self.input_json = input_json
        self.deadline_at = None if deadline_at is None else float(deadline_at)
        self.history = list(history)
        self.saved = len(self.history)
        self.owner = record.owner
        self.lease_until = record.lease_until
        self.cancel_asked = record.cancel_requested
        self.wake_at = record.wake_at
        self.results.clear()
        self.results.update(results)
        self.error = error
        self.reason = reason
        self.remaining = list(remaining)
        self.direction = direction
        self.compensated = list(compensated)
        self.pivot_done = plan.pivot is not None and self.steps[plan.pivot].status == "succeeded"
        # a cancel asked of the process that held it, which it did not act on
        self.cancel_requested = (
            record.cancel_requested
            and status in (WorkflowStatus.RUNNING, WorkflowStatus.WAITING)
            and not self.pivot_done
        )
        self.begun = -1

    # -- reports -------------------------------------------------------------------

    def to_outcome(self, names: Callable[[object], str]) -> Outcome:
        return Outcome(
            workflow_id=self.id,
            status=self.status,
            results=dict(self.results),
            error=step_error(self.error),
            reason=self.reason,
            compensated=tuple(self.compensated),
            remaining=tuple(self.remaining),
            _names=names,
        )

    def to_info(self, name: str) -> WorkflowInfo:
        history = tuple(_transition(e) for e in self.history)
        waiting = self.waiting_step() if self.status is WorkflowStatus.WAITING else None
        wait = None if waiting is None else waiting.spec.wait
        return WorkflowInfo(
            id=self.id,
            name=name,
            status=self.status,
            input=self.input,
            steps={n: s.info(self.results.get(n)) for n, s in self.steps.items()},
            history=history,
            error=step_error(self.error),
            reason=self.reason,
            compensated=tuple(self.compensated),
            remaining=tuple(self.remaining),
            created_at=self.created_at,
            updated_at=self.updated_at,
            version=self.version,
            owner=self.owner,
            lease_until=self.lease_until,
            cancel_requested=self.cancel_asked,
            waiting_for=None if wait is None else wait.what,
            wake_at=self.wake_at if wait is not None else None,
        )


def _transition(entry: list[Any]) -> Transition:
    fields = entry + [None] * (6 - len(entry))
    at, event, step, attempt, error, detail = fields[:6]
    return Transition(
        at=datetime.fromtimestamp(at / 1000, UTC),
        event=event,
        step=step,
        attempt=attempt,
        error=error,
        detail=detail,
    )
