"""Leaving an ``async with`` block that holds a task group, without hiding the
block's own exception in an exception group."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from contextlib import AsyncExitStack
    from types import TracebackType

__all__ = ["exit_stack"]


async def exit_stack(
    stack: AsyncExitStack,
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> None:
    """Exit ``stack``; if its task group wraps only the block's own exception, raise
    that exception as it was, so ``except ValueError`` around the block still works."""
    try:
        await stack.__aexit__(exc_type, exc, tb)
    except BaseExceptionGroup as group:
        if exc is not None and _only(group, exc):
            raise exc from None
        raise


def _only(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    return all(
        _only(leaf, exc) if isinstance(leaf, BaseExceptionGroup) else leaf is exc
        for leaf in group.exceptions
    )
