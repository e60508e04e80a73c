"""State stores: the contract and its implementations.

:class:`PostgresStore` is imported on first use (``from flowkit.stores import
PostgresStore``, or :func:`from_url`), so ``import flowkit`` never imports asyncpg.
"""

from typing import Any

from ._base import Claim as Claim
from ._base import DeadLetter as DeadLetter
from ._base import StateStore as StateStore
from ._base import WorkflowRecord as WorkflowRecord
from ._memory import MemoryStore as MemoryStore
from ._sqlite import SQLiteStore as SQLiteStore
from ._url import from_url as from_url

__all__ = [
    "Claim",
    "DeadLetter",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "StateStore",
    "WorkflowRecord",
    "from_url",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from ._url import postgres_store

        return postgres_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
