"""What a PostgreSQL schema holds for flowkit, and bringing it up to date.

Every table lives in the store's own PostgreSQL schema (``flowkit`` by
default). The schema version is kept in its ``flowkit_schema_version`` table,
one row per applied migration. Opening a store applies the migrations the
database lacks, in order, in one transaction that first takes an advisory lock
named after the schema: stores opened at once, by any number of processes, wait
for each other instead of racing to create the tables.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._errors import StoreError

if TYPE_CHECKING:
    from ._pool import Connection

__all__ = ["SCHEMA_VERSION", "Tables", "migrate", "schema_version"]

#: What a schema name may be: a plain SQL identifier, so that it is quoted safely.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

#: The statements that bring the schema from version ``n`` to ``n + 1`` are
#: ``_MIGRATIONS[n]``, with ``{s}`` standing for the quoted schema name.
#: Released migrations are never edited, only appended to.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # ``claimed_until`` is when a claim's lease runs out, NULL once the
        # message is done; ``added_at`` is when the entry got its current state.
        """CREATE TABLE {s}.flowkit_inbox (
            consumer text NOT NULL,
            message_id text NOT NULL,
            added_at timestamptz NOT NULL,
            claimed_until timestamptz,
            PRIMARY KEY (consumer, message_id)
        )""",
        "CREATE INDEX flowkit_inbox_added_at ON {s}.flowkit_inbox (added_at)",
        # ``seq`` orders letters that failed at the same instant as they were added.
        """CREATE TABLE {s}.flowkit_dead_letters (
            seq bigint GENERATED ALWAYS AS IDENTITY,
            id text NOT NULL PRIMARY KEY,
            consumer text NOT NULL,
            topic text NOT NULL,
            body bytea NOT NULL,
            headers jsonb NOT NULL,
            error_type text NOT NULL,
            error text NOT NULL,
            attempts integer NOT NULL,
            failed_at timestamptz NOT NULL,
            message_id text
        )""",
        "CREATE INDEX flowkit_dead_letters_failed_at ON {s}.flowkit_dead_letters (failed_at, seq)",
        "CREATE INDEX flowkit_dead_letters_consumer "
        "ON {s}.flowkit_dead_letters (consumer, failed_at, seq)",
        "CREATE INDEX flowkit_dead_letters_topic "
        "ON {s}.flowkit_dead_letters (topic, failed_at, seq)",
        """CREATE TABLE {s}.flowkit_workflows (
            seq bigint GENERATED ALWAYS AS IDENTITY,
            id text NOT NULL PRIMARY KEY,
            name text NOT NULL,
            status text NOT NULL,
            version bigint NOT NULL,
            state jsonb NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL
        )""",
        "CREATE INDEX flowkit_workflows_created_at ON {s}.flowkit_workflows (created_at, seq)",
        "CREATE INDEX flowkit_workflows_status ON {s}.flowkit_workflows (status, created_at, seq)",
        "CREATE INDEX flowkit_workflows_name ON {s}.flowkit_workflows (name, created_at, seq)",
    ),
    (
        # prune_workflows takes the least recently updated records of some statuses.
        "CREATE INDEX flowkit_workflows_status_updated_at "
        "ON {s}.flowkit_workflows (status, updated_at, seq)",
    ),
    (
        # Ownership: the process holding a workflow's lease, until when, and a
        # cancel request for it from another process.
        "ALTER TABLE {s}.flowkit_workflows ADD COLUMN owner text",
        "ALTER TABLE {s}.flowkit_workflows ADD COLUMN lease_until timestamptz",
        "ALTER TABLE {s}.flowkit_workflows "
        "ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false",
        "CREATE INDEX flowkit_workflows_claim ON {s}.flowkit_workflows (name, status, lease_until)",
        # Listing pages by (created_at, id).
        "CREATE INDEX flowkit_workflows_created_id ON {s}.flowkit_workflows (created_at, id)",
        # History is appended, not rewritten: one row per entry, moved out of the state.
        """CREATE TABLE {s}.flowkit_history (
            workflow_id text NOT NULL,
            seq integer NOT NULL,
            entry jsonb NOT NULL,
            PRIMARY KEY (workflow_id, seq)
        )""",
        "INSERT INTO {s}.flowkit_history (workflow_id, seq, entry) "
        "SELECT w.id, h.ordinality - 1, h.value FROM {s}.flowkit_workflows AS w, "
        "jsonb_array_elements(w.state -> 'history') WITH ORDINALITY AS h "
        "WHERE jsonb_typeof(w.state -> 'history') = 'array'",
        "UPDATE {s}.flowkit_workflows SET state = state - 'history' WHERE state ? 'history'",
        # The transactional outbox: envelopes written in the user's transaction,
        # published by a relay, deleted once published.
        """CREATE TABLE {s}.flowkit_outbox (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            topic text NOT NULL,
            key text,
            body bytea NOT NULL,
            headers jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        # Named leases (the outbox relay's): one holder at a time.
        """CREATE TABLE {s}.flowkit_leases (
            name text NOT NULL PRIMARY KEY,
            owner text NOT NULL,
            lease_until timestamptz NOT NULL
        )""",
    ),
    (
        # The flow trace: one row per thing that happened to a flow (a publish, a
        # handling, a step), by correlation id.
        """CREATE TABLE {s}.flowkit_trace (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at timestamptz NOT NULL,
            correlation_id text NOT NULL,
            kind text NOT NULL,
            outcome text NOT NULL,
            message_id text,
            causation_id text,
            message_type text,
            service text,
            handler text,
            workflow text,
            workflow_id text,
            step text,
            attempt integer,
            duration double precision,
            error_type text,
            error text,
            key text,
            detail text
        )""",
        "CREATE INDEX flowkit_trace_flow ON {s}.flowkit_trace (correlation_id, seq)",
        "CREATE INDEX flowkit_trace_workflow ON {s}.flowkit_trace (workflow_id) "
        "WHERE workflow_id IS NOT NULL",
        "CREATE INDEX flowkit_trace_key ON {s}.flowkit_trace (key) WHERE key IS NOT NULL",
        "CREATE INDEX flowkit_trace_at ON {s}.flowkit_trace (at)",
        # Expectations look for the publishes of one type in a time window.
        "CREATE INDEX flowkit_trace_published ON {s}.flowkit_trace (message_type, at) "
        "WHERE kind = 'publish'",
        # A flow is reported stalled once per expectation, whoever reports it.
        "CREATE UNIQUE INDEX flowkit_trace_stalled "
        "ON {s}.flowkit_trace (correlation_id, detail) WHERE kind = 'stalled'",
    ),
    (
        # Pages of a listing filtered by status, by name, or by both, read in
        # the listing's own order (created_at, id) straight from an index, with
        # no sort; the last one also holds what count_workflows groups by.
        "DROP INDEX {s}.flowkit_workflows_status",
        "DROP INDEX {s}.flowkit_workflows_name",
        "CREATE INDEX flowkit_workflows_status_page "
        "ON {s}.flowkit_workflows (status, created_at, id)",
        "CREATE INDEX flowkit_workflows_name_page ON {s}.flowkit_workflows (name, created_at, id)",
        "CREATE INDEX flowkit_workflows_name_status_page "
        "ON {s}.flowkit_workflows (name, status, created_at, id)",
    ),
    (
        # Waiting workflows: when one is due, and the mailbox channel and key it
        # waits on (all NULL unless its status is WAITING). The due ones of a
        # name are found, soonest first, and the waits on a channel and key
        # are woken, through indexes holding the WAITING rows alone.
        "ALTER TABLE {s}.flowkit_workflows ADD COLUMN wake_at timestamptz",
        "ALTER TABLE {s}.flowkit_workflows ADD COLUMN wait_for text",
        "ALTER TABLE {s}.flowkit_workflows ADD COLUMN wait_key text",
        "CREATE INDEX flowkit_workflows_wake ON {s}.flowkit_workflows (name, wake_at) "
        "WHERE status = 'WAITING'",
        "CREATE INDEX flowkit_workflows_wait ON {s}.flowkit_workflows (name, wait_for, wait_key) "
        "WHERE status = 'WAITING'",
        # The mailbox: each message delivered to a (name, channel, key), kept
        # once per message id until the consumer that took it drops it, or it
        # is pruned by age. ``seq`` orders the messages of a key.
        """CREATE TABLE {s}.flowkit_mailbox (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text NOT NULL,
            channel text NOT NULL,
            key text NOT NULL,
            message_id text NOT NULL,
            body jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            consumer text,
            UNIQUE (name, channel, key, message_id)
        )""",
        "CREATE INDEX flowkit_mailbox_take ON {s}.flowkit_mailbox (name, channel, key, seq)",
        "CREATE INDEX flowkit_mailbox_created_at ON {s}.flowkit_mailbox (created_at, seq)",
        "CREATE INDEX flowkit_mailbox_consumer ON {s}.flowkit_mailbox (name, consumer) "
        "WHERE consumer IS NOT NULL",
    ),
)

