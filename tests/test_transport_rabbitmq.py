"""The RabbitMQ transport: the conformance suite on a real server, and what is RabbitMQ's own.

The server comes from ``FLOWKIT_RABBITMQ_URL``; without it every test skips, unless
``FLOWKIT_REQUIRE_BROKERS=1`` makes them fail. The tests that restart a server, or
need TLS and a password, start a node of their own (``/usr/lib/rabbitmq/bin``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest

from flowkit._errors import TransportClosed, TransportError
from flowkit.testing._transport_suite import TRANSPORT_CHECKS
from flowkit.transports._base import Capabilities, Delivery, Subscription

from .brokers import REQUIRE_BROKERS
from .brokers import rabbitmq_url as rabbitmq_url
from .rabbitmq_server import OwnServer, ctl, forget_rabbitmq

try:
    import aiormq
    from pamqp.commands import Basic

    from flowkit.transports import from_url
    from flowkit.transports._rabbitmq import RabbitMQTransport
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    if exc.name not in ("aiormq", "pamqp") or os.environ.get(REQUIRE_BROKERS) == "1":
        raise
    pytest.skip(
        "the RabbitMQ tests need aio-pika: pip install 'flowkit[rabbitmq]'",
        allow_module_level=True,
    )

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

pytestmark = pytest.mark.anyio

_LOGGER = "flowkit.transport.rabbitmq"
_PASSWORD = "pw-" + uuid.uuid4().hex


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """aiormq runs on asyncio only."""
    return str(request.param)


@pytest.fixture(scope="module")
def module_prefix() -> str:
    return f"flowkit-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def prefix(rabbitmq_url: str, module_prefix: str) -> AsyncIterator[str]:
    """The names of the module's own; its queues and exchanges are deleted afterwards."""
    yield module_prefix
    await forget_rabbitmq(rabbitmq_url, module_prefix)


@pytest.fixture
def make(rabbitmq_url: str, prefix: str) -> Callable[..., RabbitMQTransport]:
    def make(**options: Any) -> RabbitMQTransport:
        return RabbitMQTransport(rabbitmq_url, prefix=prefix, **options)

    return make


@pytest.fixture
async def raw(rabbitmq_url: str) -> AsyncIterator[Any]:
    """A channel of a plain aiormq connection, to look at what the transport declared."""
    async with aiormq.Connection(rabbitmq_url) as connection:
        yield connection


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    """A node of the module's own, with a TLS listener and a user with a password."""
    if not OwnServer.available() or shutil.which("openssl") is None:
        if os.environ.get(REQUIRE_BROKERS) == "1":
            pytest.fail("these tests start a RabbitMQ node of their own: install rabbitmq-server")
        pytest.skip("these tests start a RabbitMQ node of their own: install rabbitmq-server")
    directory = tmp_path_factory.mktemp("rabbitmq")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
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
        ctl(server.directory, "add_user", "flowkit", _PASSWORD)
        ctl(server.directory, "set_permissions", "-p", "/", "flowkit", ".*", ".*", ".*")
        yield server
    finally:
        server.stop()


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


async def _receive(subscription: Subscription, timeout: float = 10.0) -> Delivery:
    with anyio.fail_after(timeout):
        return await subscription.receive()


async def _nothing(subscription: Subscription, window: float) -> None:
    with anyio.move_on_after(window):
        delivery = await subscription.receive()
        raise AssertionError(f"unexpected delivery {delivery.body!r} (attempt {delivery.attempt})")


# -- the contract --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRANSPORT_CHECKS))
async def test_conformance(name: str, make: Callable[..., RabbitMQTransport]) -> None:
    await TRANSPORT_CHECKS[name](make, delay_tolerance=0.5)


@pytest.mark.parametrize("name", sorted(TRANSPORT_CHECKS))
async def test_conformance_on_classic_queues(
    name: str, make: Callable[..., RabbitMQTransport]
) -> None:
    await TRANSPORT_CHECKS[name](lambda: make(queue_type="classic"), delay_tolerance=0.5)


async def test_capabilities(make: Callable[..., RabbitMQTransport]) -> None:
    assert make().capabilities == Capabilities(
        crosses_processes=True,
        native_delay=False,
        ordered_by_key=False,
        max_message_size=128 * 1024 * 1024,
    )


# -- layout ----------------------------------------------------------------------


