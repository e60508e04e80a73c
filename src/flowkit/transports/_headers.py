"""A message's headers on the way to a broker and back.

Flowkit headers are strings. Where a broker keeps them in a field of its own
(a Redis stream entry's ``headers``, a NATS message's ``Flowkit-Headers``)
they travel as one compact JSON object, encoded and read here; Kafka's record
headers and RabbitMQ's header table carry them one by one (see those
packages' deliveries). Whatever a message carries besides is the broker
package's own.

A message written by another program never crashes a consumer: headers that
are not a JSON object of strings read as None, and the broker package says
so in a WARNING naming the message and delivers it without headers.
"""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["NO_HEADERS", "headers_from_json", "headers_to_json", "read_count"]

#: The headers of a message that has none (one shared, read-only mapping).
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


def headers_to_json(headers: Mapping[str, str], *, ascii_only: bool) -> str:
    """Headers as a compact JSON object.

    Args:
        headers: the message's headers.
        ascii_only: escape every character beyond ASCII (for a broker whose
            header values are ASCII lines), or keep them as they are.
    """
    return json.dumps(dict(headers), ensure_ascii=ascii_only, separators=(",", ":"))


def headers_from_json(value: str | bytes) -> Mapping[str, str] | None:
    """The headers a JSON object of strings holds; None for anything else."""
    try:
        headers = json.loads(value)
    except ValueError:
        return None
    if isinstance(headers, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return headers
    return None


def read_count(value: Any) -> int:
    """A count carried with a message (how many deliveries came before), as
    written by the transport: 0 for anything that is not a whole number."""
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0
