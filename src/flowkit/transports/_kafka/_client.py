"""The connection to a Kafka-protocol broker: URLs, names, and telling errors apart.

:data:`RECOVERABLE` are the errors retried until the broker is back or a
rebalance ends; every error of aiokafka that leaves the transport goes through
:func:`translate` (see ``transports/_translate.py``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from aiokafka import errors as kafka_errors
from aiokafka.helpers import create_ssl_context

from ..._redact import redact_url
from .._options import URLOptions, split_options
from .._translate import translator

__all__ = [
    "RECOVERABLE",
    "Settings",
    "kafka_errors",
    "kafka_name",
    "parse_url",
    "translate",
]

# Errors that pass when the broker comes back or a rebalance ends.
RECOVERABLE: tuple[type[Exception], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.UnknownTopicOrPartitionError,
    kafka_errors.NotCoordinatorForGroupError,
    kafka_errors.CoordinatorNotAvailableError,
    kafka_errors.GroupCoordinatorNotAvailableError,
    OSError,
)

# The options a URL's query may set: the transport's own, then the client's.
_OWN = frozenset(
    {
        "prefix",
        "partitions",
        "prefetch",
        "publish_timeout",
        "connect_timeout",
        "session_timeout",
        "fetch_wait",
    }
)
_SECURITY = frozenset(
    {"security_protocol", "sasl_mechanism", "ssl_cafile", "ssl_certfile", "ssl_keyfile"}
)
_SASL_MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})
_PROTOCOLS = frozenset({"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"})
# What Kafka accepts in a topic name, and its longest one.
_LEGAL = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_NAME = 249


@dataclass(slots=True)
class Settings:
    """What a URL says: the brokers, the transport's own options, the client's
    security options."""

    bootstrap: list[str]
    own: URLOptions
    client: dict[str, Any] = field(default_factory=dict)


def parse_url(url: str) -> Settings:
    """Read ``kafka://[user:password@]host[:port][,host:port...][?options]``.

    ``kafkas://`` is TLS (``SSL``, or ``SASL_SSL`` with credentials); a user
    and password mean SASL (``PLAIN`` unless ``sasl_mechanism`` says
    ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``). ``security_protocol`` may be set
    outright; ``ssl_cafile``, ``ssl_certfile`` and ``ssl_keyfile`` build the
    TLS context.

    Raises:
        ValueError: for another scheme, no host, or an unknown option value.
    """
    parts = urlsplit(url)
    where = redact_url(url)
    if parts.scheme not in ("kafka", "kafkas"):
        raise ValueError(f"KafkaTransport needs a kafka:// or kafkas:// URL, not {where!r}")
    netloc = parts.netloc
    user = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user_part, has_password, password_part = auth.partition(":")
        user = unquote(user_part)
        password = unquote(password_part) if has_password else ""
    hosts = [host if ":" in host else f"{host}:9092" for host in netloc.split(",") if host]
    if not hosts:
        raise ValueError(f"a Kafka URL names at least one broker: {where!r}")
    _, own, others = split_options(url, _OWN)
    settings = Settings(hosts, own)
    security: dict[str, str] = {}
    for name, value in others:
        if name not in _SECURITY:
            raise ValueError(f"unknown Kafka URL option {name!r} in {where!r}")
        security[name] = value
    tls = parts.scheme == "kafkas"
    protocol = security.get("security_protocol", "").upper()
    if not protocol:
        sasl = user is not None
        protocol = ("SASL_SSL" if tls else "SASL_PLAINTEXT") if sasl else "SSL" if tls else ""
    if protocol and protocol not in _PROTOCOLS:
        raise ValueError(f"security_protocol must be one of {sorted(_PROTOCOLS)}: {where!r}")
    if protocol:
        settings.client["security_protocol"] = protocol
    if protocol in ("SSL", "SASL_SSL"):
        settings.client["ssl_context"] = create_ssl_context(
            cafile=security.get("ssl_cafile"),
            certfile=security.get("ssl_certfile"),
            keyfile=security.get("ssl_keyfile"),
        )
    if protocol.startswith("SASL"):
        mechanism = security.get("sasl_mechanism", "PLAIN").upper()
        if mechanism not in _SASL_MECHANISMS:
            raise ValueError(f"sasl_mechanism must be one of {sorted(_SASL_MECHANISMS)}")
        settings.client["sasl_mechanism"] = mechanism
        settings.client["sasl_plain_username"] = user or ""
        settings.client["sasl_plain_password"] = password or ""
    return settings


def kafka_name(*parts: str) -> str:
    """A Kafka topic name (also used for group ids) made of ``parts`` joined by ``..``.

    Characters Kafka refuses in a topic name become ``_``; a name changed so,
    or longer than Kafka allows, ends with a hash of the original, so that two
    names never meet.
    """
    name = "..".join(parts)
    if _LEGAL.match(name) and len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)[: _MAX_NAME - 14]
    return f"{cleaned}-{digest}"


#: A :class:`~flowkit.TransportError` for an error of aiokafka, its URLs redacted.
translate = translator("Kafka")
