"""The saga engine: drive one workflow run forward through its steps and back
through their compensations, checkpoint every transition, decide what is retried.

The :class:`~flowkit.orchestration.Orchestrator` keeps track of the runs of
its process and hands each to :meth:`Engine.execute`; everything that happens
to a run between its start and its outcome happens here, and is reported to
the observers (:class:`~flowkit.orchestration.SagaObserver`).
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
from pydantic import BaseModel

from .._cancel import is_real_cancellation
from .._errors import (
    ConcurrencyConflict,
    DeadlineExceeded,
    NonRetryableError,
    OrchestratorNotStarted,
    RemoteError,
    RequestTimeout,
    StepTimeout,
    WorkflowCancelled,
)
from .._events import FLOW, Command, Message
from .._exits import leaves
from ._context import StepContext
from ._model import Outcome, WorkflowStatus
from ._observe import SagaObserver, StepEvent, WorkflowEvent
from ._state import error_of, step_error
from ._waiting import Parked, Waiting

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from ..stores._base import StateStore
    from ._declare import Action, Plan, StepSpec
    from ._state import Run, StepState

__all__ = ["Engine", "Halted", "Parked", "Requester", "Superseded", "unwrap"]

logger = logging.getLogger("flowkit.orchestration")

M = TypeVar("M", bound=Message)

_RUNNING = WorkflowStatus.RUNNING
_COMPENSATING = WorkflowStatus.COMPENSATING
_COMPLETED = WorkflowStatus.COMPLETED


class Requester(Protocol):
    """What remote steps need from a bus: request/reply.

    :class:`~flowkit.Choreography` is one; pass a running bus as
    ``Orchestrator(bus=...)`` to share it.
    """

    async def request(
        self,
        command: Command[M],
        *,
        timeout: float = ...,
        idempotency_key: str | None = ...,
        correlation_id: str | None = ...,
    ) -> M:
        """Send ``command`` and return its typed reply.

        Raises:
            RequestTimeout: if no reply came within ``timeout``.
            RemoteError: if the answering service failed.
        """
        ...


class Superseded(Exception):
    """Another process (or call) saved this workflow since we read it."""


class Halted(Exception):
    """The orchestrator stopped this run where it stood (it is shutting down)."""


def unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to re-raise for a task group's exception group."""
    found = leaves(group)
    cancelled = anyio.get_cancelled_exc_class()
    for exc in found:
        if not isinstance(exc, cancelled | Exception):
            return exc  # a simulated crash, KeyboardInterrupt, ...
    for exc in found:
        if isinstance(exc, Superseded | Halted | Parked):
            return exc
    for exc in found:
        if not isinstance(exc, cancelled):
            return exc
    return group


def _stops(exc: BaseException) -> bool:
    """Whether an exception raised by a step stops the run, rather than failing
    the attempt: a real cancellation, or the process stopping."""
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_stops(inner) for inner in exc.exceptions)
    return is_real_cancellation(exc)


