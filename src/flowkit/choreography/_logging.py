"""The bus's DEBUG log: a line for every publish and every handling, installed on every bus."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._errors import DecodeError
from .._events import decode_envelope
from .._log_fields import error_type, milliseconds, took
from ._observe import BusObserver

if TYPE_CHECKING:
    from .._events import Envelope
    from ..stores._base import DeadLetter
    from ._context import Context

__all__ = ["HandlingLog"]

logger = logging.getLogger("flowkit.bus")
_DEBUG = logging.DEBUG


class HandlingLog(BusObserver):
    """Logs, at DEBUG on ``flowkit.bus``, each publish and each handling:
    received, handled, attempt failed (retried or not), dead-lettered.

    Each record is a short sentence, and carries the ids and numbers as
    ``flowkit_*`` attributes: ``flowkit_action``, ``flowkit_service``,
    ``flowkit_handler``, ``flowkit_consumer``, ``flowkit_message_type``,
    ``flowkit_message_id``, ``flowkit_correlation_id``,
    ``flowkit_causation_id``, ``flowkit_attempt``, ``flowkit_duration_ms``,
    ``flowkit_will_retry``, ``flowkit_error_type``, ``flowkit_dead_letter_id``.
    Never a payload value, nor an exception's message (the WARNING and ERROR
    lines of the bus tell the error).

    While DEBUG is off for ``flowkit.bus``, each notification costs one level
    check, and :meth:`watching` says False so handlers keep their fast path.
    """

    __slots__ = ()

    def watching(self) -> bool:
        """Whether DEBUG is on for ``flowkit.bus``."""
        return logger.isEnabledFor(_DEBUG)

    def published(self, envelope: Envelope) -> None:
        if not logger.isEnabledFor(_DEBUG):
            return
        logger.debug(
            "published %s %s",
            envelope.type,
            envelope.message_id,
            extra={
                "flowkit_action": "published",
                "flowkit_message_type": envelope.type,
                "flowkit_message_id": envelope.message_id,
                "flowkit_correlation_id": envelope.correlation_id,
                "flowkit_causation_id": envelope.causation_id,
            },
        )

    def before_handle(self, ctx: Context) -> None:
        if logger.isEnabledFor(_DEBUG):
            _log_handling(ctx, "received", "received {} (attempt {})", None)

    def handled(self, ctx: Context, duration: float) -> None:
        if logger.isEnabledFor(_DEBUG):
            _log_handling(ctx, "handled", "handled {} in {} (attempt {})", duration)

    def attempt_failed(
        self, ctx: Context, error: BaseException, duration: float, *, will_retry: bool
    ) -> None:
        if logger.isEnabledFor(_DEBUG):
            then = "it will be retried" if will_retry else "giving up"
            _log_handling(
                ctx,
                "attempt_failed",
                f"failed on {{}} after {{}} (attempt {{}}, {type(error).__name__}); {then}",
                duration,
                flowkit_will_retry=will_retry,
                flowkit_error_type=error_type(error),
            )

    def dead_lettered(self, letter: DeadLetter) -> None:
        if not logger.isEnabledFor(_DEBUG):
            return
        service, _, handler = letter.consumer.partition(":")
        correlation_id = causation_id = None
        try:
            envelope = decode_envelope(letter.body)
        except DecodeError:  # a body that is not an envelope: no ids to tell
            pass
        else:
            correlation_id, causation_id = envelope.correlation_id, envelope.causation_id
        logger.debug(
            "%s dead-lettered %s %s after %d attempt(s) as dead letter %s",
            letter.consumer,
            letter.topic,
            letter.message_id
            or (
                "(unverified)" if letter.error_type == "flowkit.SignatureError" else "(undecodable)"
            ),
            letter.attempts,
            letter.id,
            extra={
                "flowkit_action": "dead_lettered",
                "flowkit_service": service,
                "flowkit_handler": handler,
                "flowkit_consumer": letter.consumer,
                "flowkit_message_type": letter.topic,
                "flowkit_message_id": letter.message_id,
                "flowkit_correlation_id": correlation_id,
                "flowkit_causation_id": causation_id,
                "flowkit_attempt": letter.attempts,
                "flowkit_error_type": letter.error_type,
                "flowkit_dead_letter_id": letter.id,
            },
        )

    def __repr__(self) -> str:
        return "HandlingLog(logger='flowkit.bus')"


def _log_handling(
    ctx: Context, action: str, template: str, duration: float | None, **more: object
) -> None:
    """Log one step of a handling: ``template`` gets the message (type and id),
    the duration (when there is one) and the attempt."""
    envelope = ctx.envelope
    message = f"{envelope.type} {envelope.message_id}"
    parts = (message, ctx.attempt) if duration is None else (message, took(duration), ctx.attempt)
    fields: dict[str, Any] = {
        "flowkit_action": action,
        "flowkit_service": ctx.service,
        "flowkit_handler": ctx.handler,
        "flowkit_consumer": f"{ctx.service}:{ctx.handler}",
        "flowkit_message_type": envelope.type,
        "flowkit_message_id": envelope.message_id,
        "flowkit_correlation_id": envelope.correlation_id,
        "flowkit_causation_id": envelope.causation_id,
        "flowkit_attempt": ctx.attempt,
    }
    if duration is not None:
        fields["flowkit_duration_ms"] = milliseconds(duration)
    fields.update(more)
    logger.debug("%s:%s %s", ctx.service, ctx.handler, template.format(*parts), extra=fields)
