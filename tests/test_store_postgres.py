"""PostgresStore against a real PostgreSQL server (``FLOWKIT_POSTGRES_URL``).

asyncpg is asyncio-only, so these tests run on asyncio alone; one test checks
that trio is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
import trio

from flowkit import MissingDependency
from flowkit._errors import ConcurrencyConflict, StoreError
from flowkit.stores import Claim, DeadLetter, StateStore, WorkflowRecord, from_url
from flowkit.stores._postgres import SCHEMA_VERSION, PostgresStore
from flowkit.testing._store_suite import STORE_CHECKS, check_store

from .brokers import drop_schema
from .brokers import postgres_url as postgres_url
from .test_stores import check_prune_defaults, check_two_processes_claim_each_pair_once

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

_NOW = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """asyncpg runs on asyncio only."""
    return str(request.param)


@pytest.fixture
async def schema(postgres_url: str) -> AsyncIterator[str]:
    """A schema of its own for one test, dropped afterwards."""
    name = f"flowkit_test_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(postgres_url, name)


async def fetch(url: str, query: str, *args: Any) -> list[Any]:
    """The rows of ``query``, run on a connection of its own."""
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@pytest.mark.parametrize("name", sorted(STORE_CHECKS))
async def test_conformance(name: str, postgres_url: str, schema: str) -> None:
    await STORE_CHECKS[name](lambda: PostgresStore(postgres_url, schema=schema))


async def test_check_store_on_one_shared_schema(postgres_url: str, schema: str) -> None:
    # The checks must not expect an empty store: run them all against one schema.
    await check_store(lambda: PostgresStore(postgres_url, schema=schema, max_size=4))


def test_exported_lazily_and_opened_from_urls() -> None:
    import flowkit.stores

    assert flowkit.stores.PostgresStore is PostgresStore
    assert "PostgresStore" in flowkit.stores.__all__
    for scheme in ("postgresql", "postgres"):
        store = from_url(f"{scheme}://postgres@db.example:5432/app", schema="other")
        assert isinstance(store, PostgresStore)
        assert isinstance(store, StateStore)
        assert store.schema == "other"


async def test_the_url_names_the_schema(postgres_url: str, schema: str) -> None:
    joiner = "&" if "?" in postgres_url else "?"
    store = from_url(f"{postgres_url}{joiner}schema={schema}&application_name=flowkit-test")
    assert isinstance(store, PostgresStore) and store.schema == schema
    assert "?schema=" not in repr(store) and "&schema=" not in repr(store)
    async with store:
        await store.create_workflow(WorkflowRecord(id="w", name="n", status="RUNNING", state={}))
    async with PostgresStore(postgres_url, schema=schema) as same:
        assert (await same.load_workflow("w")).status == "RUNNING"
    assert from_url(f"{postgres_url}{joiner}schema=a", schema="b").schema == "b"  # type: ignore[attr-defined]


def test_import_flowkit_does_not_import_asyncpg() -> None:
    code = "import sys, flowkit, flowkit.stores; print('asyncpg' in sys.modules)"
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_a_missing_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "asyncpg" or n.startswith("asyncpg.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    for name in [n for n in sys.modules if n.startswith("flowkit.stores._postgres")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependency, match=r"pip install 'flowkit\[postgres\]'"):
        from_url("postgresql://postgres@127.0.0.1/postgres")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"schema": "bad-name"}, "schema name"),
        ({"schema": 'x"; DROP TABLE y; --'}, "schema name"),
        ({"schema": "1st"}, "schema name"),
        ({"min_size": -1}, "min_size"),
        ({"max_size": 0}, "pool sizes"),
        ({"min_size": 5, "max_size": 2}, "pool sizes"),
    ],
)
def test_arguments_are_checked(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PostgresStore("postgresql://postgres@127.0.0.1/postgres", **options)


def test_trio_is_refused_clearly() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/postgres")

    async def main() -> None:
        with pytest.raises(StoreError, match=r"asyncio only.*trio"):
            async with store:
                pass
        with pytest.raises(StoreError, match=r"asyncio only.*trio"):
            await store.inbox_claim("c", "m", lease=60)

    trio.run(main)


async def test_the_password_never_shows(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flowkit")
    secret = "s3cret-Pa55word"
    host_port = postgres_url.split("@", 1)[1].split("/", 1)[0]
    # A server that accepts the connection (the test server trusts every login),
    # then a database that does not exist, then nothing listening at all.
    urls = [
        f"postgresql://postgres:{secret}@{host_port}/postgres",
        f"postgresql://postgres:{secret}@{host_port}/flowkit_no_such_database",
        f"postgresql://postgres:{secret}@127.0.0.1:1/postgres",
    ]
    shown: list[str] = []
    schema = f"flowkit_test_{uuid.uuid4().hex[:12]}"
    try:
        async with PostgresStore(urls[0], schema=schema, max_size=2) as store:
            shown.append(repr(store))
            await store.inbox_complete("c", "m")
        await store.inbox_complete("c", "m")
    except StoreError as exc:
        shown.extend((str(exc), repr(exc)))
    finally:
        await drop_schema(postgres_url, schema)
    for url in urls[1:]:
        with pytest.raises(StoreError, match="cannot connect") as caught:
            async with PostgresStore(url, timeout=5):
                pass
        error: BaseException | None = caught.value
        while error is not None:  # the whole chain
            shown.extend((str(error), repr(error)))
            error = error.__cause__ or error.__context__
    shown.extend(record.getMessage() for record in caplog.records)
    assert shown[0].startswith("PostgresStore('postgresql://postgres:***@")
    assert any("not open" in text for text in shown)
    assert any("flowkit_no_such_database" in text for text in shown)
    assert not [text for text in shown if secret in text]


async def test_closed_store_and_several_users(postgres_url: str, schema: str) -> None:
    store = PostgresStore(postgres_url, schema=schema)
    with pytest.raises(StoreError, match="not open"):
        await store.inbox_claim("c", "m", lease=600)
    async with store:
        async with store:
            assert await store.inbox_claim("c", "m", lease=600) == Claim.CLAIMED
        assert await store.inbox_claim("c", "m", lease=600) == Claim.BUSY  # still open
        await store.aclose()
        await store.aclose()  # idempotent
        with pytest.raises(StoreError, match="not open"):
            await store.inbox_complete("c", "m")
    async with store:  # entered again later
        assert await store.inbox_claim("c", "m", lease=600) == Claim.BUSY


async def test_schema_version_table_and_concurrent_openers(postgres_url: str, schema: str) -> None:
    stores = [PostgresStore(postgres_url, schema=schema, max_size=2) for _ in range(6)]

    async def open_and_use(store: PostgresStore, index: int) -> None:
        async with store:
            await store.inbox_complete("c", f"m{index}")

    async with anyio.create_task_group() as tg:
        for index, store in enumerate(stores):
            tg.start_soon(open_and_use, store, index)
    rows = await fetch(postgres_url, f'SELECT version FROM "{schema}".flowkit_schema_version')
    assert [row["version"] for row in rows] == list(range(1, SCHEMA_VERSION + 1))
    tables = await fetch(
        postgres_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
        "ORDER BY table_name",
        schema,
    )
    assert [row["table_name"] for row in tables] == [
        "flowkit_dead_letters",
        "flowkit_history",
        "flowkit_inbox",
        "flowkit_leases",
        "flowkit_mailbox",
        "flowkit_outbox",
        "flowkit_schema_version",
        "flowkit_trace",
        "flowkit_workflows",
    ]
    async with PostgresStore(postgres_url, schema=schema) as store:  # reopening changes nothing
        assert await store.inbox_claim("c", "m0", lease=600) == Claim.DONE


async def test_a_newer_schema_is_refused(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema):
        pass
    await fetch(
        postgres_url,
        f'INSERT INTO "{schema}".flowkit_schema_version VALUES ($1, now())',
        SCHEMA_VERSION + 1,
    )
    store = PostgresStore(postgres_url, schema=schema)
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}, newer.*upgrade flowkit"):
        async with store:
            pass
    with pytest.raises(StoreError, match="not open"):
        await store.load_workflow("w")


async def test_database_errors_are_store_errors(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        bad = DeadLetter("bad", cast("Any", None), "t", b"card-4111", {}, "E", "e", 1, _NOW)
        with pytest.raises(StoreError, match="add_dead_letter failed: NotNull") as caught:
            await store.add_dead_letter(bad)
        assert "4111" not in str(caught.value)  # no DETAIL quoting the row
        with pytest.raises(StoreError, match="create_workflow failed"):
            await store.create_workflow(WorkflowRecord("w", "n", "S", {"text": "a\x00b"}))
        with pytest.raises(StoreError, match="inbox_claim failed"):
            await store.inbox_claim("c", "m\x00", lease=60)
        record, _ = await store.create_workflow(WorkflowRecord("w", "n", "S", {}))
        saved = await store.save_workflow(dataclasses.replace(record, version=1))
        with pytest.raises(ConcurrencyConflict):
            await store.save_workflow(dataclasses.replace(saved, version=2**40))
        await fetch(postgres_url, f'DROP TABLE "{schema}".flowkit_workflows')
        with pytest.raises(StoreError, match="PostgreSQL load_workflow failed") as caught:
            await store.load_workflow("w")
        assert type(caught.value.__cause__).__module__.startswith("asyncpg")


async def test_state_is_jsonb(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        record = WorkflowRecord("w", "n", "RUNNING", {"items": (1, 2), "b": b"x", "n": 0.5})
        await store.create_workflow(record)
        loaded = await store.load_workflow("w")
        assert loaded.state == {"items": [1, 2], "b": "x", "n": 0.5}
    rows = await fetch(
        postgres_url,
        f"SELECT jsonb_typeof(state) AS kind, state->'items'->>1 AS second "
        f'FROM "{schema}".flowkit_workflows',
    )
    assert (rows[0]["kind"], rows[0]["second"]) == ("object", "2")


async def test_prune_uses_the_given_time(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        await store.inbox_complete("c", "done")
        assert await store.inbox_prune(datetime(2000, 1, 1, tzinfo=UTC)) == 0
        with pytest.raises(StoreError, match="timezone-aware"):
            await store.inbox_prune(datetime(2000, 1, 1))


async def test_prune_by_default_leaves_unfinished_workflows(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        await check_prune_defaults(store)


async def test_two_processes_claim_each_pair_once(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema):
        pass  # created before the race
    await check_two_processes_claim_each_pair_once(postgres_url, 0.001, schema=schema, max_size=4)
