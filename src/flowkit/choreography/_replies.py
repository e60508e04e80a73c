"""Request/reply: the caller's side (reply inbox, waiting, timeouts) and the
answering side (accepted notices, replies, failure replies)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._errors import (
    BusNotStarted,
    MessageTooLarge,
    RemoteError,
    RequestTimeout,
    SignatureError,
    TransportClosed,
    TransportError,
)
from .._events import Envelope, Message, decode_envelope, encode, new_message_id, validate_payload
from ._dead_letters import letter_id
from ._headers import (
    ACCEPTED,
    ATTEMPT,
    DEADLINE,
    FAILED,
    IDEMPOTENCY_KEY,
    IN_REPLY_TO,
    REPLY_KIND,
    REPLY_TO,
    REQUEST_ID,
    deadline_header,
)
from ._observe import send_observed

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from anyio.abc import TaskGroup

    from .._events import Command
    from .._signing import Signing
    from ..transports._base import Delivery, Subscription, Transport
    from ._dead_letters import DeadLetterBox
    from ._observe import BusObserver

__all__ = ["RemoteFailure", "Requests", "send_accepted", "send_failure", "send_reply"]

logger = logging.getLogger("flowkit.bus")

R = TypeVar("R", bound=Message)


class RemoteFailure(Message, type_name="flowkit.RemoteError"):
    """What a failed command handler sends back instead of its reply."""

    error_type: str
    message: str
    service: str
    retryable: bool


class _Pending:
    __slots__ = ("attempts", "body", "done", "stopped")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.body: bytes | None = None
        self.attempts = 0  # attempts the answering service reported starting
        self.stopped = False


class Requests:
    """The caller's side of request/reply for one bus.

    Replies come back on a topic of this bus's own, consumed by one listener
    task started with the first request. On a bus that signs, requests are
    signed, and a reply whose signature fails is dead-lettered (consumer: the
    reply topic) instead of answering anything.
    """

    def __init__(
        self,
        max_message_size: int,
        signing: Signing | None = None,
        dead_letters: DeadLetterBox | None = None,
    ) -> None:
        self._max_message_size = max_message_size
        self._signing = signing
        self.dead_letters = dead_letters
        self._pending: dict[str, _Pending] = {}
        self._topic = f"flowkit.reply.{new_message_id()}"
        self._lock: anyio.Lock | None = None
        self._listening = False
        self._subscription: Subscription | None = None

    @property
    def topic(self) -> str:
        """The topic replies to this bus are sent to."""
        return self._topic

    async def request(
        self,
        transport: Transport,
        task_group: TaskGroup,
        command: Command[R],
        reply_type: type[R],
        *,
        timeout: float,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
        idempotency_key: str | None,
        on_sent: Callable[[Envelope], None] | None,
        senders: Sequence[BusObserver] = (),
    ) -> R:
        """Send ``command`` and wait for its reply (see :meth:`Choreography.request`);
        ``senders`` wrap the sending (see :meth:`BusObserver.sending`)."""
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        await self._listen(transport, task_group)
        hdrs = dict(headers) if headers else {}
        if idempotency_key is not None:
            hdrs[IDEMPOTENCY_KEY] = idempotency_key
        started = time.monotonic()
        deadline = anyio.current_time() + timeout
        envelope, pending = await send_observed(
            senders,
            command,
            "request",
            lambda hdrs, flow, mid: self._send(
                transport, command, hdrs, flow, causation_id, mid, timeout, deadline, on_sent
            ),
            headers=hdrs,
            correlation_id=correlation_id,
            causation_id=causation_id,
            message_id=None,
        )
        request_id = envelope.message_id
        try:
            # Past the deadline already (the publish was cut short), this waits not at all.
            with anyio.CancelScope(deadline=deadline):
                while pending.body is None and not pending.stopped:
                    await pending.done.wait()
                    pending.done = anyio.Event()
        finally:
            del self._pending[request_id]
        if pending.stopped:
            raise BusNotStarted(f"the bus stopped while waiting for the reply to {envelope.type}")
        if pending.body is None:
            raise _timeout(envelope, timeout, time.monotonic() - started, pending.attempts)
        return _answer(pending.body, reply_type)

    async def _send(
        self,
        transport: Transport,
        command: Command[Any],
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
        message_id: str | None,
        timeout: float,
        deadline: float,
        on_sent: Callable[[Envelope], None] | None,
    ) -> tuple[Envelope, _Pending]:
        """Encode and publish a request, waiting for its reply from then on; the
        publish is cut short at ``deadline``."""
        envelope, body = encode(
            command,
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers=headers,
            message_id=message_id,
        )
        if len(body) > self._max_message_size:
            raise MessageTooLarge(envelope.type, len(body), self._max_message_size)
        pending = _Pending()
        request_id = envelope.message_id
        self._pending[request_id] = pending
        try:
            control = {
                REPLY_TO: self._topic,
                REQUEST_ID: request_id,
                DEADLINE: deadline_header(timeout),
            }
            if self._signing is not None:
                control = self._signing.signed(envelope.type, body, control)
            with anyio.CancelScope(deadline=deadline):
                await transport.publish(envelope.type, body, control)
                if on_sent is not None:
                    on_sent(envelope)
        except BaseException:
            del self._pending[request_id]
            raise
        return envelope, pending

    async def stop(self) -> None:
        """End every waiting request with :class:`~flowkit.BusNotStarted` and
        stop listening for replies."""
        for pending in self._pending.values():
            pending.stopped = True
            pending.done.set()
        self._listening = False
        sub, self._subscription = self._subscription, None
        if sub is not None:
            try:
                await sub.aclose()
            except Exception:
                logger.debug("error while closing the reply subscription", exc_info=True)

    async def _listen(self, transport: Transport, task_group: TaskGroup) -> None:
        if self._listening:
            return
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._listening:
                return
            sub = await transport.subscribe(self._topic, self._topic, durable=False)
            self._subscription = sub
            self._listening = True
            task_group.start_soon(self._receive, sub)

    async def _receive(self, sub: Subscription) -> None:
        async with sub:
            while True:
                try:
                    delivery = await sub.receive()
                except TransportClosed:
                    return
                try:
                    await delivery.ack()
                except TransportError:
                    logger.warning("could not ack a reply; it may arrive twice", exc_info=True)
                headers = delivery.headers
                if self._signing is not None:
                    try:
                        if not self._signing.verify(
                            self._topic, self._topic, delivery.body, headers
                        ):
                            headers = {}  # unsigned, in the migration mode: answers nothing
                    except SignatureError as exc:
                        await self._refuse(delivery, exc)
                        continue
                self._deliver(delivery, headers)

    async def _refuse(self, delivery: Delivery, exc: SignatureError) -> None:
        """Dead-letter a reply whose signature failed (it answers nothing)."""
        from ..stores._base import DeadLetter
        from ._consumer import qualified_name

        letter = DeadLetter(
            id=letter_id(self._topic, delivery),
            consumer=self._topic,
            topic=delivery.topic,
            body=delivery.body,
            headers=dict(delivery.headers),
            error_type=qualified_name(exc),
            error=str(exc),
            attempts=0,
            failed_at=datetime.now(UTC),
            message_id=None,
        )
        logger.error(
            "the reply inbox %s dead-lettered a reply that failed its signature check (%s); "
            "dead letter %s",
            self._topic,
            exc,
            letter.id,
        )
        if self.dead_letters is None:
            return
        try:
            with anyio.move_on_after(10.0):
                await self.dead_letters.keep(letter)
        except Exception:
            logger.warning("could not keep dead letter %s", letter.id, exc_info=True)

    def _deliver(self, delivery: Delivery, headers: Mapping[str, str]) -> None:
        request_id = headers.get(IN_REPLY_TO)
        pending = self._pending.get(request_id) if request_id else None
        if pending is None:
            logger.debug("dropping a reply to an unknown or expired request %s", request_id)
            return
        if headers.get(REPLY_KIND) == ACCEPTED:
            pending.attempts = max(pending.attempts, _int(headers.get(ATTEMPT)))
        else:
            pending.body = delivery.body
        pending.done.set()


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else 1
    except ValueError:
        return 1


def _timeout(envelope: Envelope, timeout: float, waited: float, attempts: int) -> RequestTimeout:
    if attempts:
        return RequestTimeout(
            f"{envelope.type} (message {envelope.message_id}) was taken by its service "
            f"({attempts} attempt(s) started) but not answered within {timeout}s",
            taken=True,
        )
    return RequestTimeout(
        f"no service took {envelope.type} (message {envelope.message_id}) within "
        f"{timeout}s; is a service handling {envelope.type!r} running?",
        taken=False,
    )


def _answer(body: bytes, reply_type: type[R]) -> R:
    reply = decode_envelope(body)
    if reply.type == RemoteFailure.__flowkit_type__:
        failure = validate_payload(reply, RemoteFailure)
        raise RemoteError(
            failure.error_type,
            failure.message,
            service=failure.service,
            retryable=failure.retryable,
        )
    return validate_payload(reply, reply_type)


# -- the answering side ----------------------------------------------------------


async def _publish_reply(
    transport: Transport,
    reply_to: str,
    body: bytes,
    headers: dict[str, str],
    signing: Signing | None,
) -> None:
    """Publish to a caller's reply topic, signed when the bus signs."""
    if signing is not None:
        headers = signing.signed(reply_to, body, headers)
    await transport.publish(reply_to, body, headers)


