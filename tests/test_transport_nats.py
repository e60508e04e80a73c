"""The NATS transport: the conformance suite on a real server, and what is NATS's own.

The server comes from ``FLOWKIT_NATS_URL`` (nats-server with ``-js``); without it
every test skips, unless ``FLOWKIT_REQUIRE_BROKERS=1`` makes them fail. The tests
that restart a server, or need credentials or TLS, start one of their own with
the ``nats-server`` binary (on free loopback ports, in a temporary directory).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import pytest

from flowkit._errors import TransportClosed, TransportError
from flowkit.testing._transport_suite import TRANSPORT_CHECKS
from flowkit.transports._base import Capabilities, Delivery, Subscription

try:
    import nats
    import nats.js.errors

    from flowkit.transports import from_url
    from flowkit.transports._nats import NATSTransport
    from flowkit.transports._nats._client import encode_name
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    if exc.name != "nats" or os.environ.get("FLOWKIT_REQUIRE_BROKERS") == "1":
        raise
    pytest.skip("the NATS tests need nats-py: pip install 'flowkit[nats]'", allow_module_level=True)

from .brokers import nats_url as nats_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from nats.aio.client import Client

pytestmark = pytest.mark.anyio

_LOGGER = "flowkit.transport.nats"


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """nats-py runs on asyncio only."""
    return str(request.param)


def _require_brokers() -> bool:
    return os.environ.get("FLOWKIT_REQUIRE_BROKERS") == "1"


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[Client]:
    """A plain nats-py client on the test server, to look at what the transport made."""
    client = await nats.connect(nats_url)
    yield client
    await client.close()


async def _streams(raw: Client, prefix: str) -> list[str]:
    return [
        s.config.name
        for s in await raw.jetstream().streams_info()
        if s.config.name and s.config.name.startswith(f"{prefix}_")
    ]


@pytest.fixture
async def prefix(raw: Client) -> AsyncIterator[str]:
    """A name prefix of the test's own; its streams are deleted afterwards."""
    name = f"flowkit-test-{uuid.uuid4().hex[:10]}"
    yield name
    for stream in await _streams(raw, name):
        await raw.jetstream().delete_stream(stream)


@pytest.fixture
def make(nats_url: str, prefix: str) -> Callable[..., NATSTransport]:
    """Makes transports on the test server under the test's prefix."""

    def make(**options: Any) -> NATSTransport:
        return NATSTransport(nats_url, prefix=prefix, **options)

    return make


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


async def _receive(subscription: Subscription, timeout: float = 10.0) -> Delivery:
    with anyio.fail_after(timeout):
        return await subscription.receive()


async def _nothing(subscription: Subscription, window: float) -> None:
    with anyio.move_on_after(window):
        delivery = await subscription.receive()
        raise AssertionError(f"unexpected delivery {delivery.body!r} (attempt {delivery.attempt})")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- a server of the test's own ------------------------------------------------