#: The schema version this code writes; a database with a newer one is refused.
SCHEMA_VERSION = len(_MIGRATIONS)


@dataclass(frozen=True, slots=True)
class Tables:
    """The qualified, quoted names of a schema's tables.

    Attributes:
        schema: the schema's name, as given.
        quoted: the schema's name, quoted for SQL.
    """

    schema: str
    quoted: str

    @classmethod
    def of(cls, schema: str) -> Tables:
        """The tables of ``schema``.

        Raises:
            ValueError: if ``schema`` is not a plain SQL identifier.
        """
        if not isinstance(schema, str) or _IDENTIFIER.fullmatch(schema) is None:
            raise ValueError(
                f"a PostgreSQL schema name is letters, digits and underscores "
                f"(at most 63, not starting with a digit), not {schema!r}"
            )
        return cls(schema, f'"{schema}"')

    @property
    def inbox(self) -> str:
        """The inbox table."""
        return f"{self.quoted}.flowkit_inbox"

    @property
    def dead_letters(self) -> str:
        """The dead letter table."""
        return f"{self.quoted}.flowkit_dead_letters"

    @property
    def workflows(self) -> str:
        """The workflow table."""
        return f"{self.quoted}.flowkit_workflows"

    @property
    def history(self) -> str:
        """The workflow history table."""
        return f"{self.quoted}.flowkit_history"

    @property
    def outbox(self) -> str:
        """The outbox table."""
        return f"{self.quoted}.flowkit_outbox"

    @property
    def leases(self) -> str:
        """The named lease table."""
        return f"{self.quoted}.flowkit_leases"

    @property
    def mailbox(self) -> str:
        """The mailbox table of the waits."""
        return f"{self.quoted}.flowkit_mailbox"

    @property
    def versions(self) -> str:
        """The schema version table."""
        return f"{self.quoted}.flowkit_schema_version"

    @property
    def outbox_channel(self) -> str:
        """The notification channel of the outbox: a row was added."""
        return self._channel("outbox")

    @property
    def waits_channel(self) -> str:
        """The notification channel of the waits: a waiting workflow was made due."""
        return self._channel("waits")

    def _channel(self, purpose: str) -> str:
        """``flowkit_<purpose>_<schema>``, or a hash of the schema's name in place of
        it where that would pass PostgreSQL's 63 bytes."""
        channel = f"flowkit_{purpose}_{self.schema}"
        if len(channel) > 63:
            digest = hashlib.blake2b(self.schema.encode(), digest_size=16).hexdigest()
            channel = f"flowkit_{purpose}_{digest}"
        return channel


