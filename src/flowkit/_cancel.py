"""Telling a real cancellation from an exception that merely looks like one."""

from __future__ import annotations

import math
import sys

import anyio

__all__ = ["cancel_requested", "is_real_cancellation"]


def cancel_requested() -> bool:
    """Whether the current task is being cancelled: an enclosing cancel scope was
    cancelled, or (on asyncio) the task itself was asked to stop."""
    if anyio.current_effective_deadline() == -math.inf:
        return True
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not running on asyncio
            return False
        return task is not None and task.cancelling() > 0
    return False


def is_real_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is the cancellation of the current task rather than an
    exception raised by hand (``raise asyncio.CancelledError()``,
    ``KeyboardInterrupt`` from a handler, a custom ``BaseException``).

    Only a real cancellation may stop a consumer or a saga engine; anything
    else user code raises is the failure of the message or step at hand.
    """
    return isinstance(exc, anyio.get_cancelled_exc_class()) and cancel_requested()
