"""The saga engine: run steps forward, compensate in reverse, checkpoint every
transition, resume after a crash."""

from __future__ import annotations

import logging
import math
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, Self, TypeVar

import anyio
from pydantic import BaseModel

from .._errors import (
    ConcurrencyConflict,
    DeadlineExceeded,
    DefinitionError,
    InvalidWorkflowState,
    NonRetryableError,
    OrchestratorNotStarted,
    RemoteError,
    RequestTimeout,
    StepTimeout,
    WorkflowCancelled,
    WorkflowNotFound,
)
from .._events import Command, Message, new_message_id
from .._exits import exit_stack
from .._retry import Retry
from ._context import StepContext
from ._declare import Action, Parallel, Plan, Remote, Step, StepSpec, compile_plan
from ._model import Outcome, WorkflowInfo, WorkflowStatus
from ._state import Run, error_of

if TYPE_CHECKING:
    import builtins
    from collections.abc import Collection, Iterable, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ..stores._base import StateStore, WorkflowRecord
    from ..transports._base import Transport

__all__ = ["FaultHook", "Orchestrator", "Requester"]

logger = logging.getLogger("flowkit.orchestration")

InputT = TypeVar("InputT")
M = TypeVar("M", bound=Message)

_RUNNING = WorkflowStatus.RUNNING
_COMPENSATING = WorkflowStatus.COMPENSATING
_COMPLETED = WorkflowStatus.COMPLETED
_UNFINISHED = (WorkflowStatus.RUNNING.value, WorkflowStatus.COMPENSATING.value)
_FINISHED = frozenset(
    {WorkflowStatus.COMPLETED.value, WorkflowStatus.COMPENSATED.value, WorkflowStatus.FAILED.value}
)

CrashPoint = Literal[
    "started",
    "acted",
    "succeeded",
    "compensation_started",
    "compensation_acted",
    "compensated",
]


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


class FaultHook(Protocol):
    """Where a test's fault plan plugs into the engine (see ``flowkit.testing.FaultPlan``)."""

    def before_call(
        self, workflow_id: str, step: str, compensation: bool
    ) -> Literal["timeout", "timeout_after", None]:
        """Called before a step or compensation runs; may raise to fail the attempt.

        Returns:
            ``"timeout"`` to time the attempt out without running it,
            ``"timeout_after"`` to run it and then time it out, or None.
        """
        ...

    def reached(self, workflow_id: str, step: str, point: CrashPoint) -> None:
        """Called at each crash point of a step; may raise to stop the process."""
        ...


class _Superseded(Exception):
    """Another process (or call) saved this workflow since we read it."""


