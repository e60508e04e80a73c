"""The consumer pipeline of one handler: receive → decode → claim → invoke → settle.

Every message a handler gets goes through :meth:`Consumer.handle`, top to
bottom:

1. **receive**: the consumer loop (:meth:`Consumer.run`) takes deliveries
   from its subscription, and subscribes again if the subscription is lost;
2. **verify and decode**: on a bus that signs, the signature is checked
   first (a message that fails it is dead-lettered at once with a
   :class:`~flowkit.SignatureError`, before anything of it is read or
   claimed; an unsigned one accepted in the migration mode keeps no control
   header, and its message id is kept apart in the inbox); the body is
   checked against the size limit, then decoded and validated once per
   process (:class:`DecodeCache`); a body that fails is dead-lettered at
   once with the reason;
3. **claim**: with a store, an event handler claims the message in its inbox,
   so a duplicate (redelivered, or handled by another process right now) is
   not handled twice; a request past its caller's deadline is dropped;
4. **invoke**: the handler runs, with its timeout and the observers;
5. **settle**: success acks (and answers a command); a failure is retried
   with the handler's policy (a nack with a delay) or, once the policy says
   no, dead-lettered and acked.

Any exception user code raises, :class:`BaseException` subclasses included,
is the failure of that one message; only a real cancellation (the bus
stopping) leaves the pipeline, and the message then goes back to the
transport unsettled.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from .._cancel import stops_work
from .._errors import (
    AlreadyHandled,
    DecodeError,
    HandlerTimeout,
    MessageTooLarge,
    SignatureError,
    TransportClosed,
    TransportError,
)
from .._events import decode_envelope, decode_fields, envelope_of
from .._redact import redact_url
from ..stores._base import Claim, DeadLetter
from ..transports._headers import NO_HEADERS
from ._context import UNSIGNED, Context
from ._dead_letters import letter_id
from ._headers import REPLAY_OF, deadline_of
from ._observe import Observed, notify, overriding, watching_now
from ._replies import send_accepted, send_failure, send_reply

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._events import Envelope, Message
    from ..stores._base import StateStore
    from ..transports._base import Delivery, Subscription, Transport
    from ._bus import Choreography
    from ._dead_letters import DeadLetterBox
    from ._handlers import HandlerSpec
    from ._observe import BusObserver

__all__ = ["Consumer", "DecodeCache", "Decoded", "Workers"]

logger = logging.getLogger("flowkit.bus")

# How many deliveries a consumer loop takes from its subscription at once, when
# it is the handler's only loop. With several loops, each takes one at a time
# so that a slow handler does not hold messages its siblings could take.
_BATCH = 64
# Handled deliveries of a batch are acked together at its end, or as soon as the
# oldest of them has waited this long (seconds).
_ACK_WITHIN = 0.1


class Decoded:
    """A decoded message, and its envelope once someone needed it."""

    __slots__ = ("_envelope", "fields", "message")

    def __init__(self, fields: Mapping[str, Any], message: Message) -> None:
        self.fields = fields
        self.message = message
        self._envelope: Envelope | None = None

    @property
    def envelope(self) -> Envelope:
        """The envelope, built on first use (a plain handler that succeeds never needs it)."""
        envelope = self._envelope
        if envelope is None:
            envelope = self._envelope = envelope_of(self.fields, self.message)
        return envelope


class DecodeCache:
    """Decoded messages by body, so that the handlers of one process that get
    the same message decode it once.

    The handlers of one message take it at about the same time (within one
    batch), so the cache is small: at most ``max_entries`` bodies totalling
    ``max_bytes``, the oldest forgotten first, and a body larger than
    ``max_entry`` bytes is never kept. Kept longer, decoded messages would
    only burden the garbage collector.
    """

    __slots__ = ("_entries", "_max_bytes", "_max_entries", "_max_entry", "_size", "get")

    def __init__(
        self,
        *,
        max_entries: int = 64,
        max_bytes: int = 4 * 1024 * 1024,
        max_entry: int = 256 * 1024,
    ) -> None:
        self._entries: dict[bytes, Decoded] = {}
        # The decoded form of a body, if kept (the dict's own get: this is the hot path).
        self.get = self._entries.get
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._max_entry = max_entry
        self._size = 0

    def put(self, body: bytes, decoded: Decoded) -> None:
        """Keep the decoded form of ``body``, if it is small enough, forgetting
        the oldest entries to make room (so the cache does not grow and shrink
        by whole generations of objects, which would wake the garbage collector)."""
        size = len(body)
        if size > self._max_entry:
            return
        entries = self._entries
        while entries and (
            len(entries) >= self._max_entries or self._size + size > self._max_bytes
        ):
            oldest = next(iter(entries))
            del entries[oldest]
            self._size -= len(oldest)
        entries[body] = decoded
        self._size += size

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self._size = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The total size of the bodies kept, in bytes."""
        return self._size


