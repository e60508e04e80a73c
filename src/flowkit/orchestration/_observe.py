"""Observers: what the saga engine reports about the workflows it runs, and the
one place where a step's call can be intercepted."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from ._context import StepContext
    from ._model import StepError, WorkflowStatus

__all__ = ["SagaObserver", "StepEvent", "WorkflowEvent"]


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """A workflow started, finished or stopped running in this process.

    Attributes:
        workflow: the orchestrator's name.
        workflow_id: the workflow's id.
        status: its status at the time of the event.
        resumed: for ``workflow_started``: whether it continues from a
            checkpoint (:meth:`~Orchestrator.resume`, a repeated ``run``,
            ``cancel`` or ``retry_*``) rather than starting anew.
        duration: for ``workflow_finished`` and ``workflow_stopped``: seconds
            since its ``workflow_started`` in this process.
        error: the failure that made it turn back (or fail), if any.
        reason: why it was compensated or failed, in one sentence.
        waiting_for: for ``workflow_stopped`` with status ``WAITING`` (it was
            parked at a wait step): what it waits for (``timer``,
            ``event SellerAccepted``, ``signal Approval``).
        wake_at: then, when its timer or timeout is due (UTC; None: no limit).
    """

    workflow: str
    workflow_id: str
    status: WorkflowStatus
    resumed: bool = False
    duration: float | None = None
    error: StepError | None = None
    reason: str | None = None
    waiting_for: str | None = None
    wake_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StepEvent:
    """Something happened to one attempt of a step, or of its compensation.

    Attributes:
        workflow: the orchestrator's name.
        workflow_id: the workflow's id.
        step: the step's name.
        attempt: the attempt number, 1 for the first (counted separately for
            the step and for its compensation).
        compensating: True for the step's compensation.
        duration: seconds since this attempt's ``step_started``; None for
            ``step_started`` itself (and when the observers were changed
            during the attempt).
        error: for ``step_failed``: what the attempt raised
            (:class:`~flowkit.orchestration.StepTimeout` when it timed out).
        will_retry: for ``step_failed``: whether another attempt follows.
        retry_delay: for ``step_failed`` with ``will_retry``: seconds until
            that attempt.
    """

    workflow: str
    workflow_id: str
    step: str
    attempt: int
    compensating: bool = False
    duration: float | None = None
    error: BaseException | None = None
    will_retry: bool = False
    retry_delay: float | None = None


class SagaObserver:
    """Sees what an orchestrator's engine does, and may intercept the calls of steps.

    Subclass it and override only what you need; every method does nothing by
    default. Install observers with ``Orchestrator(..., observers=[...])`` or
    :meth:`~flowkit.orchestration.Orchestrator.add_observer`::

        class SlowSteps(SagaObserver):
            def step_succeeded(self, event: StepEvent) -> None:
                if event.duration is not None and event.duration > 1.0:
                    logger.warning("%s took %.1fs", event.step, event.duration)

    **When.** Notifications are plain (not async) methods, called in the task
    that runs the workflow, in order: ``workflow_started``, then for each
    attempt ``step_started``, then ``step_acted`` and ``step_succeeded``, or
    ``step_failed``, or ``step_interrupted``, and last ``workflow_finished``
    (a final status) or ``workflow_stopped`` (it stopped in this process
    without one, and stays ``RUNNING`` or ``COMPENSATING`` for ``resume()``:
    the orchestrator stopped, the caller of ``run`` was cancelled, the store
    failed, or another process took the workflow over; or it is ``WAITING``,
    parked at a wait step until it is due). A compensation is
    reported by the same step methods, with ``event.compensating`` True.

    ``step_started`` and ``step_succeeded`` come once the transition is
    checkpointed; ``step_acted`` comes between the call's return and the
    checkpoint of its success: a crash there runs the call again. These are
    the crash points of :class:`flowkit.testing.FaultPlan`.

    **Errors.** An observer cannot break a workflow by mistake:

    * an :class:`Exception` raised by a notification is logged (logger
      ``flowkit.orchestration``, ERROR) and ignored;
    * what :meth:`intercept` raises is the attempt's outcome, exactly as if
      the step had raised it: that is how failures and timeouts are injected;
    * a :class:`BaseException` that is not an :class:`Exception` (such as
      ``flowkit.testing.SimulatedCrash``) raised by a notification stops the
      orchestrator as if its process had been killed: it propagates, every
      workflow the instance runs stops where it is without another checkpoint
      or notification, and every later call on the instance raises that
      exception's type. A new instance on the same store resumes them.

    Notifications are called in the engine's task with nothing awaited: keep
    them quick (record, count, hand over to a queue).
    """

    __slots__ = ()

    def workflow_started(self, event: WorkflowEvent) -> None:
        """A workflow starts running in this process (new, or resumed)."""

    def workflow_finished(self, event: WorkflowEvent) -> None:
        """A workflow reached ``COMPLETED``, ``COMPENSATED`` or ``FAILED`` (checkpointed)."""

    def workflow_stopped(self, event: WorkflowEvent) -> None:
        """A workflow stopped running in this process without a final status."""

    def step_started(self, event: StepEvent) -> None:
        """An attempt of a step (or compensation) starts; its start is checkpointed."""

    def step_acted(self, event: StepEvent) -> None:
        """An attempt returned; its success is not checkpointed yet."""

    def step_succeeded(self, event: StepEvent) -> None:
        """An attempt succeeded; its success is checkpointed."""

    def step_failed(self, event: StepEvent) -> None:
        """An attempt failed (raised or timed out); ``event.will_retry`` says what follows."""

    def step_interrupted(self, event: StepEvent) -> None:
        """A running attempt was stopped from outside: a sibling in its parallel
        group failed, the workflow was cancelled, or its deadline passed. The
        step may have acted."""

    async def intercept(self, ctx: StepContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """Wrap one call of a step or compensation (inside its timeout).

        Return ``await proceed()`` (the call's result, or a replacement), or
        raise instead: what this raises is the attempt's outcome, as if the
        step had raised it (:class:`~flowkit.orchestration.StepTimeout` for a
        timeout, after which the step may have acted). With several
        observers, the first installed is the outermost.

        Args:
            ctx: the context the step is called with (workflow, step, attempt,
                ``compensating``, idempotency key).
            proceed: calls the step (or the next observer's ``intercept``).

        Returns:
            The attempt's result.
        """
        return await proceed()
