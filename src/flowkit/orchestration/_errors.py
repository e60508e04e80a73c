"""Errors raised or recorded by the orchestrator."""

from __future__ import annotations

from .._errors import FlowkitError

__all__ = [
    "DeadlineExceeded",
    "InvalidWorkflowState",
    "OrchestratorNotStarted",
    "ResultNotAvailable",
    "StepTimeout",
    "WorkflowCancelled",
]


class StepTimeout(FlowkitError, TimeoutError):
    """A step or compensation ran longer than its ``timeout``.

    The step may have acted before it was stopped, so a timed-out step is
    compensated when the workflow turns back.
    """


class DeadlineExceeded(FlowkitError, TimeoutError):
    """A workflow was still running when its ``deadline`` passed.

    Recorded as the workflow's error; the workflow is then compensated.
    """


class WorkflowCancelled(FlowkitError):
    """A workflow was cancelled with ``cancel()``.

    Recorded as the workflow's error; the workflow is then compensated.
    """


class InvalidWorkflowState(FlowkitError):
    """The operation does not apply to the workflow in its current status.

    For example ``cancel()`` on a completed workflow or on one past its pivot,
    ``retry_compensation()`` on a workflow that is not ``FAILED``, or a workflow
    id already used by another orchestrator.
    """


class OrchestratorNotStarted(FlowkitError):
    """The orchestrator was used outside ``async with orchestrator:``."""


class ResultNotAvailable(FlowkitError, LookupError):
    """A step's result was asked for, but the step has not succeeded (or does not exist)."""
