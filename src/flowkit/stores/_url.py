"""Opening a store from a URL: ``sqlite:///path``, ``memory://``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._redact import scheme_of

if TYPE_CHECKING:
    from ._base import StateStore

__all__ = ["SCHEMES", "from_url"]

SCHEMES = ("sqlite", "memory")
"""The URL schemes :func:`from_url` knows."""


def from_url(url: str, **options: Any) -> StateStore:
    """The store a URL names, not opened yet.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` and
    ``sqlite:///:memory:`` are :class:`~flowkit.stores.SQLiteStore` files;
    ``memory://`` is a :class:`~flowkit.stores.MemoryStore`.

    Args:
        url: where the store is.
        options: keyword arguments of the store's class (``read_only=True``...).

    Raises:
        ValueError: for a URL of no known scheme (the message names the
            scheme, never a password).
    """
    scheme = scheme_of(url, SCHEMES, "store")
    if scheme == "memory":
        from ._memory import MemoryStore

        return MemoryStore(**options)
    from ._sqlite import SQLiteStore

    return SQLiteStore(url, **options)
