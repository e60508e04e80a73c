"""The Redis transport: Redis Streams, consumer groups and a few Lua scripts.

Importing this package imports redis-py; ``import flowkit`` does not.
"""

from ._transport import RedisTransport as RedisTransport

__all__ = ["RedisTransport"]
