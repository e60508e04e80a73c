"""The pytest plugin of flowkit (registered through the ``pytest11`` entry point).

Fixtures:

* ``memory_transport``: an open :class:`~flowkit.transports.InMemoryTransport`;
* ``memory_store``: an open :class:`~flowkit.stores.MemoryStore`;
* ``memory_bus``: a :class:`~flowkit.Choreography` on both, not started:
  declare handlers on it, then ``async with memory_bus:`` or
  ``async with run_in_memory(memory_bus) as harness:``.

They are async fixtures: use them from tests run by anyio's pytest plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ..choreography import Choreography
from ..stores._memory import MemoryStore
from ..transports._memory import InMemoryTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def memory_transport() -> AsyncIterator[InMemoryTransport]:
    """An open in-memory transport, closed after the test."""
    async with InMemoryTransport() as transport:
        yield transport


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryStore]:
    """An open in-memory store, closed after the test."""
    async with MemoryStore() as store:
        yield store


@pytest.fixture
def memory_bus(memory_transport: InMemoryTransport, memory_store: MemoryStore) -> Choreography:
    """A bus on the in-memory transport and store, with no handlers, not started."""
    return Choreography(memory_transport, store=memory_store)