async def send_accepted(
    transport: Transport, headers: Mapping[str, str], attempt: int, signing: Signing | None
) -> None:
    """Tell the caller its request was taken (attempt ``attempt`` is starting).

    ``headers`` are the request's trusted control headers (none for an
    unsigned request on a bus that signs): without a reply topic and a
    request id there is nobody to tell.
    """
    reply_to = headers.get(REPLY_TO)
    request_id = headers.get(REQUEST_ID)
    if reply_to is None or request_id is None:
        return
    try:
        await _publish_reply(
            transport,
            reply_to,
            b"{}",
            {IN_REPLY_TO: request_id, REPLY_KIND: ACCEPTED, ATTEMPT: str(attempt)},
            signing,
        )
    except TransportError:
        logger.debug("could not tell the caller of %s it was taken", request_id, exc_info=True)


async def send_reply(
    transport: Transport,
    headers: Mapping[str, str],
    envelope: Envelope,
    result: Any,
    reply_type: type[Message],
    consumer: str,
    max_message_size: int,
    signing: Signing | None,
) -> None:
    """Send a command handler's result back to the caller, if one waits
    (``headers``: the request's trusted control headers).

    Raises:
        TypeError: if the handler returned something other than its reply type.
        MessageTooLarge: if the reply is over the size limit.
        TransportError: if the transport failed.
    """
    if not isinstance(result, reply_type):
        raise TypeError(
            f"command handler {consumer} returned {type(result).__name__}, "
            f"expected {reply_type.__name__}"
        )
    reply_to = headers.get(REPLY_TO)
    if reply_to is None:
        return  # sent without waiting for a reply
    _, body = encode(
        result, correlation_id=envelope.correlation_id, causation_id=envelope.message_id
    )
    if len(body) > max_message_size:
        raise MessageTooLarge(reply_type.__flowkit_type__, len(body), max_message_size)
    await _publish_reply(transport, reply_to, body, {IN_REPLY_TO: envelope.message_id}, signing)


async def send_failure(
    transport: Transport,
    headers: Mapping[str, str],
    envelope: Envelope | None,
    error_type: str,
    message: str,
    *,
    service: str,
    retryable: bool,
    signing: Signing | None,
) -> None:
    """Tell the caller its request failed for good (``headers``: the request's
    trusted control headers); a transport failure is logged."""
    reply_to = headers.get(REPLY_TO)
    request_id = headers.get(REQUEST_ID) or (envelope.message_id if envelope else None)
    if reply_to is None or request_id is None:
        return
    failure = RemoteFailure(
        error_type=error_type, message=message, service=service, retryable=retryable
    )
    _, body = encode(
        failure,
        correlation_id=envelope.correlation_id if envelope is not None else None,
        causation_id=request_id,
    )
    try:
        await _publish_reply(
            transport, reply_to, body, {IN_REPLY_TO: request_id, REPLY_KIND: FAILED}, signing
        )
    except TransportError:
        logger.exception("could not send a failure reply to %s", request_id)
