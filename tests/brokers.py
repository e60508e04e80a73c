"""Real brokers for the tests that need one.

A test reaches a server through a fixture such as :func:`redis_url`, which reads the
server's URL from the environment (``FLOWKIT_REDIS_URL``, ``FLOWKIT_POSTGRES_URL``;
``scripts/brokers.sh`` starts
the servers and prints these variables). Without the variable the test is skipped,
unless ``FLOWKIT_REQUIRE_BROKERS=1`` (as in CI and ``make test-brokers``): then it fails,
so a run that was meant to use the brokers cannot pass by skipping them.

Use the fixture from a test module with an explicit re-export, which pytest collects and
ruff accepts::

    from .brokers import redis_url as redis_url

    async def test_round_trip(redis_url: str) -> None: ...

The message brokers are the rows of one table, :data:`BROKERS`: what differs between
them for a test (URL scheme, client libraries, the options and waits a test server
needs, the anyio backends a client runs on, how to list and delete what a test left).
A test that runs on each of them is parametrized with :func:`on_brokers`, which gives
it ``broker`` and ``anyio_backend``; the fixtures :func:`url`, :func:`prefix` and
:func:`make` then reach that broker's server::

    from .brokers import make as make
    from .brokers import on_brokers
    from .brokers import prefix as prefix
    from .brokers import url as url

    @on_brokers()
    async def test_round_trip(make: Callable[..., Transport]) -> None: ...

A module of one broker's own tests takes the fixtures ``broker`` and ``anyio_backend``
from :func:`fixtures_for`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlencode

import pytest

import flowkit.transports
from flowkit import MissingDependency

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from pathlib import Path

    from _pytest.mark.structures import ParameterSet

    from flowkit.stores import StateStore
    from flowkit.transports import Transport

REQUIRE_BROKERS = "FLOWKIT_REQUIRE_BROKERS"
"""Set to ``1`` to make a missing broker URL fail the tests that need it."""

ANYIO_BACKENDS = ("asyncio", "trio")
"""The anyio backends async tests run on (``conftest.py``), where their clients allow."""


def brokers_required() -> bool:
    """Whether ``FLOWKIT_REQUIRE_BROKERS=1``: a broker test may not skip."""
    return os.environ.get(REQUIRE_BROKERS, "").strip() == "1"


def unavailable(message: str) -> NoReturn:
    """Skip for want of something a broker test needs, or fail when brokers are required.

    It may be called at a module's top level, to skip (or fail) the whole module.

    Raises:
        pytest.skip.Exception: brokers are not required.
        pytest.fail.Exception: ``FLOWKIT_REQUIRE_BROKERS=1``.
    """
    if brokers_required():
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


def broker_url(name: str, env: str) -> str:
    """The URL of the running ``name`` server, read from the variable ``env``.

    Args:
        name: the server, for messages (``"Redis"``).
        env: the environment variable that holds its URL (``"FLOWKIT_REDIS_URL"``).

    Returns:
        The URL, as set.

    Raises:
        pytest.skip.Exception: ``env`` is unset or empty and brokers are not required.
        pytest.fail.Exception: ``env`` is unset or empty and ``FLOWKIT_REQUIRE_BROKERS=1``.
    """
    url = os.environ.get(env, "").strip()
    if url:
        return url
    if brokers_required():
        pytest.fail(
            f"{env} is missing but {REQUIRE_BROKERS}=1: no {name} server to test against; "
            f"start one with `scripts/brokers.sh start` and export the lines of "
            f"`scripts/brokers.sh env`, or run `make test-brokers`",
            pytrace=False,
        )
    pytest.skip(f"needs a {name} server: set {env}, or run `make test-brokers`")


def with_query(url: str, **options: object) -> str:
    """``url`` with ``options`` added to its query."""
    return f"{url}{'&' if '?' in url else '?'}{urlencode(options)}"


@pytest.fixture
def redis_url() -> str:
    """The URL of the test Redis server (``FLOWKIT_REDIS_URL``)."""
    return broker_url("Redis", "FLOWKIT_REDIS_URL")


@pytest.fixture
def postgres_url() -> str:
    """The URL of the test PostgreSQL server (``FLOWKIT_POSTGRES_URL``)."""
    return broker_url("PostgreSQL", "FLOWKIT_POSTGRES_URL")


@pytest.fixture
def rabbitmq_url() -> str:
    """The URL of the test RabbitMQ server (``FLOWKIT_RABBITMQ_URL``)."""
    return broker_url("RabbitMQ", "FLOWKIT_RABBITMQ_URL")


@pytest.fixture
def nats_url() -> str:
    """The URL of the test NATS server, with JetStream (``FLOWKIT_NATS_URL``)."""
    return broker_url("NATS", "FLOWKIT_NATS_URL")


async def drop_schema(url: str, schema: str) -> None:
    """Drop a PostgreSQL schema a test made, and everything in it."""
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(name="store", params=["memory", "sqlite", "postgres"])
async def every_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    """Each store, open: in memory, a SQLite file, and a PostgreSQL schema of its own
    (dropped afterwards). A test module uses it as ``store`` by importing it."""
    from flowkit.stores import MemoryStore, PostgresStore, SQLiteStore

    chosen: StateStore
    if request.param == "memory":
        chosen = MemoryStore()
    elif request.param == "sqlite":
        chosen = SQLiteStore(tmp_path / "flowkit.db")
    else:  # on asyncio only (tests/conftest.py)
        url = request.getfixturevalue("postgres_url")
        chosen = PostgresStore(url, schema=f"flowkit_test_{uuid.uuid4().hex[:12]}")
    async with chosen:
        yield chosen
    if isinstance(chosen, PostgresStore):
        await drop_schema(url, chosen.schema)


@pytest.fixture
def kafka_url() -> str:
    """The URL of the test Kafka-protocol broker (``FLOWKIT_KAFKA_URL``; Tansu here)."""
    return broker_url("Kafka", "FLOWKIT_KAFKA_URL")


# -- what a test leaves on each broker ------------------------------------------


async def _redis_names(url: str, prefix: str) -> list[str]:
    """The keys under ``prefix``."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        return sorted([k.decode() async for k in client.scan_iter(f"{prefix}:*", count=1000)])
    finally:
        await client.aclose()


