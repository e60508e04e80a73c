"""State stores: the contract and its implementations."""

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
    "SQLiteStore",
    "StateStore",
    "WorkflowRecord",
    "from_url",
]