class _Server:
    """A nats-server with JetStream on free loopback ports, storing in a directory."""

    def __init__(self, directory: Path, *options: str) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            if _require_brokers():
                pytest.fail("the nats-server binary is not installed")
            pytest.skip("this test starts a server of its own: install nats-server")
        self.binary = binary
        self.directory = directory
        self.options = options
        self.port = _free_port()
        self.monitor = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, auth: str = "", scheme: str = "nats") -> str:
        return f"{scheme}://{auth}{'@' if auth else ''}127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "-a", "127.0.0.1",
                "-p", str(self.port),
                "-m", str(self.monitor),
                "-js",
                "-sd", str(self.directory / "js"),
                "-l", str(self.directory / "nats.log"),
                *self.options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        probe = f"http://127.0.0.1:{self.monitor}/healthz?js-enabled-only=true"
        while True:
            try:
                with urllib.request.urlopen(probe, timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def own_server(nats_url: str, tmp_path: Path) -> Iterator[Callable[..., _Server]]:
    """Starts servers of the test's own; stops them afterwards."""
    servers: list[_Server] = []

    def start(*options: str) -> _Server:
        server = _Server(tmp_path / f"server{len(servers)}", *options)
        server.directory.mkdir()
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


# -- the contract --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRANSPORT_CHECKS))
async def test_conformance(name: str, make: Callable[..., NATSTransport]) -> None:
    await TRANSPORT_CHECKS[name](make, delay_tolerance=0.5)


async def test_capabilities(make: Callable[..., NATSTransport]) -> None:
    expected = Capabilities(
        crosses_processes=True,
        native_delay=True,
        ordered_by_key=False,
        max_message_size=1024 * 1024 - 8 * 1024,
    )
    transport = make()
    assert transport.capabilities == expected
    async with transport:
        assert transport.capabilities == expected  # the server's max_payload: 1 MB


# -- layout --------------------------------------------------------------------


def test_names_are_encoded() -> None:
    assert encode_name("orders-paid") == "orders-paid"
    assert encode_name("orders.paid") == "orders_2Epaid"
    assert encode_name("a_b") == "a_5Fb"
    assert encode_name("caf\u00e9 >") == "caf_C3_A9_20_3E"
    long = encode_name("x" * 500)
    assert len(long) == 120
    assert long != encode_name("x" * 501)


async def test_a_stream_per_topic_and_a_consumer_per_group(
    make: Callable[..., NATSTransport], raw: Client, prefix: str
) -> None:
    async with make() as transport:
        first = await transport.subscribe("orders.paid", "billing")
        second = await transport.subscribe("orders.paid", "audit")
        js = raw.jetstream()
        info = await js.stream_info(f"{prefix}_orders_2Epaid")
        assert info.config.subjects == [f"{prefix}.orders_2Epaid"]
        assert info.config.retention == "interest"
        consumers = {c.name for c in await js.consumers_info(f"{prefix}_orders_2Epaid")}
        assert consumers == {"billing", "audit"}
        await first.aclose()
        await second.aclose()
        # Durable groups stay, without a consumer.
        assert len(await js.consumers_info(f"{prefix}_orders_2Epaid")) == 2


async def test_publish_to_nobody_makes_nothing(
    make: Callable[..., NATSTransport], raw: Client, prefix: str
) -> None:
    async with make() as transport:
        await transport.publish("nobody-listens", b"dropped")
    assert await _streams(raw, prefix) == []


async def test_publish_to_one_group_is_acked_unseen_by_the_others(
    make: Callable[..., NATSTransport], raw: Client, prefix: str
) -> None:
    async with make() as transport:
        chosen = await transport.subscribe("t", "chosen")
        other = await transport.subscribe("t", "other")
        await transport.publish("t", b"to one", group="chosen")
        await transport.publish("t", b"to a group nobody has", group="nobody")
        delivery = await _receive(chosen)
        assert delivery.body == b"to one"
        await delivery.ack()
        await _nothing(other, 0.3)
        await _nothing(chosen, 0.1)
        assert await transport.backlog("t", "other") == 0
        info = await raw.jetstream().stream_info(f"{prefix}_t")
        assert info.state.messages == 0  # every group acked both: interest retention removed them
        await chosen.aclose()
        await other.aclose()


async def test_headers_of_any_text_travel_as_json(make: Callable[..., NATSTransport]) -> None:
    headers = {"multi\r\nline": "va\r\nlue: x", "Case": "kept", "case": "too", "": "empty name"}
    async with make() as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"x", headers, key="k\n1")
        delivery = await _receive(subscription)
        assert dict(delivery.headers) == headers
        await delivery.ack()
        await subscription.aclose()


