"""The NATS transport: what is NATS's own, on a real server (what every broker
transport does alike is in ``test_transport_brokers.py``).

The server comes from ``FLOWKIT_NATS_URL`` (nats-server with ``-js``); without it
every test skips, unless ``FLOWKIT_REQUIRE_BROKERS=1`` makes them fail. The tests
that restart a server, or need credentials or TLS, start one of their own with
the ``nats-server`` binary (on free loopback ports, in a temporary directory).
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import time
import urllib.request
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import pytest

from flowkit._errors import TransportError

from ._transport_util import (
    PASSWORD,
    certificate,
    check_a_restart_loses_nothing,
    check_the_password_never_shows,
    check_tls,
    free_port,
    nothing,
    own_servers,
    publish_until_received,
    receive,
    shown,
    unique_name,
)
from .brokers import NATS, fixtures_for, unavailable
from .brokers import make as make
from .brokers import prefix as prefix
from .brokers import url as url

try:
    import nats
    import nats.js.errors

    from flowkit.transports import from_url
    from flowkit.transports._nats import NATSTransport
    from flowkit.transports._nats._client import encode_name
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    NATS.skip_module(exc)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from nats.aio.client import Client

    from flowkit.transports._base import Delivery

pytestmark = pytest.mark.anyio

_LOGGER = "flowkit.transport.nats"


broker, anyio_backend = fixtures_for(NATS)


@pytest.fixture
async def raw(url: str) -> AsyncIterator[Client]:
    """A plain nats-py client on the test server, to look at what the transport made."""
    client = await nats.connect(url)
    yield client
    await client.close()


# -- a server of the test's own ------------------------------------------------


class _Server:
    """A nats-server with JetStream on free loopback ports, storing in a directory."""

    def __init__(self, directory: Path, *options: str) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            unavailable("this test starts a server of its own: install nats-server")
        self.binary = binary
        self.directory = directory
        self.options = options
        self.port = free_port()
        self.monitor = free_port()
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
def own_server(url: str, tmp_path: Path) -> Iterator[Callable[..., _Server]]:
    """Starts servers of the test's own; stops them afterwards."""
    yield from own_servers(_Server, tmp_path)


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


async def test_publish_to_one_group_is_acked_unseen_by_the_others(
    make: Callable[..., NATSTransport], raw: Client, prefix: str
) -> None:
    async with make() as transport:
        chosen = await transport.subscribe("t", "chosen")
        other = await transport.subscribe("t", "other")
        await transport.publish("t", b"to one", group="chosen")
        await transport.publish("t", b"to a group nobody has", group="nobody")
        delivery = await receive(chosen)
        assert delivery.body == b"to one"
        await delivery.ack()
        await nothing(other, 0.3)
        await nothing(chosen, 0.1)
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
        delivery = await receive(subscription)
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
        bad, plain = await receive(subscription), await receive(subscription)
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
        delivery = await receive(subscription, timeout=5)
        assert 0.5 < time.monotonic() - start < 10  # not before ack_wait
        # The attempt counts every delivery the server made, so it is past the dead's
        # (JetStream may have redelivered it more than once meanwhile).
        assert delivery.body == b"taken by the dead"
        assert delivery.attempt > taken.metadata.num_delivered
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
        await nothing(idle, 3.0)
        await got.ack()
        await holder.aclose()
        await idle.aclose()


async def test_close_gives_back_what_was_buffered(make: Callable[..., NATSTransport]) -> None:
    async with make(prefetch=10) as transport:
        first = await transport.subscribe("t", "g")
        for i in range(5):
            await transport.publish("t", b"%d" % i)
        taken = await receive(first)  # the other four wait in its buffer
        await taken.ack()
        await anyio.sleep(0.1)
        await first.aclose()
        second = await transport.subscribe("t", "g")
        bodies = sorted([(await receive(second, timeout=3)).body for _ in range(4)])
        assert bodies == [b"1", b"2", b"3", b"4"]
        await second.aclose()


async def test_non_durable_group_leaves_nothing_on_the_server(
    make: Callable[..., NATSTransport], raw: Client, url: str, prefix: str
) -> None:
    async with make() as transport:
        durable = await transport.subscribe("shared", "durable")
        inbox = await transport.subscribe("shared", "inbox", durable=False)
        alone = await transport.subscribe("replies", "replies", durable=False)
        await transport.publish("shared", b"x")
        await transport.publish("replies", b"y")
        await receive(inbox)  # held, never acked
        await inbox.aclose()
        await alone.aclose()
        js = raw.jetstream()
        assert {c.name for c in await js.consumers_info(f"{prefix}_shared")} == {"durable"}
        assert await NATS.names(url, prefix) == [f"{prefix}_shared"]
        await durable.aclose()


# -- the server goes away -------------------------------------------------------


async def test_a_publish_retried_after_a_late_ack_is_stored_once(
    own_server: Callable[..., _Server],
) -> None:
    """The server stalls past an attempt's wait for its ack: the publish tries again,
    and JetStream keeps one copy (every attempt carries the same message id)."""
    server = own_server()
    topic, group = unique_name("topic"), unique_name("group")
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
        delivery = await receive(subscription, timeout=10)
        assert (delivery.body, delivery.attempt) == (b"once", 1)
        await delivery.ack()
        await nothing(subscription, 1.0)
        assert await transport.backlog(topic, group) == 0
        await subscription.aclose()


