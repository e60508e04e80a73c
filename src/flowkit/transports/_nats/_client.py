"""The connection to NATS: names, options, opening the client, telling its errors apart.

:data:`RECOVERABLE` are the errors retried until the server is back; every
error of nats-py that leaves the transport goes through :func:`translate`
(see ``transports/_translate.py``), so a password or a token never reaches a
log, a repr or an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from ..._errors import TransportError
from ..._redact import redact_url
from .._options import URLOptions, split_options
from .._translate import cannot_connect, translator

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "RECOVERABLE",
    "Client",
    "encode_name",
    "js_error_code",
    "open_client",
    "own_options",
    "translate",
]

logger = logging.getLogger("flowkit.transport.nats")

# The transport's own options that a URL may carry in its query string.
TRANSPORT_OPTIONS = frozenset(
    {
        "prefix",
        "prefetch",
        "ack_wait",
        "publish_timeout",
        "connect_timeout",
        "storage",
        "max_len",
    }
)

# Errors that pass when the server comes back: a lost or refused connection, a
# request that timed out, a JetStream not ready yet.
RECOVERABLE: tuple[type[Exception], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.TimeoutError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
    OSError,
)

# Stream and consumer names, and subject tokens, keep these characters as they are.
_PLAIN = re.compile(r"[A-Za-z0-9-]+")
# A name longer than this is shortened (it names a directory on the server's disk).
_MAX_NAME = 120


def encode_name(name: str) -> str:
    """A topic or group name as a subject token and part of a JetStream name.

    Letters, digits and ``-`` are kept; every other character becomes ``_``
    and the hex of its UTF-8 bytes (``orders.paid`` gives ``orders_2Epaid``),
    so two names never meet. A result longer than 120 characters is cut, and
    a digest of the whole name added.
    """
    if _PLAIN.fullmatch(name):
        encoded = name
    else:
        parts: list[str] = []
        for char in name:
            if _PLAIN.fullmatch(char):
                parts.append(char)
            else:
                parts.append("".join(f"_{byte:02X}" for byte in char.encode()))
        encoded = "".join(parts)
    if len(encoded) > _MAX_NAME:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        encoded = f"{encoded[: _MAX_NAME - 17]}-{digest}"
    return encoded


def own_options(url: str) -> tuple[str, URLOptions]:
    """Take the transport's own options out of a URL's query string.

    Returns:
        The URL without its query (nats-py reads none), and the options.

    Raises:
        ValueError: for a query parameter the transport does not know.
    """
    without, options, unknown = split_options(url, TRANSPORT_OPTIONS)
    if unknown:
        names = ", ".join(sorted({name for name, _ in unknown}))
        raise ValueError(
            f"unknown NATSTransport URL option(s) {names} in {redact_url(url)!r}; "
            f"it knows {', '.join(sorted(TRANSPORT_OPTIONS))} (pass nats-py's own "
            f"options with nats_options=)"
        )
    return without, options


#: A :class:`~flowkit.TransportError` for an error of nats-py, its URLs redacted.
translate = translator("NATS")


def js_error_code(exc: BaseException) -> int | None:
    """The JetStream API error code of ``exc`` (10059: stream not found), if any."""
    if isinstance(exc, nats.js.errors.APIError):
        code = exc.err_code
        return int(code) if code is not None else None
    return None


async def open_client(
    url: str,
    *,
    connect_timeout: float,
    options: dict[str, Any],
    on_reconnect: Callable[[], None],
) -> Client:
    """Open a client on ``url`` that reconnects forever, and check JetStream is on.

    Args:
        url: ``nats://`` or ``tls://`` (TLS), user and password or a token
            taken from it by nats-py.
        connect_timeout: the longest the first connection may take, seconds.
        options: more keyword arguments for ``nats.connect`` (``tls=`` an
            ``ssl.SSLContext``, ``user_credentials=``, ``nkeys_seed=``...).
        on_reconnect: called each time the connection comes back.

    Returns:
        The open client.

    Raises:
        TransportError: if the server cannot be reached, refuses the
            credentials, or has no JetStream.
    """
    where = redact_url(url)

    async def error_cb(exc: Exception) -> None:
        logger.warning(
            "NATS connection to %s: %s: %s", where, type(exc).__name__, redact_url(str(exc))
        )

    async def disconnected_cb() -> None:
        logger.info("NATS connection to %s lost; reconnecting", where)

    async def reconnected_cb() -> None:
        logger.info("NATS connection to %s back", where)
        on_reconnect()

    settings: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "pending_size": 8 * 1024 * 1024,
    }
    settings.update(options)
    client = Client()
    try:
        await asyncio.wait_for(
            client.connect(servers=[url], **settings), timeout=connect_timeout * 2 + 1
        )
    except Exception as exc:
        await _close_quietly(client)
        raise cannot_connect("NATS", where, exc) from exc
    try:
        await client.jetstream().account_info()
    except Exception as exc:
        await _close_quietly(client)
        raise TransportError(
            f"the NATS server at {where} has no JetStream (start it with -js): "
            f"{type(exc).__name__}: {redact_url(str(exc))}"
        ) from exc
    return client


async def _close_quietly(client: Client) -> None:
    try:
        await client.close()
    except Exception:
        pass
