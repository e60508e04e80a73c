"""What the orchestrator reports: statuses, outcomes, workflow details and history."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from .._errors import ResultNotAvailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from datetime import datetime

    from .._events import Event, Message
    from ._context import StepContext
    from ._declare import Remote, Step
    from ._waits import WaitForEvent, WaitForSignal

__all__ = [
    "Outcome",
    "StepError",
    "StepInfo",
    "StepStatus",
    "Transition",
    "WorkflowInfo",
    "WorkflowStatus",
]

R = TypeVar("R")
RM = TypeVar("RM", bound="Message")
RE = TypeVar("RE", bound="Event")


class WorkflowStatus(StrEnum):
    """Where a workflow is.

    ``RUNNING``, ``WAITING`` and ``COMPENSATING`` are unfinished:
    :meth:`Orchestrator.resume` continues them after a restart. The other three
    are final.

    Attributes:
        RUNNING: running its forward steps.
        WAITING: waiting for a timer, an event or a signal (a ``Sleep``,
            ``WaitForEvent`` or ``WaitForSignal`` step); stored, held by no
            process, woken by whichever process runs its orchestrator.
        COMPENSATING: a step failed (or the workflow was cancelled or ran past its
            deadline); the compensations of the steps that acted are running, in
            reverse order.
        COMPLETED: every forward step succeeded.
        COMPENSATED: every step that acted was compensated.
        FAILED: a compensation still failed after its retries (what is left to
            undo is recorded; :meth:`Orchestrator.retry_compensation` goes on), or
            a step past the pivot failed with an error that is not retryable
            (:meth:`Orchestrator.retry_forward` goes on).
    """

    RUNNING = "RUNNING"
    WAITING = "WAITING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"

    @property
    def finished(self) -> bool:
        """Whether the status is final (``COMPLETED``, ``COMPENSATED`` or ``FAILED``)."""
        return self in _FINISHED


_FINISHED = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.COMPENSATED, WorkflowStatus.FAILED})

StepStatus = Literal[
    "pending",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "timed_out",
    "interrupted",
    "waiting",
    "expired",
]
"""A forward step's status.