async def _forget_redis(url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    names = await _redis_names(url, prefix)
    if names:
        client = Redis.from_url(url)
        try:
            await client.delete(*names)
        finally:
            await client.aclose()


async def _rabbitmq_names(url: str, prefix: str) -> list[str]:
    """The queues under ``prefix``; none for a server ``scripts/brokers.sh`` did not start
    (AMQP cannot list queues: ``rabbitmqctl`` of that node does)."""
    from .rabbitmq_server import _scripts_node, ctl

    directory = _scripts_node(url)
    if directory is None:
        return []
    names = ctl(directory, "list_queues", "name", "--quiet", "--no-table-headers").split()
    return sorted(name for name in names if name.startswith(f"{prefix}:"))


async def _forget_rabbitmq(url: str, prefix: str) -> None:
    from .rabbitmq_server import forget_rabbitmq

    await forget_rabbitmq(url, prefix)


async def _nats_names(url: str, prefix: str) -> list[str]:
    """The JetStream streams under ``prefix``."""
    import nats

    client = await nats.connect(url)
    try:
        infos = await client.jetstream().streams_info()
        return sorted(
            i.config.name for i in infos if i.config.name and i.config.name.startswith(f"{prefix}_")
        )
    finally:
        await client.close()


async def _forget_nats(url: str, prefix: str) -> None:
    import nats

    names = await _nats_names(url, prefix)
    if names:
        client = await nats.connect(url)
        try:
            for name in names:
                await client.jetstream().delete_stream(name)
        finally:
            await client.close()


def kafka_servers(url: str) -> str:
    """The bootstrap servers of a ``kafka://`` URL, for a plain aiokafka client."""
    return url.removeprefix("kafka://").split("?")[0]


async def _kafka_names(url: str, prefix: str) -> list[str]:
    """The topics under ``prefix``."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers(url))
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(f"{prefix}.."))
    finally:
        await admin.close()


async def _forget_kafka(url: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    names = await _kafka_names(url, prefix)
    if names:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_servers(url))
        await admin.start()
        try:
            await admin.delete_topics(names)
        finally:
            await admin.close()


# -- the table -------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    """A message broker the tests run on, and what they need to know of it.

    Attributes:
        name: its id in parametrized tests (``"redis"``), also its ``flowkit[...]`` extra.
        title: its name in messages (``"Redis"``); its transport is ``{title}Transport``.
        env: the variable that holds the test server's URL.
        scheme: its URL scheme.
        clients: the client libraries its transport imports.
        names: what the server holds under a name prefix (keys, queues, streams, topics).
        forget: deletes what the server holds under a name prefix.
        options: transport options every test passes.
        wait: in seconds, how long a delivery that must come may take.
        backends: the anyio backends its client runs on.
    """

    name: str
    title: str
    env: str
    scheme: str
    clients: tuple[str, ...]
    names: Callable[[str, str], Awaitable[list[str]]]
    forget: Callable[[str, str], Awaitable[None]]
    options: Mapping[str, float] = field(default_factory=dict)
    wait: float = 10.0
    backends: tuple[str, ...] = ("asyncio",)

    def url(self) -> str:
        """The test server's URL.

        Raises:
            pytest.skip.Exception: the URL is not set, or the client is not installed,
                and brokers are not required.
            pytest.fail.Exception: the same, with ``FLOWKIT_REQUIRE_BROKERS=1``.
        """
        url = broker_url(self.title, self.env)
        self.transport_class()
        return url

    def transport_class(self) -> Callable[..., Transport]:
        """Its transport class, imported now; a missing client skips, as in :meth:`url`."""
        try:
            cls: Callable[..., Transport] = getattr(flowkit.transports, f"{self.title}Transport")
        except MissingDependency as exc:
            unavailable(f"the {self.title} tests need its client: {exc}")
        return cls

    def transport(self, url: str, **options: Any) -> Transport:
        """A transport on ``url`` with :attr:`options` (those given override them)."""
        return self.transport_class()(url, **{**self.options, **options})

    def skip_module(self, exc: ModuleNotFoundError) -> NoReturn:
        """In a module of this broker's tests whose client import failed: skip it, naming
        the extra to install (fail it when brokers are required); another missing
        module is raised again."""
        if (exc.name or "").split(".")[0] not in self.clients:
            raise exc
        unavailable(f"the {self.title} tests need {exc.name}: pip install 'flowkit[{self.name}]'")


REDIS = Broker(
    "redis",
    "Redis",
    "FLOWKIT_REDIS_URL",
    "redis",
    ("redis", "hiredis"),
    _redis_names,
    _forget_redis,
)
RABBITMQ = Broker(
    "rabbitmq",
    "RabbitMQ",
    "FLOWKIT_RABBITMQ_URL",
    "amqp",
    ("aiormq", "pamqp"),
    _rabbitmq_names,
    _forget_rabbitmq,
)
NATS = Broker(
    "nats",
    "NATS",
    "FLOWKIT_NATS_URL",
    "nats",
    ("nats",),
    _nats_names,
    _forget_nats,
)
# Tansu lets a group's join wait about half the session timeout, and a member that left
# stay until its session expires: the tests use short sessions (Apache Kafka refuses
# those below 6 s unless group.min.session.timeout.ms says otherwise). A group's first
# join still takes about five seconds: a delivery that waits on one allows for it.
KAFKA = Broker(
    "kafka",
    "Kafka",
    "FLOWKIT_KAFKA_URL",
    "kafka",
    ("aiokafka",),
    _kafka_names,
    _forget_kafka,
    options={"session_timeout": 1.5},
    wait=20.0,
)

BROKERS: dict[str, Broker] = {b.name: b for b in (REDIS, RABBITMQ, NATS, KAFKA)}
"""Every message broker, by name. Each transport's client runs on asyncio only."""


def each_broker(*names: str) -> list[ParameterSet]:
    """Parameters ``broker`` of a test that is not async: each broker named (every one
    by default)."""
    return [pytest.param(BROKERS[name], id=name) for name in names or BROKERS]


def on_brokers(*names: str, refused: bool = False) -> pytest.MarkDecorator:
    """Parametrize an async test with ``broker`` and ``anyio_backend``: each broker named
    (every one by default) on each anyio backend its client runs on, or, with
    ``refused=True``, on each one it does not run on."""
    params = [
        pytest.param(broker, backend, id=f"{broker.name}-{backend}")
        for broker in (BROKERS[name] for name in names or BROKERS)
        for backend in ANYIO_BACKENDS
        if (backend in broker.backends) != refused
    ]
    return pytest.mark.parametrize(("broker", "anyio_backend"), params)


def fixtures_for(broker: Broker) -> tuple[object, object]:
    """The fixtures ``broker`` (``broker``'s row) and ``anyio_backend`` (each backend its
    client runs on) of a module of one broker's own tests::

        broker, anyio_backend = fixtures_for(REDIS)
    """

    @pytest.fixture(name="broker")
    def broker_fixture() -> Broker:
        return broker

    @pytest.fixture(name="anyio_backend", params=broker.backends)
    def anyio_backend_fixture(request: pytest.FixtureRequest) -> str:
        return str(request.param)

    return broker_fixture, anyio_backend_fixture


@pytest.fixture
def url(broker: Broker) -> str:
    """The URL of the test server of the test's ``broker`` (see :meth:`Broker.url`)."""
    return broker.url()


@pytest.fixture
async def prefix(broker: Broker, url: str) -> AsyncIterator[str]:
    """A name prefix of the test's own; what the server holds under it is deleted
    afterwards."""
    name = f"flowkit-test-{uuid.uuid4().hex[:10]}"
    yield name
    await broker.forget(url, name)


@pytest.fixture
def make(broker: Broker, url: str, prefix: str) -> Callable[..., Transport]:
    """Makes transports on the test server under the test's prefix (see
    :meth:`Broker.transport`)."""

    def make(**options: Any) -> Transport:
        return broker.transport(url, prefix=prefix, **options)

    return make
