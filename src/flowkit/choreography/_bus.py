"""The choreography bus: typed handlers per service, consumer loops, request/reply."""

from __future__ import annotations

import logging
import sys
import traceback
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import anyio

from .._errors import (
    BusNotStarted,
    DecodeError,
    DefinitionError,
    HandlerTimeout,
    RemoteError,
    RequestTimeout,
    TransportClosed,
    TransportError,
)
from .._events import (
    Command,
    Envelope,
    Event,
    Message,
    decode,
    decode_envelope,
    encode,
    new_message_id,
    reply_type_of,
    validate_payload,
)
from .._exits import exit_stack
from ..stores._base import DeadLetter
from ._context import IDEMPOTENCY_KEY_HEADER, Context
from ._handlers import HandlerFunc, HandlerSpec, make_spec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from .._retry import Retry
    from ..stores._base import StateStore
    from ..transports._base import Delivery, Subscription, Transport

__all__ = ["Choreography"]

logger = logging.getLogger("flowkit.bus")

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
F = TypeVar("F", bound=HandlerFunc)

REPLY_TO_HEADER = "flowkit-reply-to"
IN_REPLY_TO_HEADER = "flowkit-in-reply-to"
REQUEST_ID_HEADER = "flowkit-request-id"
TARGET_HEADER = "flowkit-target"
REPLAY_HEADER = "flowkit-replay-of"
_DECODE_CACHE_SIZE = 1024


class _RemoteFailure(Message, type_name="flowkit.RemoteError"):
    error_type: str
    message: str
    service: str
    retryable: bool


class _PendingReply:
    __slots__ = ("body", "done", "stopped")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.body: bytes | None = None
        self.stopped = False


class _Worker:
    __slots__ = ("busy", "sub")

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.busy = False