def _fields(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    return value


def _overrides_intercept(observer: SagaObserver) -> bool:
    return type(observer).intercept is not SagaObserver.intercept


class Engine:
    """Runs the workflows of one orchestrator instance.

    Args:
        plan: the orchestrator's compiled steps.
        name: the orchestrator's name.
        deadline: the orchestrator's deadline, in seconds (for its message).
        store: where runs are checkpointed.
        running: the runs of the process, by workflow id (kept by the
            orchestrator); a crash stops them all.
        lease: how long a checkpoint holds the run's lease, in seconds.
    """

    def __init__(
        self,
        plan: Plan,
        name: str,
        deadline: float | None,
        store: StateStore,
        running: Mapping[str, Run],
        lease: float,
    ) -> None:
        self.plan = plan
        self.name = name
        self.deadline = deadline
        self.store = store
        self.running = running
        self.lease = lease
        self.requester: Requester | None = None
        self.observers: tuple[SagaObserver, ...] = ()
        self.interceptors: tuple[SagaObserver, ...] = ()
        self.crashed: type[BaseException] | None = None
        self.waiting = Waiting(self, None, lambda due: None)

    # -- observers and stopping ---------------------------------------------------------

    def observe(self, observers: Iterable[SagaObserver]) -> None:
        """Report to these observers from now on."""
        self.observers = tuple(observers)
        self.interceptors = tuple(o for o in self.observers if _overrides_intercept(o))

    def check_crash(self) -> None:
        """Raise if an observer stopped the engine as if its process had died."""
        crashed = self.crashed
        if crashed is not None:
            message = (
                f"{self.name} was stopped by {crashed.__name__} raised by an observer "
                "(as if its process had died); resume its workflows on a new instance"
            )
            try:
                error = crashed(message)
            except Exception:
                error = crashed()
            raise error

    def _crash(self, exc: BaseException) -> None:
        """An observer raised a BaseException: stop every run where it stands, and
        write nothing more."""
        if self.crashed is None:
            self.crashed = type(exc)
        for run in list(self.running.values()):
            if run.scope is not None:
                run.scope.cancel()

    def halt(self, run: Run) -> None:
        """Stop a run where it stands (the orchestrator is shutting down, or
        another process took its lease): it writes nothing more and stays
        unfinished, to be resumed."""
        run.halted = True
        if run.scope is not None:
            run.scope.cancel()

    def cancel(self, run: Run) -> None:
        """Cancel a run: a running step is interrupted and the run compensates.
        Too late once past the pivot (then nothing happens)."""
        if run.status is _RUNNING and not run.pivot_done and not run.cancel_requested:
            run.cancel_requested = True
            if run.scope is not None:
                run.scope.cancel()

    def _tell(self, method: str, event: object) -> None:
        if self.crashed is not None:
            return
        for observer in self.observers:
            try:
                getattr(observer, method)(event)
            except Exception:
                logger.exception(
                    "%s: observer %r failed in %s; ignored", self.name, observer, method
                )
            except BaseException as exc:
                self._crash(exc)
                raise

    def _tell_workflow(self, method: str, run: Run) -> None:
        clock = None if method == "workflow_started" else run.clock
        waiting = run.waiting_step() if run.status is WorkflowStatus.WAITING else None
        wait = None if waiting is None else waiting.spec.wait
        self._tell(
            method,
            WorkflowEvent(
                workflow=self.name,
                workflow_id=run.id,
                status=run.status,
                resumed=not run.fresh,
                duration=None if clock is None else time.monotonic() - clock,
                error=step_error(run.error),
                reason=run.reason,
                waiting_for=None if wait is None else wait.what,
                wake_at=None if wait is None else run.wake_at,
            ),
        )

    def _tell_step(
        self,
        method: str,
        run: Run,
        state: StepState,
        compensating: bool,
        *,
        error: BaseException | None = None,
        will_retry: bool = False,
        retry_delay: float | None = None,
    ) -> None:
        now = time.monotonic()
        clock = state.clock
        if method == "step_started":
            state.clock = now
            duration = None
        else:
            duration = None if clock is None else now - clock
        self._tell(
            method,
            StepEvent(
                workflow=self.name,
                workflow_id=run.id,
                step=state.spec.name,
                attempt=state.comp_attempts if compensating else state.attempts,
                compensating=compensating,
                duration=duration,
                error=error,
                will_retry=will_retry,
                retry_delay=retry_delay,
            ),
        )

    def _tell_stage_started(self, run: Run, index: int) -> None:
        for spec in self.plan.stages[index]:
            state = run.steps[spec.name]
            if state.status == "running":
                self._tell_step("step_started", run, state, False)

    # -- checkpoints ----------------------------------------------------------------------

    async def save(self, run: Run) -> None:
        """Checkpoint a run.

        Raises:
            Superseded: if another process saved the workflow since it was read.
        """
        if self.crashed is not None:
            self.check_crash()
        record = run.record(self.name)
        try:
            stored = await self.store.save_workflow(
                record,
                history=record.history,
                lease=None if record.owner is None else self.lease,
            )
        except ConcurrencyConflict as exc:
            raise Superseded(run.id) from exc
        run.stored(stored, len(record.history))
        if stored.cancel_requested:
            self.cancel(run)

    async def _save_shared(self, run: Run) -> None:
        """Save from one of several concurrent members of a parallel group."""
        if run.lock is None:
            run.lock = anyio.Lock()
        with anyio.CancelScope(shield=True):
            async with run.lock:
                await self.save(run)

    # -- a whole run -----------------------------------------------------------------------

    def _local_deadline(self, run: Run) -> float:
        if run.deadline_at is None or run.pivot_done:
            return math.inf
        return anyio.current_time() + (run.deadline_at - time.time())

    async def execute(self, run: Run) -> Outcome:
        """Run a workflow from its last checkpoint to its end.

        Returns:
            Its outcome: ``COMPLETED``, ``COMPENSATED`` or ``FAILED``.

        Raises:
            Halted: if :meth:`halt` stopped it (it stays unfinished).
            Superseded: if another process saved it meanwhile.
            Parked: if it was saved ``WAITING`` (a wait step is not due yet).
        """
        self.check_crash()
        run.wake()
        observed = bool(self.observers)
        if observed:
            self._tell_workflow("workflow_started", run)
            run.clock = time.monotonic()
            if run.begun >= 0:  # a new run: its first stage was begun when it was created
                self._tell_stage_started(run, run.begun)
        flow = FLOW.set(run.id)  # what its steps publish or request joins the workflow's flow
        try:
            try:
                await self._phases(run)
            except BaseExceptionGroup as group:
                raise unwrap(group) from None
        except BaseException:
            if self.observers:
                self._tell_workflow("workflow_stopped", run)
            raise
        finally:
            run.scope = None
            FLOW.reset(flow)
        if self.observers:
            self._tell_workflow("workflow_finished", run)
        return run.to_outcome(self.plan.name_of)

    async def _phases(self, run: Run) -> None:
        while run.status is _RUNNING:
            if not run.cancel_requested:
                with anyio.CancelScope(deadline=self._local_deadline(run)) as scope:
                    run.scope = scope
                    if run.halted:
                        scope.cancel()
                    await self._forward(run)
                run.scope = None
                if not scope.cancelled_caught:
                    break
            self.check_crash()
            if run.halted:
                raise Halted(run.id)
            await self._interrupted(run)
        if run.status is _COMPENSATING:
            with anyio.CancelScope() as scope:
                run.scope = scope
                if run.halted:
                    scope.cancel()
                await self._backward(run)
            run.scope = None
            self.check_crash()
            if scope.cancelled_caught:
                raise Halted(run.id)

    async def _interrupted(self, run: Run) -> None:
        """The forward phase was cut by ``cancel()`` or the deadline: resync with the
        store (a save may have been cut too) and turn back."""
        cancelled = run.cancel_requested
        record = await self.store.load_workflow(run.id)
        owner = run.owner
        run.load(record)
        if run.owner is None:  # a park was cut short: the run is still this process's
            run.owner = owner
        run.wake()
        if run.status is not _RUNNING:
            return
        run.cancel_requested = False
        if run.pivot_done:
            # past the pivot there is no way back: the deadline no longer applies and
            # a cancellation that arrived while the pivot was running comes too late
            return
        if cancelled:
            run.event("cancel_requested")
            reason = "the workflow was cancelled"
            error = error_of("", WorkflowCancelled(reason))
        else:
            reason = f"the workflow's deadline of {self.deadline}s passed"
            run.event("deadline_exceeded")
            error = error_of("", DeadlineExceeded(reason))
        interrupted = run.interrupt_running()
        run.turn_back(error, reason)
        await self.save(run)
        if self.observers:
            for state in interrupted:
                self._tell_step("step_interrupted", run, state, False)

    # -- forward ---------------------------------------------------------------------------

    async def _forward(self, run: Run) -> None:
        stages = self.plan.stages
        count = len(stages)
        index = run.next_stage()
        while index < count:
            stage = stages[index]
            if run.begun != index:
                waiting = stage[0].wait is not None and run.steps[stage[0].name].status == "waiting"
                run.begin_stage(index)
                if not waiting:  # a woken wait saves when it knows what it does
                    await self.save(run)
                    if self.observers:
                        self._tell_stage_started(run, index)
            if stage[0].wait is not None:
                ok = await self.waiting.run(run, stage[0])
            elif len(stage) == 1:
                ok = await self._run_step(run, stage[0], False)
            else:
                ok = await self._run_group(run, stage)
            if not ok:
                return
            index += 1
            if index < count:
                run.begin_stage(index)
            else:
                run.finish(_COMPLETED)
            await self.save(run)
            if run.pivot_done and run.scope is not None:
                run.scope.deadline = math.inf
            if self.observers:
                if len(stage) == 1:
                    self._tell_step("step_succeeded", run, run.steps[stage[0].name], False)
                if index < count:
                    self._tell_stage_started(run, index)

    def context(self, run: Run, name: str, attempt: int) -> StepContext:
        """The context of a forward step's attempt."""
        return self._context(run, name, attempt, False)

    def tell_failed(self, run: Run, state: StepState, failure: BaseException) -> None:
        """Report a forward step's last failed attempt to the observers."""
        if self.observers:
            self._tell_step("step_failed", run, state, False, error=failure)

    def _context(self, run: Run, name: str, attempt: int, compensating: bool) -> StepContext:
        return StepContext(
            workflow_id=run.id,
            workflow=self.name,
            step=name,
            idempotency_key=f"{run.id}:{name}:compensate" if compensating else f"{run.id}:{name}",
            attempt=attempt,
            results=run.results_view,
            compensating=compensating,
            names=self.plan.name_of,
        )

    def _retryable(self, run: Run, spec: StepSpec, exc: BaseException, failures: int) -> bool:
        if isinstance(exc, RemoteError) and not exc.retryable:
            return False
        if run.pivot_done:
            return spec.retry.is_retryable(exc)
        return spec.retry.should_retry(exc, failures)

    async def _run_step(self, run: Run, spec: StepSpec, shared: bool) -> bool:
        """Run a begun step until it succeeds or gives up; True if it succeeded.

        A step's attempt fails when it raises anything but a real cancellation
        (of the workflow, of its group or of the orchestrator) or an exception
        that stops the process (``KeyboardInterrupt``, ``SystemExit``): those
        propagate and leave the step running, to be retried after a resume.
        """
        name = spec.name
        state = run.steps[name]
        action = spec.action
        fn = action.fn if action.timeout is None and not self.interceptors else None
        while True:
            ctx = self._context(run, name, state.attempts, False)
            failure: BaseException | None = None
            acted = False
            try:
                if fn is not None:
                    result = await fn(ctx, run.input)
                else:
                    result = await self._call(run, action, ctx)
            except (StepTimeout, RequestTimeout) as exc:
                failure, acted = exc, True
            except Exception as exc:
                failure = exc
            except BaseException as exc:
                if self.crashed is not None or _stops(exc):
                    raise
                failure = exc
            else:
                if self.observers:
                    self._tell_step("step_acted", run, state, False)
                recorded = None
                if action.dump is None:
                    result = None
                else:
                    try:
                        recorded = action.dump(result)
                    except Exception as exc:
                        # the step acted, but its result cannot be recorded: a bug, not retried
                        failure, acted = (
                            NonRetryableError(
                                f"the result of step {name!r} does not match its annotation: {exc}"
                            ),
                            True,
                        )
                if failure is None:
                    state.succeed(recorded)
                    run.results[name] = result
                    run.event("step_succeeded", name, state.attempts)
                    if spec.pivot:
                        run.pivot_done = True
                    if shared:
                        await self._save_shared(run)
                        if self.observers:
                            self._tell_step("step_succeeded", run, state, False)
                    return True

            assert failure is not None
            error = error_of(name, failure)
            retry = self._retryable(run, spec, failure, state.failures + 1)
            state.attempt_failed(error, acted, final=not retry)
            event = "step_timed_out" if acted else "step_failed"
            if not retry:
                run.event(event, name, state.attempts, error)
                logger.warning(
                    "%s %s: step %r failed after %d attempt(s): %s",
                    self.name,
                    run.id,
                    name,
                    state.attempts,
                    failure,
                )
                if not shared:
                    self.give_up(run, spec)
                    await self.save(run)
                if self.observers:
                    self._tell_step("step_failed", run, state, False, error=failure)
                return False
            delay = spec.retry.delay(state.failures)
            run.event(event, name, state.attempts, error, f"retrying in {delay:.3f}s")
            logger.info(
                "%s %s: step %r attempt %d failed (%s); retrying in %.3fs",
                self.name,
                run.id,
                name,
                state.attempts,
                failure,
                delay,
            )
            await (self._save_shared(run) if shared else self.save(run))
            if self.observers:
                self._tell_step(
                    "step_failed",
                    run,
                    state,
                    False,
                    error=failure,
                    will_retry=True,
                    retry_delay=delay,
                )
            if delay > 0:
                await anyio.sleep(delay)
            state.begin()
            run.event("step_started", name, state.attempts)
            await (self._save_shared(run) if shared else self.save(run))
            if self.observers:
                self._tell_step("step_started", run, state, False)

    def give_up(self, run: Run, spec: StepSpec) -> None:
        """A forward step failed for good: turn back, or fail past the pivot."""
        error = run.steps[spec.name].error
        assert error is not None
        what = f"step {spec.name!r} failed: {error['type']}: {error['message']}"
        if run.pivot_done:
            reason = f"{what} (past the pivot {self.plan.pivot!r}; not retryable)"
            run.error = error
            run.fail(reason, run.todo_list(), "forward")
            logger.error("%s %s FAILED: %s", self.name, run.id, reason)
        else:
            run.turn_back(error, what)

    async def _run_group(self, run: Run, stage: tuple[StepSpec, ...]) -> bool:
        failed: list[StepSpec] = []

        async def member(spec: StepSpec) -> None:
            if not await self._run_step(run, spec, True):
                failed.append(spec)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            for spec in stage:
                if run.steps[spec.name].status != "succeeded":
                    tg.start_soon(member, spec)
        if not failed:
            return True
        interrupted = []
        for spec in stage:
            state = run.steps[spec.name]
            if state.interrupt():
                run.event("step_interrupted", spec.name, state.attempts)
                interrupted.append(state)
        self.give_up(run, failed[0])
        await self.save(run)
        if self.observers:
            for state in interrupted:
                self._tell_step("step_interrupted", run, state, False)
        return False

    # -- calls -----------------------------------------------------------------------------

    async def _call(self, run: Run, action: Action, ctx: StepContext) -> Any:
        """Call a step or compensation once, through the observers and its timeout."""
        timeout = action.timeout if action.fn is not None else None
        if timeout is None:
            return await self._invoke(run, action, ctx)
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
            return await self._invoke(run, action, ctx)
        if scope.cancelled_caught:
            what = "compensation of step" if ctx.compensating else "step"
            raise StepTimeout(f"{what} {ctx.step!r} took longer than {timeout}s")
        raise AssertionError("unreachable")  # pragma: no cover

    def _invoke(self, run: Run, action: Action, ctx: StepContext) -> Awaitable[Any]:
        call: Callable[[], Awaitable[Any]]
        if action.fn is not None:
            call = partial(action.fn, ctx, run.input)
        else:
            call = partial(self._request, run, action, ctx)
        for observer in reversed(self.interceptors):
            call = partial(observer.intercept, ctx, call)
        return call()

    async def _request(self, run: Run, action: Action, ctx: StepContext) -> Any:
        requester = self.requester
        if requester is None:
            raise OrchestratorNotStarted(f"{self.name} has no bus for its remote steps")
        assert action.command is not None and action.timeout is not None
        if action.build is not None:
            command = action.build(ctx, run.input)
            if not isinstance(command, action.command):
                raise NonRetryableError(
                    f"the build function of step {ctx.step!r} returned "
                    f"{type(command).__name__}, not {action.command.__name__}"
                )
        else:
            command = action.command.model_validate(_fields(run.input))
        return await requester.request(
            command,
            timeout=action.timeout,
            idempotency_key=ctx.idempotency_key,
            correlation_id=run.id,
        )

    # -- backward --------------------------------------------------------------------------

    async def _backward(self, run: Run) -> None:
        for stage in reversed(self.plan.stages):
            todo = [spec for spec in stage if run.steps[spec.name].needs_undo]
            if not todo:
                continue
            if len(todo) == 1:
                failed = [] if await self._compensate(run, todo[0], False) else todo
            else:
                failed = await self._compensate_group(run, todo)
            if failed:
                state = run.steps[failed[0].name]
                error = state.comp_error
                assert error is not None
                reason = (
                    f"the compensation of step {failed[0].name!r} failed after "
                    f"{state.comp_attempts} attempt(s): {error['type']}: {error['message']}"
                )
                run.fail(reason, run.undo_list(), "backward")
                logger.error("%s %s FAILED: %s", self.name, run.id, reason)
                await self.save(run)
                return
        run.finish(WorkflowStatus.COMPENSATED)
        await self.save(run)

    async def _compensate_group(
        self, run: Run, todo: builtins.list[StepSpec]
    ) -> builtins.list[StepSpec]:
        """Compensate members of a parallel group together; return those that failed."""
        failed: list[StepSpec] = []

        async def member(spec: StepSpec) -> None:
            if not await self._compensate(run, spec, True):
                failed.append(spec)

        async with anyio.create_task_group() as tg:
            for spec in todo:
                tg.start_soon(member, spec)
        return failed

    async def _compensate(self, run: Run, spec: StepSpec, shared: bool) -> bool:
        """Run one step's compensation until it succeeds or gives up.

        A compensation's attempt fails on what would fail a step's (see
        :meth:`_run_step`).
        """
        name = spec.name
        state = run.steps[name]
        action = spec.compensation
        assert action is not None
        policy = spec.compensation_retry
        while True:
            state.comp_begin()
            run.event("compensation_started", name, state.comp_attempts)
            await (self._save_shared(run) if shared else self.save(run))
            if self.observers:
                self._tell_step("step_started", run, state, True)
            ctx = self._context(run, name, state.comp_attempts, True)
            failure: BaseException
            try:
                await self._call(run, action, ctx)
            except Exception as exc:
                failure = exc
            except BaseException as exc:
                if self.crashed is not None or _stops(exc):
                    raise
                failure = exc
            else:
                if self.observers:
                    self._tell_step("step_acted", run, state, True)
                state.comp_succeed()
                run.compensated.append(name)
                run.event("step_compensated", name, state.comp_attempts)
                await (self._save_shared(run) if shared else self.save(run))
                if self.observers:
                    self._tell_step("step_succeeded", run, state, True)
                return True
            error = error_of(name, failure)
            retry = not (isinstance(failure, RemoteError) and not failure.retryable) and (
                policy.should_retry(failure, state.comp_failures + 1)
            )
            state.comp_attempt_failed(error, final=not retry)
            if not retry:
                run.event("compensation_failed", name, state.comp_attempts, error)
                logger.warning(
                    "%s %s: compensation of %r failed after %d attempt(s): %s",
                    self.name,
                    run.id,
                    name,
                    state.comp_attempts,
                    failure,
                )
                if self.observers:
                    self._tell_step("step_failed", run, state, True, error=failure)
                return False
            delay = policy.delay(state.comp_failures)
            run.event(
                "compensation_failed", name, state.comp_attempts, error, f"retrying in {delay:.3f}s"
            )
            await (self._save_shared(run) if shared else self.save(run))
            if self.observers:
                self._tell_step(
                    "step_failed",
                    run,
                    state,
                    True,
                    error=failure,
                    will_retry=True,
                    retry_delay=delay,
                )
            if delay > 0:
                await anyio.sleep(delay)
