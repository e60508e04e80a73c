"""The RabbitMQ transport: what is RabbitMQ's own, on a real server (what every broker
transport does alike is in ``test_transport_brokers.py``).

The server comes from ``FLOWKIT_RABBITMQ_URL``; without it every test skips, unless
``FLOWKIT_REQUIRE_BROKERS=1`` makes them fail. The tests that restart a server, or
need TLS and a password, start a node of their own (``/usr/lib/rabbitmq/bin``).
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest

from flowkit._errors import TransportError
from flowkit.testing._transport_suite import TRANSPORT_CHECKS

from ._transport_util import (
    PASSWORD,
    certificate,
    check_a_restart_loses_nothing,
    check_the_password_never_shows,
    check_tls,
    publish_until_received,
    receive,
    unique_name,
)
from .brokers import RABBITMQ, fixtures_for, unavailable, with_query
from .brokers import make as make
from .brokers import prefix as prefix
from .brokers import url as url
from .rabbitmq_server import OwnServer, ctl

try:
    import aiormq
    from pamqp.commands import Basic

    from flowkit.transports import from_url
    from flowkit.transports._rabbitmq import RabbitMQTransport
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    RABBITMQ.skip_module(exc)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

pytestmark = pytest.mark.anyio

_LOGGER = "flowkit.transport.rabbitmq"


broker, anyio_backend = fixtures_for(RABBITMQ)


@pytest.fixture
async def raw(url: str) -> AsyncIterator[Any]:
    """A channel of a plain aiormq connection, to look at what the transport declared."""
    async with aiormq.Connection(url) as connection:
        yield connection


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    """A node of the module's own, with a TLS listener and a user with a password."""
    if not OwnServer.available() or shutil.which("openssl") is None:
        unavailable("these tests start a RabbitMQ node of their own: install rabbitmq-server")
    directory = tmp_path_factory.mktemp("rabbitmq")
    cert, key = certificate(directory)
    key.chmod(0o644)
    from .rabbitmq_server import _ports

    tls_port = _ports()[0]
    server = OwnServer(
        directory / "node",
        f"listeners.ssl.default = {tls_port}\n"
        f"ssl_options.cacertfile = {cert}\n"
        f"ssl_options.certfile = {cert}\n"
        f"ssl_options.keyfile = {key}\n"
        "ssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n",
    )
    server.tls_port = tls_port  # type: ignore[attr-defined]
    server.cert = cert  # type: ignore[attr-defined]
    try:
        server.start()
        ctl(server.directory, "add_user", "flowkit", PASSWORD)
        ctl(server.directory, "set_permissions", "-p", "/", "flowkit", ".*", ".*", ".*")
        yield server
    finally:
        server.stop()


# -- the contract --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRANSPORT_CHECKS))
async def test_conformance_on_classic_queues(
    name: str, make: Callable[..., RabbitMQTransport]
) -> None:
    await TRANSPORT_CHECKS[name](lambda: make(queue_type="classic"), delay_tolerance=0.5)


# -- layout ----------------------------------------------------------------------


