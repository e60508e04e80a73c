"""Watching a bus: one observer protocol for the testing kit, tracing and metrics."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .._cancel import stops_work

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._events import Envelope
    from ..stores._base import DeadLetter
    from ._context import Context

__all__ = ["BusObserver", "notify"]

logger = logging.getLogger("flowkit.bus")


class BusObserver:
    """Sees what a bus does. Subclass it and override the methods you need.

    Add one with ``Choreography(..., observers=[...])`` or
    :meth:`Choreography.add_observer`. The methods are called in the task
    doing the work, so keep them quick. An exception raised by a notification
    is logged and ignored (whatever its type); only :meth:`before_handle` may raise on purpose.
    """

    def watching(self) -> bool:
        """Whether this observer wants to hear about the next message handled.

        Asked once per message, before it is handled; True unless overridden.
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


def notify(observers: Sequence[BusObserver], method: str, *args: object, **kwargs: object) -> None:
    """Call ``method`` on every observer; an observer that raises is logged and skipped."""
    for observer in observers:
        try:
            getattr(observer, method)(*args, **kwargs)
        except BaseException as exc:
            if stops_work(exc):
                raise
            logger.exception("bus observer %r failed in %s", observer, method)
