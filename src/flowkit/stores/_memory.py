"""A state store kept in process memory, for tests and single-process tools.

Nothing survives the process, but everything survives closing and reopening
the same :class:`MemoryStore` instance, so a test can stop a bus or an
orchestrator and start another one on the same store to simulate a restart.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

from anyio.lowlevel import checkpoint

from .._errors import ConcurrencyConflict, NotFound, StoreError, WorkflowNotFound
from ._base import UNFINISHED, Claim, DeadLetter, WorkflowRecord
from ._codec import (
    claim_limit,
    claimant_lease,
    decode_state,
    encode_state,
    lease_seconds,
    owner_lease,
    parse_cursor,
    prune_limit,
    status_tuple,
    utc,
    workflow_id_list,
)
from ._waits import WAITING

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from types import TracebackType

    from ._memory_trace import MemoryTrace
    from ._memory_waits import MemoryWaits

__all__ = ["MemoryStore"]

#: The statuses a single claim or a renewal takes: the unfinished ones.
_CLAIMABLE = (*UNFINISHED, WAITING)

logger = logging.getLogger("flowkit.stores")


@dataclass(slots=True)
class _InboxEntry:
    """One inbox pair: claimed until ``expires`` (a monotonic time), or done (None)."""

    stamped: datetime  # when it was claimed or completed (UTC)
    expires: float | None
    lease: float = 0.0


@dataclass(slots=True)
class _StoredWorkflow:
    name: str
    status: str
    state_json: str
    version: int
    created_at: datetime
    updated_at: datetime
    seq: int
    history: list[str]  # the entries as JSON text
    owner: str | None = None
    lease_until: datetime | None = None
    cancel_requested: bool = False
    wake_at: datetime | None = None
    wait_for: str | None = None
    wait_key: str | None = None

    def record(
        self,
        workflow_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        history: bool = False,
    ) -> WorkflowRecord:
        """The record, with ``state`` when the caller just wrote it (saves a decode)."""
        return WorkflowRecord(
            id=workflow_id,
            name=self.name,
            status=self.status,
            state=decode_state(self.state_json) if state is None else state,
            version=self.version,
            created_at=self.created_at,
            updated_at=self.updated_at,
            owner=self.owner,
            lease_until=self.lease_until,
            cancel_requested=self.cancel_requested,
            history=tuple(decode_state(e, "history entry") for e in self.history)
            if history
            else (),
            wake_at=self.wake_at,
            wait_for=self.wait_for,
            wait_key=self.wait_key,
        )

    def hold(self, owner: str | None, lease: float | None, now: datetime) -> None:
        """Give the lease to ``owner`` for ``lease`` seconds (None: nobody holds it)."""
        self.owner = owner
        self.lease_until = (
            None if owner is None or lease is None else now + timedelta(seconds=lease)
        )

    def claim(self, workflow_id: str, owner: str, lease: float, now: datetime) -> WorkflowRecord:
        """Give ``owner`` the lease (fencing out a previous holder); the record."""
        self.hold(owner, lease, now)
        self.version += 1
        return self.record(workflow_id)

    def free_for(
        self,
        owner: str,
        now: datetime,
        exclude: Collection[str],
        wid: str,
        statuses: Collection[str] = UNFINISHED,
    ) -> bool:
        """Whether ``owner`` may claim this workflow now (if its status is one of
        ``statuses``)."""
        if self.status not in statuses or wid in exclude:
            return False
        return self.unheld_for(owner, now)

    def unheld_for(self, owner: str, now: datetime) -> bool:
        """Whether nobody but ``owner`` holds a live lease on it."""
        return (
            self.owner is None
            or self.owner == owner
            or (self.lease_until is not None and self.lease_until <= now)
        )

    def wait(self, record: WorkflowRecord, now: datetime, pending: bool) -> None:
        """Keep what a record waits for (nothing unless it is WAITING); due now
        when a cancel or a message (``pending``) is waiting for it."""
        if self.status != WAITING:
            self.wake_at = self.wait_for = self.wait_key = None
            return
        self.wait_for, self.wait_key = record.wait_for, record.wait_key
        due = self.cancel_requested or pending
        self.wake_at = (
            now if due else (None if record.wake_at is None else utc(record.wake_at, "wake_at"))
        )


def _history_json(entries: Sequence[Sequence[Any]]) -> list[str]:
    """History entries as JSON text (refused as the state is, when not JSON)."""
    return [encode_state(entry) for entry in entries]  # type: ignore[arg-type]


def _copy_letter(letter: DeadLetter, failed_at: datetime) -> DeadLetter:
    return DeadLetter(
        id=letter.id,
        consumer=letter.consumer,
        topic=letter.topic,
        body=bytes(letter.body),
        headers=dict(letter.headers),
        error_type=letter.error_type,
        error=letter.error,
        attempts=letter.attempts,
        failed_at=failed_at,
        message_id=letter.message_id,
    )


def _of(letter: DeadLetter, consumer: str | None, topic: str | None) -> bool:
    """Whether ``letter`` is of ``consumer`` and from ``topic`` (None: any)."""
    return (consumer is None or letter.consumer == consumer) and (
        topic is None or letter.topic == topic
    )


class MemoryStore:
    """A :class:`~flowkit.stores.StateStore` that keeps its records in memory.

    Records are copied on the way in and out (workflow state goes through a
    JSON round trip, exactly like in a database store), so neither the caller
    nor the store can change the other's data by mutating a mapping. State that
    is not JSON-serializable is refused with :class:`~flowkit.StoreError`.

    The store must be opened with ``async with store:`` before use; it may be
    entered by several users and closes when the last one exits. Its records
    are kept when it closes, so it can be opened again.

    The store is safe to share between tasks and threads.

    What it holds grows only as the caller asks:

    * dead letters, until :meth:`prune_dead_letters` removes the old ones,
      and up to ``max_dead_letters`` (unbounded by default): past it, the
      earliest added are dropped;
    * inbox entries, until :meth:`inbox_prune` forgets the completed ones
      (whoever uses the inbox prunes it, as with any store);
    * workflow records, until :meth:`prune_workflows` removes the old ones:
      they are the workflows' state, and only the application knows when one
      is no longer wanted.
    """

    def __init__(self, *, max_dead_letters: int | None = None) -> None:
        """Create an empty store (closed until entered with ``async with``).

        Args:
            max_dead_letters: the most dead letters kept (None: no bound). An
                add that goes past it drops the earliest added letters, down
                to nine tenths of the bound, so that drops come in batches;
                each batch logs one WARNING on the ``flowkit.stores`` logger
                saying how many letters were dropped.

        Raises:
            ValueError: if ``max_dead_letters`` is not a positive integer.
        """
        if max_dead_letters is not None and (
            isinstance(max_dead_letters, bool)
            or not isinstance(max_dead_letters, int)
            or max_dead_letters < 1
        ):
            raise ValueError(
                f"max_dead_letters must be a positive integer or None, not {max_dead_letters!r}"
            )
        self._max_dead_letters = max_dead_letters
        self._lock = threading.Lock()
        self._users = 0
        self._open = False
        self._seq = 0
        self._inbox: dict[tuple[str, str], _InboxEntry] = {}
        self._letters: dict[str, tuple[int, DeadLetter]] = {}
        self._workflows: dict[str, _StoredWorkflow] = {}
        self._trace: MemoryTrace | None = None
        self._waits: MemoryWaits | None = None

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<MemoryStore {state}, {len(self._workflows)} workflow(s)>"

    def _check_open(self) -> None:
        if not self._open:
            raise StoreError("MemoryStore is not open; use `async with store:` first")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- inbox ---------------------------------------------------------------

    async def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> Claim:
        """Leases are measured with the monotonic clock."""
        seconds = lease_seconds(lease)
        await checkpoint()
        with self._lock:
            self._check_open()
            key = (consumer, message_id)
            entry = self._inbox.get(key)
            now = time.monotonic()
            if entry is not None:
                if entry.expires is None:
                    return Claim.DONE
                if entry.expires > now:
                    return Claim.BUSY
            self._inbox[key] = _InboxEntry(datetime.now(UTC), now + seconds, seconds)
            return Claim.CLAIMED

    async def inbox_complete(self, consumer: str, message_id: str) -> None:
        await checkpoint()
        with self._lock:
            self._check_open()
            key = (consumer, message_id)
            entry = self._inbox.get(key)
            if entry is None or entry.expires is not None:
                self._inbox[key] = _InboxEntry(datetime.now(UTC), None)

    async def inbox_release(self, consumer: str, message_id: str) -> None:
        await checkpoint()
        with self._lock:
            self._check_open()
            key = (consumer, message_id)
            entry = self._inbox.get(key)
            if entry is not None and entry.expires is not None:
                del self._inbox[key]

    async def inbox_prune(self, older_than: datetime) -> int:
        cutoff = utc(older_than, "older_than")
        await checkpoint()
        with self._lock:
            self._check_open()
            now = time.monotonic()
            old = [
                key
                for key, entry in self._inbox.items()
                if (entry.expires is None or entry.expires <= now)
                and entry.stamped + timedelta(seconds=entry.lease) < cutoff
            ]
            for key in old:
                del self._inbox[key]
            return len(old)

    # -- dead letters --------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await checkpoint()
        stored = _copy_letter(letter, utc(letter.failed_at, "DeadLetter.failed_at"))
        with self._lock:
            self._check_open()
            if stored.id in self._letters:
                return
            self._letters[stored.id] = (self._next_seq(), stored)
            dropped = self._drop_letters()
        if dropped:
            logger.warning(
                "MemoryStore dropped the %d earliest dead letter(s): it keeps at most %d",
                dropped,
                self._max_dead_letters,
            )

    def _drop_letters(self) -> int:
        """Drop the earliest letters past the bound (under the lock); how many."""
        bound = self._max_dead_letters
        if bound is None or len(self._letters) <= bound:
            return 0
        dropped = len(self._letters) - (bound - bound // 10)
        for letter_id in list(itertools.islice(self._letters, dropped)):
            del self._letters[letter_id]
        return dropped

    async def list_dead_letters(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        await checkpoint()
        with self._lock:
            self._check_open()
            found = [
                (letter.failed_at, seq, letter)
                for seq, letter in self._letters.values()
                if _of(letter, consumer, topic)
            ]
        found.sort(key=lambda item: (item[0], item[1]))
        return [_copy_letter(letter, letter.failed_at) for _, _, letter in found[: max(limit, 0)]]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        await checkpoint()
        with self._lock:
            self._check_open()
            entry = self._letters.get(letter_id)
        if entry is None:
            raise NotFound(f"no dead letter with id {letter_id!r}")
        return _copy_letter(entry[1], entry[1].failed_at)

    async def delete_dead_letter(self, letter_id: str) -> None:
        await checkpoint()
        with self._lock:
            self._check_open()
            if self._letters.pop(letter_id, None) is None:
                raise NotFound(f"no dead letter with id {letter_id!r}")

    async def prune_dead_letters(
        self,
        older_than: datetime,
        *,
        consumer: str | None = None,
        topic: str | None = None,
        limit: int = 10_000,
    ) -> int:
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        await checkpoint()
        with self._lock:
            self._check_open()
            old = sorted(
                (letter.failed_at, seq, letter.id)
                for seq, letter in self._letters.values()
                if letter.failed_at < cutoff and _of(letter, consumer, topic)
            )[:most]
            for _, _, letter_id in old:
                del self._letters[letter_id]
            return len(old)

    # -- workflows -----------------------------------------------------------

    async def create_workflow(
        self, record: WorkflowRecord, *, lease: float | None = None
    ) -> tuple[WorkflowRecord, bool]:
        await checkpoint()
        held = owner_lease(record.owner, lease)
        state_json = encode_state(record.state)
        history = _history_json(record.history)
        now = datetime.now(UTC)
        with self._lock:
            self._check_open()
            existing = self._workflows.get(record.id)
            if existing is not None:
                return existing.record(record.id), False
            stored = _StoredWorkflow(
                name=record.name,
                status=record.status,
                state_json=state_json,
                version=1,
                created_at=now,
                updated_at=now,
                seq=self._next_seq(),
                history=history,
            )
            stored.hold(record.owner, held, now)
            stored.wait(record, now, self._pending(record))
            self._workflows[record.id] = stored
        return stored.record(record.id, state=record.state), True

    async def save_workflow(
        self,
        record: WorkflowRecord,
        *,
        history: Sequence[Sequence[Any]] = (),
        lease: float | None = None,
    ) -> WorkflowRecord:
        await checkpoint()
        held = owner_lease(record.owner, lease)
        state_json = encode_state(record.state)
        entries = _history_json(history)
        now = datetime.now(UTC)
        with self._lock:
            self._check_open()
            stored = self._stored(record.id)
            if stored.version != record.version:
                raise ConcurrencyConflict(
                    f"workflow {record.id!r} is at version {stored.version}, "
                    f"not {record.version}: it was saved or claimed by someone else"
                )
            stored.status = record.status
            stored.state_json = state_json
            stored.version += 1
            stored.updated_at = now
            stored.history.extend(entries)
            stored.hold(record.owner, held, now)
            if record.status not in ("RUNNING", WAITING):
                stored.cancel_requested = False
            stored.wait(record, now, self._pending(record))
            return stored.record(record.id, state=record.state)

    async def load_workflow(self, workflow_id: str) -> WorkflowRecord:
        await checkpoint()
        with self._lock:
            self._check_open()
            return self._stored(workflow_id).record(workflow_id, history=True)

    def _stored(self, workflow_id: str) -> _StoredWorkflow:
        stored = self._workflows.get(workflow_id)
        if stored is None:
            raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
        return stored

    async def list_workflows(
        self,
        *,
        status: Collection[str] | None = None,
        name: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowRecord]:
        start = None if after is None else parse_cursor(after)
        await checkpoint()
        wanted = None if status is None else set(status_tuple(status))
        with self._lock:
            self._check_open()
            found = [
                (stored.created_at, workflow_id, stored)
                for workflow_id, stored in self._workflows.items()
                if (wanted is None or stored.status in wanted)
                and (name is None or stored.name == name)
                and (start is None or (stored.created_at, workflow_id) > start)
            ]
            found.sort(key=lambda item: (item[0], item[1]))
            if limit is not None:
                found = found[: max(limit, 0)]
            return [stored.record(workflow_id) for _, workflow_id, stored in found]

    async def count_workflows(self) -> dict[tuple[str, str], int]:
        """Counted by one pass over the records, under the store's lock."""
        await checkpoint()
        with self._lock:
            self._check_open()
            return dict(
                Counter((stored.name, stored.status) for stored in self._workflows.values())
            )

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
        held = claimant_lease(owner, lease)
        most = claim_limit(limit)
        skip = frozenset(exclude)
        await checkpoint()
        now = datetime.now(UTC)
        with self._lock:
            self._check_open()
            free = sorted(
                (stored.created_at, workflow_id, stored)
                for workflow_id, stored in self._workflows.items()
                if stored.name == name and stored.free_for(owner, now, skip, workflow_id)
            )[:most]
            return [stored.claim(workflow_id, owner, held, now) for _, workflow_id, stored in free]

    async def claim_workflow(
        self, workflow_id: str, owner: str, *, lease: float
    ) -> WorkflowRecord | None:
        held = claimant_lease(owner, lease)
        await checkpoint()
        now = datetime.now(UTC)
        with self._lock:
            self._check_open()
            stored = self._stored(workflow_id)
            if not stored.free_for(owner, now, (), workflow_id, _CLAIMABLE):
                return None
            return stored.claim(workflow_id, owner, held, now)

    async def renew_leases(
        self, owner: str, workflow_ids: Collection[str], *, lease: float
    ) -> dict[str, bool]:
        held = claimant_lease(owner, lease)
        await checkpoint()
        now = datetime.now(UTC)
        kept: dict[str, bool] = {}
        with self._lock:
            self._check_open()
            for workflow_id in workflow_id_list(workflow_ids):
                stored = self._workflows.get(workflow_id)
                if stored is not None and stored.owner == owner and stored.status in _CLAIMABLE:
                    stored.hold(owner, held, now)
                    kept[workflow_id] = stored.cancel_requested
        return kept

    async def release_workflows(self, owner: str, workflow_ids: Collection[str]) -> None:
        await checkpoint()
        with self._lock:
            self._check_open()
            for workflow_id in workflow_id_list(workflow_ids):
                stored = self._workflows.get(workflow_id)
                if stored is not None and stored.owner == owner:
                    stored.hold(None, None, datetime.now(UTC))

    async def request_cancel(self, workflow_id: str) -> WorkflowRecord:
        await checkpoint()
        with self._lock:
            self._check_open()
            stored = self._stored(workflow_id)
            if stored.status in ("RUNNING", WAITING):
                stored.cancel_requested = True
                if stored.status == WAITING:
                    stored.wake_at = datetime.now(UTC)
            return stored.record(workflow_id)

    async def prune_workflows(
        self,
        older_than: datetime,
        *,
        statuses: Collection[str] = ("COMPLETED", "COMPENSATED", "FAILED"),
        name: str | None = None,
        limit: int = 10_000,
    ) -> int:
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        wanted = set(status_tuple(statuses))
        await checkpoint()
        with self._lock:
            self._check_open()
            old = sorted(
                (stored.updated_at, stored.seq, workflow_id)
                for workflow_id, stored in self._workflows.items()
                if stored.status in wanted
                and stored.updated_at < cutoff
                and (name is None or stored.name == name)
            )[:most]
            for _, _, workflow_id in old:
                del self._workflows[workflow_id]
            return len(old)

    # -- flow trace ------------------------------------------------------------

    def trace_ops(self) -> MemoryTrace:
        """The flow trace kept in this store's memory (see :mod:`flowkit.stores._trace`)."""
        from ._memory_trace import MemoryTrace

        with self._lock:
            if self._trace is None:
                self._trace = MemoryTrace(self._check_open)
            return self._trace

    # -- waits -----------------------------------------------------------------

    def wait_ops(self) -> MemoryWaits:
        """The waiting workflows and the mailbox kept in this store's memory (see
        :mod:`flowkit.stores._waits`)."""
        from ._memory_waits import MemoryWaits

        with self._lock:
            if self._waits is None:
                self._waits = MemoryWaits(self._lock, self._check_open, self._workflows)
            return self._waits

    def _pending(self, record: WorkflowRecord) -> bool:
        """Whether a message no consumer took waits for ``record`` (under the lock)."""
        if record.status != WAITING or record.wait_for is None or record.wait_key is None:
            return False
        waits = self._waits
        return waits is not None and waits.pending(record.name, record.wait_for, record.wait_key)

    # -- lifecycle -----------------------------------------------------------

    async def aclose(self) -> None:
        """Close the store at once, whoever else entered it.

        Its records are kept; entering it again reopens it.
        """
        with self._lock:
            self._users = 0
            self._open = False
        await checkpoint()

    async def __aenter__(self) -> Self:
        """Open the store (or add a user to an open one)."""
        await checkpoint()
        with self._lock:
            self._users += 1
            self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove a user; the last one out closes the store."""
        with self._lock:
            self._users = max(self._users - 1, 0)
            if self._users == 0:
                self._open = False
