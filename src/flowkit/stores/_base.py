"""The state store contract, shared by the bus (inbox, dead letters) and the
orchestrator (workflow records).

A store keeps three kinds of records:

* **inbox** entries: ``(consumer, message_id)`` pairs of messages being
  handled or already handled, so a redelivered message is not handled twice,
  even by two processes sharing the store;
* **dead letters**: messages a consumer gave up on, with the reason, to be
  listed and replayed;
* **workflow records**: the checkpointed state of each saga, with a version
  for optimistic concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from datetime import datetime
    from types import TracebackType

__all__ = ["Claim", "DeadLetter", "StateStore", "WorkflowRecord"]


class Claim(StrEnum):
    """The answer of :meth:`StateStore.inbox_claim`.

    Attributes:
        CLAIMED: the caller holds the message now: it handles it, then calls
            :meth:`~StateStore.inbox_complete` (or :meth:`~StateStore.inbox_release`
            to let a later delivery try again).
        DONE: the consumer already handled (or dead-lettered) the message: drop it.
        BUSY: another claim on the message is held and its lease has not run
            out: give the delivery back and look again later.
    """

    CLAIMED = "claimed"
    DONE = "done"
    BUSY = "busy"


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

    async def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> Claim:
        """Claim ``message_id`` for ``consumer``, atomically.

        Exactly one of several concurrent callers (in one process or many)
        gets :attr:`Claim.CLAIMED` for a pair. A claim that was neither
        completed nor released within ``lease`` seconds (its holder died) may
        be claimed again.

        Args:
            consumer: the consumer group (``service:handler``).
            message_id: the message's id.
            lease: seconds the claim holds before another caller may take it
                over; a positive number, longer than handling the message takes.

        Returns:
            :attr:`Claim.CLAIMED`, :attr:`Claim.DONE` or :attr:`Claim.BUSY`.

        Raises:
            StoreError: if ``lease`` is not a positive number of seconds.
        """
        ...

    async def inbox_complete(self, consumer: str, message_id: str) -> None:
        """Record that ``consumer`` is done with ``message_id`` (handled or
        dead-lettered); later claims answer :attr:`Claim.DONE`.

        Completing a pair that was never claimed records it all the same.
        """
        ...

    async def inbox_release(self, consumer: str, message_id: str) -> None:
        """Drop an unfinished claim, so the next delivery may claim the message.

        A pair already completed stays completed; releasing an unknown pair is a no-op.
        """
        ...

    async def inbox_prune(self, older_than: datetime) -> int:
        """Forget the completed inbox entries recorded before ``older_than``.

        Keep entries for longer than a message can be redelivered (the broker's
        retention, the longest retry delay): a duplicate older than that would
        be handled again. Pruning is what bounds the inbox.

        Claims whose lease ran out before ``older_than`` (their holder died
        without completing or releasing them) may be forgotten too: a claim on
        a forgotten pair answers :attr:`Claim.CLAIMED`, as it would on the
        expired claim. Claims still held are always kept.

        Args:
            older_than: a timezone-aware time.

        Returns:
            How many entries were removed (expired claims included).
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

    async def prune_dead_letters(
        self,
        older_than: datetime,
        *,
        consumer: str | None = None,
        topic: str | None = None,
        limit: int = 10_000,
    ) -> int:
        """Remove the dead letters that failed before ``older_than``, oldest first.

        At most ``limit`` letters go per call, so that a large prune never
        holds one long transaction: call again until it returns less than
        ``limit``.

        Args:
            older_than: a timezone-aware time; letters whose ``failed_at`` is
                before it are removed.
            consumer: only the letters of this consumer.
            topic: only the letters from this topic.
            limit: the most letters removed by this call (a positive integer).

        Returns:
            How many letters were removed.

        Raises:
            StoreError: if ``older_than`` is naive or ``limit`` is not a
                positive integer.
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

    async def prune_workflows(
        self,
        older_than: datetime,
        *,
        statuses: Collection[str] = ("COMPLETED", "COMPENSATED", "FAILED"),
        name: str | None = None,
        limit: int = 10_000,
    ) -> int:
        """Remove the workflow records in ``statuses`` last updated before ``older_than``.

        Only the final statuses are pruned by default. An unfinished status
        (``RUNNING``, ``COMPENSATING``) is pruned only when the caller names
        it: that is for workflows abandoned long ago, since a workflow still
        advancing whose record is removed fails its next save with
        :class:`~flowkit.WorkflowNotFound`.

        The least recently updated records go first, at most ``limit`` per
        call, so that a large prune never holds one long transaction: call
        again until it returns less than ``limit``.

        Args:
            older_than: a timezone-aware time; records whose ``updated_at`` is
                before it are removed.
            statuses: the statuses pruned (a single string is taken as one
                status; none prunes nothing).
            name: only the records of this orchestrator.
            limit: the most records removed by this call (a positive integer).

        Returns:
            How many records were removed.

        Raises:
            StoreError: if ``older_than`` is naive or ``limit`` is not a
                positive integer.
        """
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
