"""The flow trace of a :class:`~flowkit.stores.MemoryStore`: entries in a dict, by flow."""

from __future__ import annotations

import threading
from itertools import islice
from typing import TYPE_CHECKING, Final, cast

from anyio.lowlevel import checkpoint

from .._errors import StoreError
from ._trace import TRACE_COLUMNS, aware, check_report, entry_of, positive, stalled_window

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from datetime import datetime

    from ._trace import TraceEntry, TraceRow

__all__ = ["MemoryTrace"]

# Where a row holds the values the trace is searched by.
_AT: Final = 0
_CORRELATION: Final = 1
_KIND: Final = 2
_MESSAGE_TYPE: Final = 6
_WORKFLOW_ID: Final = 10
_KEY: Final = 16
_DETAIL: Final = 17
#: Entries come about in time order (one process records them, a batch at a
#: time): a prune stops at the first entry this much newer than its cutoff.
_SLACK = 60.0


class _Rows:
    """The kept rows by seq, a list per column (read as :data:`TraceRow` tuples).

    A tuple per entry kept alive counts, for the garbage collector, as one more
    object allocated and never freed, and runs its collections (the full ones
    included) more often the more entries are kept. Kept in columns, the
    recorder's tuples are freed once stored, and what a million entries add to
    the collector's count is the lists' few objects.

    Seqs are consecutive from ``_first``; a removed row is marked in ``_alive``
    and its values let go, the removed rows at the front are trimmed.
    """

    __slots__ = ("_alive", "_columns", "_first", "_live")

    def __init__(self) -> None:
        self._first = 1
        self._columns: tuple[list[object], ...] = tuple([] for _ in TRACE_COLUMNS)
        self._alive = bytearray()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def __iter__(self) -> Iterator[int]:
        """The seqs kept, oldest first."""
        first = self._first
        return (first + i for i, alive in enumerate(self._alive) if alive)

    def extend(self, first: int, rows: Sequence[TraceRow]) -> None:
        """Keep ``rows`` as the seqs from ``first`` on (the seqs that follow the last)."""
        if not rows:
            return
        if first != self._first + len(self._alive):
            raise ValueError(f"trace seq {first} does not follow the kept rows")
        for column, values in zip(self._columns, zip(*rows, strict=True), strict=True):
            column.extend(values)
        self._alive.extend(b"\x01" * len(rows))
        self._live += len(rows)

    def _at(self, seq: int) -> int:
        i = seq - self._first
        return i if 0 <= i < len(self._alive) and self._alive[i] else -1

    def get(self, seq: int) -> TraceRow | None:
        i = self._at(seq)
        if i < 0:
            return None
        return cast("TraceRow", tuple(column[i] for column in self._columns))

    def __getitem__(self, seq: int) -> TraceRow:
        row = self.get(seq)
        if row is None:
            raise KeyError(seq)
        return row

    def value(self, seq: int, column: int) -> object:
        """One value of a kept row."""
        i = self._at(seq)
        if i < 0:
            raise KeyError(seq)
        return self._columns[column][i]

    def pop(self, seq: int) -> TraceRow:
        """Remove a row (trim the front with :meth:`trim`)."""
        row = self[seq]
        i = seq - self._first
        self._alive[i] = 0
        for column in self._columns:
            column[i] = None
        self._live -= 1
        return row

    def trim(self) -> None:
        """Let go of the removed rows at the front."""
        alive = self._alive
        gone = alive.find(1)
        if gone < 0:
            gone = len(alive)
        if gone:
            del alive[:gone]
            for column in self._columns:
                del column[:gone]
            self._first += gone


