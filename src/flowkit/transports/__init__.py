"""Transports: the contract and its implementations.

Broker transports are imported on first use (``from flowkit.transports import
RedisTransport``, or :func:`from_url`), so ``import flowkit`` never imports a
broker client.

The contract is ``_base.py``; ``_memory.py`` is the in-memory transport, and
each broker has a package (``_redis``, ``_rabbitmq``, ``_nats``, ``_kafka``).
What they share stands beside the contract, one module each: opening and
closing (``_lifecycle.py``), the pauses before trying again (``_backoff.py``),
the options a URL gives (``_options.py``), headers on the wire
(``_headers.py``), and a client's errors made flowkit's (``_translate.py``).
``_url.py`` finds the transport a URL names.
"""

from typing import Any

from ._base import Capabilities as Capabilities
from ._base import Delivery as Delivery
from ._base import Subscription as Subscription
from ._base import Transport as Transport
from ._memory import InMemoryTransport as InMemoryTransport
from ._url import from_url as from_url

__all__ = [
    "Capabilities",
    "Delivery",
    "InMemoryTransport",
    "KafkaTransport",
    "NATSTransport",
    "RabbitMQTransport",
    "RedisTransport",
    "Subscription",
    "Transport",
    "from_url",
]


def __getattr__(name: str) -> Any:
    from ._url import BROKERS, broker_class

    if any(broker.cls == name for broker in BROKERS):
        return broker_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