class _Worker:
    __slots__ = ("busy", "sub")

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.busy = False


class Workers:
    """The consumer loops of a running bus, as its stop sees them."""

    def __init__(self) -> None:
        self.stopping = False
        self.live: set[_Worker] = set()
        self.gone = anyio.Event()

    @property
    def busy(self) -> int:
        """How many loops are handling a message right now."""
        return sum(1 for worker in self.live if worker.busy)

    def _left(self, worker: _Worker) -> None:
        self.live.discard(worker)
        if self.stopping and not self.live:
            self.gone.set()

    async def close_idle(self) -> None:
        """Close the subscriptions of the loops waiting for a message."""
        for worker in list(self.live):
            if not worker.busy:
                await _close_quietly(worker.sub)


class Consumer:
    """The pipeline of one handler, shared by its consumer loops in this process.

    Args:
        spec: the handler.
        bus: the bus, for the handler's context (publish, request).
        transport: where messages come from and replies go.
        store: the inbox (None: no deduplication).
        dead_letters: where given-up messages are kept.
        observers: who watches.
        cache: the process's shared decode cache.
        max_message_size: bodies over this many bytes are dead-lettered.
        claim_lease: seconds an inbox claim holds before another process may
            take the message over.
    """

    def __init__(
        self,
        spec: HandlerSpec,
        *,
        bus: Choreography,
        transport: Transport,
        store: StateStore | None,
        dead_letters: DeadLetterBox,
        observers: Sequence[BusObserver],
        cache: DecodeCache,
        max_message_size: int,
        claim_lease: float,
    ) -> None:
        self.spec = spec
        self.name = spec.consumer
        self._bus = bus
        self._transport = transport
        self._inbox = store if spec.kind == "event" else None
        self._dead_letters = dead_letters
        self._observers = tuple(observers)
        self._scopes = overriding(self._observers, "handling")
        self._cache = cache
        self._cached = cache.get
        self._max_size = max_message_size
        self._signing = bus.signing
        # A claim must outlast the handling: at least the handler's timeout.
        self._lease = max(claim_lease, (spec.timeout or 0.0) + 5.0)
        self._handling: set[str] = set()  # inbox keys being handled in this process
        self._plain = (
            spec.kind == "event"
            and self._inbox is None
            and spec.timeout is None
            and not spec.takes_context
        )

    # -- receive ---------------------------------------------------------------

    async def run(self, sub: Subscription, workers: Workers) -> None:
        """One consumer loop: handle deliveries until the bus stops.

        A lost subscription (a dropped consumer, a reset connection) is
        replaced, with a growing pause between attempts.
        """
        batch = _BATCH if self.spec.concurrency == 1 else 1
        handle = self.handle
        while True:
            worker = _Worker(sub)
            workers.live.add(worker)
            try:
                while not workers.stopping:
                    try:
                        deliveries = await sub.receive_many(batch)
                    except TransportClosed:
                        break
                    worker.busy = True
                    handled: list[Delivery] = []
                    first = 0.0
                    # Asked once per batch: an idle observer costs one call per batch.
                    watched = not self._plain or watching_now(self._observers)
                    try:
                        for delivery in deliveries:
                            if workers.stopping:
                                break  # not handled: closing the subscription gives it back
                            try:
                                if await handle(delivery, watched):
                                    if not handled:
                                        first = time.monotonic()
                                    handled.append(delivery)
                            except BaseException as exc:
                                if stops_work(exc):
                                    raise
                                # The store or the transport failed around the handler:
                                # the message goes back, and the loop carries on.
                                logger.exception(
                                    "consumer %s could not settle a message", self.name
                                )
                                await _nack_quietly(
                                    delivery, self.spec.retry.delay(delivery.attempt)
                                )
                            if handled and time.monotonic() - first > _ACK_WITHIN:
                                await _ack(sub, handled)
                    finally:
                        worker.busy = False
                        if handled:
                            with anyio.CancelScope(shield=True):
                                await _ack(sub, handled)
            finally:
                workers._left(worker)
                with anyio.CancelScope(shield=True):
                    await _close_quietly(sub)
            if workers.stopping:
                return
            again = await self._subscribe_again(workers)
            if again is None:
                return
            sub = again

    async def _subscribe_again(self, workers: Workers) -> Subscription | None:
        backoff = 0.05
        while not workers.stopping:
            try:
                return await self._transport.subscribe(self.spec.topic, self.name)
            except TransportError as exc:
                logger.warning(
                    "consumer %s could not subscribe (%s); retrying in %.2fs",
                    self.name,
                    type(exc).__name__,
                    backoff,
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        return None

    # -- the pipeline ------------------------------------------------------------

    async def handle(self, delivery: Delivery, watched: bool = True) -> bool:
        """Take one delivery through decode, claim, invoke and settle.

        Args:
            delivery: the delivery.
            watched: whether an observer watches (see :meth:`BusObserver.watching`);
                if not, a plain handler is called directly.

        Returns:
            True if the message was handled: the caller acks it (with the rest
            of its batch). Every other outcome is settled here.
        """
        spec = self.spec
        # verify: the control headers are trusted only when signed
        headers = delivery.headers
        body = delivery.body
        signed: bool | None = None
        if self._signing is not None:
            try:
                signed = self._signing.verify(spec.topic, self.name, body, headers)
            except SignatureError as exc:
                await self._refuse(delivery, exc)
                return False
            if not signed:
                headers = NO_HEADERS
        # decode
        if len(body) > self._max_size:
            await self._reject(delivery, MessageTooLarge(None, len(body), self._max_size), headers)
            return False
        decoded = self._cached(body)
        if decoded is None or decoded.message.__class__ is not spec.message_type:
            try:
                decoded = Decoded(*decode_fields(body, spec.message_type))
            except DecodeError as exc:
                await self._reject(delivery, exc, headers, signed)
                return False
            self._cache.put(body, decoded)
        message = decoded.message
        if self._plain and not watched:
            # An event handler with no inbox, timeout, context or observer
            # watching: invoke and settle, nothing else to do.
            try:
                await spec.func(message)
            except BaseException as exc:
                if stops_work(exc):
                    raise
                if isinstance(exc, AlreadyHandled):
                    return True
                await self._failed(delivery, decoded.envelope, None, exc, None, 0.0, headers)
                return False
            return True
        envelope = decoded.envelope
        # claim
        key: str | None = None
        if self._inbox is not None:
            key = await self._claim(delivery, envelope, headers, signed)
            if key is None:
                return False
        try:
            if spec.kind == "command" and headers:
                deadline = deadline_of(headers)
                if deadline is not None and time.time() >= deadline:
                    await self._expire(delivery, envelope, "before it started")
                    return False
                await send_accepted(self._transport, headers, delivery.attempt, self._signing)
            # invoke, then settle
            return await self._invoke(delivery, envelope, message, key, headers, signed)
        finally:
            if key is not None:
                self._handling.discard(key)

    async def _claim(
        self,
        delivery: Delivery,
        envelope: Envelope,
        headers: Mapping[str, str],
        signed: bool | None,
    ) -> str | None:
        """Claim the message in the inbox; None if it must not be handled now
        (the delivery is then settled). ``headers`` are its trusted control
        headers; ``signed`` is False for an unsigned message accepted in the
        migration mode, whose id is kept apart from the signed ones'."""
        inbox = self._inbox
        assert inbox is not None
        # A replayed dead letter is a new chance for the same message: it has an
        # inbox entry of its own, since giving up recorded the message as done.
        replay_of = headers.get(REPLAY_OF) if headers else None
        key = f"{envelope.message_id}/replay/{replay_of}" if replay_of else envelope.message_id
        if signed is False:
            key += UNSIGNED
        if key in self._handling:
            await delivery.ack()  # a duplicate of a message this process is handling
            return None
        self._handling.add(key)
        try:
            claim = await inbox.inbox_claim(self.name, key, lease=self._lease)
        except BaseException:
            self._handling.discard(key)
            raise
        if claim is Claim.CLAIMED:
            return key
        self._handling.discard(key)
        if claim is Claim.DONE:
            await delivery.ack()  # a duplicate of a message already handled
        else:
            # Another process holds the message. If it dies, this copy is the one
            # left: look again once its claim may have run out.
            await delivery.nack(min(max(self.spec.retry.delay(delivery.attempt), 1.0), self._lease))
        return None

    async def _invoke(
        self,
        delivery: Delivery,
        envelope: Envelope,
        message: Message,
        key: str | None,
        headers: Mapping[str, str],
        signed: bool | None,
    ) -> bool:
        spec = self.spec
        ctx = (
            Context(self._bus, spec, envelope, delivery.attempt, key, signed=signed)
            if spec.takes_context or self._observers
            else None
        )
        if self._scopes and ctx is not None:
            with Observed(self._scopes, "handling", ctx):
                return await self._attempt(delivery, envelope, message, key, ctx, headers)
        return await self._attempt(delivery, envelope, message, key, ctx, headers)

    async def _attempt(
        self,
        delivery: Delivery,
        envelope: Envelope,
        message: Message,
        key: str | None,
        ctx: Context | None,
        headers: Mapping[str, str],
    ) -> bool:
        spec = self.spec
        observers = self._observers
        started = time.monotonic() if observers else 0.0
        try:
            if observers:
                for observer in observers:
                    observer.before_handle(ctx)  # type: ignore[arg-type]
            if spec.timeout is not None:
                result = await self._call_with_timeout(message, ctx)
            elif ctx is not None and spec.takes_context:
                result = await spec.func(message, ctx)
            else:
                result = await spec.func(message)
            if spec.kind == "command":
                assert spec.reply_type is not None
                await send_reply(
                    self._transport,
                    headers,
                    envelope,
                    result,
                    spec.reply_type,
                    self.name,
                    self._max_size,
                    self._signing,
                )
        except BaseException as exc:
            if stops_work(exc):
                if key is not None:
                    await self._release(key)
                raise
            if not isinstance(exc, AlreadyHandled):
                await self._failed(delivery, envelope, ctx, exc, key, started, headers)
                return False
            # Handled before, in a transaction that recorded it: a duplicate.
            logger.info(
                "%s had already handled message %s; acking the duplicate",
                self.name,
                envelope.message_id,
                extra=_fields(self.name, envelope),
            )
        # settle: success (the consumer loop acks)
        if key is not None:
            assert self._inbox is not None
            await self._inbox.inbox_complete(self.name, key)
        if observers:
            notify(observers, "handled", ctx, time.monotonic() - started)
        return True

    async def _call_with_timeout(self, message: Message, ctx: Context | None) -> Any:
        spec = self.spec
        scope: anyio.CancelScope | None = None
        try:
            with anyio.fail_after(spec.timeout) as scope:
                if ctx is not None and spec.takes_context:
                    return await spec.func(message, ctx)
                return await spec.func(message)
        except TimeoutError:
            if scope is not None and scope.cancelled_caught:
                raise HandlerTimeout(
                    f"handler {self.name} exceeded its timeout of {spec.timeout}s"
                ) from None
            raise

    # -- settle: failures --------------------------------------------------------

    async def _failed(
        self,
        delivery: Delivery,
        envelope: Envelope,
        ctx: Context | None,
        exc: BaseException,
        key: str | None,
        started: float,
        headers: Mapping[str, str],
    ) -> None:
        spec = self.spec
        attempt = delivery.attempt
        retry = spec.retry
        # A BaseException that is not a cancellation (KeyboardInterrupt or
        # SystemExit raised by the handler, a custom one) is never retried.
        retryable = isinstance(exc, Exception) and retry.is_retryable(exc)
        duration = time.monotonic() - started if self._observers else 0.0
        if retryable and retry.should_retry(exc, attempt):
            delay = retry.delay(attempt)
            deadline = deadline_of(headers) if spec.kind == "command" else None
            if deadline is not None and time.time() + delay >= deadline:
                await self._expire(delivery, envelope, "before its next attempt")
                return
            logger.warning(
                "attempt %d of %s on message %s failed (%s); retrying in %.3fs",
                attempt,
                self.name,
                envelope.message_id,
                _describe(exc),
                delay,
                extra=_fields(self.name, envelope),
            )
            if self._observers and ctx is not None:
                notify(self._observers, "attempt_failed", ctx, exc, duration, will_retry=True)
            if key is not None:
                await self._release(key)
            await delivery.nack(delay)
            return
        if self._observers and ctx is not None:
            notify(self._observers, "attempt_failed", ctx, exc, duration, will_retry=False)
        letter = self._letter(delivery, exc, envelope, attempts=attempt)
        logger.error(
            "%s gave up on message %s after %d attempt(s) (%s); dead letter %s",
            self.name,
            envelope.message_id,
            attempt,
            _describe(exc),
            letter.id,
            extra=_fields(self.name, envelope),
        )
        if await self._give_up(delivery, letter, key) and spec.kind == "command":
            await send_failure(
                self._transport,
                headers,
                envelope,
                letter.error_type,
                str(exc),
                service=spec.service,
                retryable=retryable,
                signing=self._signing,
            )

    async def _refuse(self, delivery: Delivery, exc: SignatureError) -> None:
        """Dead-letter a message that failed its signature check (attempts=0).

        Nothing of it is trusted: it is not decoded, claims nothing in the
        inbox, and its caller (if it names one) is not answered.
        """
        letter = self._letter(delivery, exc, None, attempts=0)
        logger.error(
            "%s dead-lettered a message that failed its signature check (%s); dead letter %s",
            self.name,
            exc,
            letter.id,
        )
        await self._give_up(delivery, letter, None)

    async def _reject(
        self,
        delivery: Delivery,
        exc: DecodeError | MessageTooLarge,
        headers: Mapping[str, str],
        signed: bool | None = None,
    ) -> None:
        """Dead-letter a body that cannot be handled at all (attempts=0).

        When the envelope itself is readable (the payload failed validation),
        the inbox still drops a duplicate, so one message makes one dead letter.
        """
        envelope: Envelope | None = None
        key: str | None = None
        if isinstance(exc, DecodeError) and exc.kind in ("validation", "unknown_type"):
            try:
                envelope = decode_envelope(delivery.body)
            except DecodeError:
                envelope = None
            if envelope is not None and self._inbox is not None:
                key = await self._claim(delivery, envelope, headers, signed)
                if key is None:
                    return
        try:
            letter = self._letter(delivery, exc, envelope, attempts=0)
            logger.error(
                "%s dead-lettered a message it cannot decode (%s); dead letter %s",
                self.name,
                exc,
                letter.id,
            )
            rejected = await self._give_up(delivery, letter, key)
        finally:
            if key is not None:
                self._handling.discard(key)
        if rejected and self.spec.kind == "command":
            await send_failure(
                self._transport,
                headers,
                None,
                letter.error_type,
                str(exc),
                service=self.spec.service,
                retryable=False,
                signing=self._signing,
            )

    def _letter(
        self,
        delivery: Delivery,
        exc: BaseException,
        envelope: Envelope | None,
        *,
        attempts: int,
    ) -> DeadLetter:
        detail = redact_url("".join(traceback.format_exception(exc)) if attempts else str(exc))
        return DeadLetter(
            id=letter_id(self.name, delivery),
            consumer=self.name,
            topic=delivery.topic,
            body=delivery.body,
            headers=dict(delivery.headers),
            error_type=qualified_name(exc),
            error=detail,
            attempts=attempts,
            failed_at=datetime.now(UTC),
            message_id=envelope.message_id if envelope is not None else None,
        )

    async def _give_up(self, delivery: Delivery, letter: DeadLetter, key: str | None) -> bool:
        """Keep the dead letter, mark the message done in the inbox, then ack.

        False if the dead letter could not be kept: the delivery is then given
        back, to be tried again later, so nothing is lost.
        """
        try:
            await self._dead_letters.keep(letter)
            if key is not None:
                assert self._inbox is not None
                await self._inbox.inbox_complete(self.name, key)
        except BaseException as exc:
            if stops_work(exc):
                raise
            logger.exception(
                "%s could not keep dead letter %s; the message comes back", self.name, letter.id
            )
            if key is not None:
                await self._release(key)
            await delivery.nack(self.spec.retry.delay(max(letter.attempts, 1)))
            return False
        await delivery.ack()
        if self._observers:
            notify(self._observers, "dead_lettered", letter)
        return True

    async def _expire(self, delivery: Delivery, envelope: Envelope, when: str) -> None:
        logger.warning(
            "%s dropped request %s (%s) %s: its caller's deadline has passed",
            self.name,
            envelope.message_id,
            envelope.type,
            when,
            extra=_fields(self.name, envelope),
        )
        await delivery.ack()

    async def _release(self, key: str) -> None:
        """Drop this process's claim, so the next delivery may take the message."""
        inbox = self._inbox
        assert inbox is not None
        with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
            try:
                await inbox.inbox_release(self.name, key)
            except Exception:
                logger.warning(
                    "%s could not release its claim on %s; it runs out after %.0fs",
                    self.name,
                    key,
                    self._lease,
                    exc_info=True,
                )


def _describe(exc: BaseException) -> str:
    text = redact_url(str(exc))  # a handler's error may quote a URL with its password
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _fields(consumer: str, envelope: Envelope) -> dict[str, str]:
    return {
        "flowkit_consumer": consumer,
        "flowkit_message_id": envelope.message_id,
        "flowkit_correlation_id": envelope.correlation_id,
    }


async def _ack(sub: Subscription, handled: list[Delivery]) -> None:
    """Ack the handled deliveries together, and forget them."""
    try:
        await sub.ack_many(handled)
    except TransportError:
        logger.warning(
            "could not ack %d handled message(s); they may be delivered again",
            len(handled),
            exc_info=True,
        )
    handled.clear()


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


def qualified_name(exc: BaseException) -> str:
    """An exception's type as users import it: ``ValueError``, ``flowkit.DecodeError``,
    ``myshop.payments.CardDeclined``."""
    cls = type(exc)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    if module.startswith("flowkit.") and hasattr(sys.modules["flowkit"], cls.__name__):
        return f"flowkit.{cls.__qualname__}"
    return f"{module}.{cls.__qualname__}"