async def test_bad_headers_from_another_program_are_delivered_without(
    make: Callable[..., NATSTransport], raw: Client, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    async with make() as transport:
        subscription = await transport.subscribe("t", "g")
        js = raw.jetstream()
        await js.publish(f"{prefix}.t", b"\xff not json", headers={"Flowkit-Headers": "[1, 2]"})
        await js.publish(f"{prefix}.t", b"plain", headers={"Other": "header"})
        bad, plain = await _receive(subscription), await _receive(subscription)
        assert (bad.body, dict(bad.headers)) == (b"\xff not json", {})
        assert (plain.body, dict(plain.headers)) == (b"plain", {})
        await subscription.ack_many([bad, plain])
        await subscription.aclose()
    assert sum("not a JSON object of strings" in r.getMessage() for r in caplog.records) == 1


# -- redelivery ------------------------------------------------------------------


async def test_the_messages_of_a_dead_consumer_come_back_after_ack_wait(
    make: Callable[..., NATSTransport], raw: Client, prefix: str
) -> None:
    async with make(ack_wait=1) as transport:
        subscription = await transport.subscribe("t", "g")
        await subscription.aclose()
        await transport.publish("t", b"taken by the dead")
        # Another process takes it and dies without a word.
        dead = await raw.jetstream().pull_subscribe_bind("g", stream=f"{prefix}_t")
        (taken,) = await dead.fetch(1, timeout=5)
        assert taken.data == b"taken by the dead"
        subscription = await transport.subscribe("t", "g")
        start = time.monotonic()
        delivery = await _receive(subscription, timeout=5)
        assert 0.5 < time.monotonic() - start < 10  # not before ack_wait
        # The attempt counts every delivery the server made: one more than the dead's.
        taken_attempt = taken.metadata.num_delivered
        assert (delivery.body, delivery.attempt) == (b"taken by the dead", taken_attempt + 1)
        await delivery.ack()
        await subscription.aclose()


async def test_a_live_consumer_keeps_what_it_holds(make: Callable[..., NATSTransport]) -> None:
    async with make(ack_wait=1, prefetch=10) as transport:
        first = await transport.subscribe("t", "g")
        second = await transport.subscribe("t", "g")
        await transport.publish("t", b"a long handler")
        got: Delivery | None = None
        with anyio.fail_after(5):
            while got is None:
                for subscription in (first, second):
                    with anyio.move_on_after(0.05):
                        got = await subscription.receive()
                        holder, idle = subscription, (second if subscription is first else first)
                        break
        # Held three times ack_wait: in-progress acks keep it from the other consumer.
        await _nothing(idle, 3.0)
        await got.ack()
        await holder.aclose()
        await idle.aclose()


async def test_close_gives_back_what_was_buffered(make: Callable[..., NATSTransport]) -> None:
    async with make(prefetch=10) as transport:
        first = await transport.subscribe("t", "g")
        for i in range(5):
            await transport.publish("t", b"%d" % i)
        taken = await _receive(first)  # the other four wait in its buffer
        await taken.ack()
        await anyio.sleep(0.1)
        await first.aclose()
        second = await transport.subscribe("t", "g")
        bodies = sorted([(await _receive(second, timeout=3)).body for _ in range(4)])
        assert bodies == [b"1", b"2", b"3", b"4"]
        await second.aclose()


async def test_non_durable_group_leaves_nothing_on_the_server(
    make: Callable[..., NATSTransport], raw: Client, prefix: str
) -> None:
    async with make() as transport:
        durable = await transport.subscribe("shared", "durable")
        inbox = await transport.subscribe("shared", "inbox", durable=False)
        alone = await transport.subscribe("replies", "replies", durable=False)
        await transport.publish("shared", b"x")
        await transport.publish("replies", b"y")
        await _receive(inbox)  # held, never acked
        await inbox.aclose()
        await alone.aclose()
        js = raw.jetstream()
        assert {c.name for c in await js.consumers_info(f"{prefix}_shared")} == {"durable"}
        assert await _streams(raw, prefix) == [f"{prefix}_shared"]
        await durable.aclose()


# -- the server goes away -------------------------------------------------------


async def test_a_publish_retried_after_a_late_ack_is_stored_once(
    own_server: Callable[..., _Server],
) -> None:
    """The server stalls past an attempt's wait for its ack: the publish tries again,
    and JetStream keeps one copy (every attempt carries the same message id)."""
    server = own_server()
    topic, group = _name("topic"), _name("group")
    assert server.process is not None
    async with NATSTransport(server.url(), prefix="t", publish_timeout=8) as transport:
        subscription = await transport.subscribe(topic, group)
        async with anyio.create_task_group() as tg:
            server.process.send_signal(signal.SIGSTOP)
            try:
                tg.start_soon(transport.publish, topic, b"once")
                await anyio.sleep(3)  # past the first attempt's two seconds
            finally:
                server.process.send_signal(signal.SIGCONT)
        delivery = await _receive(subscription, timeout=10)
        assert (delivery.body, delivery.attempt) == (b"once", 1)
        await delivery.ack()
        await _nothing(subscription, 1.0)
        assert await transport.backlog(topic, group) == 0
        await subscription.aclose()


async def test_a_restart_loses_nothing(
    own_server: Callable[..., _Server], caplog: pytest.LogCaptureFixture
) -> None:
    """Acked messages stay acked, unacked and unread ones are all delivered after
    the server restarts; a receiver blocked meanwhile carries on."""
    server = own_server()
    topic, group, other = _name("topic"), _name("group"), _name("other")
    caplog.set_level(logging.INFO, logger=_LOGGER)
    async with NATSTransport(server.url(), prefix="t", prefetch=5) as transport:
        subscription = await transport.subscribe(topic, group)
        waiting = await transport.subscribe(topic, other)
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
            await anyio.sleep(0.2)  # the acks reach the server before it stops
            await anyio.to_thread.run_sync(server.restart)
            for i in range(30, 40):
                await transport.publish(topic, b"%d" % i)
            after = []
            for _ in range(25):
                delivery = await _receive(subscription, timeout=15)
                after.append(delivery.body)
                await delivery.ack()
            await subscription.ack_many(held)
            with anyio.fail_after(10):
                while len(other_got) < 40:
                    await anyio.sleep(0.01)
        assert sorted(after) == sorted(b"%d" % i for i in range(15, 40))
        assert sorted(set(other_got)) == sorted(b"%d" % i for i in range(40))
        await _nothing(subscription, 0.3)
        with anyio.fail_after(5):
            while await transport.backlog(topic, group):
                await anyio.sleep(0.05)
        await subscription.aclose()
        await waiting.aclose()
    messages = [r.getMessage() for r in caplog.records if r.name == _LOGGER]
    assert any("lost; reconnecting" in m for m in messages)
    assert any("back" in m for m in messages)


async def test_a_group_lost_by_the_server_is_created_again(
    make: Callable[..., NATSTransport], raw: Client, prefix: str
) -> None:
    async with make() as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"before")
        await (await _receive(subscription)).ack()
        await raw.jetstream().delete_stream(f"{prefix}_t")
        with anyio.fail_after(20):
            while True:
                # The stream comes back once the subscription finds its consumer gone.
                with anyio.move_on_after(0.5):
                    delivery = await subscription.receive()
                    break
                await transport.publish("t", b"after")
        assert delivery.body == b"after"
        await delivery.ack()
        await subscription.aclose()


