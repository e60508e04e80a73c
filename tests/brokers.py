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
"""

from __future__ import annotations

import os

import pytest

REQUIRE_BROKERS = "FLOWKIT_REQUIRE_BROKERS"
"""Set to ``1`` to make a missing broker URL fail the tests that need it."""


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
    if os.environ.get(REQUIRE_BROKERS, "").strip() == "1":
        pytest.fail(
            f"{env} is missing but {REQUIRE_BROKERS}=1: no {name} server to test against; "
            f"start one with `scripts/brokers.sh start` and export the lines of "
            f"`scripts/brokers.sh env`, or run `make test-brokers`",
            pytrace=False,
        )
    pytest.skip(f"needs a {name} server: set {env}, or run `make test-brokers`")


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


@pytest.fixture
def kafka_url() -> str:
    """The URL of the test Kafka-protocol broker (``FLOWKIT_KAFKA_URL``; Tansu here)."""
    return broker_url("Kafka", "FLOWKIT_KAFKA_URL")
