"""The transport headers flowkit sets, and what each one means.

Routing data travels in headers rather than in the envelope, so a body that
cannot be decoded can still be answered or routed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ACCEPTED",
    "ATTEMPT",
    "DEADLINE",
    "FAILED",
    "IDEMPOTENCY_KEY",
    "IN_REPLY_TO",
    "REPLAY_OF",
    "REPLY_KIND",
    "REPLY_TO",
    "REQUEST_ID",
    "deadline_header",
    "deadline_of",
]

# A request: where to send the reply, and the id the reply names.
REPLY_TO = "flowkit-reply-to"
REQUEST_ID = "flowkit-request-id"
# When the caller gives up on a request (Unix time in seconds): a handler does
# not start, nor retry, a request past it.
DEADLINE = "flowkit-deadline"
# A reply: the request it answers, and what kind of answer it is.
IN_REPLY_TO = "flowkit-in-reply-to"
REPLY_KIND = "flowkit-reply-kind"
# An accepted notice: which attempt of the request's handling is starting.
ATTEMPT = "flowkit-attempt"
# A replayed dead letter (published to its consumer's group only): the dead letter's id.
REPLAY_OF = "flowkit-replay-of"
# Stable across redeliveries; an orchestrator's remote step sets it.
IDEMPOTENCY_KEY = "flowkit-idempotency-key"

# Values of REPLY_KIND. A reply without the header is the handler's answer.
ACCEPTED = "accepted"
FAILED = "failed"


def deadline_of(headers: Mapping[str, str]) -> float | None:
    """The request deadline a delivery carries (Unix seconds), if any and readable."""
    text = headers.get(DEADLINE)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def deadline_header(timeout: float) -> str:
    """The header value of a deadline ``timeout`` seconds from now."""
    return f"{time.time() + timeout:.3f}"
