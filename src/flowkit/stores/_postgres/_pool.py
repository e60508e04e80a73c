"""The connection pool, the event loop check, and asyncpg's errors as flowkit's.

asyncpg is asyncio-only, so every entry point first checks that it runs on
asyncio; under trio it raises :class:`~flowkit.StoreError` saying so. Every
failure of asyncpg or of the network is raised as a :class:`~flowkit.StoreError`
chained to the original (``raise ... from exc``), its message passed through
:func:`~flowkit._redact.redact_url` so that a DSN's password never shows.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

from ..._errors import StoreError
from ..._redact import redact_url

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Connection", "Pool", "check_asyncio", "create_pool", "translated"]

#: An ``asyncpg.Connection`` (asyncpg ships no type information).
Connection: TypeAlias = Any
#: An ``asyncpg.Pool``.
Pool: TypeAlias = Any

#: The errors of the driver and the network that become StoreError.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,  # TimeoutError included
)


def check_asyncio() -> None:
    """Refuse to run outside asyncio.

    Raises:
        StoreError: under trio (or outside any event loop).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise StoreError(
            "PostgresStore runs on asyncio only (asyncpg supports no other event loop), "
            "but it was used outside asyncio (on trio, or outside an event loop); use "
            "SQLiteStore or MemoryStore with trio"
        ) from None


def describe(exc: BaseException) -> str:
    """An error as a message fragment, with any URL secret masked.

    Only the first line of the error is kept: PostgreSQL's ``DETAIL`` lines
    may quote a row's values (``Failing row contains (...)``).
    """
    text = str(exc).split("\n", 1)[0].strip()
    return redact_url(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


@contextlib.contextmanager
def translated(doing: str) -> Iterator[None]:
    """Raise the driver's and the network's errors as StoreError.

    Args:
        doing: what failed, for the message (``"PostgreSQL save_workflow"``).

    Raises:
        StoreError: chained to the driver's error.
    """
    try:
        yield
    except StoreError:
        raise
    except _DRIVER_ERRORS as exc:
        raise StoreError(f"{doing} failed: {describe(exc)}") from exc


async def create_pool(dsn: str, min_size: int, max_size: int, options: dict[str, Any]) -> Pool:
    """A new connection pool, its first connections open.

    Raises:
        asyncpg.PostgresError, OSError: if connecting fails.
    """
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, **options)
