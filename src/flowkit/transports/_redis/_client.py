"""The connection to Redis: opening the client, and telling its errors apart.

:data:`RECOVERABLE` are the errors retried until the server is back; every
error of redis-py that leaves the transport goes through :func:`translate`
(see ``transports/_translate.py``).
"""

from __future__ import annotations

from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..._errors import TransportError
from ..._redact import redact_url
from .._translate import cannot_connect, translator

__all__ = [
    "RECOVERABLE",
    "TRANSPORT_OPTIONS",
    "Redis",
    "is_missing_group",
    "open_client",
    "redis_errors",
    "translate",
]

# The transport's own options that a URL may carry in its query string.
TRANSPORT_OPTIONS = frozenset(
    {"prefix", "prefetch", "claim_idle", "max_len", "publish_timeout", "connect_timeout"}
)

# Errors that pass when the server comes back: a lost or refused connection, a
# read that timed out, a server still loading its data after a restart, a
# replica that is not writable yet during a failover.
RECOVERABLE: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    OSError,
)

# The oldest server with what the transport uses (XAUTOCLAIM, a group's lag).
_MIN_VERSION = (7, 0)


#: A :class:`~flowkit.TransportError` for an error of redis-py, its URLs redacted.
translate = translator("Redis")


def is_missing_group(exc: BaseException) -> bool:
    """Whether ``exc`` says a stream or its consumer group does not exist (or
    stopped existing while a read waited on it)."""
    if not isinstance(exc, redis_errors.ResponseError):
        return False
    text = str(exc)
    return text.startswith(("NOGROUP", "UNBLOCKED")) or "no such key" in text


def _raw(response: Any, **options: Any) -> Any:
    return response


async def open_client(
    url: str,
    *,
    socket_timeout: float,
    connect_timeout: float,
    options: dict[str, Any],
) -> Redis:
    """Open a client on ``url`` and check the server can serve the transport.

    The client gives back raw replies for the stream commands the transport
    parses itself, and does not retry on its own: the transport decides when
    to try again.

    Args:
        url: ``redis://``, ``rediss://`` (TLS) or ``unix://``; user, password
            and database are taken from it.
        socket_timeout: the longest a command may wait for its reply, seconds.
        connect_timeout: the longest a connection may take to open, seconds.
        options: more keyword arguments for ``redis.asyncio.Redis.from_url``.

    Returns:
        The open client.

    Raises:
        TransportError: if the server cannot be reached, refuses the
            credentials, or is older than Redis 7.0.
    """
    where = redact_url(url)
    client: Redis = Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
        **options,
    )
    for command in ("XREADGROUP", "XADD", "XACK", "EVALSHA", "XAUTOCLAIM", "XPENDING"):
        client.set_response_callback(command, _raw)
    try:
        info = await client.info("server")
    except Exception as exc:
        await client.aclose()
        raise cannot_connect("Redis", where, exc) from exc
    version = _version(info)
    if version < _MIN_VERSION:
        await client.aclose()
        raise TransportError(
            f"RedisTransport needs Redis 7.0 or later; the server at {where} runs "
            f"{'.'.join(map(str, version))}"
        )
    return client


def _version(info: Any) -> tuple[int, ...]:
    """The server version from the reply to ``INFO server``."""
    text = info.get("redis_version", "0") if isinstance(info, dict) else "0"
    try:
        return tuple(int(part) for part in str(text).split(".")[:2])
    except ValueError:
        return (0,)
