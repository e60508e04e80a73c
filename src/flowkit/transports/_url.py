"""Opening a transport from a URL: ``memory://``, ``redis://``, ``rediss://``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import MissingDependency
from .._redact import scheme_of

if TYPE_CHECKING:
    from ._base import Transport
    from ._redis import RedisTransport

__all__ = ["SCHEMES", "from_url", "redis_transport"]

SCHEMES = ("memory", "redis", "rediss")
"""The URL schemes :func:`from_url` knows."""


def from_url(url: str, **options: Any) -> Transport:
    """The transport a URL names, not opened yet.

    ``memory://`` is the in-memory transport; ``redis://`` and ``rediss://``
    (TLS) a Redis server, with the password and database in the URL. Broker
    client libraries are imported only here, when their transport is asked for.

    Args:
        url: where the broker is.
        options: keyword arguments of the transport's class.

    Raises:
        ValueError: for a URL of no known scheme (the message names the
            scheme, never a password).
        MissingDependency: if the broker's client library is not installed;
            the message names the extra to install.
    """
    scheme = scheme_of(url, SCHEMES, "transport")
    if scheme == "memory":
        from ._memory import InMemoryTransport

        return InMemoryTransport(**options)
    return redis_transport()(url, **options)


def redis_transport() -> type[RedisTransport]:
    """The ``RedisTransport`` class, importing redis-py now.

    Raises:
        MissingDependency: if redis-py is not installed (``flowkit[redis]``).
    """
    try:
        from ._redis import RedisTransport
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in ("redis", "hiredis"):
            raise MissingDependency("redis", "redis", "RedisTransport") from exc
        raise
    return RedisTransport