async def test_a_restart_loses_nothing(
    own_server: Callable[..., _Server], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is lost across a restart of the server; acks are sent without waiting
    for the server's answer."""
    server = own_server()
    caplog.set_level(logging.INFO, logger=_LOGGER)
    async with NATSTransport(server.url(), prefix="t", prefetch=5) as transport:
        await check_a_restart_loses_nothing(transport, server.restart, acks_confirmed=False)
    messages = [r.getMessage() for r in caplog.records if r.name == _LOGGER]
    assert any("lost; reconnecting" in m for m in messages)
    assert any("back" in m for m in messages)


async def test_what_is_published_while_the_server_stops_is_stored_or_refused(
    own_server: Callable[..., _Server],
) -> None:
    """A server stopping gracefully shuts JetStream down before it closes its
    connections, and answers the publishes of that moment with "no responders":
    each such publish is tried again (stored once the server is back) or fails,
    never reported stored when JetStream did not take it.

    JetStream numbers what it takes: the stream's last sequence counts every
    publish that returned (and perhaps some that failed late). What JetStream
    took and then dropped itself (nats-server 2.9 ends an interest stream's
    consumers before the stream while it stops, so a message taken in between
    has no interest) is the server's, and is not counted here."""
    server = own_server()
    published = refused = 0
    async with NATSTransport(server.url(), prefix="t", publish_timeout=20) as transport:
        subscription = await transport.subscribe("orders", "billing")
        running = True

        async def publish() -> None:
            nonlocal published, refused
            while running:
                try:
                    await transport.publish("orders", b"order")
                except TransportError:
                    refused += 1
                else:
                    published += 1

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(publish)
            for _ in range(3):
                await anyio.sleep(0.3)
                await anyio.to_thread.run_sync(server.restart)
            await anyio.sleep(0.3)
            running = False
        await subscription.aclose()
    client = await nats.connect(server.url())
    try:
        info = await client.jetstream().stream_info("t_orders")
    finally:
        await client.close()
    taken = info.state.last_seq
    assert published > 100
    assert published <= taken <= published + refused, (published, refused, taken)


async def test_a_group_lost_by_the_server_is_created_again(
    make: Callable[..., NATSTransport], raw: Client, prefix: str
) -> None:
    async with make() as transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"before")
        await (await receive(subscription)).ack()
        await raw.jetstream().delete_stream(f"{prefix}_t")
        # The stream comes back once the subscription finds its consumer gone.
        delivery = await publish_until_received(transport, subscription, "t", within=20, every=0.5)
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
        bodies = [(await receive(subscription)).body]
        if bodies[0] != b"resumed":
            bodies.append((await receive(subscription)).body)
        assert bodies[-1] == b"resumed"
        assert set(bodies) <= {b"nobody to take it", b"resumed"}
        await subscription.aclose()


# -- security -------------------------------------------------------------------


async def test_the_password_never_shows(
    own_server: Callable[..., _Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = own_server("--user", "app", "--pass", PASSWORD)
    await check_the_password_never_shows(
        lambda url: NATSTransport(url, connect_timeout=2),
        lambda password: server.url(f"app:{password}"),
        caplog,
    )


def test_a_bad_option_is_refused_without_the_password() -> None:
    with pytest.raises(ValueError) as bad_option:
        NATSTransport(f"nats://app:{PASSWORD}@host/?ack_wait=soon")
    assert all(PASSWORD not in text for text in shown(bad_option.value))


async def test_tls(own_server: Callable[..., _Server], tmp_path: Path) -> None:
    import ssl

    cert, key = await anyio.to_thread.run_sync(certificate, tmp_path)
    server = own_server(
        "--tls", "--tlscert", str(cert), "--tlskey", str(key), "--user", "app", "--pass", PASSWORD
    )
    url = server.url(f"app:{PASSWORD}", scheme="tls")
    context = ssl.create_default_context(cafile=str(cert))
    await check_tls(
        NATSTransport(url, nats_options={"tls": context}), NATSTransport(url, connect_timeout=2)
    )


# -- use -------------------------------------------------------------------------


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


async def test_options_in_the_url(url: str, raw: Client, prefix: str) -> None:
    transport = from_url(f"{url}?prefix={prefix}&ack_wait=1&storage=memory&max_len=")
    assert isinstance(transport, NATSTransport)
    assert transport.prefix == prefix
    async with transport:
        subscription = await transport.subscribe("t", "g")
        info = await raw.jetstream().stream_info(f"{prefix}_t")
        assert info.config.storage == "memory"
        consumer = await raw.jetstream().consumer_info(f"{prefix}_t", "g")
        assert consumer.config.ack_wait == 1
        await subscription.aclose()


def test_from_url_knows_both_schemes() -> None:
    for address in ("nats://127.0.0.1:4222", "tls://app:pw@nats.internal:4222?prefix=shop"):
        transport = from_url(address)
        assert isinstance(transport, NATSTransport)
        assert "pw" not in repr(transport)
