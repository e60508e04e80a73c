"""Opening a transport from a URL, and importing a broker transport on first use.

Each broker transport is one entry of :data:`BROKERS`: the URL schemes it
answers, where its class is, the client libraries it imports and the extra
that installs them. ``import flowkit`` imports none of them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .._errors import MissingDependency
from .._redact import scheme_of

if TYPE_CHECKING:
    from ._base import Transport

__all__ = ["BROKERS", "SCHEMES", "broker_class", "from_url"]


@dataclass(frozen=True, slots=True)
class Broker:
    """A broker transport, imported only when asked for.

    Attributes:
        schemes: the URL schemes that name it.
        module: its module, relative to ``flowkit.transports``.
        cls: its class name (exported lazily by ``flowkit.transports``).
        clients: the top-level names of the client libraries it imports.
        extra: the ``flowkit[...]`` extra that installs them.
    """

    schemes: tuple[str, ...]
    module: str
    cls: str
    clients: tuple[str, ...]
    extra: str


#: The broker transports, one entry each.
BROKERS: tuple[Broker, ...] = (
    Broker(("redis", "rediss"), "._redis", "RedisTransport", ("redis", "hiredis"), "redis"),
    Broker(("nats", "tls"), "._nats", "NATSTransport", ("nats",), "nats"),
    Broker(("amqp", "amqps"), "._rabbitmq", "RabbitMQTransport", ("aiormq", "pamqp"), "rabbitmq"),
    Broker(("kafka", "kafkas"), "._kafka", "KafkaTransport", ("aiokafka",), "kafka"),
)

SCHEMES: tuple[str, ...] = ("memory", *(s for b in BROKERS for s in b.schemes))
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
    broker = next(b for b in BROKERS if scheme in b.schemes)
    transport: Transport = broker_class(broker.cls)(url, **options)
    return transport


def broker_class(name: str) -> type[Any]:
    """A broker transport class by name (``"RedisTransport"``), imported now.

    Raises:
        AttributeError: if no broker transport has that name.
        MissingDependency: if its client library is not installed; the
            message names the extra.
    """
    for broker in BROKERS:
        if broker.cls == name:
            break
    else:
        raise AttributeError(f"no broker transport is named {name!r}")
    try:
        module = importlib.import_module(broker.module, __package__)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] in broker.clients:
            raise MissingDependency(broker.clients[0], broker.extra, broker.cls) from exc
        raise
    return cast("type[Any]", getattr(module, broker.cls))
