"""Leaving an ``async with`` block that holds a task group, without hiding the
block's own exception in an exception group."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from contextlib import AsyncExitStack
    from types import TracebackType

__all__ = ["exit_stack", "leaves"]


async def exit_stack(
    stack: AsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """Exit ``stack``; if its task group wraps only the block's own exception, raise
    that exception as it was, so ``except ValueError`` around the block still works.
    Likewise a Ctrl-C that reached a task of the group comes out as the
    ``KeyboardInterrupt`` itself."""
    try:
        await stack.__aexit__(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        if exc is not None and _only(group, exc):
            raise exc from None
        interrupt = _interrupt_in(group)
        if interrupt is not None:
            raise interrupt from None
        raise


def _only(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    return all(
        _only(leaf, exc) if isinstance(leaf, BaseExceptionGroup) else leaf is exc
        for leaf in group.exceptions
    )


def _interrupt_in(group: BaseExceptionGroup[BaseException]) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt of a group whose other leaves are only cancellations."""
    found: KeyboardInterrupt | None = None
    cancelled = anyio.get_cancelled_exc_class()
    for leaf in leaves(group):
        if isinstance(leaf, KeyboardInterrupt):
            found = found or leaf
        elif not isinstance(leaf, cancelled):
            return None
    return found


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions of a group and of the groups nested in it, in order."""
    found: list[BaseException] = []
    for leaf in group.exceptions:
        if isinstance(leaf, BaseExceptionGroup):
            found.extend(leaves(leaf))
        else:
            found.append(leaf)
    return found
