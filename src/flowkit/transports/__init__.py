"""Transports: the contract and its implementations.

Broker transports are imported on first use, so ``import flowkit`` never
imports a broker client.
"""

from ._base import Capabilities as Capabilities
from ._base import Delivery as Delivery
from ._base import Subscription as Subscription
from ._base import Transport as Transport
from ._memory import InMemoryTransport as InMemoryTransport

__all__ = ["Capabilities", "Delivery", "InMemoryTransport", "Subscription", "Transport"]