async def test_publish_waits_no_longer_than_its_timeout(
    own_server: Callable[..., _Server],
) -> None:
    server = own_server()
    async with NATSTransport(server.url(), publish_timeout=1) as transport:
        subscription = await transport.subscribe("t", "g")
        await anyio.to_thread.run_sync(server.stop)
        start = time.monotonic()
        with pytest.raises(TransportError, match="publish"):
            await transport.publish("t", b"nobody to take it")
        assert time.monotonic() - start < 2
        await anyio.to_thread.run_sync(server.start)
        with anyio.fail_after(10):
            while True:
                try:
                    await transport.publish("t", b"resumed")
                    break
                except TransportError:
                    pass
        # What failed may still arrive: nats-py kept it to send once reconnected.
        bodies = [(await _receive(subscription)).body]
        if bodies[0] != b"resumed":
            bodies.append((await _receive(subscription)).body)
        assert bodies[-1] == b"resumed"
        assert set(bodies) <= {b"nobody to take it", b"resumed"}
        await subscription.aclose()


# -- security -------------------------------------------------------------------

_PASSWORD = "pw-" + uuid.uuid4().hex


async def test_the_password_never_shows(
    own_server: Callable[..., _Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = own_server("--user", "app", "--pass", _PASSWORD)
    caplog.set_level(logging.DEBUG)
    good = NATSTransport(server.url(f"app:{_PASSWORD}"))
    assert _PASSWORD not in repr(good)
    async with good as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"authenticated")
        assert (await _receive(subscription)).body == b"authenticated"
        await subscription.aclose()

    shown: list[str] = []
    wrong = NATSTransport(server.url(f"app:not-{_PASSWORD}"), connect_timeout=2)
    with pytest.raises(TransportError) as refused:
        await wrong.__aenter__()
    unreachable = NATSTransport(f"nats://app:{_PASSWORD}@127.0.0.1:1", connect_timeout=1)
    with pytest.raises(TransportError) as missing:
        await unreachable.__aenter__()
    with pytest.raises(ValueError) as bad_scheme:
        NATSTransport(f"http://app:{_PASSWORD}@host/")
    with pytest.raises(ValueError) as bad_option:
        NATSTransport(f"nats://app:{_PASSWORD}@host/?ack_wait=soon")
    for error in (refused.value, missing.value, bad_scheme.value, bad_option.value):
        chain: BaseException | None = error
        while chain is not None:
            shown += [str(chain), repr(chain)]
            chain = chain.__cause__ or chain.__context__
    shown += [repr(wrong), repr(unreachable), caplog.text]
    shown += [r.getMessage() for r in caplog.records]
    assert "127.0.0.1:1" in str(missing.value)
    assert all(_PASSWORD not in text for text in shown)


async def test_tls(own_server: Callable[..., _Server], tmp_path: Path) -> None:
    import ssl

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("this test makes a certificate with openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await anyio.run_process(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ]
    )  # fmt: skip
    server = own_server(
        "--tls", "--tlscert", str(cert), "--tlskey", str(key), "--user", "app", "--pass", _PASSWORD
    )
    url = server.url(f"app:{_PASSWORD}", scheme="tls")
    context = ssl.create_default_context(cafile=str(cert))
    async with NATSTransport(url, nats_options={"tls": context}) as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"over TLS")
        delivery = await _receive(subscription)
        assert delivery.body == b"over TLS"
        await delivery.ack()
        await subscription.aclose()
    untrusted = NATSTransport(url, connect_timeout=2)
    with pytest.raises(TransportError) as refused:
        await untrusted.__aenter__()
    assert _PASSWORD not in str(refused.value)