async def test_a_group_is_a_quorum_queue_bound_to_its_family_exchange(
    make: Callable[..., RabbitMQTransport], raw: Any, prefix: str
) -> None:
    topic, group = f"orders.{unique_name('placed')}", unique_name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        channel = await raw.channel()
        # A declare with other arguments than the queue's fails: it is a quorum queue.
        await channel.queue_declare(
            f"{prefix}:{topic}:{group}", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await channel.exchange_declare(f"{prefix}:orders", exchange_type="topic", durable=True)
        await channel.basic_publish(b"raw", exchange=f"{prefix}:orders", routing_key=topic)
        delivery = await receive(subscription)
        assert (delivery.body, delivery.attempt, dict(delivery.headers)) == (b"raw", 1, {})
        await delivery.nack()
        again = await receive(subscription)
        assert again.attempt == 2
        await subscription.aclose()  # held unacked: back in the queue, counted by the server
        subscription = await transport.subscribe(topic, group)
        third = await receive(subscription)
        assert (third.body, third.attempt) == (b"raw", 3)
        await third.ack()
        await subscription.aclose()


async def test_nack_with_delay_waits_in_a_ttl_queue(
    make: Callable[..., RabbitMQTransport], raw: Any, prefix: str
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"later", {"h": "v"})
        delivery = await receive(subscription)
        await delivery.nack(0.3)
        channel = await raw.channel()
        waiting = await channel.queue_declare(f"{prefix}:{topic}:{group}:delay:300", passive=True)
        assert waiting.message_count == 1
        again = await receive(subscription)
        assert (again.body, dict(again.headers), again.attempt) == (b"later", {"h": "v"}, 2)
        await again.ack()
        await subscription.aclose()


async def test_a_queue_deleted_behind_its_back_is_declared_again(
    make: Callable[..., RabbitMQTransport], raw: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"before")
        await (await receive(subscription)).ack()
        channel = await raw.channel()
        await channel.queue_delete(f"{prefix}:{topic}:{group}")
        delivery = await publish_until_received(
            transport, subscription, topic, within=10, every=0.2
        )
        assert delivery.body == b"after"
        await delivery.ack()
        await subscription.aclose()
    assert any("consuming again" in r.getMessage() for r in caplog.records)


def test_delays_are_rounded_up_to_two_digits() -> None:
    from flowkit.transports._rabbitmq._transport import _delay_ms

    assert [_delay_ms(d) for d in (0.0001, 0.05, 0.5, 1.234, 61.01)] == [
        1,
        50,
        500,
        1300,
        62000,
    ]


async def test_headers_of_another_publisher(
    make: Callable[..., RabbitMQTransport], raw: Any, prefix: str
) -> None:
    """Headers that are not strings are delivered as strings; the broker's own are not shown."""
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        channel = await raw.channel()
        await channel.basic_publish(
            b"foreign",
            routing_key=f"{prefix}:{topic}:{group}",
            properties=Basic.Properties(headers={"n": 5, "t": True, "x-flowkit-attempt": "x"}),
        )
        delivery = await receive(subscription)
        assert dict(delivery.headers) == {"n": "5", "t": "True"}
        assert delivery.attempt == 1
        await delivery.ack()
        await subscription.aclose()


async def test_topics_with_wildcard_words_are_refused(
    make: Callable[..., RabbitMQTransport],
) -> None:
    async with make() as transport:
        with pytest.raises(ValueError, match="'#'"):
            await transport.subscribe("orders.#", "g")


# -- the server goes away -------------------------------------------------------


async def test_a_restart_loses_nothing(
    own_server: OwnServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is lost when the node stops and starts again: what a lost connection
    held comes back, and a message waiting out a delay comes back too."""
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    async with RabbitMQTransport(own_server.url(), prefetch=5) as transport:
        later_topic, group = unique_name("later"), unique_name("group")
        later = await transport.subscribe(later_topic, group)
        await transport.publish(later_topic, b"delayed across the restart")
        await (await receive(later)).nack(1.0)
        await check_a_restart_loses_nothing(
            transport, own_server.restart, held_come_back=True, timeout=20
        )
        delayed = await receive(later, timeout=15)
        assert (delayed.body, delayed.attempt) == (b"delayed across the restart", 2)
        await delayed.ack()
        await later.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert any("lost the connection" in m for m in messages)
    assert any("reconnected" in m for m in messages)


async def test_publish_waits_no_longer_than_its_timeout(own_server: OwnServer) -> None:
    topic = unique_name("t")
    async with RabbitMQTransport(own_server.url(), publish_timeout=0.5) as transport:
        subscription = await transport.subscribe(topic, "g")
        await anyio.to_thread.run_sync(ctl, own_server.directory, "stop_app")
        try:
            start = time.monotonic()
            with pytest.raises(TransportError, match=r"within 0\.5s"):
                await transport.publish(topic, b"stopped")
            assert time.monotonic() - start < 1.5
        finally:
            await anyio.to_thread.run_sync(ctl, own_server.directory, "start_app")
        with anyio.fail_after(15):
            while True:
                try:
                    await transport.publish(topic, b"resumed")
                    break
                except TransportError:
                    await anyio.sleep(0.2)
        assert (await receive(subscription, timeout=15)).body == b"resumed"
        await subscription.aclose()


# -- security -------------------------------------------------------------------


async def test_the_password_never_shows(
    own_server: OwnServer, caplog: pytest.LogCaptureFixture
) -> None:
    await check_the_password_never_shows(
        RabbitMQTransport, lambda password: own_server.url("flowkit", password), caplog
    )


async def test_tls(own_server: OwnServer) -> None:
    port = own_server.tls_port  # type: ignore[attr-defined]
    cert = own_server.cert  # type: ignore[attr-defined]
    url = f"amqps://flowkit:{PASSWORD}@127.0.0.1:{port}/"
    await check_tls(from_url(f"{url}?cafile={cert}"), RabbitMQTransport(url, connect_timeout=2))


# -- use -------------------------------------------------------------------------


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="prefetch"):
        RabbitMQTransport("amqp://localhost", prefetch=0)
    with pytest.raises(ValueError, match="queue_type"):
        RabbitMQTransport("amqp://localhost", queue_type="stream")
    with pytest.raises(ValueError, match="prefix"):
        RabbitMQTransport("amqp://localhost", prefix="")
    with pytest.raises(ValueError, match="not a number") as bad:
        RabbitMQTransport(f"amqp://u:{PASSWORD}@localhost/?prefetch=many")
    assert PASSWORD not in str(bad.value)


async def test_options_in_the_url(url: str, prefix: str) -> None:
    transport = from_url(with_query(url, prefix=prefix, prefetch=7, queue_type="classic"))
    assert isinstance(transport, RabbitMQTransport)
    assert transport.prefix == prefix
    async with transport:
        subscription = await transport.subscribe("t", "g")
        for i in range(10):
            await transport.publish("t", b"%d" % i)
        with anyio.fail_after(5):
            while len(subscription._buffer) < 7:  # type: ignore[attr-defined]
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        assert len(subscription._buffer) == 7  # type: ignore[attr-defined]
        await subscription.aclose()