def _fields(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    return value


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to re-raise for a task group's exception group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    cancelled = anyio.get_cancelled_exc_class()
    for exc in leaves:
        if not isinstance(exc, cancelled | Exception):
            return exc  # a simulated crash, KeyboardInterrupt, ...
    for exc in leaves:
        if isinstance(exc, _Superseded):
            return exc
    for exc in leaves:
        if not isinstance(exc, cancelled):
            return exc
    return group


def _input_type_of(cls: type) -> Any:
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = getattr(base, "__origin__", None)
        if isinstance(origin, type) and issubclass(origin, Orchestrator):
            args = getattr(base, "__args__", ())
            if args and not isinstance(args[0], TypeVar):
                return args[0]
    for parent in cls.__mro__[1:]:
        found = parent.__dict__.get("_input_type")
        if found is not None:
            return found
    return None


class Orchestrator(Generic[InputT]):
    """A saga: forward steps that are compensated in reverse when one fails.

    Declare one by subclassing with the input type and a ``steps`` list::

        class PlaceOrder(Orchestrator[OrderPlaced]):
            steps = [
                Step(reserve_stock, compensate=release_stock),
                Step(charge_payment, compensate=refund_payment, retry=Retry(attempts=3)),
                Parallel(Step(notify_seller), Step(assign_partner, compensate=release_partner)),
                Remote(SendConfirmation, build_confirmation, timeout=5),
            ]
            deadline = 60

        async with PlaceOrder(store=SQLiteStore("flowkit.db")) as orders:
            outcome = await orders.run(order, workflow_id=order.order_id)

    The definition is checked when the class is created (:class:`DefinitionError`).

    Every transition is checkpointed to the store before the next one begins;
    :meth:`resume` continues the unfinished workflows after a restart.

    Class attributes:
        steps: the steps, in order: :class:`Step`, :class:`Remote` and
            :class:`Parallel` groups.
        name: the name under which workflows are recorded (the class name by
            default). Keep it stable: ``resume`` finds workflows by it.
        deadline: seconds a workflow may run forward before it is stopped and
            compensated (None: no deadline). It does not apply past the pivot.
        step_retry: the retry policy of steps that give none (one attempt).
        compensation_retry: the retry policy of compensations that give none
            (5 attempts, backoff from 0.1 s).

    Args:
        store: where workflows are checkpointed.
        transport: carries remote steps' commands; needed only when the
            orchestrator has :class:`Remote` steps (a bus is started on it).
        bus: a running bus (anything with ``request``, such as a
            :class:`~flowkit.Choreography`) to send remote commands through,
            instead of ``transport``.
        concurrency: how many workflows run at once in this instance; more
            wait for a free slot.

    Raises:
        DefinitionError: if the orchestrator has remote steps but neither
            ``transport`` nor ``bus``, or ``concurrency`` is below 1.
    """

    steps: ClassVar[Sequence[Step[Any, Any] | Remote[Any] | Parallel]]
    name: ClassVar[str] = "Orchestrator"
    deadline: ClassVar[float | None] = None
    step_retry: ClassVar[Retry] = Retry.never()
    compensation_retry: ClassVar[Retry] = Retry(attempts=5, backoff=0.1, max_backoff=5.0)
    _plan: ClassVar[Plan]
    _input_type: ClassVar[Any] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        owner = cls.__qualname__
        if not isinstance(cls.name, str) or not cls.name:
            raise DefinitionError(f"{owner}.name must be a non-empty string")
        deadline = cls.deadline
        if deadline is not None and (
            isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0
        ):
            raise DefinitionError(f"{owner}.deadline must be seconds > 0 or None, got {deadline!r}")
        for attr in ("step_retry", "compensation_retry"):
            if not isinstance(getattr(cls, attr), Retry):
                raise DefinitionError(f"{owner}.{attr} must be a Retry")
        input_type = _input_type_of(cls)
        if input_type is None:
            raise DefinitionError(
                f"{owner} must name its input type: class {cls.__name__}(Orchestrator[InputModel])"
            )
        cls._input_type = input_type
        if not hasattr(cls, "steps"):
            raise DefinitionError(f"{owner} must declare its steps: steps = [Step(...), ...]")
        cls._plan = compile_plan(
            owner,
            input_type,
            cls.steps,
            step_retry=cls.step_retry,
            compensation_retry=cls.compensation_retry,
        )

    def __init__(
        self,
        store: StateStore,
        *,
        transport: Transport | None = None,
        bus: Requester | None = None,
        concurrency: int = 100,
    ) -> None:
        plan = getattr(type(self), "_plan", None)
        if plan is None:
            raise DefinitionError(
                "Orchestrator is a base class: subclass it with an input type and steps"
            )
        if plan.has_remote and transport is None and bus is None:
            raise DefinitionError(
                f"{plan.owner} has remote steps: pass transport=... (or a running bus=...)"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise DefinitionError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        self._store = store
        self._transport = transport
        self._bus = bus
        self._requester: Requester | None = bus
        self._concurrency = concurrency
        self._running: dict[str, Run] = {}
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._slots: anyio.Semaphore | None = None
        self._faults: FaultHook | None = None
        self._crashed: type[BaseException] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{self.name} is already started")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await stack.enter_async_context(self._store)
            if self._plan.has_remote and self._bus is None:
                from ..choreography import Choreography

                assert self._transport is not None
                bus = Choreography(self._transport)
                await stack.enter_async_context(bus.run(services=[]))
                self._requester = bus
            self._slots = anyio.Semaphore(self._concurrency)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = self._stack
        if stack is None:
            return
        try:
            await exit_stack(stack, exc_type, exc, tb)
        finally:
            self._stack = None
            self._tg = None
            self._requester = self._bus

    def _check_open(self) -> None:
        if self._crashed is not None:
            raise self._crashed(f"{self.name} has crashed (simulated); resume on a new instance")
        if self._stack is None:
            raise OrchestratorNotStarted(
                f"{self.name} is not started: use 'async with {type(self).__name__}(...) as x:'"
            )

    def _check_crash(self) -> None:
        if self._crashed is not None:
            raise self._crashed(f"{self.name} has crashed (simulated)")

    def _install_faults(self, hook: FaultHook | None) -> None:
        """Plug a fault plan into the engine (``flowkit.testing.FaultPlan.install``)."""
        self._faults = hook

    def _crash(self, exc_type: type[BaseException]) -> None:
        """Stop the engine as if the process died: no further checkpoint is written."""
        self._crashed = exc_type
        for run in self._running.values():
            if run.scope is not None:
                run.scope.cancel()

    # -- public operations -------------------------------------------------------------

    async def run(self, input: InputT, *, workflow_id: str | None = None) -> Outcome:
        """Run a workflow to its end and return its outcome.

        Idempotent: if a workflow with this id exists, its outcome is returned
        (waiting for it if it is running in this process; continuing it here if
        it is unfinished and not running in this process, as after a crash).
        The input of a repeated call is ignored.

        The workflow runs in the calling task: if the caller is cancelled, the
        workflow stops at its last checkpoint, to be continued by :meth:`resume`
        or another ``run`` with the same id. Use :meth:`start` to run it in the
        background.

        Args:
            input: the workflow's input, of the orchestrator's input type.
            workflow_id: the workflow's id (a new UUIDv7 when omitted).

        Returns:
            The outcome: ``COMPLETED``, ``COMPENSATED`` or ``FAILED``.

        Raises:
            OrchestratorNotStarted: outside ``async with``.
            InvalidWorkflowState: if the id belongs to another orchestrator.
            TypeError: if ``input`` is not of the input type.
            StoreError: if the store failed (the workflow stays at its last
                checkpoint).
        """
        self._check_open()
        wid = self._workflow_id(workflow_id)
        active = self._running.get(wid)
        if active is not None:
            return await self._wait_active(active)
        run = self._new_run(wid, input)
        self._running[wid] = run
        try:
            await self._create(run)
        except BaseException:
            self._release(run)
            raise
        return await self._drive(run, poll_if_superseded=True)

    async def start(self, input: InputT, *, workflow_id: str | None = None) -> str:
        """Record a workflow and run it in the background.

        Returns once the workflow is recorded (durably, with a durable store).
        Idempotent like :meth:`run`. Get the outcome with :meth:`wait` or
        :meth:`get`. Leaving ``async with`` waits for background workflows.

        Args:
            input: the workflow's input.
            workflow_id: the workflow's id (a new UUIDv7 when omitted).

        Returns:
            The workflow's id.

        Raises:
            OrchestratorNotStarted: outside ``async with``.
            InvalidWorkflowState: if the id belongs to another orchestrator.
            TypeError: if ``input`` is not of the input type.
        """
        self._check_open()
        wid = self._workflow_id(workflow_id)
        if wid in self._running:
            return wid
        run = self._new_run(wid, input)
        self._running[wid] = run
        try:
            await self._create(run)
        except BaseException:
            self._release(run)
            raise
        if run.outcome is not None:
            self._release(run)
        else:
            assert self._tg is not None
            self._tg.start_soon(self._background, run, name=f"{self.name}:{wid}")
        return wid

    async def wait(self, workflow_id: str) -> Outcome:
        """Wait until a workflow is finished and return its outcome.

        A workflow running in another process is polled in the store. An
        unfinished workflow that nobody runs (after a crash) is waited for until
        :meth:`resume` continues it somewhere.

        Args:
            workflow_id: the workflow's id.

        Returns:
            Its outcome.

        Raises:
            WorkflowNotFound: if this orchestrator has no such workflow.
        """
        self._check_open()
        active = self._running.get(workflow_id)
        if active is not None:
            return await self._wait_active(active)
        return await self._poll(workflow_id)

    async def resume(self) -> list[Outcome]:
        """Continue every unfinished workflow of this orchestrator, from its last
        checkpoint, and wait for them.

        A ``RUNNING`` workflow goes forward (a step that was running when the
        process stopped runs again, with the same idempotency key); a
        ``COMPENSATING`` one goes on compensating (a compensation that was running
        runs again). Call it when a service starts. ``FAILED`` workflows are left
        alone: see :meth:`retry_compensation`.

        A workflow that another process saves meanwhile is left to that process
        and has no outcome in the list. A workflow whose record cannot be read or
        whose store write fails is logged and left where it is.

        Returns:
            The outcomes of the workflows continued here, oldest first.
        """
        self._check_open()
        records = await self._store.list_workflows(status=_UNFINISHED, name=self.name)
        outcomes: list[Outcome | None] = [None] * len(records)

        async def one(index: int, record: WorkflowRecord) -> None:
            try:
                active = self._running.get(record.id)
                if active is not None:
                    outcomes[index] = await self._wait_active(active)
                    return
                run = Run(self._plan, record.id, None, None, None)
                run.load(record)
                run.event("workflow_resumed")
                self._running[record.id] = run
                outcomes[index] = await self._drive(run, poll_if_superseded=False)
            except Exception:
                logger.exception("could not resume workflow %s of %s", record.id, self.name)

        try:
            async with anyio.create_task_group() as tg:
                for index, record in enumerate(records):
                    tg.start_soon(one, index, record)
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
        return [o for o in outcomes if o is not None]

    async def get(self, workflow_id: str) -> WorkflowInfo:
        """Everything recorded about a workflow: status, steps, results, history.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The workflow's details as of its last checkpoint.

        Raises:
            WorkflowNotFound: if this orchestrator has no such workflow.
        """
        self._check_open()
        record = await self._load(workflow_id)
        run = Run(self._plan, workflow_id, None, None, None)
        run.load(record)
        return run.to_info(self.name)

    async def list(
        self,
        *,
        status: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None = None,
        limit: int | None = None,
    ) -> list[WorkflowInfo]:
        """This orchestrator's workflows, oldest first.

        Args:
            status: only workflows with this status (or one of these).
            limit: at most this many.

        Returns:
            Their details.
        """
        self._check_open()
        statuses: Collection[str] | None
        if status is None:
            statuses = None
        elif isinstance(status, str):
            statuses = [WorkflowStatus(status).value]
        else:
            statuses = [WorkflowStatus(s).value for s in status]
        records = await self._store.list_workflows(status=statuses, name=self.name, limit=limit)
        infos: list[WorkflowInfo] = []
        for record in records:
            run = Run(self._plan, record.id, None, None, None)
            run.load(record)
            infos.append(run.to_info(self.name))
        return infos

    async def cancel(self, workflow_id: str) -> Outcome:
        """Stop a workflow and compensate what it did.

        A running step is interrupted (it may have acted, so it is compensated).
        If the workflow finishes before the cancellation takes effect, its
        outcome is returned as it is.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The outcome, normally ``COMPENSATED`` (or ``FAILED`` if a
            compensation fails).

        Raises:
            WorkflowNotFound: if this orchestrator has no such workflow.
            InvalidWorkflowState: if the workflow is past its pivot, completed,
                or failed (see :meth:`retry_compensation`).
            ConcurrencyConflict: if another process is running it and saved it
                meanwhile.
        """
        self._check_open()
        active = self._running.get(workflow_id)
        if active is not None:
            if active.status is WorkflowStatus.RUNNING:
                if active.pivot_done:
                    raise InvalidWorkflowState(
                        f"workflow {workflow_id!r} is past its pivot {self._plan.pivot!r} "
                        "and cannot be cancelled"
                    )
                active.cancel_requested = True
                if active.scope is not None:
                    active.scope.cancel()
            return await self._wait_active(active)
        record = await self._load(workflow_id)
        status = record.status
        if status == WorkflowStatus.COMPENSATED.value:
            return self._outcome_of(record)
        if status in (WorkflowStatus.COMPLETED.value, WorkflowStatus.FAILED.value):
            hint = " (use retry_compensation)" if status == WorkflowStatus.FAILED.value else ""
            raise InvalidWorkflowState(f"workflow {workflow_id!r} is {status}{hint}")
        run = Run(self._plan, workflow_id, None, None, None)
        run.load(record)
        if run.status is WorkflowStatus.RUNNING:
            if run.pivot_done:
                raise InvalidWorkflowState(
                    f"workflow {workflow_id!r} is past its pivot {self._plan.pivot!r} "
                    "and cannot be cancelled"
                )
            run.event("cancel_requested")
            run.interrupt_running()
            run.turn_back(
                error_of("", WorkflowCancelled("the workflow was cancelled")),
                "the workflow was cancelled",
            )
        return await self._take_over(run)

    async def retry_compensation(self, workflow_id: str) -> Outcome:
        """Run the remaining compensations of a workflow that ended ``FAILED``
        because a compensation kept failing (after fixing the cause).

        Each remaining compensation gets a fresh retry budget.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The new outcome.

        Raises:
            WorkflowNotFound: if this orchestrator has no such workflow.
            InvalidWorkflowState: if it did not fail while compensating.
            ConcurrencyConflict: if another process saved it meanwhile.
        """
        self._check_open()
        run = await self._failed_run(workflow_id, "backward", "retry_forward")
        for state in run.steps.values():
            state.comp_reset()
        run.status = WorkflowStatus.COMPENSATING
        run.remaining = []
        run.direction = None
        run.event("compensation_retried")
        return await self._take_over(run)

    async def retry_forward(self, workflow_id: str) -> Outcome:
        """Run the remaining forward steps of a workflow that ended ``FAILED``
        because a step past its pivot failed with an error that is not retryable.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The new outcome.

        Raises:
            WorkflowNotFound: if this orchestrator has no such workflow.
            InvalidWorkflowState: if it did not fail past its pivot.
            ConcurrencyConflict: if another process saved it meanwhile.
        """
        self._check_open()
        run = await self._failed_run(workflow_id, "forward", "retry_compensation")
        for state in run.steps.values():
            if state.status != "succeeded":
                state.reset_failures()
        run.status = WorkflowStatus.RUNNING
        run.remaining = []
        run.direction = None
        run.event("forward_retried")
        return await self._take_over(run)

    # -- workflow bookkeeping ------------------------------------------------------------

    def _workflow_id(self, workflow_id: str | None) -> str:
        if workflow_id is None:
            return new_message_id()
        if not isinstance(workflow_id, str) or not workflow_id:
            raise TypeError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
        return workflow_id

    def _new_run(self, workflow_id: str, input: InputT) -> Run:
        plan = self._plan
        input_type = plan.input_type
        if isinstance(input_type, type) and not isinstance(input, input_type):
            raise TypeError(
                f"{self.name} takes {input_type.__name__} as input, got {type(input).__name__}"
            )
        try:
            input_json = plan.input_dump(input)
        except Exception as exc:
            raise TypeError(f"{self.name}: the input cannot be recorded as JSON: {exc}") from exc
        deadline = self.deadline
        run = Run(
            plan,
            workflow_id,
            input,
            input_json,
            None if deadline is None else time.time() + deadline,
        )
        run.event("workflow_started")
        run.begin_stage(0)
        return run

    async def _create(self, run: Run) -> None:
        """Record a new workflow; if the id exists, adopt the stored one instead."""
        stored, created = await self._store.create_workflow(run.record(self.name))
        if created:
            run.version = stored.version
            run.created_at = stored.created_at
            self._reached(run, 0, "started")
            return
        if stored.name != self.name:
            raise InvalidWorkflowState(
                f"workflow id {run.id!r} is used by orchestrator {stored.name!r}"
            )
        if stored.status in _FINISHED:
            run.load(stored)
            run.outcome = run.to_outcome(self._plan.name_of)
            return
        run.load(stored)
        run.event("workflow_resumed")

    async def _load(self, workflow_id: str) -> WorkflowRecord:
        record = await self._store.load_workflow(workflow_id)
        if record.name != self.name:
            raise WorkflowNotFound(
                f"workflow {workflow_id!r} belongs to {record.name!r}, not {self.name!r}"
            )
        return record

    def _outcome_of(self, record: WorkflowRecord) -> Outcome:
        run = Run(self._plan, record.id, None, None, None)
        run.load(record)
        return run.to_outcome(self._plan.name_of)

    async def _failed_run(self, workflow_id: str, direction: str, other: str) -> Run:
        if workflow_id in self._running:
            raise InvalidWorkflowState(f"workflow {workflow_id!r} is running")
        record = await self._load(workflow_id)
        run = Run(self._plan, workflow_id, None, None, None)
        run.load(record)
        if run.status is not WorkflowStatus.FAILED:
            raise InvalidWorkflowState(
                f"workflow {workflow_id!r} is {run.status.value}, not FAILED"
            )
        if run.direction != direction:
            raise InvalidWorkflowState(
                f"workflow {workflow_id!r} did not fail that way; use {other}()"
            )
        return run

    async def _take_over(self, run: Run) -> Outcome:
        """Save a changed run loaded from the store, then drive it here."""
        if run.id in self._running:
            return await self._wait_active(self._running[run.id])
        self._running[run.id] = run
        try:
            await self._save(run)
        except _Superseded as exc:
            self._release(run)
            raise ConcurrencyConflict(
                f"workflow {run.id!r} was changed by another process meanwhile; try again"
            ) from exc
        except BaseException:
            self._release(run)
            raise
        return await self._drive(run, poll_if_superseded=True)

    async def _drive(self, run: Run, *, poll_if_superseded: bool) -> Outcome:
        """Run a registered workflow to its end; always releases it."""
        try:
            if run.outcome is None:
                slots = self._slots
                assert slots is not None
                try:
                    slots.acquire_nowait()  # no scheduling round trip when a slot is free
                except anyio.WouldBlock:
                    await slots.acquire()
                try:
                    run.outcome = await self._execute(run)
                finally:
                    slots.release()
        except _Superseded:
            logger.info("workflow %s was saved by another process; leaving it to it", run.id)
            if not poll_if_superseded:
                raise
            run.outcome = await self._poll(run.id)
        finally:
            self._release(run)
        return run.outcome

    async def _background(self, run: Run) -> None:
        try:
            await self._drive(run, poll_if_superseded=True)
        except Exception:
            logger.exception("workflow %s of %s stopped; resume() continues it", run.id, self.name)
        except BaseException as exc:
            crashed = self._crashed
            if crashed is None or not isinstance(exc, crashed):
                raise

    def _release(self, run: Run) -> None:
        run.released = True
        if self._running.get(run.id) is run:
            del self._running[run.id]
        if run.done is not None:
            run.done.set()

    async def _wait_active(self, run: Run) -> Outcome:
        if not run.released:
            if run.done is None:
                run.done = anyio.Event()
            await run.done.wait()
        if run.outcome is not None:
            return run.outcome
        self._check_crash()
        # the run stopped without an outcome (its caller was cancelled, the store
        # failed, ...): continue it here, or report how it ended
        record = await self._load(run.id)
        if record.status in _FINISHED:
            return self._outcome_of(record)
        active = self._running.get(run.id)
        if active is not None:
            return await self._wait_active(active)
        fresh = Run(self._plan, run.id, None, None, None)
        fresh.load(record)
        fresh.event("workflow_resumed")
        self._running[run.id] = fresh
        return await self._drive(fresh, poll_if_superseded=True)

    async def _poll(self, workflow_id: str) -> Outcome:
        delay = 0.01
        while True:
            self._check_crash()
            record = await self._load(workflow_id)
            if record.status in _FINISHED:
                return self._outcome_of(record)
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- the engine ----------------------------------------------------------------

    async def _save(self, run: Run) -> None:
        if self._crashed is not None:
            raise self._crashed(f"{self.name} has crashed (simulated)")
        try:
            stored = await self._store.save_workflow(run.record(self.name))
        except ConcurrencyConflict as exc:
            raise _Superseded(run.id) from exc
        run.version = stored.version

    async def _save_shared(self, run: Run) -> None:
        """Save from one of several concurrent members of a parallel group."""
        if run.lock is None:
            run.lock = anyio.Lock()
        with anyio.CancelScope(shield=True):
            async with run.lock:
                await self._save(run)

    def _reached(self, run: Run, stage: int, point: CrashPoint) -> None:
        faults = self._faults
        if faults is not None:
            for spec in self._plan.stages[stage]:
                if run.steps[spec.name].status == "running" or point != "started":
                    faults.reached(run.id, spec.name, point)

    def _local_deadline(self, run: Run) -> float:
        if run.deadline_at is None or run.pivot_done:
            return math.inf
        return anyio.current_time() + (run.deadline_at - time.time())

    async def _execute(self, run: Run) -> Outcome:
        self._check_crash()
        try:
            while run.status is _RUNNING:
                if not run.cancel_requested:
                    with anyio.CancelScope(deadline=self._local_deadline(run)) as scope:
                        run.scope = scope
                        await self._forward(run)
                    run.scope = None
                    if not scope.cancelled_caught:
                        break
                self._check_crash()
                await self._interrupted(run)
            if run.status is _COMPENSATING:
                with anyio.CancelScope() as scope:
                    run.scope = scope
                    await self._backward(run)
                run.scope = None
                self._check_crash()
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
        finally:
            run.scope = None
        return run.to_outcome(self._plan.name_of)

    async def _interrupted(self, run: Run) -> None:
        """The forward phase was cut by ``cancel()`` or the deadline: resync with the
        store (a save may have been cut too) and turn back."""
        cancelled = run.cancel_requested
        record = await self._store.load_workflow(run.id)
        run.load(record)
        if run.status is not WorkflowStatus.RUNNING:
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
        run.interrupt_running()
        run.turn_back(error, reason)
        await self._save(run)

    async def _forward(self, run: Run) -> None:
        stages = self._plan.stages
        count = len(stages)
        index = run.next_stage()
        while index < count:
            if run.begun != index:
                run.begin_stage(index)
                await self._save(run)
                if self._faults is not None:
                    self._reached(run, index, "started")
            stage = stages[index]
            if len(stage) == 1:
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
            await self._save(run)
            if run.pivot_done and run.scope is not None:
                run.scope.deadline = math.inf
            if self._faults is not None:
                if len(stage) == 1:
                    self._reached(run, index - 1, "succeeded")
                if index < count:
                    self._reached(run, index, "started")

    def _context(self, run: Run, name: str, attempt: int, compensating: bool) -> StepContext:
        return StepContext(
            workflow_id=run.id,
            workflow=self.name,
            step=name,
            idempotency_key=f"{run.id}:{name}:compensate" if compensating else f"{run.id}:{name}",
            attempt=attempt,
            results=run.results_view,
            compensating=compensating,
            names=self._plan.name_of,
        )

    async def _call(self, run: Run, name: str, action: Action, ctx: StepContext) -> Any:
        """Call a step or compensation once, through the fault hook and its timeout."""
        timeout = action.timeout if action.fn is not None else None
        if timeout is None:
            return await self._invoke(run, name, action, ctx)
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as scope:
            return await self._invoke(run, name, action, ctx)
        if scope.cancelled_caught:
            what = "compensation of step" if ctx.compensating else "step"
            raise StepTimeout(f"{what} {name!r} took longer than {timeout}s")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _invoke(self, run: Run, name: str, action: Action, ctx: StepContext) -> Any:
        faults = self._faults
        mode = None
        if faults is not None:
            mode = faults.before_call(run.id, name, ctx.compensating)
            if mode == "timeout":
                raise StepTimeout(f"step {name!r} timed out")
        if action.fn is not None:
            result = await action.fn(ctx, run.input)
        else:
            result = await self._request(run, action, ctx)
        if mode == "timeout_after":
            raise StepTimeout(f"step {name!r} timed out")
        return result

    async def _request(self, run: Run, action: Action, ctx: StepContext) -> Any:
        requester = self._requester
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

    def _retryable(self, run: Run, spec: StepSpec, exc: Exception, failures: int) -> bool:
        if isinstance(exc, RemoteError) and not exc.retryable:
            return False
        if run.pivot_done:
            return spec.retry.is_retryable(exc)
        return spec.retry.should_retry(exc, failures)

    async def _run_step(self, run: Run, spec: StepSpec, shared: bool) -> bool:
        """Run a begun step until it succeeds or gives up; True if it succeeded."""
        name = spec.name
        state = run.steps[name]
        action = spec.action
        fn = action.fn if action.timeout is None and self._faults is None else None
        while True:
            ctx = self._context(run, name, state.attempts, False)
            failure: Exception | None = None
            acted = False
            try:
                if fn is not None:
                    result = await fn(ctx, run.input)
                else:
                    result = await self._call(run, name, action, ctx)
            except (StepTimeout, RequestTimeout) as exc:
                failure, acted = exc, True
            except Exception as exc:
                failure = exc
            else:
                if self._faults is not None:
                    self._faults.reached(run.id, name, "acted")
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
                        if self._faults is not None:
                            self._faults.reached(run.id, name, "succeeded")
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
                    self._give_up(run, spec)
                    await self._save(run)
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
            await (self._save_shared(run) if shared else self._save(run))
            if delay > 0:
                await anyio.sleep(delay)
            state.begin()
            run.event("step_started", name, state.attempts)
            await (self._save_shared(run) if shared else self._save(run))
            if self._faults is not None:
                self._faults.reached(run.id, name, "started")

    def _give_up(self, run: Run, spec: StepSpec) -> None:
        """A forward step failed for good: turn back, or fail past the pivot."""
        error = run.steps[spec.name].error
        assert error is not None
        what = f"step {spec.name!r} failed: {error['type']}: {error['message']}"
        if run.pivot_done:
            reason = f"{what} (past the pivot {self._plan.pivot!r}; not retryable)"
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
        for spec in stage:
            state = run.steps[spec.name]
            if state.interrupt():
                run.event("step_interrupted", spec.name, state.attempts)
        self._give_up(run, failed[0])
        await self._save(run)
        return False

    async def _backward(self, run: Run) -> None:
        for stage in reversed(self._plan.stages):
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
                await self._save(run)
                return
        run.finish(WorkflowStatus.COMPENSATED)
        await self._save(run)

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
        """Run one step's compensation until it succeeds or gives up."""
        name = spec.name
        state = run.steps[name]
        action = spec.compensation
        assert action is not None
        policy = spec.compensation_retry
        faults = self._faults
        while True:
            state.comp_begin()
            run.event("compensation_started", name, state.comp_attempts)
            await (self._save_shared(run) if shared else self._save(run))
            if faults is not None:
                faults.reached(run.id, name, "compensation_started")
            ctx = self._context(run, name, state.comp_attempts, True)
            try:
                await self._call(run, name, action, ctx)
            except Exception as exc:
                failure: Exception = exc
            else:
                if faults is not None:
                    faults.reached(run.id, name, "compensation_acted")
                state.comp_succeed()
                run.compensated.append(name)
                run.event("step_compensated", name, state.comp_attempts)
                await (self._save_shared(run) if shared else self._save(run))
                if faults is not None:
                    faults.reached(run.id, name, "compensated")
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
                return False
            delay = policy.delay(state.comp_failures)
            run.event(
                "compensation_failed", name, state.comp_attempts, error, f"retrying in {delay:.3f}s"
            )
            await (self._save_shared(run) if shared else self._save(run))
            if delay > 0:
                await anyio.sleep(delay)

    # -- reading -------------------------------------------------------------------------

    @property
    def store(self) -> StateStore:
        """The store workflows are checkpointed in."""
        return self._store

    @classmethod
    def step_names(cls) -> tuple[str, ...]:
        """The names of the steps, in declaration order."""
        return tuple(spec.name for spec in cls._plan.specs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} running={len(self._running)}>"