async def test_a_group_is_a_quorum_queue_bound_to_its_family_exchange(
    make: Callable[..., RabbitMQTransport], raw: Any, prefix: str
) -> None:
    topic, group = f"orders.{_name('placed')}", _name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        channel = await raw.channel()
        # A declare with other arguments than the queue's fails: it is a quorum queue.
        await channel.queue_declare(
            f"{prefix}:{topic}:{group}", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await channel.exchange_declare(f"{prefix}:orders", exchange_type="topic", durable=True)
        await channel.basic_publish(b"raw", exchange=f"{prefix}:orders", routing_key=topic)
        delivery = await _receive(subscription)
        assert (delivery.body, delivery.attempt, dict(delivery.headers)) == (b"raw", 1, {})
        await delivery.nack()
        again = await _receive(subscription)
        assert again.attempt == 2
        await subscription.aclose()  # held unacked: back in the queue, counted by the server
        subscription = await transport.subscribe(topic, group)
        third = await _receive(subscription)
        assert (third.body, third.attempt) == (b"raw", 3)
        await third.ack()
        await subscription.aclose()


async def test_nack_with_delay_waits_in_a_ttl_queue(
    make: Callable[..., RabbitMQTransport], raw: Any, prefix: str
) -> None:
    topic, group = _name("topic"), _name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"later", {"h": "v"})
        delivery = await _receive(subscription)
        await delivery.nack(0.3)
        channel = await raw.channel()
        waiting = await channel.queue_declare(f"{prefix}:{topic}:{group}:delay:300", passive=True)
        assert waiting.message_count == 1
        again = await _receive(subscription)
        assert (again.body, dict(again.headers), again.attempt) == (b"later", {"h": "v"}, 2)
        await again.ack()
        await subscription.aclose()


async def test_a_queue_deleted_behind_its_back_is_declared_again(
    make: Callable[..., RabbitMQTransport], raw: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic, group = _name("topic"), _name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"before")
        await (await _receive(subscription)).ack()
        channel = await raw.channel()
        await channel.queue_delete(f"{prefix}:{topic}:{group}")
        with anyio.fail_after(10):
            while True:
                with anyio.move_on_after(0.2):
                    delivery = await subscription.receive()
                    break
                await transport.publish(topic, b"after")
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
    topic, group = _name("topic"), _name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        channel = await raw.channel()
        await channel.basic_publish(
            b"foreign",
            routing_key=f"{prefix}:{topic}:{group}",
            properties=Basic.Properties(headers={"n": 5, "t": True, "x-flowkit-attempt": "x"}),
        )
        delivery = await _receive(subscription)
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
    """Acked messages stay acked; unacked and unread ones are all delivered after the
    node stops and starts again; a receiver blocked meanwhile carries on; a message
    waiting out a delay comes back."""
    topic, group, other = _name("topic"), _name("group"), _name("other")
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    async with RabbitMQTransport(own_server.url(), prefetch=5) as transport:
        subscription = await transport.subscribe(topic, group)
        waiting = await transport.subscribe(topic, other)
        later_topic = _name("later")
        later = await transport.subscribe(later_topic, group)
        await transport.publish(later_topic, b"delayed across the restart")
        await (await _receive(later)).nack(1.0)
        for i in range(30):
            await transport.publish(topic, b"%d" % i)
        for _ in range(10):
            await (await _receive(subscription)).ack()
        held = [await _receive(subscription) for _ in range(5)]
        other_got: list[bytes] = []

        async def wait_on_other() -> None:
            while len(other_got) < 40:
                delivery = await waiting.receive()
                other_got.append(delivery.body)
                await delivery.ack()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_on_other)
            with anyio.fail_after(10):
                while len(other_got) < 30:
                    await anyio.sleep(0.01)
            await anyio.to_thread.run_sync(own_server.restart)
            for i in range(30, 40):
                await transport.publish(topic, b"%d" % i)
            after = []
            for _ in range(30):  # what it held came back too: 10 to 39
                delivery = await _receive(subscription, timeout=20)
                after.append(delivery.body)
                await delivery.ack()
            await subscription.ack_many(held)  # of the lost connection: a no-op
            with anyio.fail_after(10):
                while len(other_got) < 40:
                    await anyio.sleep(0.01)
        assert sorted(after) == sorted(b"%d" % i for i in range(10, 40))
        assert sorted(other_got) == sorted(b"%d" % i for i in range(40))
        delayed = await _receive(later, timeout=15)
        assert (delayed.body, delayed.attempt) == (b"delayed across the restart", 2)
        await delayed.ack()
        await later.aclose()
        await _nothing(subscription, 0.3)
        assert await transport.backlog(topic, group) == 0
        await subscription.aclose()
        await waiting.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert any("lost the connection" in m for m in messages)
    assert any("reconnected" in m for m in messages)


async def test_publish_waits_no_longer_than_its_timeout(own_server: OwnServer) -> None:
    topic = _name("t")
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
        assert (await _receive(subscription, timeout=15)).body == b"resumed"
        await subscription.aclose()


