"""What the DEBUG lines of the bus and of the saga engine have in common.

Every record flowkit logs about a message or a workflow carries its ids and
numbers as record attributes named ``flowkit_*`` (``extra={...}``), flat, so
that a JSON formatter writes them as top-level fields; the sentence of the
record is for people. Payload values never appear in either.
"""

from __future__ import annotations

__all__ = ["PREFIX", "error_type", "milliseconds", "took"]

#: The prefix of every structured field flowkit puts on a log record.
PREFIX = "flowkit_"


def took(seconds: float) -> str:
    """A duration for a person: ``0.8 ms``, ``312.5 ms``, ``2.41 s``."""
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def milliseconds(seconds: float | None) -> float | None:
    """A duration as the ``flowkit_duration_ms`` field: milliseconds, to the microsecond."""
    return None if seconds is None else round(seconds * 1000, 3)


def error_type(exc: BaseException) -> str:
    """An exception's type as its module names it (``ValueError``,
    ``myshop.payments.CardDeclined``): its message is left out, as it may hold data."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