# -- use -------------------------------------------------------------------------


async def test_entered_several_times(make: Callable[..., NATSTransport]) -> None:
    transport = make()
    async with transport:
        async with transport:
            subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"still open")
        assert (await _receive(subscription)).body == b"still open"
    with pytest.raises(TransportClosed):
        await transport.publish("t", b"closed")
    with pytest.raises(TransportClosed):
        await subscription.receive()
    async with transport:
        assert await transport.backlog("t", "g") == 1  # given back when it closed


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="prefetch"):
        NATSTransport("nats://localhost", prefetch=0)
    with pytest.raises(ValueError, match="ack_wait"):
        NATSTransport("nats://localhost", ack_wait=0.5)
    with pytest.raises(ValueError, match="max_len"):
        NATSTransport("nats://localhost", max_len=0)
    with pytest.raises(ValueError, match="prefix"):
        NATSTransport("nats://localhost", prefix="a.b")
    with pytest.raises(ValueError, match="storage"):
        NATSTransport("nats://localhost", storage="disk")
    with pytest.raises(ValueError, match="unknown NATSTransport URL option"):
        NATSTransport("nats://localhost?claim_idle=3")


async def test_options_in_the_url(nats_url: str, raw: Client, prefix: str) -> None:
    transport = from_url(f"{nats_url}?prefix={prefix}&ack_wait=1&storage=memory&max_len=")
    assert isinstance(transport, NATSTransport)
    assert transport.prefix == prefix
    async with transport:
        subscription = await transport.subscribe("t", "g")
        info = await raw.jetstream().stream_info(f"{prefix}_t")
        assert info.config.storage == "memory"
        consumer = await raw.jetstream().consumer_info(f"{prefix}_t", "g")
        assert consumer.config.ack_wait == 1
        await subscription.aclose()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused_clearly(anyio_backend: str) -> None:
    transport = NATSTransport(f"nats://app:{_PASSWORD}@127.0.0.1:1")
    with pytest.raises(TransportError, match="asyncio only") as refused:
        async with transport:
            pass
    assert _PASSWORD not in str(refused.value)


def test_from_url_knows_both_schemes() -> None:
    for url in ("nats://127.0.0.1:4222", "tls://app:pw@nats.internal:4222?prefix=shop"):
        transport = from_url(url)
        assert isinstance(transport, NATSTransport)
        assert "pw" not in repr(transport)


def test_a_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from flowkit import MissingDependency

    # As if nats-py were not installed, and the NATS transport never imported.
    for name in [n for n in sys.modules if n == "nats" or n.startswith("nats.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nats", None)
    for name in [n for n in sys.modules if n.startswith("flowkit.transports._nats")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependency, match=r"pip install 'flowkit\[nats\]'"):
        from_url("nats://localhost:4222")