``pending`` (not started), ``running`` (an attempt started; after a crash it may
have acted), ``retrying`` (an attempt failed, the next one is due), ``succeeded``,
``failed`` (its last attempt raised, or its wait ran out), ``timed_out`` (its last
attempt ran past its timeout; it may have acted), ``interrupted`` (stopped by a
failing sibling, ``cancel()`` or the deadline; it may have acted), ``waiting`` (a
wait step, waiting) and ``expired`` (a wait that ran out with
``on_timeout="continue"``: done, without a result).
"""

CompensationStatus = Literal["running", "retrying", "compensated", "failed"]


@dataclass(frozen=True, slots=True)
class StepError:
    """An error recorded for a step.

    Attributes:
        step: the step's name (empty for an error of the whole workflow).
        type: the exception's class name (``StepTimeout``, ``ValueError``, ...).
        message: the exception's message.
    """

    step: str
    type: str
    message: str

    def __str__(self) -> str:
        where = f"step {self.step!r}: " if self.step else ""
        return f"{where}{self.type}: {self.message}"


def _lookup(results: Mapping[str, Any], name: str) -> Any:
    try:
        return results[name]
    except KeyError:
        raise ResultNotAvailable(f"step {name!r} has no result (it has not succeeded)") from None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a workflow ended (or stands, when it is not finished).

    Attributes:
        workflow_id: the workflow's id.
        status: its status.
        results: the results of the steps that succeeded, by step name, typed as
            each step's return annotation.
        error: the failure that made the workflow turn back (or fail), if any.
        reason: why the workflow was compensated or failed, in one sentence.
        compensated: the steps whose compensations ran, in the order they finished.
        remaining: for a ``FAILED`` workflow, the compensations still to run (in
            the order they will run) or, past the pivot, the forward steps still
            to run.
    """

    workflow_id: str
    status: WorkflowStatus
    results: Mapping[str, Any] = field(default_factory=dict)
    error: StepError | None = None
    reason: str | None = None
    compensated: tuple[str, ...] = ()
    remaining: tuple[str, ...] = ()
    _names: Callable[[object], str] = field(default=str, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the workflow completed."""
        return self.status is WorkflowStatus.COMPLETED

    @overload
    def result(self, step: Callable[[StepContext, Any], Awaitable[R]]) -> R: ...
    @overload
    def result(self, step: Step[Any, R]) -> R: ...
    @overload
    def result(self, step: Remote[RM]) -> RM: ...
    @overload
    def result(self, step: WaitForEvent[RE]) -> RE: ...
    @overload
    def result(self, step: WaitForSignal[RM]) -> RM: ...
    @overload
    def result(self, step: str) -> Any: ...
    def result(self, step: object) -> Any:
        """The result of one step, typed as the step's return annotation (for a
        wait, the event or signal it took).

        Args:
            step: the step's function, its ``Step``/``Remote`` declaration or its name.

        Returns:
            The step's result.

        Raises:
            ResultNotAvailable: if the step did not succeed.
        """
        return _lookup(self.results, self._names(step))


@dataclass(frozen=True, slots=True)
class Transition:
    """One entry of a workflow's history.

    Attributes:
        at: when it happened (UTC).
        event: what happened: ``workflow_started``, ``workflow_resumed``,
            ``step_started``, ``step_succeeded``, ``step_failed``,
            ``step_timed_out``, ``step_interrupted``, ``compensating``,
            ``compensation_started``, ``step_compensated``, ``compensation_failed``,
            ``cancel_requested``, ``deadline_exceeded``, ``compensation_retried``,
            ``forward_retried``, ``waiting`` (a wait step began to wait; its detail
            says for what and until when), ``woken`` (a process took the waiting
            workflow up again), ``wait_timed_out``, ``completed``,
            ``compensated`` or ``failed``.
        step: the step concerned, if any.
        attempt: the attempt number, for step and compensation events.
        error: the error, for failures (``Type: message``).
        detail: more words (the reason of a status change, a retry delay).
    """

    at: datetime
    event: str
    step: str | None = None
    attempt: int | None = None
    error: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class StepInfo:
    """The recorded state of one step.

    Attributes:
        name: the step's name.
        status: the forward step's status (see :data:`StepStatus`).
        attempts: how many attempts were started.
        result: its result, typed, when it succeeded.
        error: the error of its last failed attempt.
        may_have_acted: whether the step may have had effects (it succeeded,
            timed out, was interrupted, or a crash left its outcome unknown).
        compensation: the compensation's status, if it ran: ``running``,
            ``retrying``, ``compensated`` or ``failed``.
        compensation_attempts: how many compensation attempts were started.
        compensation_error: the error of the last failed compensation attempt.
    """

    name: str
    status: StepStatus
    attempts: int = 0
    result: Any = None
    error: StepError | None = None
    may_have_acted: bool = False
    compensation: CompensationStatus | None = None
    compensation_attempts: int = 0
    compensation_error: StepError | None = None


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """Everything recorded about one workflow.

    Attributes:
        id: the workflow's id.
        name: the orchestrator's name.
        status: its status.
        input: the workflow's input, typed.
        steps: each step's state, in declaration order.
        history: every transition, oldest first (empty in :meth:`Orchestrator.list`,
            which reads no history).
        error: the failure that made the workflow turn back (or fail), if any.
        reason: why it was compensated or failed.
        compensated: the steps whose compensations ran, in the order they finished.
        remaining: for a ``FAILED`` workflow, what is left to do (see :class:`Outcome`).
        created_at: when the workflow was first recorded (UTC).
        updated_at: when it was last checkpointed (UTC).
        version: the record's version (one per checkpoint and takeover).
        owner: the process holding the workflow's lease (``host:pid:random``),
            or None when nobody does.
        lease_until: when that lease runs out, unless renewed (UTC).
        cancel_requested: whether a cancellation was asked of its owner.
        waiting_for: for a ``WAITING`` workflow, what it waits for (``timer``,
            ``event SellerAccepted``, ``signal RefundApproved``).
        wake_at: for a ``WAITING`` workflow, when its timer or timeout is due
            (UTC; None: only the event or signal wakes it).
    """

    id: str
    name: str
    status: WorkflowStatus
    input: Any
    steps: Mapping[str, StepInfo]
    history: tuple[Transition, ...]
    error: StepError | None = None
    reason: str | None = None
    compensated: tuple[str, ...] = ()
    remaining: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 0
    owner: str | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    waiting_for: str | None = None
    wake_at: datetime | None = None

    @property
    def cursor(self) -> str:
        """Where a listing continues after this workflow: pass it as
        ``list(after=...)`` for the next page."""
        if self.created_at is None:
            raise ValueError(f"workflow {self.id!r} was never recorded: it has no cursor")
        return f"{self.created_at.isoformat()}/{self.id}"

    @property
    def results(self) -> Mapping[str, Any]:
        """The results of the steps that succeeded, by name."""
        return {n: s.result for n, s in self.steps.items() if s.status == "succeeded"}
