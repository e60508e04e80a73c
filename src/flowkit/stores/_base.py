"""The state store contract, shared by the bus (inbox, dead letters) and the
orchestrator (workflow records).

A store keeps three kinds of records:

* **inbox** entries: ``(consumer, message_id)`` pairs of messages already
  handled, so a redelivered message is not handled twice;
* **dead letters**: messages a consumer gave up on, with the reason, to be
  listed and replayed;
* **workflow records**: the checkpointed state of each saga, with a version
  for optimistic concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from datetime import datetime
    from types import TracebackType

__all__ = ["DeadLetter", "StateStore", "WorkflowRecord"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a consumer gave up on.

    Attributes:
        id: the dead letter's own id (time-ordered).
        consumer: the consumer group that failed (``service:handler``).
        topic: the topic the message came from.
        body: the message body exactly as received (it may not even be JSON).
        headers: the transport headers as received.
        error_type: the exception's qualified name (``DecodeError`` for bad input).
        error: the exception's message, with the traceback when there is one.
        attempts: how many times the handler was tried (0 when it never ran).
        failed_at: when the consumer gave up (UTC).
        message_id: the envelope's message id, when the body decoded that far.
    """

    id: str
    consumer: str
    topic: str
    body: bytes
    headers: Mapping[str, str]
    error_type: str
    error: str
    attempts: int
    failed_at: datetime
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """The checkpointed state of one workflow.

    Attributes:
        id: the workflow id, chosen by the caller or generated.
        name: the orchestrator's name (its class name by default).
        status: the workflow's status (``RUNNING``, ``COMPLETED``, ...).
        state: the engine's JSON-serializable state (input, steps, history),
            stored as JSON the way pydantic converts data (tuples and sets
            come back as lists, bytes as text).
        version: incremented by every save; saves name the version they read.
        created_at: when the record was first written (UTC).
        updated_at: when it was last written (UTC).
    """

    id: str
    name: str
    status: str
    state: Mapping[str, Any]
    version: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None


@runtime_checkable
class StateStore(Protocol):
    """Where flowkit keeps what must survive a restart.

    Opened with ``async with store:`` (several users may enter one store; it
    closes when the last exits), or closed at once with :meth:`aclose`.
    Every method raises :class:`~flowkit.StoreError` (or a subclass) on failure.
    """

    # -- inbox ---------------------------------------------------------------

    async def inbox_add(self, consumer: str, message_id: str) -> bool:
        """Record that ``consumer`` handled ``message_id``.

        Returns:
            True if the pair was new, False if it was already recorded.
        """
        ...

    async def inbox_contains(self, consumer: str, message_id: str) -> bool:
        """Whether ``consumer`` has already handled ``message_id``."""
        ...

    async def inbox_prune(self, older_than: datetime) -> int:
        """Forget the inbox entries recorded before ``older_than``.

        Keep entries for longer than a message can be redelivered (the broker's
        retention, the longest retry delay): a duplicate older than that would
        be handled again.

        Returns:
            How many entries were removed.
        """
        ...

    # -- dead letters --------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a dead letter."""
        ...

    async def list_dead_letters(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally of one consumer or topic."""
        ...

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        """One dead letter by id.

        Raises:
            NotFound: if there is none with that id.
        """
        ...

    async def delete_dead_letter(self, letter_id: str) -> None:
        """Remove a dead letter (after a replay).

        Raises:
            NotFound: if there is none with that id.
        """
        ...

    # -- workflows -----------------------------------------------------------

    async def create_workflow(self, record: WorkflowRecord) -> tuple[WorkflowRecord, bool]:
        """Insert a new workflow record with version 1, unless the id exists.

        Returns:
            ``(stored, created)``: the new record and True, or the record that
            already had this id and False (it is left unchanged).
        """
        ...

    async def save_workflow(self, record: WorkflowRecord) -> WorkflowRecord:
        """Write a changed record; ``record.version`` is the version it was read at.

        Returns:
            The stored record, its version incremented. Its state is the
            mapping given (a load returns it decoded from JSON).

        Raises:
            ConcurrencyConflict: if the stored version is not ``record.version``.
            WorkflowNotFound: if no record has this id.
        """
        ...

    async def load_workflow(self, workflow_id: str) -> WorkflowRecord:
        """One workflow record.

        Raises:
            WorkflowNotFound: if no record has this id.
        """
        ...

    async def list_workflows(
        self,
        *,
        status: Collection[str] | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[WorkflowRecord]:
        """Workflow records, oldest first, filtered by status(es) and name."""
        ...

    # -- lifecycle -----------------------------------------------------------

    async def aclose(self) -> None:
        """Close the store."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
