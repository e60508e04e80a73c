"""The Kafka transport: a Kafka topic per topic, a consumer group per group (aiokafka).

Importing this package imports aiokafka; ``import flowkit`` does not.
"""

from ._transport import KafkaTransport as KafkaTransport

__all__ = ["KafkaTransport"]
