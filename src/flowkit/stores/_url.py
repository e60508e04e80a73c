"""Opening a store from a URL: ``sqlite:///path``, ``memory://``, ``postgresql://``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import MissingDependency
from .._redact import scheme_of

if TYPE_CHECKING:
    from ._base import StateStore
    from ._postgres import PostgresStore

__all__ = ["SCHEMES", "from_url", "postgres_store"]

SCHEMES = ("sqlite", "memory", "postgresql", "postgres")
"""The URL schemes :func:`from_url` knows."""


def from_url(url: str, **options: Any) -> StateStore:
    """The store a URL names, not opened yet.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` and
    ``sqlite:///:memory:`` are :class:`~flowkit.stores.SQLiteStore` files;
    ``memory://`` is a :class:`~flowkit.stores.MemoryStore`;
    ``postgresql://user:password@host:port/database`` (or ``postgres://``) is a
    :class:`~flowkit.stores.PostgresStore`, importing asyncpg only then.

    Args:
        url: where the store is.
        options: keyword arguments of the store's class (``read_only=True``...).

    Raises:
        ValueError: for a URL of no known scheme (the message names the
            scheme, never a password).
        MissingDependency: for a PostgreSQL URL, if asyncpg is not installed.
    """
    scheme = scheme_of(url, SCHEMES, "store")
    if scheme == "memory":
        from ._memory import MemoryStore

        return MemoryStore(**options)
    if scheme in ("postgresql", "postgres"):
        return postgres_store()(url, **options)
    from ._sqlite import SQLiteStore

    return SQLiteStore(url, **options)


def postgres_store() -> type[PostgresStore]:
    """The ``PostgresStore`` class, importing asyncpg now.

    Raises:
        MissingDependency: if asyncpg is not installed (``flowkit[postgres]``).
    """
    try:
        from ._postgres import PostgresStore
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "asyncpg":
            raise MissingDependency("asyncpg", "postgres", "PostgresStore") from exc
        raise
    return PostgresStore
