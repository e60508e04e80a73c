"""The public side of the saga engine: declare an orchestrator, start and stop
it, and run, resume, inspect, cancel and retry its workflows.

What happens inside one workflow run (steps, groups, compensations,
checkpoints, retries) is the engine's job, in ``_engine.py``.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

import anyio
from pydantic_core import to_json

from .._errors import (
    ConcurrencyConflict,
    DefinitionError,
    InvalidWorkflowState,
    MessageTooLarge,
    OrchestratorNotStarted,
    StoreError,
    WorkflowCancelled,
    WorkflowNotFound,
)
from .._events import Message, new_message_id
from .._exits import exit_stack
from .._retry import Retry
from .._signing import Signing
from ._declare import Parallel, Plan, Remote, Step, compile_plan
from ._engine import Engine, Halted, Parked, Requester, Superseded, unwrap
from ._leases import LeaseKeeper, driving, process_owner
from ._logging import StepLog
from ._model import Outcome, WorkflowInfo, WorkflowStatus
from ._observe import SagaObserver
from ._state import Run, error_of
from ._waiting import Waiting

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ..observability._trace import TraceOptions, TraceRecorder
    from ..stores._base import StateStore, WorkflowRecord
    from ..stores._waits import WaitStore
    from ..transports._base import Transport
    from ._waits import Sleep, WaitForEvent, WaitForSignal
    from ._waker import Waker

__all__ = ["Orchestrator"]

logger = logging.getLogger("flowkit.orchestration")

InputT = TypeVar("InputT")

_EPOCH = datetime.fromtimestamp(0, UTC)
_FINISHED = frozenset(
    {WorkflowStatus.COMPLETED.value, WorkflowStatus.COMPENSATED.value, WorkflowStatus.FAILED.value}
)
#: The largest signal, as JSON (bytes).
MAX_SIGNAL_SIZE = 1024 * 1024
#: The statuses in which a workflow goes forward (and may be cancelled).
_FORWARD = (WorkflowStatus.RUNNING, WorkflowStatus.WAITING)


def _same(one: object, other: object) -> bool:
    return one is other


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
    Leaving ``async with`` gives running workflows ``stop_grace`` seconds,
    then stops the others where they stand and gives up their leases, so that
    another process continues them at once.

    Several processes may share a store: each unfinished workflow is held by
    one of them through a lease of ``lease`` seconds, renewed while it runs.
    A started orchestrator takes over, every half lease, the workflows of its
    name whose process died (their lease ran out) or stopped; :meth:`resume`
    does it at once. A process that lost a lease (it paused for longer than
    the lease and another took the workflow over) stops that workflow: its
    next checkpoint would fail.

    A workflow can wait, durably: a :class:`Sleep` (a timer), a
    :class:`WaitForEvent` (an event from the bus matching the workflow) or a
    :class:`WaitForSignal` (:meth:`signal`) in its steps saves it ``WAITING``
    in the store, held by no process, until it is due; any process running
    the orchestrator then takes it up. A wait that runs out follows its
    ``on_timeout`` policy (compensate, fail, or continue).

    Class attributes:
        steps: the steps, in order: :class:`Step`, :class:`Remote`,
            :class:`Parallel` groups and waits (:class:`Sleep`,
            :class:`WaitForEvent`, :class:`WaitForSignal`).
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
            orchestrator has :class:`Remote` steps (a bus is started on it,
            watched by those ``observers`` that are also
            :class:`~flowkit.BusObserver` instances, such as OpenTelemetry).
        bus: a running bus (anything with ``request``, such as a
            :class:`~flowkit.Choreography`) to send remote commands through,
            instead of ``transport``.
        concurrency: how many workflows run at once in this instance; more
            wait for a free slot.
        stop_grace: seconds that the workflows running in this instance get to
            finish when ``async with`` is left; those still running after that
            are stopped where they stand and stay unfinished, for
            :meth:`resume` (as after a crash).
        observers: :class:`SagaObserver` instances to report to (see also
            :meth:`add_observer`), after the orchestrator's own DEBUG log of
            each transition (logger ``flowkit.orchestration``), which every
            orchestrator has first.
        lease: seconds a process holds a workflow without renewing its lease
            (renewed every third of it): after a crash, its workflows are
            taken over within about one and a half leases. Longer than any
            pause of the process (a garbage collection, a blocked event loop).
        recover: take over free workflows every half lease, and waiting
            workflows when they are due, while started (on by default; off,
            only :meth:`resume` takes over free ones and this instance wakes
            none: a process that only reads or signals).
        owner: the id this instance holds leases as (by default one per
            process: ``host:pid:random``).
        trace: record every workflow, step and compensation in the store's
            flow trace, under the workflow's id, for ``flowkit trace`` (True:
            when the store keeps one, with the default
            :class:`~flowkit.observability.TraceOptions`; False: never).
            What a step publishes or requests joins the workflow's flow.
        wait_poll: the longest time, in seconds, between two looks in the
            store for waiting workflows made due by another process (a
            signal or an event it received); timers are watched to the
            millisecond, and what this process delivers wakes at once.
        mailbox_retention: seconds an event or signal that no wait took is
            kept in the store's mailbox (7 days; None: until a wait takes it).
        signing: how the buses the orchestrator starts on ``transport`` (for
            remote steps' commands and for waited events) sign what they send
            and check what they receive (see :class:`~flowkit.Signing`). By
            default, a given ``bus``'s own signing, else none.

    Raises:
        DefinitionError: if the orchestrator has remote steps but neither
            ``transport`` nor ``bus``, ``concurrency`` is below 1,
            ``stop_grace`` is negative, ``lease`` is not a positive number of
            seconds, ``owner`` is an empty string, an observer is not a
            :class:`SagaObserver`, the orchestrator waits for events and
            recovers but has no ``transport`` to receive them from, or
            ``signing`` is not a Signing or differs from the given bus's.
    """

    steps: ClassVar[
        Sequence[
            Step[Any, Any] | Remote[Any] | Parallel | Sleep | WaitForEvent[Any] | WaitForSignal[Any]
        ]
    ]
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
        stop_grace: float = 10.0,
        observers: Iterable[SagaObserver] = (),
        lease: float = 30.0,
        recover: bool = True,
        owner: str | None = None,
        trace: bool | TraceOptions = True,
        wait_poll: float = 1.0,
        mailbox_retention: float | None = 7 * 24 * 3600.0,
        signing: Signing | None = None,
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
        if (
            isinstance(stop_grace, bool)
            or not isinstance(stop_grace, int | float)
            or not stop_grace >= 0
        ):
            raise DefinitionError(
                f"stop_grace must be a number of seconds >= 0, got {stop_grace!r}"
            )
        if (
            isinstance(lease, bool)
            or not isinstance(lease, int | float)
            or not 0 < lease < math.inf
        ):
            raise DefinitionError(f"lease must be a positive number of seconds, got {lease!r}")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise DefinitionError(f"owner must be a non-empty string, got {owner!r}")
        for what, value in (("wait_poll", wait_poll), ("mailbox_retention", mailbox_retention)):
            if (value is not None or what == "wait_poll") and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value < math.inf
            ):
                raise DefinitionError(f"{what} must be a positive number of seconds, got {value!r}")
        if plan.event_waits and transport is None and recover:
            waited = sorted({w.wait.what for w in plan.waits if w.wait and w.wait.kind == "event"})
            raise DefinitionError(
                f"{plan.owner} waits for {', '.join(waited)}: pass transport=... to receive "
                "them (or recover=False for a process that runs none of its workflows)"
            )
        if signing is not None and not isinstance(signing, Signing):
            raise DefinitionError(
                f"signing must be a flowkit.Signing or None, not {type(signing).__name__}"
            )
        bus_signing = getattr(bus, "signing", None)
        if signing is not None and bus_signing is not None and bus_signing is not signing:
            raise DefinitionError(
                f"{plan.owner}: signing= differs from the given bus's own signing; pass one "
                "Signing to both, or leave signing= out to use the bus's"
            )
        self._signing: Signing | None = signing or (
            bus_signing if isinstance(bus_signing, Signing) else None
        )
        self._store = store
        self._transport = transport
        self._bus = bus
        self._concurrency = concurrency
        self._stop_grace = float(stop_grace)
        self._lease = float(lease)
        self._owner = process_owner() if owner is None else owner
        self._running: dict[str, Run] = {}
        self._unreadable: set[str] = set()  # claimed workflows whose record cannot be read
        self._engine = Engine(plan, self.name, self.deadline, store, self._running, self._lease)
        self._keeper = LeaseKeeper(
            store,
            self._owner,
            self._lease,
            self._running,
            lost=self._lose,
            cancel=self._engine.cancel,
            recover=self._recover if recover else None,
            freed=self._slot_freed,
        )
        self._freed = anyio.Event()  # set when a run leaves this instance
        self._keeping: anyio.CancelScope | None = None
        self._recovers = bool(recover)
        self._wait_poll = float(wait_poll)
        self._mailbox_retention = None if mailbox_retention is None else float(mailbox_retention)
        self._waits: WaitStore | None = None
        self._waker: Waker | None = None
        self._engine.requester = bus
        self._observers: list[SagaObserver] = []
        self.add_observer(StepLog())
        for observer in observers:
            self.add_observer(observer)
        if not isinstance(trace, bool):
            from ..observability._trace import check_trace_argument

            check_trace_argument(trace)
        self._trace = trace
        self._recorder: TraceRecorder | None = None
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._slots: anyio.Semaphore | None = None
        self._stopping = False  # leaving async with: no new work
        self._halting = False  # the grace is over: every run stops where it stands
        self._idle: anyio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{self.name} is already started")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await stack.enter_async_context(self._store)
            from ..observability._trace import recorder_for

            self._recorder = recorder_for(self._store, self._trace)
            if self._recorder is not None:
                await stack.enter_async_context(self._recorder)
                self.add_observer(self._recorder)
            if self._plan.has_remote and self._bus is None:
                from ..choreography import BusObserver, Choreography

                assert self._transport is not None
                # An observer of both kinds (OpenTelemetry) sees the remote steps' commands.
                bus = Choreography(
                    self._transport,
                    observers=[o for o in self._observers if isinstance(o, BusObserver)],
                    signing=self._signing,
                )
                await stack.enter_async_context(bus.run(services=[]))
                self._engine.requester = bus
            if self._plan.waits:
                await self._open_waits(stack)
            self._slots = anyio.Semaphore(self._concurrency)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._keeping = anyio.CancelScope()
            self._tg.start_soon(self._keep, self._keeping)
        except BaseException:
            self._forget_recorder()
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        self._stopping = self._halting = False
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
            await self._stop()
        finally:
            try:
                await exit_stack(stack, exc_type, exc, tb)
            finally:
                self._stack = None
                self._tg = None
                self._engine.requester = self._bus
                self._forget_recorder()

    def _forget_recorder(self) -> None:
        """Take the trace recorder off the observers (it stops with the stack)."""
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            self._observers = [o for o in self._observers if o is not recorder]
            self._engine.observe(self._observers)

    async def _stop(self) -> None:
        """Give the running workflows ``stop_grace`` seconds, then stop the others
        where they stand.

        The wait is not shielded: when the enclosing scope is cancelled (Ctrl-C),
        before or during it, the workflows are stopped at once.
        """
        self._stopping = True
        try:
            if self._running:
                with anyio.move_on_after(self._stop_grace):
                    await self._drained()
                if self._running:
                    logger.warning(
                        "%s: %d workflow(s) still running after %.1fs; stopping them where "
                        "they stand (resume() continues them)",
                        self.name,
                        len(self._running),
                        self._stop_grace,
                    )
        finally:
            self._halting = True
            halted = [run.id for run in self._running.values() if run.owner == self._owner]
            for run in list(self._running.values()):
                self._engine.halt(run)
        try:
            await self._drained()  # they write nothing more: this is quick
        finally:
            if self._keeping is not None:
                self._keeping.cancel()
        if halted and self._engine.crashed is None:
            await self._give_up_leases(halted)

    async def _open_waits(self, stack: AsyncExitStack) -> None:
        """Find the store's waits, start the waker, and subscribe to the waited events."""
        from ..stores._waits import waits_of
        from ._waker import Waker

        try:
            self._waits = waits = waits_of(self._store)
        except StoreError as exc:
            raise DefinitionError(f"{self._plan.owner} has wait steps, but {exc}") from None
        self._engine.waiting = Waiting(self._engine, waits, self._due)
        if not self._recovers:
            return
        self._waker = Waker(
            waits,
            self.name,
            self._owner,
            self._lease,
            poll=self._wait_poll,
            retention=self._mailbox_retention,
            free=lambda: self._concurrency - len(self._running),
            exclude=lambda: driving(self._owner) | self._unreadable,
            start=self._start_claimed,
            freed=self._slot_freed,
        )
        if self._plan.event_waits and self._transport is not None:
            from ..choreography import BusObserver, Choreography
            from ._wait_events import subscribe

            # the bus keeps its own trace recorder: the orchestrator's is left out
            events = Choreography(
                self._transport,
                store=self._store,
                observers=[
                    o
                    for o in self._observers
                    if isinstance(o, BusObserver) and not _same(o, self._recorder)
                ],
                trace=self._trace,
                signing=self._signing,
            )
            subscribe(events, self._plan, self.name, self._deliver)
            await stack.enter_async_context(events)

    def _due(self, at: datetime | None) -> None:
        """A workflow of this instance was parked, due at ``at``."""
        if self._waker is not None:
            self._waker.due(at)

    async def _deliver(self, channel: str, key: str, message_id: str, body: Any) -> bool:
        """Keep a message for the waits on ``channel`` and ``key``; True if it woke
        a waiting workflow (this process then takes it up at once)."""
        assert self._waits is not None
        delivery = await self._waits.deliver(self.name, channel, key, message_id, body)
        if delivery.woken:
            self._due(datetime.now(UTC))
        return bool(delivery.woken)

    async def _keep(self, scope: anyio.CancelScope) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keeper.keep)
                if self._waker is not None:
                    tg.start_soon(self._waker.run)

    async def _give_up_leases(self, workflow_ids: list[str]) -> None:
        """Let another process take the stopped workflows at once (a rolling deploy)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
            try:
                await self._store.release_workflows(self._owner, workflow_ids)
            except StoreError as exc:
                logger.warning(
                    "%s: could not give up the leases of %d stopped workflow(s); another "
                    "process takes them over when they run out: %s",
                    self.name,
                    len(workflow_ids),
                    exc,
                )

    async def _drained(self) -> None:
        """Wait until no workflow runs in this instance."""
        while self._running:
            self._idle = anyio.Event()
            await self._idle.wait()

    def _check_open(self, *, new_work: bool = False) -> None:
        self._engine.check_crash()
        if self._stack is None:
            raise OrchestratorNotStarted(
                f"{self.name} is not started: use 'async with {type(self).__name__}(...) as x:'"
            )
        if new_work and self._stopping:
            raise OrchestratorNotStarted(f"{self.name} is stopping: it takes no new work")

    def _stopped(self, workflow_id: str) -> OrchestratorNotStarted:
        return OrchestratorNotStarted(
            f"{self.name} stopped before workflow {workflow_id!r} finished; resume() continues it"
        )

    # -- observers ---------------------------------------------------------------------

    def add_observer(self, observer: SagaObserver) -> None:
        """Report this orchestrator's transitions to ``observer`` from now on.

        Observers are called in the order they were added; adding one that is
        already there does nothing. It may be done before or after the
        orchestrator is started.

        Args:
            observer: the observer (see :class:`SagaObserver`).

        Raises:
            DefinitionError: if ``observer`` is not a :class:`SagaObserver`.
        """
        if not isinstance(observer, SagaObserver):
            raise DefinitionError(f"an observer must be a SagaObserver, got {observer!r}")
        if any(known is observer for known in self._observers):
            return
        self._observers.append(observer)
        self._engine.observe(self._observers)

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
            OrchestratorNotStarted: outside ``async with``, or if the
                orchestrator stopped before the workflow finished (it stays
                unfinished, for :meth:`resume`).
            InvalidWorkflowState: if the id belongs to another orchestrator, or
                its record cannot be read.
            TypeError: if ``input`` is not of the input type.
            StoreError: if the store failed (the workflow stays at its last
                checkpoint).
        """
        self._check_open(new_work=True)
        wid = self._workflow_id(workflow_id)
        active = self._running.get(wid)
        if active is not None:
            return await self._wait_active(active)
        run = self._new_run(wid, input)
        self._register(run)
        try:
            here = await self._create(run)
        except BaseException:
            self._release(run)
            raise
        if not here:
            self._release(run)
            return await self._poll(wid)
        return await self._drive(run, poll_if_superseded=True)

    async def start(self, input: InputT, *, workflow_id: str | None = None) -> str:
        """Record a workflow and run it in the background.

        Returns once the workflow is recorded (durably, with a durable store).
        Idempotent like :meth:`run`. Get the outcome with :meth:`wait` or
        :meth:`get`. Leaving ``async with`` waits for background workflows, up
        to ``stop_grace`` seconds.

        Args:
            input: the workflow's input.
            workflow_id: the workflow's id (a new UUIDv7 when omitted).

        Returns:
            The workflow's id.

        Raises:
            OrchestratorNotStarted: outside ``async with`` (or while leaving it).
            InvalidWorkflowState: if the id belongs to another orchestrator.
            TypeError: if ``input`` is not of the input type.
            StoreError: if the store cannot record it.
        """
        self._check_open(new_work=True)
        wid = self._workflow_id(workflow_id)
        if wid in self._running:
            return wid
        run = self._new_run(wid, input)
        self._register(run)
        try:
            here = await self._create(run)
        except BaseException:
            self._release(run)
            raise
        if run.outcome is not None or not here:
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
            OrchestratorNotStarted: outside ``async with``, or if the
                orchestrator stopped before the workflow finished.
        """
        self._check_open()
        active = self._running.get(workflow_id)
        if active is not None:
            return await self._wait_active(active)
        return await self._poll(workflow_id)

    async def resume(self) -> list[Outcome]:
        """Take over every free unfinished workflow of this orchestrator now,
        continue each from its last checkpoint, and wait for them.

        A workflow is free when no live process holds it: its process died
        (its lease ran out) or stopped, or it was left by an instance of this
        process. Workflows other live processes run are left to them. A
        ``RUNNING`` workflow goes forward (a step that was running when the
        process stopped runs again, with the same idempotency key); a
        ``COMPENSATING`` one goes on compensating. ``FAILED`` workflows are
        left alone: see :meth:`retry_compensation`. A started orchestrator
        also does this on its own every half lease (see ``recover``).

        A workflow whose record cannot be read is logged (ERROR, naming the
        workflow and the problem) and skipped; one whose store write fails is
        logged and left where it is. Neither stops the others.

        Returns:
            The outcomes of the workflows continued by this instance (those it
            had taken over already included), oldest first; a workflow that
            reached a wait and waits has none yet, and is left out.

        Raises:
            OrchestratorNotStarted: outside ``async with`` (or while leaving it).
            StoreError: if the store cannot claim the workflows.
        """
        self._check_open(new_work=True)
        outcomes: list[tuple[datetime | None, str, Outcome]] = []

        async def one(run: Run, *, active: bool) -> None:
            try:
                if active:
                    outcome = await self._wait_active(run, wait_parked=False)
                else:
                    outcome = await self._drive(run, poll_if_superseded=False, wait_parked=False)
                outcomes.append((run.created_at, run.id, outcome))
            except Superseded:
                pass  # another process took it over
            except Parked:
                pass  # it waits: its outcome comes when it is woken
            except OrchestratorNotStarted:
                if not self._stopping:
                    raise
            except Exception:
                logger.exception("could not resume workflow %s of %s", run.id, self.name)

        try:
            async with anyio.create_task_group() as tg:
                for run in list(self._running.values()):
                    if not run.fresh and run.outcome is None:
                        tg.start_soon(partial(one, run, active=True))
                while runs := await self._claim_free(self._concurrency):
                    for run in runs:
                        tg.start_soon(partial(one, run, active=False))
                while runs := await self._claim_due(self._concurrency):
                    for run in runs:
                        tg.start_soon(partial(one, run, active=False))
        except BaseExceptionGroup as group:
            raise unwrap(group) from None
        outcomes.sort(key=lambda item: (item[0] or _EPOCH, item[1]))
        return [outcome for _, _, outcome in outcomes]

    async def _claim_free(self, limit: int) -> list[Run]:
        """Claim up to ``limit`` free workflows and register them as runs of this
        instance; a record that cannot be read is logged and kept aside."""
        records = await self._store.claim_workflows(
            self.name,
            self._owner,
            lease=self._lease,
            limit=limit,
            exclude=driving(self._owner) | self._unreadable,
        )
        return await self._adopt_all(records, "workflow_resumed")

    async def _adopt_all(self, records: Sequence[WorkflowRecord], event: str) -> list[Run]:
        """Register claimed records as runs of this instance, each with ``event`` in
        its history; a record that cannot be read is logged and kept aside."""
        runs = []
        for record in records:
            try:
                run = await self._adopt(record)
            except InvalidWorkflowState as exc:
                self._unreadable.add(record.id)
                logger.error(
                    "%s: a workflow cannot be taken over: %s",
                    self.name,
                    exc,
                    extra={"flowkit_workflow": self.name, "flowkit_workflow_id": record.id},
                )
                continue
            if run.id in self._running:
                continue  # registered meanwhile
            waiting = run.waiting_step()
            run.event(event, None if waiting is None else waiting.spec.name)
            self._register(run)
            runs.append(run)
        return runs

    async def _claim_due(self, limit: int) -> list[Run]:
        """Claim up to ``limit`` due waiting workflows and register them as runs."""
        if self._waits is None:
            return []
        records = await self._waits.claim_due(
            self.name,
            self._owner,
            lease=self._lease,
            limit=limit,
            exclude=driving(self._owner) | self._unreadable,
        )
        return await self._adopt_all(records, "woken")

    async def _start_claimed(self, records: list[WorkflowRecord]) -> None:
        """Continue, in the background, the due waiting workflows the waker claimed."""
        runs = await self._adopt_all(records, "woken")
        tg = self._tg
        if tg is None or self._stopping:
            for run in runs:
                self._release(run)
            await self._give_up_leases([run.id for run in runs])
            return
        for run in runs:
            tg.start_soon(self._background, run, name=f"{self.name}:{run.id}")

    async def _recover(self) -> bool:
        """Take over free workflows, as many as there are free slots, and run them
        in the background (every half lease, while started).

        Returns:
            Whether every free slot was filled (more workflows may be free).
        """
        if self._stopping or self._stack is None:
            return False
        free = self._concurrency - len(self._running)
        if free <= 0:
            return True
        runs = await self._claim_free(free)
        if runs:
            logger.info("%s: took over %d free workflow(s)", self.name, len(runs))
        tg = self._tg
        if tg is None or self._stopping:
            for run in runs:
                self._release(run)
            await self._give_up_leases([run.id for run in runs])
            return False
        for run in runs:
            tg.start_soon(self._background, run, name=f"{self.name}:{run.id}")
        return len(runs) >= free

    async def _slot_freed(self, timeout: float) -> None:
        """Wait until a run leaves this instance, ``timeout`` seconds at most."""
        if len(self._running) < self._concurrency:
            return
        with anyio.move_on_after(timeout):
            await self._freed.wait()
        self._freed = anyio.Event()

    async def get(self, workflow_id: str) -> WorkflowInfo:
        """Everything recorded about a workflow: status, steps, results, history.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The workflow's details as of its last checkpoint.

        Raises:
            WorkflowNotFound: if this orchestrator has no such workflow.
            InvalidWorkflowState: if its record cannot be read; the message
                names the workflow and the problem.
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
        after: str | None = None,
    ) -> list[WorkflowInfo]:
        """This orchestrator's workflows, oldest first, without their history
        (:meth:`get` has it).

        Page through many with ``limit`` and ``after``::

            page = await orchestrator.list(limit=100)
            while page:
                ...
                page = await orchestrator.list(limit=100, after=page[-1].cursor)

        Args:
            status: only workflows with this status (or one of these).
            limit: at most this many.
            after: a :attr:`WorkflowInfo.cursor`: only the workflows listed after it.

        Returns:
            Their details. A workflow whose record cannot be read is left out,
            with a warning naming it and the problem.
        """
        self._check_open()
        statuses: Collection[str] | None
        if status is None:
            statuses = None
        elif isinstance(status, str):
            statuses = [WorkflowStatus(status).value]
        else:
            statuses = [WorkflowStatus(s).value for s in status]
        records = await self._store.list_workflows(
            status=statuses, name=self.name, limit=limit, after=after
        )
        infos: list[WorkflowInfo] = []
        for record in records:
            run = Run(self._plan, record.id, None, None, None)
            try:
                run.load(record)
            except InvalidWorkflowState as exc:
                logger.warning(
                    "%s: list() left out a workflow: %s",
                    self.name,
                    exc,
                    extra={"flowkit_workflow": self.name, "flowkit_workflow_id": record.id},
                )
                continue
            infos.append(run.to_info(self.name))
        return infos

    async def cancel(self, workflow_id: str) -> Outcome:
        """Stop a workflow and compensate what it did.

        A running step is interrupted (it may have acted, so it is compensated);
        a ``WAITING`` workflow stops waiting and is compensated here.
        If the workflow finishes before the cancellation takes effect, its
        outcome is returned as it is. A workflow that another live process
        runs is cancelled there: the request is left in the store, that
        process sees it at its next checkpoint or lease renewal (within a
        third of its lease), and this call waits for the outcome.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The outcome, normally ``COMPENSATED`` (or ``FAILED`` if a
            compensation fails).

        Raises:
            WorkflowNotFound: if this orchestrator has no such workflow.
            InvalidWorkflowState: if the workflow is past its pivot, completed,
                or failed (see :meth:`retry_compensation`).
            ConcurrencyConflict: if another process changed it meanwhile.
        """
        self._check_open(new_work=True)
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
        if run.status in _FORWARD and run.pivot_done:
            raise InvalidWorkflowState(
                f"workflow {workflow_id!r} is past its pivot {self._plan.pivot!r} "
                "and cannot be cancelled"
            )
        claimed = None
        if workflow_id not in driving(self._owner):  # else another instance here runs it
            claimed = await self._store.claim_workflow(workflow_id, self._owner, lease=self._lease)
        if claimed is None:
            # another live process runs it (or it just finished): ask it, and wait
            if run.status in _FORWARD:
                await self._store.request_cancel(workflow_id)
            return await self._poll(workflow_id)
        run = await self._adopt(claimed)
        if run.status in _FORWARD:
            if run.pivot_done:
                await self._give_up_leases([workflow_id])
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

    async def signal(
        self, workflow_id: str, message: Message, *, signal_id: str | None = None
    ) -> bool:
        """Send a signal to a workflow: the message its :class:`WaitForSignal` of
        the message's class takes, from any process sharing the store.

        A workflow waiting for it is woken (at once when this process runs
        its orchestrator, otherwise within ``wait_poll`` seconds by a process
        that does). A workflow that has not reached the wait yet (it is still
        running earlier steps) gets it when it does: the signal is kept in the
        store's mailbox, ``mailbox_retention`` at most. One signal is taken by
        one wait; a second signal of the class is kept for a second wait.

        Refused, with nothing kept: a signal of a class the orchestrator waits
        for nowhere, and a signal to a workflow that can no longer take it
        (finished, compensating, or past every wait for that class).

        Args:
            workflow_id: the workflow's id.
            message: the signal, an instance of the class a ``WaitForSignal``
                of this orchestrator names.
            signal_id: the signal's id, to send it safely more than once: a
                signal with an id already kept for the workflow is kept once
                (a new id by default).

        Returns:
            True if a waiting workflow was woken by it, False if it is kept
            until the workflow reaches its wait.

        Raises:
            DefinitionError: if the orchestrator waits for no signal of that class.
            WorkflowNotFound: if this orchestrator has no such workflow.
            InvalidWorkflowState: if the workflow can no longer take the signal.
            MessageTooLarge: if the message is larger than 1 MiB as JSON.
        """
        self._check_open()
        specs = self._plan.signal_waits.get(type(message))
        if not specs:
            known = sorted(t.__name__ for t in self._plan.signal_waits)
            raise DefinitionError(
                f"{self.name} waits for no signal {type(message).__name__}"
                + (f"; it waits for {', '.join(known)}" if known else "; it has no WaitForSignal")
            )
        if signal_id is not None and (not isinstance(signal_id, str) or not signal_id):
            raise TypeError(f"signal_id must be a non-empty string, got {signal_id!r}")
        record = await self._load(workflow_id)
        run = Run(self._plan, workflow_id, None, None, None)
        run.load(record)
        what = type(message).__name__
        if run.status not in _FORWARD:
            raise InvalidWorkflowState(
                f"workflow {workflow_id!r} is {run.status.value}: it takes no signal {what} now"
            )
        if all(run.steps[s.name].done or run.steps[s.name].status == "failed" for s in specs):
            raise InvalidWorkflowState(
                f"workflow {workflow_id!r} is past its wait(s) for {what} "
                f"({', '.join(spec.name for spec in specs)})"
            )
        body = message.model_dump(mode="json")
        size = len(to_json(body))
        if size > MAX_SIGNAL_SIZE:
            raise MessageTooLarge(type(message).__flowkit_type__, size, MAX_SIGNAL_SIZE)
        wait = specs[0].wait
        assert wait is not None and wait.channel is not None
        return await self._deliver(wait.channel, workflow_id, signal_id or new_message_id(), body)

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
        self._check_open(new_work=True)
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
        self._check_open(new_work=True)
        run = await self._failed_run(workflow_id, "forward", "retry_compensation")
        for state in run.steps.values():
            if not state.done:
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

    async def _create(self, run: Run) -> bool:
        """Record a new workflow held by this instance; if the id exists, adopt the
        stored one instead.

        Returns:
            Whether to drive the run here: False when another live process
            holds the existing workflow (its outcome is to be polled).
        """
        record = run.record(self.name)
        stored, created = await self._store.create_workflow(record, lease=self._lease)
        if created:
            run.stored(stored, len(record.history))
            run.created_at = stored.created_at
            run.fresh = True
            return True
        if stored.name != self.name:
            raise InvalidWorkflowState(
                f"workflow id {run.id!r} is used by orchestrator {stored.name!r}"
            )
        if stored.status in _FINISHED:
            run.load(stored)
            run.outcome = run.to_outcome(self._plan.name_of)
            return True
        claimed = await self._store.claim_workflow(run.id, self._owner, lease=self._lease)
        if claimed is None:
            return False
        if claimed.status in _FINISHED:  # it finished meanwhile
            run.load(claimed)
            run.outcome = run.to_outcome(self._plan.name_of)
            return True
        await self._load_claimed(run, claimed)
        run.event("workflow_resumed")
        return True

    async def _adopt(self, claimed: WorkflowRecord) -> Run:
        """A run of a workflow this instance claimed."""
        run = Run(self._plan, claimed.id, None, None, None)
        await self._load_claimed(run, claimed)
        return run

    async def _load_claimed(self, run: Run, claimed: WorkflowRecord) -> None:
        """Load a claimed record (claims carry no history: a record written before
        the state listed its compensations is loaded whole)."""
        if "compensated" not in claimed.state:
            claimed = await self._store.load_workflow(claimed.id)
        run.load(claimed)

    def _register(self, run: Run) -> None:
        """Count a run as driven by this instance (its owner's claims skip it)."""
        if run.owner is None:
            run.owner = self._owner
        self._running[run.id] = run
        driving(self._owner).add(run.id)

    def _lose(self, run: Run) -> None:
        """Another process took the run's lease: stop it here; its outcome is polled."""
        if run.superseded:
            return  # stopped already: its outcome is being polled
        run.superseded = True
        self._engine.halt(run)

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
        run.owner = self._owner
        self._register(run)
        try:
            await self._engine.save(run)
        except Superseded as exc:
            self._release(run)
            raise ConcurrencyConflict(
                f"workflow {run.id!r} was changed by another process meanwhile; try again"
            ) from exc
        except BaseException:
            self._release(run)
            raise
        return await self._drive(run, poll_if_superseded=True)

    async def _drive(
        self, run: Run, *, poll_if_superseded: bool, wait_parked: bool = True
    ) -> Outcome:
        """Run a registered workflow to its end; always releases it.

        Raises:
            OrchestratorNotStarted: if the orchestrator stopped it.
            Superseded: if another process saved it meanwhile, unless
                ``poll_if_superseded`` (then that process's outcome is awaited).
            Parked: if it was parked to wait, unless ``wait_parked`` (then its
                outcome is awaited, whichever process takes it up).
        """
        try:
            if run.outcome is None:
                if self._halting:
                    raise Halted(run.id)
                slots = self._slots
                assert slots is not None
                try:
                    slots.acquire_nowait()  # no scheduling round trip when a slot is free
                except anyio.WouldBlock:
                    await slots.acquire()
                try:
                    if run.halted:
                        raise Halted(run.id)
                    run.outcome = await self._engine.execute(run)
                finally:
                    slots.release()
        except Superseded:
            run.superseded = True
            logger.info("workflow %s was saved by another process; leaving it to it", run.id)
            if not poll_if_superseded:
                raise
            run.outcome = await self._poll_run(run)
        except Halted:
            if not run.superseded or self._halting:
                raise self._stopped(run.id) from None
            # another process took its lease over: it continues the workflow
            run.halted = False
            if not poll_if_superseded:
                raise Superseded(run.id) from None
            run.outcome = await self._poll_run(run)
        except Parked:
            run.parked = True
        finally:
            self._release(run)
        if run.outcome is None:
            return await self._parked(run, wait=wait_parked)
        return run.outcome

    async def _parked(self, run: Run, *, wait: bool) -> Outcome:
        """The outcome of a run that parked, once some process finished it.

        Raises:
            Parked: unless ``wait``.
        """
        if not wait:
            raise Parked(run.id)
        return await self._poll(run.id)

    async def _poll_run(self, run: Run) -> Outcome:
        """Wait for the outcome of a registered run that another process took over;
        the orchestrator's stop ends the wait."""
        with anyio.CancelScope() as scope:
            run.scope = scope
            if run.halted:
                scope.cancel()
            try:
                return await self._poll(run.id, run)
            finally:
                run.scope = None
        raise self._stopped(run.id)

    async def _background(self, run: Run) -> None:
        try:
            await self._drive(run, poll_if_superseded=True, wait_parked=False)
        except Parked:
            pass  # it waits in the store; a waker takes it up when it is due
        except OrchestratorNotStarted:
            logger.info(
                "workflow %s of %s stopped with the orchestrator; resume() continues it",
                run.id,
                self.name,
            )
        except Exception:
            logger.exception("workflow %s of %s stopped; resume() continues it", run.id, self.name)
        except BaseException as exc:
            crashed = self._engine.crashed
            if crashed is None or not isinstance(exc, crashed):
                raise

    def _release(self, run: Run) -> None:
        run.released = True
        if self._running.get(run.id) is run:
            del self._running[run.id]
            driving(self._owner).discard(run.id)
            self._freed.set()
        if run.done is not None:
            run.done.set()
        if not self._running and self._idle is not None:
            self._idle.set()

    async def _wait_active(self, run: Run, *, wait_parked: bool = True) -> Outcome:
        if not run.released:
            if run.done is None:
                run.done = anyio.Event()
            await run.done.wait()
        if run.outcome is not None:
            return run.outcome
        if run.parked:
            return await self._parked(run, wait=wait_parked)
        self._engine.check_crash()
        if self._stopping:
            raise self._stopped(run.id)
        # the run stopped without an outcome (its caller was cancelled, the store
        # failed, ...): continue it here, or report how it ended
        record = await self._load(run.id)
        if record.status in _FINISHED:
            return self._outcome_of(record)
        active = self._running.get(run.id)
        if active is not None:
            return await self._wait_active(active)
        claimed = None
        if run.id not in driving(self._owner):
            claimed = await self._store.claim_workflow(run.id, self._owner, lease=self._lease)
        if claimed is None or claimed.status in _FINISHED:
            return await self._poll(run.id)  # another process runs it
        fresh = await self._adopt(claimed)
        fresh.event("workflow_resumed")
        self._register(fresh)
        return await self._drive(fresh, poll_if_superseded=True)

    async def _poll(self, workflow_id: str, own: Run | None = None) -> Outcome:
        """Wait until a workflow is finished (by whichever process), reading the
        store; a run of this instance (not ``own``, the caller's) is waited for
        in memory."""
        delay = 0.01
        while True:
            self._engine.check_crash()
            if self._halting:
                raise self._stopped(workflow_id)
            active = self._running.get(workflow_id)
            if active is not None and active is not own and not active.released:
                # it runs here (a waiting workflow this process took up): no store reads
                if active.done is None:
                    active.done = anyio.Event()
                with anyio.move_on_after(1.0):
                    await active.done.wait()
                if active.outcome is not None:
                    return active.outcome
                delay = 0.01
                continue
            record = await self._load(workflow_id)
            if record.status in _FINISHED:
                return self._outcome_of(record)
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- reading -------------------------------------------------------------------------

    @property
    def store(self) -> StateStore:
        """The store workflows are checkpointed in."""
        return self._store

    @classmethod
    def step_names(cls) -> tuple[str, ...]:
        """The names of the steps, in declaration order."""
        return tuple(spec.name for spec in cls._plan.specs)

    @classmethod
    def step_name(cls, step: object) -> str:
        """The name of one of the steps.

        Args:
            step: the step's function, its ``Step``/``Remote`` declaration, or
                its name.

        Returns:
            The name it is recorded, reported and observed under.

        Raises:
            KeyError: if it is not a step of this orchestrator (or its function
                is used by several steps: name it by its declaration or name).
        """
        return cls._plan.name_of(step)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} running={len(self._running)}>"
