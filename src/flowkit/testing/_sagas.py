"""Fault plans: test every failure path of a saga without infrastructure.

A :class:`FaultPlan` lists what should go wrong, and :meth:`FaultPlan.install`
plugs it into an orchestrator (your own class, unchanged)::

    plan = (
        FaultPlan()
        .fail("charge_payment", times=2)            # the first two attempts raise
        .time_out("assign_partner")                 # acts, then its reply is "lost"
        .fail_compensation("release_stock", times=1)
    )
    async with plan.install(PlaceOrder(store=MemoryStore())) as orders:
        outcome = await orders.run(order)
    assert_compensation_order(outcome, ["charge_payment", "reserve_stock"])

A crash stops the whole orchestrator as if its process were killed: nothing
after the crash point is checkpointed, and every call on it raises
:class:`SimulatedCrash`. Resume on a new instance with the same store::

    store = MemoryStore()
    plan = FaultPlan().crash("charge_payment", at="acted")
    async with plan.install(PlaceOrder(store=store)) as orders:
        with pytest.raises(SimulatedCrash):
            await orders.run(order, workflow_id="o-1")
    async with PlaceOrder(store=store) as orders:
        [outcome] = await orders.resume()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from .._errors import DefinitionError, FlowkitError, StepTimeout
from ..orchestration import Parallel, Remote, SagaObserver, Sleep, Step, WaitForEvent, WaitForSignal

if TYPE_CHECKING:
    from ..orchestration import (
        Orchestrator,
        Outcome,
        StepContext,
        StepEvent,
        WorkflowInfo,
    )

__all__ = [
    "FaultPlan",
    "InjectedFault",
    "Injection",
    "SimulatedCrash",
    "assert_compensation_order",
]

OrchestratorT = TypeVar("OrchestratorT", bound="Orchestrator[Any]")

StepRef = str | Callable[..., Awaitable[Any]] | Step[Any, Any] | Remote[Any]

CrashPoint = Literal[
    "started",
    "acted",
    "succeeded",
    "compensation_started",
    "compensation_acted",
    "compensated",
]

_POINTS: tuple[CrashPoint, ...] = (
    "started",
    "acted",
    "succeeded",
    "compensation_started",
    "compensation_acted",
    "compensated",
)


class SimulatedCrash(BaseException):
    """The process "died" at a crash point of a :class:`FaultPlan`.

    It derives from :class:`BaseException` (like :class:`KeyboardInterrupt`)
    so that no ``except Exception`` in a step or in the engine can swallow it.
    Once raised, the orchestrator it was raised in is dead: resume the
    workflows on a new instance sharing the store.
    """


class InjectedFault(FlowkitError):
    """The error a :class:`FaultPlan` raises in place of a step or compensation."""


@dataclass(frozen=True, slots=True)
class Injection:
    """One fault that a plan injected.

    Attributes:
        workflow_id: the workflow it hit.
        step: the step it hit.
        kind: ``"fail"``, ``"timeout"`` or ``"crash"``.
        compensation: whether it hit the step's compensation.
        detail: the crash point, for a crash.
    """

    workflow_id: str
    step: str
    kind: Literal["fail", "timeout", "crash"]
    compensation: bool = False
    detail: str | None = None


class _Rule:
    __slots__ = (
        "acted",
        "compensation",
        "error",
        "kind",
        "point",
        "ref",
        "remaining",
        "step",
        "workflow_id",
    )

    def __init__(
        self,
        kind: Literal["fail", "timeout", "crash"],
        ref: StepRef,
        *,
        compensation: bool = False,
        times: int | None = 1,
        error: BaseException | type[BaseException] | None = None,
        acted: bool = True,
        point: CrashPoint | None = None,
        workflow_id: str | None = None,
    ) -> None:
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise DefinitionError(f"times must be an integer or None, got {times!r}")
        if times is not None and times < 1:
            raise DefinitionError(f"times must be >= 1 (or None for always), got {times}")
        if error is not None and not (
            isinstance(error, BaseException)
            or (isinstance(error, type) and issubclass(error, BaseException))
        ):
            raise DefinitionError(f"error must be an exception or exception class, got {error!r}")
        self.kind = kind
        self.ref = ref
        self.step = ref if isinstance(ref, str) else None
        self.compensation = compensation
        self.remaining = times
        self.error = error
        self.acted = acted
        self.point = point
        self.workflow_id = workflow_id

    def matches(self, workflow_id: str, step: str) -> bool:
        return (
            self.step == step
            and self.remaining != 0
            and (self.workflow_id is None or self.workflow_id == workflow_id)
        )

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


class FaultPlan(SagaObserver):
    """Failures to inject into an orchestrator's steps, for tests.

    Each method adds a rule and returns the plan, so rules chain. A rule names
    a step by name, by its function or by its ``Step``/``Remote`` declaration,
    and optionally limits itself to one workflow id. Rules apply in the order
    they were added; each fires ``times`` times (``None``: every time).

    A plan is a :class:`~flowkit.orchestration.SagaObserver`: it fails and
    times out calls in :meth:`intercept`, and crashes at the engine's
    notifications (``step_started``, ``step_acted``, ``step_succeeded``) by
    raising :class:`SimulatedCrash`.

    Attributes:
        injected: every fault injected so far, in order.
    """

    __slots__ = ("_rules", "injected")

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self.injected: list[Injection] = []

    # -- rules --------------------------------------------------------------------------

    def fail(
        self,
        step: StepRef,
        *,
        times: int | None = 1,
        error: BaseException | type[BaseException] | None = None,
        workflow_id: str | None = None,
    ) -> Self:
        """Make a step's attempts raise instead of running.

        Args:
            step: the step.
            times: how many attempts fail (None: all of them).
            error: the exception to raise (an instance or a class);
                :class:`InjectedFault` by default. Raise a
                :class:`~flowkit.NonRetryableError` to skip the retries.
            workflow_id: only in this workflow.

        Returns:
            The plan.
        """
        self._rules.append(_Rule("fail", step, times=times, error=error, workflow_id=workflow_id))
        return self

    def time_out(
        self,
        step: StepRef,
        *,
        times: int | None = 1,
        acted: bool = True,
        workflow_id: str | None = None,
    ) -> Self:
        """Make a step's attempts time out, at once (no real waiting).

        Args:
            step: the step.
            times: how many attempts time out (None: all of them).
            acted: run the step before timing it out (its effects happen, its
                result is lost: the case compensations exist for); False to
                time out without running it.
            workflow_id: only in this workflow.

        Returns:
            The plan.
        """
        self._rules.append(
            _Rule("timeout", step, times=times, acted=acted, workflow_id=workflow_id)
        )
        return self

    def fail_compensation(
        self,
        step: StepRef,
        *,
        times: int | None = 1,
        error: BaseException | type[BaseException] | None = None,
        workflow_id: str | None = None,
    ) -> Self:
        """Make the compensation of a step raise instead of running.

        With ``times`` at least the compensation's retry attempts (or None),
        the workflow ends ``FAILED``.

        Args:
            step: the step whose compensation fails.
            times: how many compensation attempts fail (None: all of them).
            error: the exception to raise; :class:`InjectedFault` by default.
            workflow_id: only in this workflow.

        Returns:
            The plan.
        """
        self._rules.append(
            _Rule(
                "fail", step, compensation=True, times=times, error=error, workflow_id=workflow_id
            )
        )
        return self

    def time_out_compensation(
        self,
        step: StepRef,
        *,
        times: int | None = 1,
        acted: bool = True,
        workflow_id: str | None = None,
    ) -> Self:
        """Make the compensation of a step time out, at once.

        Args:
            step: the step whose compensation times out.
            times: how many compensation attempts time out (None: all of them).
            acted: run the compensation before timing it out.
            workflow_id: only in this workflow.

        Returns:
            The plan.
        """
        self._rules.append(
            _Rule(
                "timeout",
                step,
                compensation=True,
                times=times,
                acted=acted,
                workflow_id=workflow_id,
            )
        )
        return self

    def crash(
        self,
        step: StepRef,
        *,
        at: CrashPoint = "succeeded",
        workflow_id: str | None = None,
    ) -> Self:
        """Stop the orchestrator as if its process were killed, once.

        The crash points of a step, in order:

        * ``"started"``: its start is checkpointed, it has not run;
        * ``"acted"``: it ran (its effects happened), its success is not
          checkpointed: after a resume it runs again, with the same
          idempotency key;
        * ``"succeeded"``: its success is checkpointed (with the start of the
          next step);
        * ``"compensation_started"``, ``"compensation_acted"``,
          ``"compensated"``: the same for its compensation.

        Args:
            step: the step.
            at: the crash point.
            workflow_id: only in this workflow.

        Returns:
            The plan.
        """
        if at not in _POINTS:
            raise DefinitionError(f"unknown crash point {at!r}; one of {', '.join(_POINTS)}")
        self._rules.append(_Rule("crash", step, point=at, workflow_id=workflow_id))
        return self

    # -- installation ---------------------------------------------------------------------

    def install(self, orchestrator: OrchestratorT) -> OrchestratorT:
        """Plug the plan into an orchestrator (before or after it is started), as
        an observer (:meth:`~flowkit.orchestration.Orchestrator.add_observer`).

        A plan can be installed on several instances in turn (for example on
        the one that resumes after a simulated crash); its rules keep their
        remaining counts. Installing it twice on one instance does nothing more.

        Args:
            orchestrator: the orchestrator.

        Returns:
            The same orchestrator.

        Raises:
            DefinitionError: if a rule names a step the orchestrator does not have,
                a compensation rule a step without one, or a rule a wait step
                (:class:`~flowkit.orchestration.Sleep`, ``WaitForEvent``,
                ``WaitForSignal``) cannot meet: a wait runs no code to fail or
                time out, and its crash points are ``started`` and ``succeeded``.
        """
        waits = {
            orchestrator.step_name(entry)
            for entry in orchestrator.steps
            if isinstance(entry, Sleep | WaitForEvent | WaitForSignal)
        }
        compensated = {
            orchestrator.step_name(declared)
            for entry in orchestrator.steps
            for declared in (entry.steps if isinstance(entry, Parallel) else (entry,))
            if getattr(declared, "compensate", None) is not None
        }
        for rule in self._rules:
            try:
                rule.step = orchestrator.step_name(rule.ref)
            except KeyError as exc:
                raise DefinitionError(f"FaultPlan: {exc.args[0]}") from None
            if rule.compensation and rule.step not in compensated:
                raise DefinitionError(f"FaultPlan: step {rule.step!r} has no compensation")
            if rule.step in waits and (
                rule.kind != "crash" or rule.point not in ("started", "succeeded")
            ):
                raise DefinitionError(
                    f"FaultPlan: step {rule.step!r} is a wait: it runs no code to fail or "
                    "time out (withhold its event or signal, or give it a short timeout), "
                    "and it crashes only at 'started' or 'succeeded'"
                )
        orchestrator.add_observer(self)
        return orchestrator

    # -- the observer -----------------------------------------------------------------------

    async def intercept(self, ctx: StepContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """Fail or time out a step or compensation that a rule names (see :meth:`fail`)."""
        workflow_id, step, compensation = ctx.workflow_id, ctx.step, ctx.compensating
        for rule in self._rules:
            if rule.kind == "crash" or rule.compensation != compensation:
                continue
            if not rule.matches(workflow_id, step):
                continue
            rule.consume()
            self.injected.append(Injection(workflow_id, step, rule.kind, compensation))
            if rule.kind == "timeout":
                if rule.acted:
                    await proceed()
                raise StepTimeout(f"step {step!r} timed out")
            error = rule.error
            if error is None:
                what = "compensation of step" if compensation else "step"
                raise InjectedFault(f"injected failure of {what} {step!r}")
            raise error() if isinstance(error, type) else error
        return await proceed()

    def step_started(self, event: StepEvent) -> None:
        """Crash at ``"started"`` or ``"compensation_started"`` (see :meth:`crash`)."""
        self._reached(event, "compensation_started" if event.compensating else "started")

    def step_acted(self, event: StepEvent) -> None:
        """Crash at ``"acted"`` or ``"compensation_acted"`` (see :meth:`crash`)."""
        self._reached(event, "compensation_acted" if event.compensating else "acted")

    def step_succeeded(self, event: StepEvent) -> None:
        """Crash at ``"succeeded"`` or ``"compensated"`` (see :meth:`crash`)."""
        self._reached(event, "compensated" if event.compensating else "succeeded")

    def _reached(self, event: StepEvent, point: CrashPoint) -> None:
        workflow_id, step = event.workflow_id, event.step
        for rule in self._rules:
            if rule.kind != "crash" or rule.point != point:
                continue
            if not rule.matches(workflow_id, step):
                continue
            rule.consume()
            self.injected.append(Injection(workflow_id, step, "crash", detail=point))
            raise SimulatedCrash(
                f"simulated crash at {point!r} of step {step!r} in workflow {workflow_id!r}"
            )


def assert_compensation_order(
    subject: Outcome | WorkflowInfo, expected: Sequence[str | Collection[str]]
) -> None:
    """Assert which compensations ran, in which order.

    Args:
        subject: an outcome (from ``run``, ``resume``, ...) or ``get(id)``'s details.
        expected: step names in the order their compensations finished; a
            set (or any non-string collection) of names stands for the members
            of a parallel group, compensated together in any order.

    Raises:
        AssertionError: if the compensations differ.
    """
    actual = list(subject.compensated)
    position = 0
    for entry in expected:
        group = [entry] if isinstance(entry, str) else sorted(entry)
        chunk = actual[position : position + len(group)]
        if sorted(chunk) != sorted(group):
            raise AssertionError(
                f"compensations ran in the order {actual}, expected {list(expected)} "
                f"(at position {position}: got {chunk}, expected {group})"
            )
        position += len(group)
    if position != len(actual):
        raise AssertionError(
            f"compensations ran in the order {actual}, expected {list(expected)} "
            f"({actual[position:]} ran too)"
        )
