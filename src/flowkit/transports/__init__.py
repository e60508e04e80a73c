"""Transports: the contract and its implementations.

Broker transports are imported on first use (``from flowkit.transports import
RedisTransport``, or :func:`from_url`), so ``import flowkit`` never imports a
broker client.
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