class MemoryTrace:
    """The trace kept in a MemoryStore's memory, safe to share between tasks and threads.

    Entries are kept in the order they were added. They are indexed (each
    flow, workflow, business key and published type has the list of what it
    names, so that every lookup is a dictionary read) when the trace is next
    read, pruned or capped, not as they come: adding a batch costs little
    more than storing it. What is kept is bounded by the recorder's retention
    and ``max_entries`` (it prunes and caps the store).
    """

    def __init__(self, check_open: Callable[[], None]) -> None:
        self._check_open = check_open
        self._lock = threading.Lock()
        self._seq = 0
        self._rows = _Rows()
        self._flows: dict[str, list[int]] = {}
        self._workflows: dict[str, dict[str, int]] = {}  # workflow id -> flows, last seq
        self._keys: dict[str, dict[str, int]] = {}  # business key -> flows, last seq
        self._published: dict[str, list[int]] = {}  # message type -> its publish entries
        self._unindexed: list[range] = []  # the seqs added since the indexes were made

    def __len__(self) -> int:
        return len(self._rows)

    async def add(self, rows: Sequence[TraceRow]) -> None:
        """Append entries (indexed when the trace is next read)."""
        self._check_open()
        width = len(TRACE_COLUMNS)
        if rows and set(map(len, rows)) != {width}:
            raise StoreError(f"a trace row has {width} values")
        with self._lock:
            self._append(rows)
        await checkpoint()

    def _append(self, rows: Sequence[TraceRow]) -> None:
        seqs = range(self._seq + 1, self._seq + 1 + len(rows))
        self._seq += len(rows)
        self._rows.extend(seqs.start, rows)
        self._unindexed.append(seqs)

    def _index(self) -> None:
        """Index the entries added since the last time (under the lock)."""
        for seqs in self._unindexed:
            for seq in seqs:
                row = self._rows.get(seq)
                if row is not None:  # not pruned meanwhile
                    self._index_row(seq, row)
        self._unindexed.clear()

    def _index_row(self, seq: int, row: TraceRow) -> None:
        flow = row[_CORRELATION]
        self._flows.setdefault(flow, []).append(seq)
        workflow_id = row[_WORKFLOW_ID]
        if workflow_id is not None:
            self._workflows.setdefault(workflow_id, {})[flow] = seq
        key = row[_KEY]
        if key is not None:
            self._keys.setdefault(key, {})[flow] = seq
        if row[_KIND] == "publish" and row[_MESSAGE_TYPE] is not None:
            self._published.setdefault(row[_MESSAGE_TYPE], []).append(seq)

    async def read(
        self, correlation_id: str, *, limit: int = 1000, after: int | None = None
    ) -> list[TraceEntry]:
        """A flow's entries in the order they were added."""
        self._check_open()
        most = positive(limit, "limit")
        with self._lock:
            self._index()
            seqs = self._flows.get(correlation_id, [])
            start = 0
            if after is not None:
                start = next((i for i, seq in enumerate(seqs) if seq > after), len(seqs))
            picked = [(seq, self._rows[seq]) for seq in seqs[start : start + most]]
        await checkpoint()
        return [entry_of(seq, row) for seq, row in picked]

    async def count(self, correlation_id: str) -> int:
        """How many entries a flow has."""
        self._check_open()
        with self._lock:
            self._index()
            counted = len(self._flows.get(correlation_id, ()))
        await checkpoint()
        return counted

    async def find(self, value: str, *, limit: int = 20) -> list[str]:
        """The flows ``value`` names, as a correlation id, a workflow id or a business key."""
        self._check_open()
        most = positive(limit, "limit")
        with self._lock:
            self._index()
            found = [value] if value in self._flows else []
            for named in (self._workflows.get(value, {}), self._keys.get(value, {})):
                for flow, _ in sorted(named.items(), key=lambda item: -item[1]):
                    if flow not in found:
                        found.append(flow)
        await checkpoint()
        return found[:most]

    async def stalled(
        self,
        first: str,
        expected: Sequence[str],
        *,
        within: float,
        since: datetime,
        until: datetime,
        limit: int = 100,
    ) -> list[TraceEntry]:
        """Flows in which ``first`` was published but nothing of ``expected`` followed in time."""
        self._check_open()
        types, start, end, most = stalled_window(expected, since, until, limit)
        low, high = start.timestamp(), end.timestamp()
        wanted = frozenset(types)
        with self._lock:
            self._index()
            firsts: dict[str, tuple[int, TraceRow]] = {}
            for seq in self._published.get(first, ()):
                row = self._rows[seq]
                known = firsts.get(row[_CORRELATION])
                if known is None or row[_AT] < known[1][_AT]:
                    firsts[row[_CORRELATION]] = (seq, row)
            found = []
            for flow, (seq, row) in firsts.items():
                if not low <= row[_AT] < high:
                    continue
                deadline = row[_AT] + within
                if not any(
                    self._rows.value(other, _MESSAGE_TYPE) in wanted
                    and cast("float", self._rows.value(other, _AT)) <= deadline
                    for other in self._flows[flow]
                ):
                    found.append((row[_AT], seq, row))
        await checkpoint()
        found.sort()
        return [entry_of(seq, row) for _, seq, row in found[:most]]

    async def report(self, name: str, correlation_id: str, row: TraceRow) -> bool:
        """Add a ``stalled`` entry unless the flow has one for ``name``."""
        self._check_open()
        check_report(name, correlation_id, row)
        with self._lock:
            self._index()
            for seq in self._flows.get(correlation_id, ()):
                kept = self._rows[seq]
                if kept[_KIND] == "stalled" and kept[_DETAIL] == name:
                    return False
            self._append([row])
            self._index()
        await checkpoint()
        return True

    async def prune(self, older_than: datetime, *, limit: int = 10_000) -> int:
        """Remove entries recorded before ``older_than``, the oldest first."""
        self._check_open()
        most = positive(limit, "limit")
        cutoff = aware(older_than, "older_than").timestamp()
        with self._lock:
            self._index()
            old: list[int] = []
            for seq in self._rows:
                at = cast("float", self._rows.value(seq, _AT))
                if at < cutoff:
                    old.append(seq)
                    if len(old) >= most:
                        break
                elif at > cutoff + _SLACK:
                    break  # entries are added about in time order: the rest is newer
            self._remove(old)
        await checkpoint()
        return len(old)

    async def cap(self, max_entries: int, *, limit: int = 10_000) -> int:
        """Remove the oldest entries beyond the newest ``max_entries``."""
        self._check_open()
        most = positive(limit, "limit")
        keep = positive(max_entries, "max_entries")
        with self._lock:
            self._index()
            extra = min(len(self._rows) - keep, most)
            old = list(islice(self._rows, extra)) if extra > 0 else []
            self._remove(old)
        await checkpoint()
        return len(old)

    def _remove(self, seqs: Sequence[int]) -> None:
        """Forget the entries of ``seqs`` and, with their last entry, what names their flows."""
        gone = set(seqs)
        removed = [self._rows.pop(seq) for seq in seqs]
        self._rows.trim()
        for flow in {row[_CORRELATION] for row in removed}:
            left = [seq for seq in self._flows[flow] if seq not in gone]
            if left:
                self._flows[flow] = left
            else:
                del self._flows[flow]
        names = (
            (self._workflows, {row[_WORKFLOW_ID] for row in removed}),
            (self._keys, {row[_KEY] for row in removed}),
        )
        for index, named in names:
            for name in named:
                if name is None:
                    continue
                flows = index.get(name, {})
                for flow in [f for f in flows if f not in self._flows]:
                    del flows[flow]
                if not flows:
                    index.pop(name, None)
        for message_type in {row[_MESSAGE_TYPE] for row in removed if row[_KIND] == "publish"}:
            if message_type is None:
                continue
            left = [seq for seq in self._published.get(message_type, ()) if seq not in gone]
            if left:
                self._published[message_type] = left
            else:
                self._published.pop(message_type, None)
