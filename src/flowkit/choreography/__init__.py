"""Choreography: services reacting to events on a bus, and request/reply between them."""

from ._bus import Choreography as Choreography
from ._context import Context as Context
from ._handlers import HandlerSpec as HandlerSpec
from ._observe import BusObserver as BusObserver
from ._observe import Outgoing as Outgoing
from ._outbox import Outbox as Outbox

__all__ = ["BusObserver", "Choreography", "Context", "HandlerSpec", "Outbox", "Outgoing"]
