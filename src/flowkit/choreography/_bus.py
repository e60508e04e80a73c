"""The choreography bus: the public face of handlers, publishing, requests and dead letters.

The work is done elsewhere, one job per module: ``_handlers`` checks
declarations, ``_consumer`` is the pipeline every message goes through,
``_replies`` is request/reply, ``_dead_letters`` keeps and replays what
consumers gave up on, and ``_lifecycle`` starts and stops the consumers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio

from .._errors import BusNotStarted, DefinitionError, MessageTooLarge
from .._events import Command, Envelope, Event, Message, encode, reply_type_of
from .._signing import SIGNATURE, Signing
from ._dead_letters import DeadLetterBox
from ._handlers import HandlerFunc, HandlerSpec, make_spec
from ._lifecycle import Running
from ._logging import HandlingLog
from ._observe import BusObserver, notify, send_observed, watching_now
from ._outbox import Outbox
from ._replies import Requests

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from datetime import timedelta
    from types import TracebackType

    from .._retry import Retry
    from ..observability._trace import TraceOptions, TraceRecorder
    from ..observability._trace_expect import Expectation, StalledFlow
    from ..stores._base import DeadLetter, StateStore
    from ..transports._base import Transport

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Choreography"]

logger = logging.getLogger("flowkit.bus")

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
F = TypeVar("F", bound=HandlerFunc)

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

# use(store=...) left out: keep the store as it is.
_UNCHANGED: Any = object()


class Choreography:
    """An event bus on which each service reacts on its own.

    Handlers are declared per service with :meth:`on` (events) and
    :meth:`handles` (commands answered with a reply); ``async with bus:``
    starts a consumer for every handler, ``bus.run(services=[...])`` only for
    some services. Delivery is at least once; with a ``store``, each handler
    claims every message in its inbox before handling it, so a duplicate is
    not handled twice (even by another process sharing the store), and dead
    letters survive restarts.

    Args:
        transport: the transport carrying the messages.
        store: keeps the inbox and the dead letters. Without one, nothing is
            deduplicated and at most 10,000 dead letters are kept in memory.
        stop_grace: seconds that in-flight handlers get to finish when the bus
            stops; those still running after that are cancelled and their
            messages go back to the transport unacked.
        max_message_size: the largest encoded message, in bytes (1 MiB by
            default): publishing a larger one raises
            :class:`~flowkit.MessageTooLarge`, and a larger one received is
            dead-lettered.
        claim_lease: seconds an inbox claim holds (at least the handler's
            timeout plus 5 seconds); keep it longer than any handling takes.
            A process that dies while handling a message leaves its claim;
            another process takes the message over once the claim has run out.
        inbox_retention: seconds an inbox entry is kept (7 days by default);
            while the bus runs with a store, older entries are pruned now and
            then. Keep it longer than a message can be redelivered (the
            broker's retention, the longest retry delay): a duplicate older
            than that would be handled again. None never prunes.
        observers: who watches the bus (tracing, metrics, the testing kit),
            after the bus's own DEBUG log of each publish and handling
            (logger ``flowkit.bus``), which every bus has first.
        outbox_relay: run the outbox relay while the bus runs (when the store
            has an outbox: SQLiteStore, PostgresStore). It publishes what
            :attr:`outbox` stored; several processes may run one, and only
            one of them publishes at a time. False leaves it to other processes.
        outbox_lease: seconds the relay's lease holds: when the relay that
            publishes dies, another takes over at most this long after.
        trace: record every publish and handling in the store's flow trace,
            by correlation id, for ``flowkit trace`` and :meth:`expect`
            (True: when the store keeps one, with the default
            :class:`~flowkit.observability.TraceOptions`; False: never).
        signing: sign every message this bus sends with HMAC-SHA256, and
            dead-letter every message its consumers receive whose signature
            is missing or does not match (see :class:`~flowkit.Signing` and
            the security guide). None (the default) signs nothing and checks
            nothing.

    Raises:
        ValueError: if a number is out of range.
        DefinitionError: if ``trace`` is not a bool or TraceOptions, or
            ``signing`` is not a Signing.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        store: StateStore | None = None,
        stop_grace: float = 10.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        claim_lease: float = 300.0,
        inbox_retention: float | None = 7 * 24 * 3600.0,
        observers: Sequence[BusObserver] = (),
        outbox_relay: bool = True,
        outbox_lease: float = 10.0,
        trace: bool | TraceOptions = True,
        signing: Signing | None = None,
    ) -> None:
        if signing is not None and not isinstance(signing, Signing):
            raise DefinitionError(
                f"signing must be a flowkit.Signing or None, not {type(signing).__name__}: "
                'pass signing=Signing(keys={"2026-12": key}, active="2026-12")'
            )
        if stop_grace < 0:
            raise ValueError(f"stop_grace must be >= 0 seconds, got {stop_grace}")
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be >= 1 byte, got {max_message_size}")
        if not claim_lease > 0:
            raise ValueError(f"claim_lease must be > 0 seconds, got {claim_lease}")
        if inbox_retention is not None and not inbox_retention > claim_lease:
            raise ValueError(
                f"inbox_retention must be longer than claim_lease ({claim_lease}s), "
                f"got {inbox_retention}"
            )
        if not outbox_lease >= 1.0:
            raise ValueError(f"outbox_lease must be >= 1 second, got {outbox_lease}")
        self._transport = transport
        self._store = store
        self._signing = signing
        self._outbox_relay = bool(outbox_relay)
        self._outbox_lease = float(outbox_lease)
        self._outbox = Outbox(self)
        self._stop_grace = stop_grace
        self._max_message_size = max_message_size
        self._claim_lease = claim_lease
        self._inbox_retention = inbox_retention
        self._observers: tuple[BusObserver, ...] = (HandlingLog(), *observers)
        self._handlers: list[HandlerSpec] = []
        self._running: Running | None = None
        self._dead_letters = DeadLetterBox(store)
        self._requests = Requests(max_message_size, signing, self._dead_letters)
        if not isinstance(trace, bool):
            from ..observability._trace import check_trace_argument

            check_trace_argument(trace)
        self._trace = trace
        self._expectations: tuple[Expectation, ...] = ()

    # -- declaration -----------------------------------------------------------

    def on(
        self,
        event_type: type[M],
        *,
        service: str,
        retry: Retry | None = None,
        emits: Sequence[type[Event]] | None = None,
        concurrency: int = 1,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Declare a handler of ``event_type`` in ``service``.

        Every service (in fact every handler) gets every event of the type.

        Args:
            event_type: the :class:`~flowkit.Event` subclass to handle.
            service: the service the handler belongs to.
            retry: the retry policy (default: ``Retry()``, 3 attempts).
            emits: the event types the handler publishes, for the flow graph,
                ``flowkit lint`` and the AsyncAPI document; publishing another
                type then logs a warning (once per type). None leaves it
                undeclared.
            concurrency: how many events this handler handles at once per process.
            timeout: seconds allowed per attempt.
            name: the handler's name in its service (the function's qualified
                name by default); with the service it names the consumer group,
                so keep it stable across deployments.

        Raises:
            DefinitionError: at decoration time, if the declaration is wrong.
        """

        def register(func: F) -> F:
            self._register(
                make_spec(
                    "event",
                    event_type,
                    func,
                    service=service,
                    name=name,
                    retry=retry,
                    emits=emits,
                    concurrency=concurrency,
                    timeout=timeout,
                )
            )
            return func

        return register

    def handles(
        self,
        command_type: type[Command[Any]],
        *,
        service: str,
        retry: Retry | None = None,
        concurrency: int = 8,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Declare the handler answering ``command_type`` in ``service``.

        The handler returns the command's reply model; the caller of
        :meth:`request` gets it. If the handler fails after its retries, the
        caller gets a :class:`~flowkit.RemoteError`.

        A command handler answers up to ``concurrency`` requests at once per
        process (8 by default), so one slow request does not hold up the
        other callers. A request past its caller's deadline is not started,
        and not retried.

        Raises:
            DefinitionError: at decoration time, if the declaration is wrong or
                the command already has a handler on this bus.
        """

        def register(func: F) -> F:
            spec = make_spec(
                "command",
                command_type,
                func,
                service=service,
                name=name,
                retry=retry,
                emits=None,
                concurrency=concurrency,
                timeout=timeout,
            )
            for other in self._handlers:
                if other.kind == "command" and other.topic == spec.topic:
                    raise DefinitionError(
                        f"command {spec.topic!r} is already handled by {other.consumer}; "
                        "a command has exactly one handler"
                    )
            self._register(spec)
            return func

        return register

    def _register(self, spec: HandlerSpec) -> None:
        if self._running is not None:
            raise DefinitionError(
                f"cannot add handler {spec.consumer} while the bus is running; "
                "declare handlers before starting it"
            )
        for other in self._handlers:
            if other.consumer == spec.consumer:
                raise DefinitionError(
                    f"service {spec.service!r} already has a handler named {spec.name!r}; "
                    "pass name=... to tell them apart"
                )
            if other.topic == spec.topic and other.message_type is not spec.message_type:
                raise DefinitionError(
                    f"two different classes use the message type name {spec.topic!r} "
                    f"({other.message_type.__qualname__} and {spec.message_type.__qualname__})"
                )
        self._handlers.append(spec)

    # -- configuration -----------------------------------------------------------

    @property
    def handlers(self) -> tuple[HandlerSpec, ...]:
        """Every declared handler, in declaration order."""
        return tuple(self._handlers)

    @property
    def services(self) -> frozenset[str]:
        """The names of the services that have handlers on this bus."""
        return frozenset(spec.service for spec in self._handlers)

    @property
    def transport(self) -> Transport:
        """The transport this bus runs on."""
        return self._transport

    @property
    def store(self) -> StateStore | None:
        """The store given to this bus, if any."""
        return self._store

    @property
    def signing(self) -> Signing | None:
        """How this bus signs and checks messages (None: it does not)."""
        return self._signing

    @property
    def stop_grace(self) -> float:
        """Seconds in-flight handlers get to finish when the bus stops."""
        return self._stop_grace

    @property
    def max_message_size(self) -> int:
        """The largest encoded message accepted, in bytes."""
        return self._max_message_size

    @property
    def inbox_retention(self) -> float | None:
        """Seconds an inbox entry is kept before the bus prunes it (None: never)."""
        return self._inbox_retention

    @property
    def claim_lease(self) -> float:
        """Seconds an inbox claim holds before another process may take over."""
        return self._claim_lease

    @property
    def outbox_relay(self) -> bool:
        """Whether the bus runs the outbox relay (when its store has an outbox)."""
        return self._outbox_relay

    @property
    def outbox_lease(self) -> float:
        """Seconds the outbox relay's lease holds."""
        return self._outbox_lease

    @property
    def trace(self) -> bool | TraceOptions:
        """Whether (and how) the bus records its flows in its store's trace."""
        return self._trace

    @property
    def trace_recorder(self) -> TraceRecorder | None:
        """The recorder writing this running bus's trace (None: not running, or
        not recording)."""
        running = self._running
        return running.recorder if running is not None else None

    @property
    def expectations(self) -> tuple[Expectation, ...]:
        """The expectations declared with :meth:`expect`, in order."""
        return self._expectations

    def expect(
        self,
        first: type[Event],
        *,
        leads_to: Sequence[type[Event]],
        within: timedelta | float,
        on_stalled: Callable[[StalledFlow], object] | None = None,
        name: str | None = None,
    ) -> Expectation:
        """Expect every flow that publishes ``first`` to reach one of ``leads_to`` in time.

        ::

            bus.expect(OrderPlaced, leads_to=[PartnerAssigned], within=timedelta(minutes=5))

        A flow (all the messages of one correlation id) in which ``first`` was
        published and none of ``leads_to`` followed within ``within`` is
        reported once: a WARNING on the ``flowkit.trace`` logger,
        ``on_stalled(flow)``, and a ``stalled`` entry in its trace;
        ``flowkit stalled MODULE:bus`` lists such flows. The check reads the
        flow trace in the store, so the events may be published by any
        process sharing it; it runs in every process running handlers of this
        bus with tracing on, and one of them reports each flow.

        Args:
            first: the event that starts the wait.
            leads_to: the events any one of which ends it.
            within: how long the flow has (a timedelta, or seconds).
            on_stalled: called with each :class:`~flowkit.observability.StalledFlow`
                this process reports: a plain function, or an async one
                (given 30 s); what it raises is logged.
            name: the expectation's name, unique on this bus
                (``"OrderPlaced->PartnerAssigned"`` by default).

        Returns:
            The expectation.

        Raises:
            DefinitionError: if an argument is wrong, the name is taken, or
                the bus is running.
        """
        from ..observability._trace_expect import make_expectation

        if self._running is not None:
            raise DefinitionError("cannot add an expectation while the bus is running")
        expectation = make_expectation(first, leads_to, within, on_stalled, name)
        if any(e.name == expectation.name for e in self._expectations):
            raise DefinitionError(
                f"this bus already has an expectation named {expectation.name!r}; "
                "pass name=... to tell them apart"
            )
        self._expectations = (*self._expectations, expectation)
        return expectation

    @property
    def observers(self) -> tuple[BusObserver, ...]:
        """The observers watching this bus, its own DEBUG log first."""
        return self._observers

    def use(
        self, *, transport: Transport | None = None, store: StateStore | None = _UNCHANGED
    ) -> None:
        """Replace the transport and the store before the bus starts.

        A service module builds its bus on its broker; a test runs the same bus
        on in-memory parts (:func:`flowkit.testing.run_in_memory` does this,
        and puts the originals back afterwards).

        Args:
            transport: the new transport (unchanged if None).
            store: the new store; None for no store (unchanged if left out).

        Raises:
            RuntimeError: if the bus is running.
        """
        self._check_stopped("replace the transport or store of")
        if transport is not None:
            self._transport = transport
        if store is not _UNCHANGED:
            self._store = store
            self._dead_letters = DeadLetterBox(store)
            self._requests.dead_letters = self._dead_letters

    def add_observer(self, observer: BusObserver) -> None:
        """Start notifying ``observer``; takes effect when the bus next starts.

        Raises:
            RuntimeError: if the bus is running.
        """
        self._check_stopped("add an observer to")
        self._observers = (*self._observers, observer)

    def remove_observer(self, observer: BusObserver) -> None:
        """Stop notifying ``observer`` (a no-op if it was not added).

        Raises:
            RuntimeError: if the bus is running.
        """
        self._check_stopped("remove an observer from")
        self._observers = tuple(o for o in self._observers if o is not observer)

    def _check_stopped(self, doing: str) -> None:
        if self._running is not None:
            raise RuntimeError(f"cannot {doing} a running bus; do it before starting it")

    # -- lifecycle -------------------------------------------------------------

    def run(
        self, services: Iterable[str] | None = None, *, stop_grace: float | None = None
    ) -> Running:
        """An async context manager running the consumers of some services.

        ``async with bus.run(services=["notification"]):`` starts only the
        handlers of that service; ``services=[]`` starts none (a process that
        only publishes and sends requests). ``async with bus:`` runs them all.

        Args:
            services: the services to run (all by default).
            stop_grace: overrides the bus's ``stop_grace`` for this run.

        Raises:
            DefinitionError: if a named service has no handler on this bus.
        """
        selected = None if services is None else frozenset(services)
        if selected is not None:
            unknown = selected - self.services
            if unknown:
                raise DefinitionError(
                    f"no handler is declared for service(s) {sorted(unknown)}; "
                    f"known services: {sorted(self.services)}"
                )
        grace = self._stop_grace if stop_grace is None else stop_grace
        if grace < 0:
            raise ValueError(f"stop_grace must be >= 0 seconds, got {grace}")
        return Running(self, selected, grace)

    async def __aenter__(self) -> Self:
        await self.run().__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        running = self._running
        if running is not None:
            await running.__aexit__(exc_type, exc, tb)

    @property
    def running(self) -> bool:
        """Whether the bus is started."""
        return self._running is not None

    @property
    def in_flight(self) -> int:
        """How many handlers of this process are handling a message right now."""
        running = self._running
        return running.workers.busy if running is not None else 0

    def _require_running(self) -> Running:
        running = self._running
        if running is None:
            raise BusNotStarted(
                "the bus is not started: use 'async with bus:' or 'async with bus.run(...)'"
            )
        return running

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until the running handlers have settled everything sent to them.

        Idle means that no handler runs and the transport holds nothing for
        the running handlers' groups: nothing ready, nothing waiting out a
        retry delay, nothing delivered and not yet acked; and, when this bus
        runs an outbox relay, that the outbox is empty. Useful in tests and
        scripts; a service normally runs until it is stopped.

        Raises:
            BusNotStarted: if the bus is not running.
            TimeoutError: if it is still busy after ``timeout`` seconds, saying
                how many messages are left.
        """
        running = self._require_running()
        left = 0
        quiet = 0
        with anyio.move_on_after(timeout):
            while True:
                left = running.workers.busy
                if running.relay is not None:
                    left += await running.relay.pending()
                for spec in running.specs:
                    left += await self._transport.backlog(spec.topic, spec.consumer)
                quiet = quiet + 1 if left == 0 else 0
                if quiet >= 2:
                    return
                await anyio.sleep(0.002 if quiet else 0.005)
        raise TimeoutError(
            f"the bus was still busy after {timeout}s: {left} message(s) not yet settled"
        )

    # -- sending ---------------------------------------------------------------

    async def publish(
        self,
        event: Event,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        message_id: str | None = None,
    ) -> Envelope:
        """Publish an event to every service that handles its type.

        Args:
            event: the event.
            headers: string metadata carried in the envelope.
            correlation_id: the flow it belongs to. If omitted: the
                workflow's id when a workflow's step sends it, else a new
                flow named by the message's business key (``correlate_by``),
                else by its own id.
            causation_id: the id of the message that caused it.
            message_id: a given id, to make a re-send idempotent.

        Returns:
            The envelope that was sent.

        Raises:
            BusNotStarted: if the bus is not running.
            MessageTooLarge: if the encoded event is over ``max_message_size``.
            TransportError: if the transport failed or could not take the
                message in time.
        """
        running = self._running or self._require_running()
        senders = running.senders
        if not (senders and watching_now(senders)):  # the hot path: no observer wraps it
            return await self._send(event, headers, correlation_id, causation_id, message_id)
        return await send_observed(
            senders,
            event,
            "publish",
            lambda hdrs, flow, mid: self._send(event, hdrs, flow, causation_id, mid),
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            message_id=message_id,
        )

    async def _send(
        self,
        event: Event,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
        message_id: str | None,
    ) -> Envelope:
        envelope, body = self._encode_event(
            event,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            message_id=message_id,
        )
        signing = self._signing
        if signing is None:
            await self._transport.publish(envelope.type, body)
        else:
            await self._transport.publish(
                envelope.type, body, {SIGNATURE: signing.sign(envelope.type, body)}
            )
        running = self._running
        if running is not None and running.publishers:
            notify(running.publishers, "published", envelope)
        return envelope

    def _encode_event(
        self,
        event: Event,
        *,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
        message_id: str | None,
    ) -> tuple[Envelope, bytes]:
        """An event's envelope and body, as :meth:`publish` and the outbox send them.

        Raises:
            TypeError: if ``event`` is not an Event.
            MessageTooLarge: if the body is over ``max_message_size``.
        """
        if not isinstance(event, Event):
            raise TypeError(
                f"publish() takes an Event, got {type(event).__name__}; send commands "
                "with request()"
            )
        envelope, body = encode(
            event,
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers=headers,
            message_id=message_id,
        )
        if len(body) > self._max_message_size:
            raise MessageTooLarge(envelope.type, len(body), self._max_message_size)
        return envelope, body

    @property
    def outbox(self) -> Outbox:
        """Publishes events inside your own database transaction (see :class:`~flowkit.Outbox`)."""
        return self._outbox

    async def request(
        self,
        command: Command[R],
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> R:
        """Send a command to the service that handles it and await the typed reply.

        The request carries its deadline: the answering service does not
        start it, nor retry it, once the caller has given up.

        Args:
            command: the command; its class names the reply type.
            timeout: seconds to wait for the reply.
            headers: string metadata carried in the envelope.
            correlation_id: the flow it belongs to. If omitted: the
                workflow's id when a workflow's step sends it, else a new
                flow named by the message's business key (``correlate_by``),
                else by its own id.
            causation_id: the id of the message that caused it.
            idempotency_key: passed to the handler as ``ctx.idempotency_key``.

        Returns:
            The reply, validated as the command's reply model.

        Raises:
            BusNotStarted: if the bus is not running, or stops while waiting.
            RequestTimeout: if no reply came within ``timeout``; its ``taken``
                says whether a service had started handling the request.
            RemoteError: if the handling service failed.
            MessageTooLarge: if the encoded command is over ``max_message_size``.
            DecodeError: if the reply does not validate as the reply model.
        """
        running = self._require_running()
        if not isinstance(command, Command):
            raise TypeError(f"request() takes a Command, got {type(command).__name__}")
        reply_type: type[R] = reply_type_of(type(command))  # type: ignore[assignment]
        observers = running.publishers
        return await self._requests.request(
            self._transport,
            running.task_group,
            command,
            reply_type,
            timeout=timeout,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            idempotency_key=idempotency_key,
            on_sent=(lambda envelope: notify(observers, "published", envelope))
            if observers
            else None,
            senders=running.senders,
        )

    # -- dead letters ------------------------------------------------------------

    async def dead_letters(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """The dead letters kept by this bus's store, oldest first.

        Args:
            consumer: only those of one handler (``service:name``).
            topic: only those of one message type.
            limit: at most this many.
        """
        return await self._dead_letters.list(consumer=consumer, topic=topic, limit=limit)

    async def replay(self, letter_id: str) -> None:
        """Deliver a dead letter again, to the handler that gave up on it only.

        The message is published again with its original body (so its original
        message id); the dead letter is removed once the transport accepted it.
        On a bus that signs, the replay is signed for that handler's group;
        a dead letter whose own signature does not verify is not replayed.

        Raises:
            NotFound: if there is no dead letter with this id.
            SignatureError: if the bus signs and the dead letter's signature
                does not verify (see :meth:`DeadLetterBox.replay`).
            BusNotStarted: if the bus is not running.
            TransportError: if the publish failed (the dead letter is kept).
        """
        self._require_running()
        await self._dead_letters.replay(letter_id, self._transport, self._signing)

    async def replay_all(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 1000
    ) -> int:
        """Replay the dead letters of one handler or topic (or all), oldest first.

        Args:
            consumer: only those of one handler (``service:name``).
            topic: only those of one message type.
            limit: at most this many.

        Returns:
            How many were replayed.

        Raises:
            BusNotStarted: if the bus is not running.
            SignatureError: if the bus signs and a dead letter's signature does
                not verify: the ones before it were replayed, it and the ones
                after it are kept.
        """
        self._require_running()
        letters = await self.dead_letters(consumer=consumer, topic=topic, limit=limit)
        for letter in letters:
            await self._dead_letters.replay(letter.id, self._transport, self._signing)
        return len(letters)

    def __repr__(self) -> str:
        state = "running" if self._running is not None else "stopped"
        return (
            f"<Choreography {len(self._handlers)} handler(s) in {len(self.services)} "
            f"service(s), {state}>"
        )
