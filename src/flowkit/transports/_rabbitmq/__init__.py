"""The RabbitMQ transport: topic exchanges, a queue per group, TTL queues for delays.

Importing this package imports aiormq (installed with aio-pika); ``import flowkit``
does not.
"""

from ._transport import RabbitMQTransport as RabbitMQTransport

__all__ = ["RabbitMQTransport"]