async def schema_version(conn: Connection, tables: Tables) -> int:
    """The flowkit schema version of ``tables`` (0 when there is none)."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", tables.versions)
    if not exists:
        return 0
    version = await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {tables.versions}")
    return int(version)


def _check_not_newer(version: int, tables: Tables) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the PostgreSQL schema {tables.schema!r} has flowkit schema version {version}, "
            f"newer than version {SCHEMA_VERSION} that this flowkit supports; upgrade flowkit"
        )


async def migrate(conn: Connection, tables: Tables) -> int:
    """Create the tables, or apply the migrations they lack, idempotently.

    The work is one transaction holding an advisory lock named after the
    schema, so concurrent openers apply each migration once.

    Returns:
        The schema version now in place.

    Raises:
        StoreError: if the schema has a newer version than this code.
        asyncpg.PostgresError: if PostgreSQL fails.
    """
    version = await schema_version(conn, tables)
    _check_not_newer(version, tables)
    if version == SCHEMA_VERSION:
        return version
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", f"flowkit-schema:{tables.schema}"
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {tables.quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {tables.versions} ("
            "version integer NOT NULL PRIMARY KEY, applied_at timestamptz NOT NULL)"
        )
        version = await schema_version(conn, tables)  # again, now that we hold the lock
        _check_not_newer(version, tables)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target - 1]:
                await conn.execute(statement.format(s=tables.quoted))
            await conn.execute(
                f"INSERT INTO {tables.versions} (version, applied_at) VALUES ($1, now())", target
            )
    return SCHEMA_VERSION