class Choreography:
    """An event bus on which each service reacts on its own.

    Handlers are declared per service with :meth:`on` (events) and
    :meth:`handles` (commands answered with a reply); ``async with bus:``
    starts a consumer for every handler, ``bus.run(services=[...])`` only for
    some services. Delivery is at least once; with a ``store``, each handler
    skips the messages it already handled (inbox) and dead letters survive
    restarts.

    Args:
        transport: the transport carrying the messages.
        store: keeps the inbox and the dead letters. Without one, nothing is
            deduplicated and dead letters are kept in memory.
        stop_grace: seconds that in-flight handlers get to finish when the bus
            stops; those still running after that are cancelled, not acked, and
            delivered again later.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        store: StateStore | None = None,
        stop_grace: float = 10.0,
    ) -> None:
        self._transport = transport
        self._store = store
        self._stop_grace = stop_grace
        self._handlers: list[HandlerSpec] = []
        self._running: _Run | None = None
        self._fallback_store: StateStore | None = None
        self._fallback_open: anyio.Event | None = None
        self._decoded: dict[bytes, tuple[Envelope, Message]] = {}
        self._inflight: set[tuple[str, str]] = set()
        self._pending: dict[str, _PendingReply] = {}
        self._reply_topic = f"flowkit.reply.{new_message_id()}"
        self._reply_lock: anyio.Lock | None = None
        self._reply_started = False

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
            emits: the event types the handler publishes, for checks and the
                flow graph; publishing any other type then fails. None leaves
                it undeclared.
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
        concurrency: int = 1,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Declare the handler answering ``command_type`` in ``service``.

        The handler returns the command's reply model; the caller of
        :meth:`request` gets it. If the handler fails after its retries, the
        caller gets a :class:`~flowkit.RemoteError`.

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

    # -- lifecycle -------------------------------------------------------------

    def run(self, services: Iterable[str] | None = None) -> _Run:
        """An async context manager running the consumers of some services.

        ``async with bus.run(services=["notification"]):`` starts only the
        handlers of that service; ``services=[]`` starts none (a process that
        only publishes and sends requests). ``async with bus:`` runs them all.

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
        return _Run(self, selected)

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

    def _require_running(self) -> _Run:
        running = self._running
        if running is None:
            raise BusNotStarted(
                "the bus is not started: use 'async with bus:' or 'async with bus.run(...)'"
            )
        return running

    async def _dead_letter_store(self) -> StateStore:
        if self._store is not None:
            return self._store
        if self._fallback_store is None:
            from ..stores._memory import MemoryStore

            self._fallback_store = MemoryStore()
            self._fallback_open = anyio.Event()
            await self._fallback_store.__aenter__()  # in memory: open for the bus's lifetime
            self._fallback_open.set()
        elif self._fallback_open is not None:
            await self._fallback_open.wait()
        return self._fallback_store

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
            correlation_id: the flow it belongs to (a new flow if omitted).
            causation_id: the id of the message that caused it.
            message_id: a given id, to make a re-send idempotent.

        Returns:
            The envelope that was sent.

        Raises:
            BusNotStarted: if the bus is not running.
            TransportError: if the transport failed.
        """
        self._require_running()
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
        await self._transport.publish(envelope.type, body)
        return envelope

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

        Args:
            command: the command; its class names the reply type.
            timeout: seconds to wait for the reply.
            headers: string metadata carried in the envelope.
            correlation_id: the flow it belongs to (a new flow if omitted).
            causation_id: the id of the message that caused it.
            idempotency_key: passed to the handler as ``ctx.idempotency_key``.

        Returns:
            The reply, validated as the command's reply model.

        Raises:
            BusNotStarted: if the bus is not running.
            RequestTimeout: if no reply came within ``timeout``.
            RemoteError: if the handling service failed.
            DecodeError: if the reply does not validate as the reply model.
        """
        self._require_running()
        if not isinstance(command, Command):
            raise TypeError(f"request() takes a Command, got {type(command).__name__}")
        reply_type = reply_type_of(type(command))
        await self._ensure_reply_listener()
        hdrs = dict(headers) if headers else {}
        if idempotency_key is not None:
            hdrs[IDEMPOTENCY_KEY_HEADER] = idempotency_key
        envelope, body = encode(
            command, correlation_id=correlation_id, causation_id=causation_id, headers=hdrs
        )
        pending = _PendingReply()
        self._pending[envelope.message_id] = pending
        try:
            await self._transport.publish(
                envelope.type,
                body,
                {REPLY_TO_HEADER: self._reply_topic, REQUEST_ID_HEADER: envelope.message_id},
            )
            with anyio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            del self._pending[envelope.message_id]
        if pending.stopped:
            raise BusNotStarted(f"the bus stopped while waiting for the reply to {envelope.type}")
        if pending.body is None:
            raise RequestTimeout(
                f"no reply to {envelope.type} (message {envelope.message_id}) within "
                f"{timeout}s; is a service handling {envelope.type!r} running?"
            )
        reply = decode_envelope(pending.body)
        if reply.type == _RemoteFailure.__flowkit_type__:
            failure = validate_payload(reply, _RemoteFailure)
            raise RemoteError(
                failure.error_type,
                failure.message,
                service=failure.service,
                retryable=failure.retryable,
            )
        return validate_payload(reply, reply_type)  # type: ignore[return-value]

    async def _ensure_reply_listener(self) -> None:
        if self._reply_started:
            return
        running = self._require_running()
        if self._reply_lock is None:
            self._reply_lock = anyio.Lock()
        async with self._reply_lock:
            if self._reply_started:
                return
            sub = await self._transport.subscribe(self._reply_topic, self._reply_topic)
            running.task_group.start_soon(self._listen_replies, sub)
            running.subscriptions.append(sub)
            self._reply_started = True

    async def _listen_replies(self, sub: Subscription) -> None:
        while True:
            try:
                delivery = await sub.receive()
            except TransportClosed:
                return
            try:
                await delivery.ack()
            except TransportError:
                logger.warning("could not ack a reply; it may arrive twice", exc_info=True)
            request_id = delivery.headers.get(IN_REPLY_TO_HEADER)
            pending = self._pending.get(request_id) if request_id else None
            if pending is None:
                logger.debug("dropping a reply to an unknown or expired request %s", request_id)
                continue
            pending.body = delivery.body
            pending.done.set()

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
        return await (await self._dead_letter_store()).list_dead_letters(
            consumer=consumer, topic=topic, limit=limit
        )

    async def replay(self, letter_id: str) -> None:
        """Deliver a dead letter again, to the handler that gave up on it only.

        The message is published again with its original body (so its original
        message id) and the dead letter is removed.

        Raises:
            NotFound: if there is no dead letter with this id.
            BusNotStarted: if the bus is not running.
        """
        self._require_running()
        store = await self._dead_letter_store()
        letter = await store.get_dead_letter(letter_id)
        headers = {
            k: v for k, v in letter.headers.items() if k not in (TARGET_HEADER, REPLAY_HEADER)
        }
        headers[TARGET_HEADER] = letter.consumer
        headers[REPLAY_HEADER] = letter.id
        await self._transport.publish(letter.topic, letter.body, headers)
        await store.delete_dead_letter(letter.id)

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
        """
        self._require_running()
        letters = await self.dead_letters(consumer=consumer, topic=topic, limit=limit)
        for letter in letters:
            await self.replay(letter.id)
        return len(letters)

    # -- consuming -------------------------------------------------------------

    def _decode(self, body: bytes, spec: HandlerSpec) -> tuple[Envelope, Message]:
        envelope, message = decode(body, spec.message_type)
        if len(self._decoded) >= _DECODE_CACHE_SIZE:
            self._decoded.clear()
        self._decoded[body] = (envelope, message)
        return envelope, message

    async def _consume(self, running: _Run, spec: HandlerSpec, sub: Subscription) -> None:
        backoff = 0.05
        while True:
            worker = _Worker(sub)
            running.workers.add(worker)
            try:
                while not running.stopping:
                    try:
                        delivery = await sub.receive()
                    except TransportClosed:
                        break
                    if running.stopping:
                        break  # not handled: closing the subscription gives it back
                    worker.busy = True
                    try:
                        await self._process(spec, delivery)
                    except Exception:
                        # The store or the transport failed around the handler: the
                        # message goes back, and the consumer carries on.
                        logger.exception("consumer %s could not settle a message", spec.consumer)
                        await _nack_quietly(delivery, 1.0)
                    finally:
                        worker.busy = False
            finally:
                running.workers.discard(worker)
                if running.stopping and not running.workers:
                    running.workers_gone.set()
                with anyio.CancelScope(shield=True):
                    await _close_quietly(sub)
            if running.stopping:
                return
            # the subscription was lost (consumer dropped, connection reset): subscribe again
            while True:
                try:
                    sub = await self._transport.subscribe(spec.topic, spec.consumer)
                    break
                except (TransportClosed, TransportError) as exc:
                    if running.stopping:
                        return
                    logger.warning(
                        "consumer %s could not subscribe (%s); retrying in %.2fs",
                        spec.consumer,
                        exc,
                        backoff,
                    )
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            backoff = 0.05

    async def _process(self, spec: HandlerSpec, delivery: Delivery) -> None:
        headers = delivery.headers
        if headers and TARGET_HEADER in headers and headers[TARGET_HEADER] != spec.consumer:
            await delivery.ack()  # a replay meant for another consumer
            return
        body = delivery.body
        cached = self._decoded.get(body)
        if cached is not None and type(cached[1]) is spec.message_type:
            envelope, message = cached
        else:
            try:
                envelope, message = self._decode(body, spec)
            except DecodeError as exc:
                logger.error(
                    "consumer %s dead-lettered an undecodable message: %s", spec.consumer, exc
                )
                if await self._give_up(spec, delivery, exc, None, attempts=0):
                    await self._reply_failure(spec, delivery, None, exc, retryable=False)
                return
        key: tuple[str, str] | None = None
        store = self._store
        if store is not None and spec.kind == "event":
            # A replayed dead letter is a new chance for the same message: it has an
            # inbox entry of its own, since giving up recorded the message as settled.
            replay_of = headers.get(REPLAY_HEADER) if headers else None
            key = (
                spec.consumer,
                f"{envelope.message_id}/replay/{replay_of}" if replay_of else envelope.message_id,
            )
            if key in self._inflight:
                await delivery.ack()  # a duplicate of a message being handled right now
                return
            self._inflight.add(key)
            try:
                seen = await store.inbox_contains(*key)
            except BaseException:
                self._inflight.discard(key)
                raise
            if seen:
                self._inflight.discard(key)
                await delivery.ack()  # a duplicate of a message already handled
                return
        attempt = delivery.attempt
        ctx = Context(self, spec, envelope, attempt)
        try:
            if spec.timeout is None and spec.takes_context:
                result = await spec.func(message, ctx)
            else:
                result = await self._call(spec, message, ctx)
            if spec.kind == "command":
                await self._reply(spec, delivery, envelope, result)
            if key is not None and store is not None:
                await store.inbox_add(*key)
        except Exception as exc:
            await self._failed(spec, delivery, envelope, ctx, exc, key)
        else:
            await delivery.ack()
        finally:
            if key is not None:
                self._inflight.discard(key)

    async def _call(self, spec: HandlerSpec, message: Message, ctx: Context) -> Any:
        if spec.timeout is None:
            if spec.takes_context:
                return await spec.func(message, ctx)
            return await spec.func(message)
        scope: anyio.CancelScope | None = None
        try:
            with anyio.fail_after(spec.timeout) as scope:
                if spec.takes_context:
                    return await spec.func(message, ctx)
                return await spec.func(message)
        except TimeoutError:
            if scope is not None and scope.cancelled_caught:
                raise HandlerTimeout(
                    f"handler {spec.consumer} exceeded its timeout of {spec.timeout}s"
                ) from None
            raise

    async def _failed(
        self,
        spec: HandlerSpec,
        delivery: Delivery,
        envelope: Envelope,
        ctx: Context,
        exc: Exception,
        key: tuple[str, str] | None,
    ) -> None:
        attempt = ctx.attempt
        if spec.retry.should_retry(exc, attempt):
            delay = spec.retry.delay(attempt)
            ctx.logger.warning(
                "attempt %d of %s failed (%s: %s); retrying in %.3fs",
                attempt,
                spec.consumer,
                type(exc).__name__,
                exc,
                delay,
            )
            await delivery.nack(delay)
            return
        ctx.logger.error(
            "%s gave up on message %s after %d attempt(s): %s: %s",
            spec.consumer,
            envelope.message_id,
            attempt,
            type(exc).__name__,
            exc,
        )
        if await self._give_up(spec, delivery, exc, envelope, attempts=attempt, key=key):
            await self._reply_failure(
                spec, delivery, envelope, exc, retryable=spec.retry.is_retryable(exc)
            )

    async def _give_up(
        self,
        spec: HandlerSpec,
        delivery: Delivery,
        exc: BaseException,
        envelope: Envelope | None,
        *,
        attempts: int,
        key: tuple[str, str] | None = None,
    ) -> bool:
        """Dead-letter a delivery, then ack it. False if the dead letter could not be kept
        (the delivery is then nacked, so nothing is lost).

        With an inbox ``key``, the message is recorded as settled for this consumer, so a
        duplicate arriving later is not handled behind its dead letter's back (a replay
        is the way to try it again)."""
        detail = "".join(traceback.format_exception(exc)) if attempts else str(exc)
        letter = DeadLetter(
            id=new_message_id(),
            consumer=spec.consumer,
            topic=delivery.topic,
            body=delivery.body,
            headers={k: v for k, v in delivery.headers.items() if k != TARGET_HEADER},
            error_type=_qualname(exc),
            error=detail,
            attempts=attempts,
            failed_at=datetime.now(UTC),
            message_id=envelope.message_id if envelope is not None else None,
        )
        try:
            await (await self._dead_letter_store()).add_dead_letter(letter)
            if key is not None and self._store is not None:
                await self._store.inbox_add(*key)
        except Exception:
            logger.exception("could not keep a dead letter for %s; redelivering", spec.consumer)
            await delivery.nack(1.0)
            return False
        await delivery.ack()
        return True

    async def _reply(
        self, spec: HandlerSpec, delivery: Delivery, envelope: Envelope, result: Any
    ) -> None:
        reply_to = delivery.headers.get(REPLY_TO_HEADER)
        assert spec.reply_type is not None
        if not isinstance(result, spec.reply_type):
            raise TypeError(
                f"command handler {spec.consumer} returned {type(result).__name__}, "
                f"expected {spec.reply_type.__name__}"
            )
        if reply_to is None:
            return  # sent without waiting for a reply
        _, body = encode(
            result,
            correlation_id=envelope.correlation_id,
            causation_id=envelope.message_id,
        )
        await self._transport.publish(reply_to, body, {IN_REPLY_TO_HEADER: envelope.message_id})

    async def _reply_failure(
        self,
        spec: HandlerSpec,
        delivery: Delivery,
        envelope: Envelope | None,
        exc: BaseException,
        *,
        retryable: bool,
    ) -> None:
        if spec.kind != "command":
            return
        reply_to = delivery.headers.get(REPLY_TO_HEADER)
        if reply_to is None:
            return
        request_id = delivery.headers.get(REQUEST_ID_HEADER) or (
            envelope.message_id if envelope is not None else None
        )
        if request_id is None:
            return
        failure = _RemoteFailure(
            error_type=_qualname(exc), message=str(exc), service=spec.service, retryable=retryable
        )
        _, body = encode(
            failure,
            correlation_id=envelope.correlation_id if envelope is not None else None,
            causation_id=request_id,
        )
        try:
            await self._transport.publish(reply_to, body, {IN_REPLY_TO_HEADER: request_id})
        except TransportError:
            logger.exception("could not send the failure reply of %s", spec.consumer)


class _Run:
    """A running bus: its task group, subscriptions and workers."""

    def __init__(self, bus: Choreography, services: frozenset[str] | None) -> None:
        self.bus = bus
        self.services = services
        self.stopping = False
        self.workers: set[_Worker] = set()
        self.workers_gone = anyio.Event()
        self.subscriptions: list[Subscription] = []
        self._stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None

    @property
    def task_group(self) -> TaskGroup:
        assert self._task_group is not None
        return self._task_group

    async def __aenter__(self) -> Choreography:
        bus = self.bus
        if bus._running is not None:
            raise RuntimeError("the bus is already running")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await stack.enter_async_context(bus._transport)
            if bus._store is not None:
                await stack.enter_async_context(bus._store)
            specs = [
                s for s in bus._handlers if self.services is None or s.service in self.services
            ]
            initial: list[tuple[HandlerSpec, Subscription]] = []
            for spec in specs:
                for _ in range(spec.concurrency):
                    initial.append(
                        (spec, await bus._transport.subscribe(spec.topic, spec.consumer))
                    )
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        bus._running = self
        for spec, sub in initial:
            self._task_group.start_soon(bus._consume, self, spec, sub)
        return bus

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        bus = self.bus
        stack = self._stack
        assert stack is not None and self._task_group is not None
        try:
            with anyio.CancelScope(shield=True):
                await self._stop()
        finally:
            bus._running = None
            bus._reply_started = False
            await exit_stack(stack, exc_type, exc, tb)
        return False

    async def _stop(self) -> None:
        assert self._task_group is not None
        self.stopping = True
        for pending in self.bus._pending.values():
            pending.stopped = True
            pending.done.set()
        for worker in list(self.workers):
            if not worker.busy:
                await _close_quietly(worker.sub)
        for sub in self.subscriptions:
            await _close_quietly(sub)
        if self.workers:
            with anyio.move_on_after(self.bus._stop_grace):
                await self.workers_gone.wait()
        if self.workers:
            logger.warning(
                "%d handler(s) still running after %.1fs; cancelling them (their messages "
                "will be delivered again)",
                len(self.workers),
                self.bus._stop_grace,
            )
        self._task_group.cancel_scope.cancel()


async def _nack_quietly(delivery: Delivery, delay: float) -> None:
    try:
        await delivery.nack(delay)
    except Exception:
        logger.debug("could not nack a delivery; it comes back when its consumer closes")


async def _close_quietly(sub: Subscription) -> None:
    try:
        await sub.aclose()
    except Exception:
        logger.debug("error while closing a subscription", exc_info=True)


def _qualname(exc: BaseException) -> str:
    """An exception's type as users import it: ``ValueError``, ``flowkit.DecodeError``,
    ``myshop.payments.CardDeclined``."""
    cls = type(exc)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module.startswith("flowkit.") and hasattr(sys.modules["flowkit"], cls.__name__):
        return f"flowkit.{cls.__qualname__}"
    return f"{module}.{cls.__qualname__}"
