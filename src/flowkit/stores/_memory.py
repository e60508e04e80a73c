"""A state store kept in process memory, for tests and single-process tools.

Nothing survives the process, but everything survives closing and reopening
the same :class:`MemoryStore` instance, so a test can stop a bus or an
orchestrator and start another one on the same store to simulate a restart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from anyio.lowlevel import checkpoint

from .._errors import ConcurrencyConflict, NotFound, StoreError, WorkflowNotFound
from ._base import DeadLetter, WorkflowRecord
from ._codec import decode_state, encode_state, utc

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from types import TracebackType

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _StoredWorkflow:
    name: str
    status: str
    state_json: str
    version: int
    created_at: datetime
    updated_at: datetime
    seq: int

    def record(self, workflow_id: str, state: Mapping[str, Any] | None = None) -> WorkflowRecord:
        """The record, with ``state`` when the caller just wrote it (saves a decode)."""
        return WorkflowRecord(
            id=workflow_id,
            name=self.name,
            status=self.status,
            state=decode_state(self.state_json) if state is None else state,
            version=self.version,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


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
    """

    def __init__(self) -> None:
        """Create an empty store (closed until entered with ``async with``)."""
        self._lock = threading.Lock()
        self._users = 0
        self._open = False
        self._seq = 0
        self._inbox: dict[tuple[str, str], datetime] = {}
        self._letters: dict[str, tuple[int, DeadLetter]] = {}
        self._workflows: dict[str, _StoredWorkflow] = {}

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

    async def inbox_add(self, consumer: str, message_id: str) -> bool:
        """Record that ``consumer`` handled ``message_id``.

        Args:
            consumer: the consumer group (``service:handler``).
            message_id: the handled message's id.

        Returns:
            True if the pair was new, False if it was already recorded.

        Raises:
            StoreError: if the store is not open.
        """
        await checkpoint()
        with self._lock:
            self._check_open()
            key = (consumer, message_id)
            if key in self._inbox:
                return False
            self._inbox[key] = datetime.now(UTC)
            return True

    async def inbox_contains(self, consumer: str, message_id: str) -> bool:
        """Whether ``consumer`` has already handled ``message_id``.

        Args:
            consumer: the consumer group (``service:handler``).
            message_id: the message's id.

        Returns:
            True if :meth:`inbox_add` recorded the pair.

        Raises:
            StoreError: if the store is not open.
        """
        await checkpoint()
        with self._lock:
            self._check_open()
            return (consumer, message_id) in self._inbox

    async def inbox_prune(self, older_than: datetime) -> int:
        """Forget the inbox entries recorded before ``older_than``.

        Args:
            older_than: a timezone-aware time.

        Returns:
            How many entries were removed.

        Raises:
            StoreError: if the store is not open or ``older_than`` is naive.
        """
        cutoff = utc(older_than, "older_than")
        await checkpoint()
        with self._lock:
            self._check_open()
            old = [key for key, added in self._inbox.items() if added < cutoff]
            for key in old:
                del self._inbox[key]
            return len(old)

    # -- dead letters --------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a dead letter.

        Adding a letter whose id is already kept leaves the kept one unchanged,
        so a retried add is harmless.

        Args:
            letter: the letter to keep.

        Raises:
            StoreError: if the store is not open or ``letter.failed_at`` is naive.
        """
        await checkpoint()
        stored = _copy_letter(letter, utc(letter.failed_at, "DeadLetter.failed_at"))
        with self._lock:
            self._check_open()
            if stored.id not in self._letters:
                self._letters[stored.id] = (self._next_seq(), stored)

    async def list_dead_letters(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, oldest (by ``failed_at``) first.

        Args:
            consumer: only the letters of this consumer.
            topic: only the letters from this topic.
            limit: at most this many letters.

        Returns:
            The matching letters.

        Raises:
            StoreError: if the store is not open.
        """
        await checkpoint()
        with self._lock:
            self._check_open()
            found = [
                (letter.failed_at, seq, letter)
                for seq, letter in self._letters.values()
                if (consumer is None or letter.consumer == consumer)
                and (topic is None or letter.topic == topic)
            ]
        found.sort(key=lambda item: (item[0], item[1]))
        return [_copy_letter(letter, letter.failed_at) for _, _, letter in found[: max(limit, 0)]]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        """One dead letter by id.

        Args:
            letter_id: the letter's id.

        Returns:
            The letter.

        Raises:
            NotFound: if there is none with that id.
            StoreError: if the store is not open.
        """
        await checkpoint()
        with self._lock:
            self._check_open()
            entry = self._letters.get(letter_id)
        if entry is None:
            raise NotFound(f"no dead letter with id {letter_id!r}")
        return _copy_letter(entry[1], entry[1].failed_at)

    async def delete_dead_letter(self, letter_id: str) -> None:
        """Remove a dead letter (after a replay).

        Args:
            letter_id: the letter's id.

        Raises:
            NotFound: if there is none with that id.
            StoreError: if the store is not open.
        """
        await checkpoint()
        with self._lock:
            self._check_open()
            if self._letters.pop(letter_id, None) is None:
                raise NotFound(f"no dead letter with id {letter_id!r}")

    # -- workflows -----------------------------------------------------------

    async def create_workflow(self, record: WorkflowRecord) -> tuple[WorkflowRecord, bool]:
        """Insert a new workflow record with version 1, unless the id exists.

        The store sets ``created_at`` and ``updated_at``; the record's own
        version and timestamps are ignored.

        Args:
            record: the new workflow's id, name, status and state.

        Returns:
            ``(stored, created)``: the new record and True, or the record that
            already had this id and False (it is left unchanged).

        Raises:
            StoreError: if the store is not open or the state is not JSON-serializable.
        """
        await checkpoint()
        state_json = encode_state(record.state)
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
            )
            self._workflows[record.id] = stored
        return stored.record(record.id, state=record.state), True

    async def save_workflow(self, record: WorkflowRecord) -> WorkflowRecord:
        """Write a changed record; ``record.version`` is the version it was read at.

        The status and state are written; the name and ``created_at`` stay as
        they were created.

        Args:
            record: the changed record.

        Returns:
            The stored record, its version incremented.

        Raises:
            ConcurrencyConflict: if the stored version is not ``record.version``.
            WorkflowNotFound: if no record has this id.
            StoreError: if the store is not open or the state is not JSON-serializable.
        """
        await checkpoint()
        state_json = encode_state(record.state)
        now = datetime.now(UTC)
        with self._lock:
            self._check_open()
            stored = self._workflows.get(record.id)
            if stored is None:
                raise WorkflowNotFound(f"no workflow with id {record.id!r}")
            if stored.version != record.version:
                raise ConcurrencyConflict(
                    f"workflow {record.id!r} is at version {stored.version}, "
                    f"not {record.version}: it was saved by someone else"
                )
            stored.status = record.status
            stored.state_json = state_json
            stored.version += 1
            stored.updated_at = now
            return stored.record(record.id, state=record.state)

    async def load_workflow(self, workflow_id: str) -> WorkflowRecord:
        """One workflow record.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The stored record.

        Raises:
            WorkflowNotFound: if no record has this id.
            StoreError: if the store is not open.
        """
        await checkpoint()
        with self._lock:
            self._check_open()
            stored = self._workflows.get(workflow_id)
            if stored is None:
                raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
            return stored.record(workflow_id)

    async def list_workflows(
        self,
        *,
        status: Collection[str] | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[WorkflowRecord]:
        """Workflow records, oldest (by ``created_at``) first.

        Args:
            status: only records in one of these statuses (a single string is
                taken as one status).
            name: only records of this orchestrator.
            limit: at most this many records (all when None).

        Returns:
            The matching records.

        Raises:
            StoreError: if the store is not open.
        """
        await checkpoint()
        wanted = None if status is None else {status} if isinstance(status, str) else set(status)
        with self._lock:
            self._check_open()
            found = [
                (stored.created_at, stored.seq, workflow_id, stored)
                for workflow_id, stored in self._workflows.items()
                if (wanted is None or stored.status in wanted)
                and (name is None or stored.name == name)
            ]
            found.sort(key=lambda item: (item[0], item[1]))
            if limit is not None:
                found = found[: max(limit, 0)]
            return [stored.record(workflow_id) for _, _, workflow_id, stored in found]

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
