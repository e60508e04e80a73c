"""Opening a store from a URL: ``sqlite:///path``, ``memory://``, ``postgresql://``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
    :class:`~flowkit.stores.PostgresStore`, importing asyncpg only then; its
    query may name the PostgreSQL schema of flowkit's tables
    (``?schema=orders``); the rest of the query goes to asyncpg
    (``?sslmode=require``...).

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
        dsn, schema = _split_schema(url)
        if schema is not None:
            options.setdefault("schema", schema)
        return postgres_store()(dsn, **options)
    from ._sqlite import SQLiteStore

    return SQLiteStore(url, **options)


def _split_schema(url: str) -> tuple[str, str | None]:
    """The URL without its ``schema`` query parameter, and that parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    if not schemas:
        return url, None
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return urlunsplit(parts._replace(query=rest)), schemas[-1]


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
