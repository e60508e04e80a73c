"""The context a step or compensation receives."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._model import _lookup

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from .._events import Event, Message
    from ._declare import Remote, Step
    from ._waits import WaitForEvent, WaitForSignal

__all__ = ["StepContext"]

R = TypeVar("R")
RM = TypeVar("RM", bound="Message")
RE = TypeVar("RE", bound="Event")

_logger = logging.getLogger("flowkit.orchestration")


class StepContext:
    """What a step (or compensation) knows about the workflow it runs in.

    Attributes:
        workflow_id: the workflow's id.
        workflow: the orchestrator's name.
        step: the step's name.
        idempotency_key: ``"{workflow_id}:{step}"`` for a step and
            ``"{workflow_id}:{step}:compensate"`` for its compensation. It is the
            same for every attempt, also after a crash and resume: pass it to the
            systems the step calls so that a repeated call has its effect once.
        attempt: which attempt this is, 1 for the first (attempts interrupted by
            a crash count too).
        compensating: True in a compensation.
        results: the results of the steps that have succeeded so far, by step
            name, typed as each step's return annotation.
    """

    __slots__ = (
        "_logger",
        "_names",
        "attempt",
        "compensating",
        "idempotency_key",
        "results",
        "step",
        "workflow",
        "workflow_id",
    )

    def __init__(
        self,
        *,
        workflow_id: str,
        workflow: str,
        step: str,
        idempotency_key: str,
        attempt: int,
        results: Mapping[str, Any],
        compensating: bool = False,
        names: Callable[[object], str] = str,
    ) -> None:
        self.workflow_id = workflow_id
        self.workflow = workflow
        self.step = step
        self.idempotency_key = idempotency_key
        self.attempt = attempt
        self.results = results
        self.compensating = compensating
        self._names = names
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger (``flowkit.orchestration``) whose records carry the workflow,
        its id (also as the correlation id), the step and the attempt as
        ``flowkit_*`` attributes, as the engine's own records do."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(
                _logger,
                {
                    "flowkit_workflow": self.workflow,
                    "flowkit_workflow_id": self.workflow_id,
                    "flowkit_correlation_id": self.workflow_id,
                    "flowkit_step": self.step,
                    "flowkit_attempt": self.attempt,
                    "flowkit_compensating": self.compensating,
                },
            )
        return self._logger

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
        """The result of an earlier step, typed as that step's return annotation.

        In a compensation, ``ctx.result(<the compensated step>)`` is the step's
        own result. A step that timed out or was interrupted is compensated too,
        but has no result: use ``ctx.results.get(name)`` when that can happen.

        Args:
            step: the step's function, its ``Step``/``Remote`` declaration or its name.

        Returns:
            The step's result.

        Raises:
            ResultNotAvailable: if that step has not succeeded.
            KeyError: if no step of this workflow is ``step``.
        """
        return _lookup(self.results, self._names(step))

    def __repr__(self) -> str:
        return (
            f"StepContext(workflow_id={self.workflow_id!r}, step={self.step!r}, "
            f"attempt={self.attempt}, compensating={self.compensating})"
        )
