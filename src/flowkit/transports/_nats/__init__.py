"""The NATS transport: JetStream streams and durable pull consumers.

Importing this package imports nats-py; ``import flowkit`` does not.
"""

from ._transport import NATSTransport as NATSTransport

__all__ = ["NATSTransport"]
