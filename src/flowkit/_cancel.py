"""Telling a real cancellation from an exception that merely looks like one."""

from __future__ import annotations

import math
import sys

import anyio

__all__ = ["cancel_requested", "is_real_cancellation", "is_real_interrupt", "stops_work"]


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


def is_real_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``KeyboardInterrupt`` delivered by the event loop's
    Ctrl-C handler rather than raised by hand.

    trio raises a Ctrl-C inside whichever task is running when the signal
    arrives, from its own signal handler, which is then the innermost frame
    of the traceback. (On asyncio a Ctrl-C cancels the main task instead.)
    """
    if not isinstance(exc, KeyboardInterrupt):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("trio._core._ki")


def stops_work(exc: BaseException) -> bool:
    """Whether ``exc`` must stop a consumer rather than fail the message at hand:
    a real cancellation or a real Ctrl-C, alone or inside an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return any(stops_work(inner) for inner in exc.exceptions)
    return is_real_cancellation(exc) or is_real_interrupt(exc)