# -- security -------------------------------------------------------------------


async def test_the_password_never_shows(
    own_server: OwnServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = RabbitMQTransport(own_server.url("flowkit", _PASSWORD))
    assert _PASSWORD not in repr(good)
    topic = _name("t")
    async with good as transport:
        subscription = await transport.subscribe(topic, "g")
        await transport.publish(topic, b"authenticated")
        assert (await _receive(subscription)).body == b"authenticated"
        await subscription.aclose()

    shown: list[str] = []
    wrong = RabbitMQTransport(own_server.url("flowkit", "not-" + _PASSWORD))
    with pytest.raises(TransportError) as refused:
        await wrong.__aenter__()
    unreachable = RabbitMQTransport(f"amqp://user:{_PASSWORD}@127.0.0.1:1/", connect_timeout=1)
    with pytest.raises(TransportError) as missing:
        await unreachable.__aenter__()
    with pytest.raises(ValueError) as bad_scheme:
        RabbitMQTransport(f"http://user:{_PASSWORD}@host/")
    for error in (refused.value, missing.value, bad_scheme.value):
        chain: BaseException | None = error
        while chain is not None:
            shown += [str(chain), repr(chain)]
            chain = chain.__cause__ or chain.__context__
    shown += [repr(wrong), repr(unreachable), caplog.text]
    shown += [r.getMessage() for r in caplog.records]
    assert "127.0.0.1:1" in str(missing.value)
    assert all(_PASSWORD not in text for text in shown)


async def test_tls(own_server: OwnServer) -> None:
    port = own_server.tls_port  # type: ignore[attr-defined]
    cert = own_server.cert  # type: ignore[attr-defined]
    url = f"amqps://flowkit:{_PASSWORD}@127.0.0.1:{port}/?cafile={cert}"
    async with from_url(url) as transport:
        subscription = await transport.subscribe("t", "tls")
        await transport.publish("t", b"over TLS")
        delivery = await _receive(subscription)
        assert delivery.body == b"over TLS"
        await delivery.ack()
        await subscription.aclose()
    untrusted = RabbitMQTransport(
        f"amqps://flowkit:{_PASSWORD}@127.0.0.1:{port}/", connect_timeout=2
    )
    with pytest.raises(TransportError) as refused:
        await untrusted.__aenter__()
    assert _PASSWORD not in str(refused.value)


# -- use -------------------------------------------------------------------------


async def test_entered_several_times(make: Callable[..., RabbitMQTransport]) -> None:
    transport = make()
    topic = _name("t")
    async with transport:
        async with transport:
            subscription = await transport.subscribe(topic, "g")
        await transport.publish(topic, b"still open")
        assert (await _receive(subscription)).body == b"still open"
    with pytest.raises(TransportClosed):
        await transport.publish(topic, b"closed")
    with pytest.raises(TransportClosed):
        await subscription.receive()
    async with transport:
        assert await transport.backlog(topic, "g") == 1  # given back when it closed


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="prefetch"):
        RabbitMQTransport("amqp://localhost", prefetch=0)
    with pytest.raises(ValueError, match="queue_type"):
        RabbitMQTransport("amqp://localhost", queue_type="stream")
    with pytest.raises(ValueError, match="prefix"):
        RabbitMQTransport("amqp://localhost", prefix="")
    with pytest.raises(ValueError, match="not a number") as bad:
        RabbitMQTransport(f"amqp://u:{_PASSWORD}@localhost/?prefetch=many")
    assert _PASSWORD not in str(bad.value)


async def test_options_in_the_url(rabbitmq_url: str, prefix: str) -> None:
    sep = "&" if "?" in rabbitmq_url else "?"
    transport = from_url(f"{rabbitmq_url}{sep}prefix={prefix}&prefetch=7&queue_type=classic")
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


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused_clearly(anyio_backend: str) -> None:
    transport = RabbitMQTransport(f"amqp://u:{_PASSWORD}@127.0.0.1:1/")
    with pytest.raises(TransportError, match="asyncio only") as refused:
        async with transport:
            pass
    assert _PASSWORD not in str(refused.value)


def test_a_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from flowkit import MissingDependency

    # As if aio-pika (and aiormq with it) were not installed, and the transport never imported.
    for name in [n for n in sys.modules if n == "aiormq" or n.startswith("aiormq.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aiormq", None)
    for name in [n for n in sys.modules if n.startswith("flowkit.transports._rabbitmq")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependency, match=r"pip install 'flowkit\[rabbitmq\]'"):
        from_url(f"amqp://u:{_PASSWORD}@localhost/")
