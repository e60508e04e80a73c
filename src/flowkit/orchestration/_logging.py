"""The saga engine's DEBUG log: a line for every workflow and step transition,
installed on every orchestrator."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._log_fields import error_type, milliseconds, took
from ._observe import SagaObserver

if TYPE_CHECKING:
    from ._observe import StepEvent, WorkflowEvent

__all__ = ["StepLog"]

logger = logging.getLogger("flowkit.orchestration")
_DEBUG = logging.DEBUG

# (forward, compensating): the action (as in the workflow's history) and the verb.
_ACTIONS = {
    "step_started": (("step_started", "started"), ("compensation_started", "started")),
    "step_succeeded": (("step_succeeded", "succeeded"), ("step_compensated", "succeeded")),
    "step_failed": (("step_failed", "failed"), ("compensation_failed", "failed")),
    "step_interrupted": (
        ("step_interrupted", "was interrupted"),
        ("compensation_interrupted", "was interrupted"),
    ),
}


class StepLog(SagaObserver):
    """Logs, at DEBUG on ``flowkit.orchestration``, each workflow's start and
    end and each attempt of a step or compensation: started, succeeded,
    failed, interrupted.

    Each record is a short sentence, and carries the ids and numbers as
    ``flowkit_*`` attributes: ``flowkit_action`` (the name the workflow's
    history uses: ``step_started``, ``step_compensated``, ...),
    ``flowkit_workflow``, ``flowkit_workflow_id``, ``flowkit_correlation_id``
    (the workflow id, which the commands of its remote steps carry),
    ``flowkit_step``, ``flowkit_attempt``, ``flowkit_compensating``,
    ``flowkit_duration_ms``, ``flowkit_will_retry``, ``flowkit_retry_delay_ms``,
    ``flowkit_error_type``, ``flowkit_status``. Never an input or result
    value, nor an exception's message (the engine's WARNING lines tell it).

    While DEBUG is off for ``flowkit.orchestration``, each notification costs
    one level check.
    """

    __slots__ = ()

    def workflow_started(self, event: WorkflowEvent) -> None:
        if logger.isEnabledFor(_DEBUG):
            logger.debug(
                "%s %s %s",
                event.workflow,
                event.workflow_id,
                "resumed" if event.resumed else "started",
                extra=_workflow(event, "workflow_resumed" if event.resumed else "workflow_started"),
            )

    def workflow_finished(self, event: WorkflowEvent) -> None:
        if logger.isEnabledFor(_DEBUG):
            logger.debug(
                "%s %s finished %s%s",
                event.workflow,
                event.workflow_id,
                event.status.value,
                "" if event.duration is None else f" in {took(event.duration)}",
                extra=_workflow(event, "workflow_finished"),
            )

    def workflow_stopped(self, event: WorkflowEvent) -> None:
        if logger.isEnabledFor(_DEBUG):
            logger.debug(
                "%s %s stopped in this process while %s; resume() continues it",
                event.workflow,
                event.workflow_id,
                event.status.value,
                extra=_workflow(event, "workflow_stopped"),
            )

    def step_started(self, event: StepEvent) -> None:
        if logger.isEnabledFor(_DEBUG):
            _log_step("step_started", event)

    def step_succeeded(self, event: StepEvent) -> None:
        if logger.isEnabledFor(_DEBUG):
            _log_step("step_succeeded", event)

    def step_failed(self, event: StepEvent) -> None:
        if logger.isEnabledFor(_DEBUG):
            _log_step("step_failed", event)

    def step_interrupted(self, event: StepEvent) -> None:
        if logger.isEnabledFor(_DEBUG):
            _log_step("step_interrupted", event)

    def __repr__(self) -> str:
        return "StepLog(logger='flowkit.orchestration')"


def _workflow(event: WorkflowEvent, action: str) -> dict[str, Any]:
    return {
        "flowkit_action": action,
        "flowkit_workflow": event.workflow,
        "flowkit_workflow_id": event.workflow_id,
        "flowkit_correlation_id": event.workflow_id,
        "flowkit_status": event.status.value,
        "flowkit_duration_ms": milliseconds(event.duration),
        "flowkit_error_type": None if event.error is None else event.error.type,
    }


def _log_step(method: str, event: StepEvent) -> None:
    action, verb = _ACTIONS[method][event.compensating]
    what = f"compensation of {event.step}" if event.compensating else f"step {event.step}"
    fields: dict[str, Any] = {
        "flowkit_action": action,
        "flowkit_workflow": event.workflow,
        "flowkit_workflow_id": event.workflow_id,
        "flowkit_correlation_id": event.workflow_id,
        "flowkit_step": event.step,
        "flowkit_attempt": event.attempt,
        "flowkit_compensating": event.compensating,
        "flowkit_duration_ms": milliseconds(event.duration),
    }
    after = "" if event.duration is None else f" after {took(event.duration)}"
    detail = f"attempt {event.attempt}"
    outcome = ""
    if method == "step_failed":
        fields["flowkit_will_retry"] = event.will_retry
        fields["flowkit_retry_delay_ms"] = milliseconds(event.retry_delay)
        if event.error is not None:
            fields["flowkit_error_type"] = error_type(event.error)
            detail = f"{detail}, {type(event.error).__name__}"
        if not event.will_retry:
            outcome = "; giving up"
        elif event.retry_delay is not None:
            outcome = f"; retrying in {took(event.retry_delay)}"
        else:
            outcome = "; retrying"
    logger.debug(
        "%s %s: %s %s%s (%s)%s",
        event.workflow,
        event.workflow_id,
        what,
        verb,
        after,
        detail,
        outcome,
        extra=fields,
    )
