"""The state store contract, shared by the bus (inbox, dead letters) and the
orchestrator (workflow records).

A store keeps three kinds of records:

* **inbox** entries: ``(consumer, message_id)`` pairs of messages being
  handled or already handled, so a redelivered message is not handled twice,
  even by two processes sharing the store;
* **dead letters**: messages a consumer gave up on, with the reason, to be
  listed and replayed;
* **workflow records**: the checkpointed state of each saga, with a version
  for optimistic concurrency, an append-only history, and the lease of the
  process that runs it (its **owner**), so that several processes can share
  the workflows without two of them ever running one at once.

Leases work like this. A process creates a workflow holding its lease, or
claims unfinished workflows whose lease is free (:meth:`StateStore.claim_workflows`);
claiming increments the version, so the checkpoint of a process that lost its
lease (it paused too long and another claimed the workflow) fails with
:class:`~flowkit.ConcurrencyConflict`: the version is the fencing token. The
holder keeps its leases with :meth:`StateStore.renew_leases` (a heartbeat) and
gives them back with :meth:`StateStore.release_workflows` when it stops.
Lease times are counted by the store's clock (the database server's for a
server database), so the clocks of the processes need not agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from datetime import datetime
    from types import TracebackType

__all__ = ["UNFINISHED", "Claim", "DeadLetter", "StateStore", "WorkflowRecord"]

#: The statuses of a workflow that is not finished: the ones with an owner.
UNFINISHED: tuple[str, ...] = ("RUNNING", "COMPENSATING")


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
        owner: the id of the process holding the workflow's lease, or None.
        lease_until: when that lease runs out (UTC), or None without an owner.
        cancel_requested: whether :meth:`StateStore.request_cancel` asked the
            owner to cancel the workflow (cleared once it is not ``RUNNING``).
        history: the workflow's history entries (JSON arrays), oldest first.
            :meth:`StateStore.load_workflow` returns them all; every other
            method returns records without them. Written, they are appended.
        wake_at: for a ``WAITING`` workflow, when it is due (UTC; None: only a
            message wakes it). See :mod:`flowkit.stores._waits`.
        wait_for: for a ``WAITING`` workflow, the mailbox channel it waits on
            (None for a timer).
        wait_key: the key within ``wait_for`` (None for a timer).
    """

    id: str
    name: str
    status: str
    state: Mapping[str, Any]
    version: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    owner: str | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    history: Sequence[Sequence[Any]] = ()
    wake_at: datetime | None = None
    wait_for: str | None = None
    wait_key: str | None = None

    @property
    def cursor(self) -> str:
        """Where a listing continues after this record (pass it as ``after=``).

        Raises:
            ValueError: if the record was never stored (it has no ``created_at``).
        """
        if self.created_at is None:
            raise ValueError(f"workflow {self.id!r} was not stored: it has no cursor")
        return f"{self.created_at.isoformat()}/{self.id}"


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
                over; a positive number, longer than handling the message takes
                (a lease longer than about 31 years counts as that).

        Returns:
            :attr:`Claim.CLAIMED`, :attr:`Claim.DONE` or :attr:`Claim.BUSY`.

        Raises:
            StoreError: if ``lease`` is not a positive number of seconds.
        """
        ...

    async def inbox_complete(self, consumer: str, message_id: str) -> None:
        """Record that ``consumer`` is done with ``message_id`` (handled or
        dead-lettered); later claims answer :attr:`Claim.DONE`.

        Completing a pair that was never claimed records it all the same;
        completing it again changes nothing.
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
        """Keep a dead letter.

        Adding a letter whose id is already kept leaves the kept one unchanged,
        so a retried add is harmless.

        Raises:
            StoreError: if ``letter.failed_at`` is naive.
        """
        ...

    async def list_dead_letters(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, oldest (by ``failed_at``) first, optionally of one
        consumer or topic, at most ``limit``."""
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

    async def create_workflow(
        self, record: WorkflowRecord, *, lease: float | None = None
    ) -> tuple[WorkflowRecord, bool]:
        """Insert a new workflow record with version 1, unless the id exists.

        Its ``history`` entries are stored as its first. When ``record.owner``
        is set, that owner holds the workflow's lease for ``lease`` seconds.
        The store sets ``created_at`` and ``updated_at``; the record's own
        version and timestamps are ignored.

        Returns:
            ``(stored, created)``: the new record and True, or the record that
            already had this id and False (it is left unchanged). Neither
            carries history.

        Raises:
            StoreError: if ``record.owner`` is set without a positive ``lease``.
        """
        ...

    async def save_workflow(
        self,
        record: WorkflowRecord,
        *,
        history: Sequence[Sequence[Any]] = (),
        lease: float | None = None,
    ) -> WorkflowRecord:
        """Write a changed record; ``record.version`` is the version it was read at.

        The status and state are replaced and ``history`` is appended to the
        stored history (``record.history`` is ignored): a checkpoint costs the
        same however long the history is. ``record.owner`` becomes the owner,
        holding the lease for ``lease`` seconds from now; a record without an
        owner leaves the workflow without one. Saving a status other than
        ``RUNNING`` drops a pending cancel request. The name and ``created_at``
        stay as they were created.

        Returns:
            The stored record, its version incremented, without history. Its
            state is the mapping given (a load returns it decoded from JSON);
            its ``cancel_requested`` is the stored flag.

        Raises:
            ConcurrencyConflict: if the stored version is not ``record.version``
                (another process saved or claimed the workflow: the caller's
                lease, if it had one, is lost).
            WorkflowNotFound: if no record has this id.
            StoreError: if ``record.owner`` is set without a positive ``lease``.
        """
        ...

    async def load_workflow(self, workflow_id: str) -> WorkflowRecord:
        """One workflow record, with its whole history.

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
        after: str | None = None,
    ) -> list[WorkflowRecord]:
        """Workflow records without history, oldest first (by creation, then id),
        filtered by status(es) and name.

        Args:
            status: only these statuses (a single string is one status).
            name: only the records of this orchestrator.
            limit: at most this many records (all when None).
            after: a :attr:`WorkflowRecord.cursor`: only the records listed
                after that one, for the next page.

        Raises:
            StoreError: if ``after`` is not a cursor.
        """
        ...

    async def count_workflows(self) -> dict[tuple[str, str], int]:
        """How many workflow records each orchestrator has in each status.

        One grouped read of an index that holds both columns, so a dashboard
        or a command line can show the totals without listing the records.
        It still reads one index entry per record: it costs milliseconds per
        hundred thousand records, not a constant.

        Returns:
            ``{(name, status): count}`` for every pair with at least one
            record; a pair without records is absent.
        """
        ...

    # -- ownership -----------------------------------------------------------

    async def claim_workflows(
        self,
        name: str,
        owner: str,
        *,
        lease: float,
        limit: int = 100,
        exclude: Collection[str] = (),
    ) -> list[WorkflowRecord]:
        """Take the lease of unfinished workflows of orchestrator ``name`` that
        nobody holds, oldest first.

        A workflow is free when it has no owner, when its lease ran out, or
        when it is held by ``owner`` itself (left by an instance of its
        process that stopped), unless its id is in ``exclude`` (the ids the
        caller is running, whose leases may have lapsed). Each claimed
        record's version is incremented, fencing out a previous holder; its
        ``updated_at`` is left as it was. Several callers at once never claim
        one workflow twice.

        Args:
            name: the orchestrator's name.
            owner: the claiming process's id.
            lease: how long the lease holds, in seconds (positive).
            limit: the most workflows claimed by this call (positive).
            exclude: workflow ids never claimed by this call.

        Returns:
            The claimed records, without history, owned by ``owner``.
        """
        ...

    async def claim_workflow(
        self, workflow_id: str, owner: str, *, lease: float
    ) -> WorkflowRecord | None:
        """Take the lease of one unfinished workflow (``WAITING`` ones included,
        due or not) if it is free (no owner, an expired lease, or held by
        ``owner`` itself); its version is incremented.

        Returns:
            The claimed record (without history), or None if the workflow is
            finished or another owner's lease on it still holds.

        Raises:
            WorkflowNotFound: if no record has this id.
        """
        ...

    async def renew_leases(
        self, owner: str, workflow_ids: Collection[str], *, lease: float
    ) -> dict[str, bool]:
        """Extend ``owner``'s leases on these unfinished workflows (``WAITING``
        ones included) to ``lease`` seconds from now.

        A lease that ran out but that nobody claimed is renewed too. The
        version does not change. Here and in :meth:`release_workflows`, one
        string passed as ``workflow_ids`` is one id.

        Returns:
            For each workflow ``owner`` still holds, whether a cancel was
            requested. A workflow missing from the answer is lost: another
            process claimed it, or it was finished or removed.
        """
        ...

    async def release_workflows(self, owner: str, workflow_ids: Collection[str]) -> None:
        """Give up ``owner``'s leases on these workflows, so that another process
        may claim them at once (a process stopping cleanly calls it). Workflows
        ``owner`` does not hold are left as they are. The version does not change.
        """
        ...

    async def request_cancel(self, workflow_id: str) -> WorkflowRecord:
        """Ask the owner of a ``RUNNING`` or ``WAITING`` workflow to cancel it: sets
        its ``cancel_requested`` flag, which the owner sees in its next
        :meth:`renew_leases` or :meth:`save_workflow`; a ``WAITING`` workflow
        is made due now, so that a process wakes it to cancel it. The version
        does not change. A workflow in another status is left as it is.

        Returns:
            The record after the request (without history).

        Raises:
            WorkflowNotFound: if no record has this id.
        """
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

        Their history goes with them. Only the final statuses are pruned by
        default. An unfinished status (``RUNNING``, ``COMPENSATING``) is
        pruned only when the caller names it: that is for workflows
        abandoned long ago, since a workflow still advancing whose record is
        removed fails its next save with :class:`~flowkit.WorkflowNotFound`.

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
