"""The waits of an SQLite database: due WAITING workflows (the ``wake_at``
column of ``flowkit_workflows``) and the mailbox (the ``flowkit_mailbox``
table). See :mod:`flowkit.stores._waits` for what they are.

Every call runs on the store's writer thread; the writes join its shared
transaction (``BEGIN IMMEDIATE``, which holds the file's write lock), so a
choice and the update that follows it (claiming due workflows, taking a
message) are atomic against every other connection to the file. Times are
taken by this process's clock, the store's clock for SQLite.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from ..._errors import StoreError
from .._codec import claim_limit, claimant_lease, encode_state, prune_limit, utc
from .._waits import WAITING, Delivery, check_channel
from ._ops import _atomic, claim_matching
from ._rows import mail_from_row, timestamp, wait_from_row, workflow_from_row

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Awaitable, Callable, Collection

    from .._base import WorkflowRecord
    from .._waits import Mail
    from ._rows import MailRow, WorkflowRow

    #: ``SQLiteStore._call``: runs ``fn(conn, *args)`` on the writer thread.
    _Call = Callable[..., Awaitable[Any]]
    #: ``SQLiteStore._readable``: the records of rows, skipping (and logging) the bad ones.
    _Readable = Callable[
        [list[WorkflowRow], Callable[[WorkflowRow], WorkflowRecord]], list[WorkflowRecord]
    ]

__all__ = ["SQLiteWaits"]

#: The WAITING workflows of ``:name`` that are due at ``:now``, read in wake
#: order from the partial index on ``(name, wake_at)``.
_DUE = f"name = :name AND status = '{WAITING}' AND wake_at <= :now"

#: Not excluded, and held by nobody: a due workflow its owner holds is being
#: taken up, even by another instance of the claiming process.
_FREE = (
    "id NOT IN (SELECT value FROM json_each(:exclude)) "
    "AND (owner IS NULL OR lease_until IS NULL OR lease_until <= :now)"
)

#: The WAITING workflows of ``?`` waiting on channel ``?`` and key ``?``, found
#: through the partial index on ``(name, wait_for, wait_key)``.
_WAITING_ON = f"name = ? AND status = '{WAITING}' AND wait_for = ? AND wait_key = ?"


# -- the operations, run on the writer thread ----------------------------------------


def claim_due(
    conn: sqlite3.Connection,
    name: str,
    owner: str,
    lease: float,
    limit: int,
    exclude: list[str],
) -> list[WorkflowRow]:
    """Give ``owner`` the lease of at most ``limit`` due workflows of ``name``
    that nobody else holds, soonest first."""
    return claim_matching(
        conn,
        f"{_DUE} AND {_FREE}",
        "wake_at, id",
        name=name,
        owner=owner,
        lease=lease,
        limit=limit,
        exclude=exclude,
    )


def next_wake(conn: sqlite3.Connection, name: str) -> tuple[str, str] | None:
    """The id and wake time of the WAITING workflow of ``name`` nobody holds that
    wakes first: the first entry of the partial index past the held ones."""
    row = conn.execute(
        f"SELECT id, wake_at FROM flowkit_workflows WHERE name = ? AND status = '{WAITING}' "
        "AND wake_at IS NOT NULL AND owner IS NULL ORDER BY wake_at LIMIT 1",
        (name,),
    ).fetchone()
    return None if row is None else cast("tuple[str, str]", row)


def deliver(
    conn: sqlite3.Connection, name: str, channel: str, key: str, message_id: str, body: str
) -> tuple[bool, list[str]]:
    """Keep a message (once per id) and make the workflows waiting on its channel
    and key due now; whether it was new, and the ids of those workflows."""
    now = timestamp(datetime.now(UTC))
    woken = [
        str(row[0])
        for row in conn.execute(
            f"SELECT id FROM flowkit_workflows WHERE {_WAITING_ON}",
            (name, channel, key),
        )
    ]
    with _atomic(conn):
        stored = conn.execute(
            "INSERT INTO flowkit_mailbox (name, channel, key, message_id, body, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, channel, key, message_id) DO NOTHING",
            (name, channel, key, message_id, body, now),
        ).rowcount
        if woken:
            conn.execute(
                f"UPDATE flowkit_workflows SET wake_at = ? WHERE {_WAITING_ON}",
                (now, name, channel, key),
            )
    return stored == 1, woken


def take(
    conn: sqlite3.Connection, name: str, channel: str, key: str, consumer: str
) -> MailRow | None:
    """The message ``consumer`` took on the channel and key, or else the oldest
    one nobody took, marked taken by ``consumer``."""
    row = conn.execute(
        "SELECT seq, consumer, message_id, body, created_at FROM flowkit_mailbox "
        "WHERE name = ? AND channel = ? AND key = ? AND (consumer IS NULL OR consumer = ?) "
        "ORDER BY consumer IS NULL, seq LIMIT 1",
        (name, channel, key, consumer),
    ).fetchone()
    if row is None:
        return None
    if row[1] is None:
        conn.execute("UPDATE flowkit_mailbox SET consumer = ? WHERE seq = ?", (consumer, row[0]))
    return cast("MailRow", row[2:])


def drop(conn: sqlite3.Connection, name: str, consumer: str) -> int:
    """Delete the messages of ``name`` that ``consumer`` took."""
    return conn.execute(
        "DELETE FROM flowkit_mailbox WHERE name = ? AND consumer = ?", (name, consumer)
    ).rowcount


def prune(conn: sqlite3.Connection, cutoff: str, limit: int) -> int:
    """Delete at most ``limit`` messages delivered before ``cutoff``, oldest first."""
    return conn.execute(
        "DELETE FROM flowkit_mailbox WHERE seq IN (SELECT seq FROM flowkit_mailbox "
        "WHERE created_at < ? ORDER BY created_at, seq LIMIT ?)",
        (cutoff, limit),
    ).rowcount


# -- the store's face ----------------------------------------------------------------


class SQLiteWaits:
    """The waits of one :class:`~flowkit.stores.SQLiteStore` (a
    :class:`~flowkit.stores._waits.WaitStore`).

    Args:
        call: the store's call on its writer thread.
        readable: the store's reading of rows into records, which skips and
            logs the rows that make none.
    """

    def __init__(self, call: _Call, readable: _Readable) -> None:
        self._call = call
        self._readable = readable

    async def claim_due(
        self,
        name: str,
        owner: str,
        *,
        lease: float,
        limit: int = 100,
        exclude: Collection[str] = (),
    ) -> list[WorkflowRecord]:
        """The choice and the update are one write transaction (see the module
        documentation). A claimed record whose row cannot be read is left out
        (and logged)."""
        held = claimant_lease(owner, lease)
        most = claim_limit(limit)
        skip = [exclude] if isinstance(exclude, str) else list(exclude)
        rows: list[WorkflowRow] = await self._call(
            claim_due, name, owner, held, most, skip, write=True
        )
        return self._readable(rows, workflow_from_row)

    async def next_wake(self, name: str) -> float | None:
        """One read of the partial index on ``(name, wake_at)``. A wake time that
        cannot be read raises :class:`~flowkit.StoreError` naming its workflow."""
        soonest: tuple[str, str] | None = await self._call(next_wake, name, write=False)
        if soonest is None:
            return None
        workflow_id, wake_at = soonest
        at, _, _ = wait_from_row(workflow_id, (wake_at, None, None))
        return None if at is None else (at - datetime.now(UTC)).total_seconds()

    async def deliver(
        self, name: str, channel: str, key: str, message_id: str, body: Mapping[str, Any]
    ) -> Delivery:
        """The message is kept and its waits made due in one transaction. A body
        that is not a mapping is refused (a message is read back as a JSON object)."""
        check_channel(name, channel, key)
        if not isinstance(message_id, str) or not message_id:
            raise StoreError(f"a mailbox message id must be a non-empty string, got {message_id!r}")
        if not isinstance(body, Mapping):
            raise StoreError(f"a mailbox message body must be a mapping, not {type(body).__name__}")
        text = encode_state(body)
        stored, woken = await self._call(deliver, name, channel, key, message_id, text, write=True)
        return Delivery(stored=stored, woken=tuple(woken))

    async def take(self, name: str, channel: str, key: str, consumer: str) -> Mail | None:
        """The choice and the mark are one write transaction. A message whose row
        cannot be read raises :class:`~flowkit.StoreError` naming its id."""
        check_channel(name, channel, key)
        row: MailRow | None = await self._call(take, name, channel, key, consumer, write=True)
        return None if row is None else mail_from_row(row)

    async def drop(self, name: str, consumer: str) -> int:
        removed: int = await self._call(drop, name, consumer, write=True)
        return removed

    async def prune(self, older_than: datetime, *, limit: int = 10_000) -> int:
        """One ``DELETE`` removes at most ``limit`` messages, read through the
        index on their delivery time."""
        cutoff = timestamp(utc(older_than, "older_than"))
        removed: int = await self._call(prune, cutoff, prune_limit(limit), write=True)
        return removed
