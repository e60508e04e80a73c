"""Watching a bus: one observer protocol for the testing kit, tracing and metrics."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from .._cancel import stops_work
from .._events import default_correlation, new_message_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence
    from contextlib import AbstractContextManager
    from types import TracebackType

    from .._events import Envelope, Message
    from ..stores._base import DeadLetter
    from ._context import Context

__all__ = [
    "BusObserver",
    "Observed",
    "Outgoing",
    "notify",
    "overriding",
    "send_observed",
    "watching_now",
]

T = TypeVar("T")
#: How a message is sent (see :attr:`Outgoing.via`).
Via = Literal["publish", "request", "outbox"]

logger = logging.getLogger("flowkit.bus")


@dataclass(slots=True)
class Outgoing:
    """A message about to be encoded and sent, as :meth:`BusObserver.sending` sees it.

    Attributes:
        message: the event or command.
        type: its type name (the topic it goes to).
        message_id: the id its envelope will have.
        correlation_id: the flow it belongs to.
        causation_id: the id of the message that caused it, if any.
        headers: the headers its envelope will carry, the caller's own
            already in; an observer may set string keys and values (trace
            context).
        via: ``"publish"`` (:meth:`~Choreography.publish`, ``ctx.publish``),
            ``"request"`` (a command sent by :meth:`~Choreography.request`)
            or ``"outbox"`` (written to the outbox, sent later by the relay).
    """

    message: Message
    type: str
    message_id: str
    correlation_id: str
    causation_id: str | None
    headers: dict[str, str]
    via: Via

    @classmethod
    def of(
        cls,
        message: Message,
        via: Via,
        *,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        causation_id: str | None,
        message_id: str | None,
    ) -> Outgoing:
        """What ``message`` will be sent as: its id made now if not given, and
        its flow's id as :func:`~flowkit._events.encode` gives it when none is
        (the running workflow's, the message's business key, or its id)."""
        mid = message_id or new_message_id()
        return cls(
            message,
            getattr(type(message), "__flowkit_type__", type(message).__name__),
            mid,
            correlation_id or default_correlation(message, mid),
            causation_id,
            dict(headers) if headers else {},
            via,
        )


class BusObserver:
    """Sees what a bus does. Subclass it and override the methods you need.

    Add one with ``Choreography(..., observers=[...])`` or
    :meth:`Choreography.add_observer`. The methods are called in the task
    doing the work, so keep them quick. An exception raised by a notification
    is logged and ignored (whatever its type); only :meth:`before_handle` may raise on purpose.
    """

    def watching(self) -> bool:
        """Whether this observer wants to hear about the next messages handled or sent.

        Asked by each consumer before the batch of messages it took from its
        transport (up to 64, one at a time for a handler with several
        loops), and before each message sent by an observer that overrides
        :meth:`sending`; True unless overridden.
        When no observer of a bus says True, a handler that takes no context
        and has no inbox or timeout is called directly, without the work done
        for observers (the bus's own DEBUG log says False while DEBUG is off).
        A message that is handled the observed way is told to every observer.
        """
        return True

    def published(self, envelope: Envelope) -> None:
        """An event (from :meth:`~Choreography.publish` or ``ctx.publish``) or a
        command (from :meth:`~Choreography.request`) was accepted by the transport."""

    def before_handle(self, ctx: Context) -> None:
        """A handler is about to be called with the message ``ctx`` describes.

        Raising here makes this attempt fail as if the handler had raised it,
        with the same retries and dead-lettering (the testing kit injects
        handler failures this way).
        """

    def handled(self, ctx: Context, duration: float) -> None:
        """A handler succeeded; ``duration`` is in seconds."""

    def attempt_failed(
        self, ctx: Context, error: BaseException, duration: float, *, will_retry: bool
    ) -> None:
        """An attempt failed; ``will_retry`` says whether the message comes back."""

    def dead_lettered(self, letter: DeadLetter) -> None:
        """A consumer gave up on a message and kept it as a dead letter."""

    def sending(self, outgoing: Outgoing) -> AbstractContextManager[object] | None:
        """A message is about to be encoded and sent: return a context manager
        to wrap the sending in, or None (the default).

        Asked while :meth:`watching` says True. The context manager is
        entered before the message is encoded, so that headers added to
        ``outgoing.headers`` travel in its envelope (across every transport),
        and left once the transport accepted it (after :meth:`published`) or
        failed, seeing that failure. It runs in the task that sends: the
        tracing of the process (``contextvars``) may be set in between. For
        the outbox it wraps the write into the transaction, not the relay's
        later send.
        """
        return None

    def handling(self, ctx: Context) -> AbstractContextManager[object] | None:
        """A handler is about to handle the message ``ctx`` describes: return a
        context manager to wrap the handling in, or None (the default).

        Asked for a message handled the observed way (see :meth:`watching`);
        the context manager is entered before :meth:`before_handle` and left
        once the message is settled (after :meth:`handled`,
        :meth:`attempt_failed` and :meth:`dead_lettered`), in the task that
        calls the handler, so what the handler does (``ctx.publish``,
        ``ctx.request``, the process's tracing) runs inside it. It sees an
        exception that leaves the handling (the bus stopping, the store
        failing), not the handler's own failure, which
        :meth:`attempt_failed` tells.
        """
        return None


def watching_now(observers: Sequence[BusObserver]) -> bool:
    """Whether one of ``observers`` is watching (see :meth:`BusObserver.watching`);
    one whose ``watching`` raises is logged and counted as watching."""
    for observer in observers:
        try:
            if observer.watching():
                return True
        except Exception:
            logger.exception("bus observer %r failed in watching", observer)
            return True
    return False


async def send_observed(
    senders: Sequence[BusObserver],
    message: Message,
    via: Via,
    send: Callable[[Mapping[str, str] | None, str | None, str | None], Awaitable[T]],
    *,
    headers: Mapping[str, str] | None,
    correlation_id: str | None,
    causation_id: str | None,
    message_id: str | None,
) -> T:
    """Send ``message`` with ``send(headers, correlation_id, message_id)``, inside
    the context managers that those of ``senders`` watching now return from
    :meth:`BusObserver.sending` (with the headers, flow and id they saw)."""
    if not (senders and watching_now(senders)):
        return await send(headers, correlation_id, message_id)
    outgoing = Outgoing.of(
        message,
        via,
        headers=headers,
        correlation_id=correlation_id,
        causation_id=causation_id,
        message_id=message_id,
    )
    with Observed(senders, "sending", outgoing):
        return await send(outgoing.headers, outgoing.correlation_id, outgoing.message_id)


def overriding(observers: Sequence[BusObserver], method: str) -> tuple[BusObserver, ...]:
    """The observers whose class overrides ``method`` of :class:`BusObserver`."""
    default = getattr(BusObserver, method)
    return tuple(o for o in observers if getattr(type(o), method, default) is not default)


class Observed:
    """The context managers observers return for one sending or handling, entered
    together (the first observer's outermost). An observer that fails to make,
    enter or leave one is logged and skipped; none can hide the work's exception.
    """

    __slots__ = ("_entered", "_method")

    def __init__(self, observers: Sequence[BusObserver], method: str, arg: object) -> None:
        entered: list[AbstractContextManager[object]] = []
        for observer in observers:
            try:
                scope = getattr(observer, method)(arg)
                if scope is not None:
                    scope.__enter__()
                    entered.append(scope)
            except BaseException as exc:
                if stops_work(exc):
                    _leave(entered, method, type(exc), exc, exc.__traceback__)
                    raise
                logger.exception("bus observer %r failed in %s", observer, method)
        self._entered = entered
        self._method = method

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _leave(self._entered, self._method, exc_type, exc, tb)


def _leave(
    entered: list[AbstractContextManager[object]],
    method: str,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    for scope in reversed(entered):
        try:
            scope.__exit__(exc_type, exc, tb)
        except BaseException as error:
            if stops_work(error):
                raise
            logger.exception("bus observer context %r failed leaving %s", scope, method)


def notify(observers: Sequence[BusObserver], method: str, *args: object, **kwargs: object) -> None:
    """Call ``method`` on every observer; an observer that raises is logged and skipped."""
    for observer in observers:
        try:
            getattr(observer, method)(*args, **kwargs)
        except BaseException as exc:
            if stops_work(exc):
                raise
            logger.exception("bus observer %r failed in %s", observer, method)
