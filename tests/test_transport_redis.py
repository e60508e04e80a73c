"""The Redis transport: what is Redis's own, on a real server (what every broker
transport does alike is in ``test_transport_brokers.py``).

The server comes from ``FLOWKIT_REDIS_URL``; without it every test skips,
unless ``FLOWKIT_REQUIRE_BROKERS=1`` makes them fail. The tests that restart,
pause or lock a server start one of their own with the ``redis-server``
binary (on a free loopback port, in a temporary directory).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, cast

import anyio
import anyio.to_thread
import pytest

from flowkit._errors import TransportClosed, TransportError

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
    unique_name,
)
from .brokers import REDIS, fixtures_for, unavailable, with_query
from .brokers import make as make
from .brokers import prefix as prefix
from .brokers import url as url

try:
    import redis
    from redis.asyncio import Redis

    from flowkit.transports import from_url
    from flowkit.transports._redis import RedisTransport
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
    REDIS.skip_module(exc)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from flowkit.transports._base import Delivery, Subscription

pytestmark = pytest.mark.anyio

_LOGGER = "flowkit.transport.redis"


broker, anyio_backend = fixtures_for(REDIS)


@pytest.fixture
async def raw(url: str) -> AsyncIterator[Redis]:
    """A plain redis-py client on the test server, to look at what the transport wrote."""
    client = Redis.from_url(url)
    yield client
    await client.aclose()


async def _keys(raw: Redis, prefix: str) -> set[bytes]:
    return {key async for key in raw.scan_iter(match=f"{prefix}:*", count=1000)}


async def _entries(raw: Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return cast("list[tuple[bytes, dict[bytes, bytes]]]", await raw.xrange(key))


# -- a server of the test's own ------------------------------------------------


class _Server:
    """A redis-server on a free loopback port, persisting to an append-only file."""

    def __init__(self, directory: Path, *options: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("this test starts a server of its own: install redis-server")
        self.binary = binary
        self.directory = directory
        self.options = options
        self.port = free_port()
        self.pid = 0

    def url(self, password: str | None = None) -> str:
        auth = f":{password}@" if password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        pidfile = self.directory / "redis.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--daemonize", "yes",
                "--dir", str(self.directory),
                "--pidfile", str(pidfile),
                "--logfile", str(self.directory / "redis.log"),
                "--save", "",
                "--appendonly", "yes",
                *self.options,
            ],
            check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    reply = conn.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")) and pidfile.exists():
                    self.pid = int(pidfile.read_text())
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if not self.pid:
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
            time.sleep(0.02)
        self.pid = 0

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def own_server(url: str, tmp_path: Path) -> Iterator[Callable[..., _Server]]:
    """Starts servers of the test's own; stops them afterwards."""
    yield from own_servers(_Server, tmp_path)


# -- layout --------------------------------------------------------------------


async def test_subscribe_creates_the_group_before_it_returns(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        stream, own = f"{prefix}:{topic}", f"{prefix}:{topic}:to:{group}"
        for key in (stream, own):
            groups = await raw.xinfo_groups(key)
            assert [g["name"] for g in groups] == [group.encode()]
        await transport.publish(topic, b"body", {"h": "\u2713"}, key="order-1")
        entries = await _entries(raw, stream)
        assert len(entries) == 1
        assert entries[0][1] == {
            b"body": b"body",
            b"headers": '{"h":"\u2713"}'.encode(),
            b"key": b"order-1",
        }
        delivery = await receive(subscription)
        assert (delivery.body, dict(delivery.headers), delivery.attempt) == (
            b"body",
            {"h": "\u2713"},
            1,
        )
        await delivery.ack()
        await subscription.aclose()


async def test_publish_to_one_group_goes_through_its_own_stream(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    topic, chosen, other = unique_name("topic"), unique_name("chosen"), unique_name("other")
    async with make() as transport:
        to_chosen = await transport.subscribe(topic, chosen)
        to_other = await transport.subscribe(topic, other)
        await transport.publish(topic, b"replayed", group=chosen)
        assert await raw.xlen(f"{prefix}:{topic}") == 0
        assert await raw.xlen(f"{prefix}:{topic}:to:{chosen}") == 1
        delivery = await receive(to_chosen)
        assert (delivery.body, delivery.attempt) == (b"replayed", 1)
        await delivery.ack()
        await nothing(to_other, 0.3)
        assert await transport.backlog(topic, chosen) == 0
        await to_chosen.aclose()
        await to_other.aclose()


async def test_large_bodies_published_together(make: Callable[..., RedisTransport]) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    bodies = [bytes([i]) * (1024 * 1024) for i in range(12)] + [b"\x00" * (9 * 1024 * 1024)]
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        async with anyio.create_task_group() as tg:
            for body in bodies:
                tg.start_soon(transport.publish, topic, body)
        got = [await receive(subscription) for _ in bodies]
        assert sorted(d.body for d in got) == sorted(bodies)
        await subscription.ack_many(got)
        await subscription.aclose()


# -- nack, delays, attempts ----------------------------------------------------


async def test_nack_with_delay_waits_in_a_sorted_set(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    stream = f"{prefix}:{topic}"
    delayed = f"{prefix}:{topic}:delayed:{group}"
    own = f"{prefix}:{topic}:to:{group}"
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"later", {"x": "1"})
        delivery = await receive(subscription)
        await delivery.nack(0.4)
        assert await raw.zcard(delayed) == 1
        assert (await raw.xpending(stream, group))["pending"] == 0
        assert await transport.backlog(topic, group) == 1
        again = await receive(subscription)
        assert (again.body, dict(again.headers), again.attempt) == (b"later", {"x": "1"}, 2)
        assert await raw.zcard(delayed) == 0
        entries = await _entries(raw, own)
        assert entries[-1][1][b"attempt"] == b"1"
        await again.nack(0)
        third = await receive(subscription)
        assert (third.body, third.attempt) == (b"later", 3)
        await third.ack()
        assert await transport.backlog(topic, group) == 0
        await subscription.aclose()


async def test_nack_after_the_entry_was_settled_adds_nothing(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    """A nack of an entry someone else acked already (it was reclaimed) is a no-op."""
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"once")
        delivery = await receive(subscription)
        entry_id = (await _entries(raw, f"{prefix}:{topic}"))[0][0]
        await raw.xack(f"{prefix}:{topic}", group, entry_id)
        await delivery.nack(0)
        await nothing(subscription, 0.3)
        assert await raw.xlen(f"{prefix}:{topic}:to:{group}") == 0
        await subscription.aclose()


async def test_delayed_messages_come_back_once_with_several_processes(
    make: Callable[..., RedisTransport],
) -> None:
    """Two transports (two processes), two consumers each, move every delayed
    message back exactly once."""
    topic, group = unique_name("topic"), unique_name("group")
    count = 60
    received: list[tuple[bytes, int]] = []
    done = anyio.Event()

    async def consume(subscription: Subscription) -> None:
        while True:
            delivery = await subscription.receive()
            received.append((delivery.body, delivery.attempt))
            if delivery.attempt == 1:
                await delivery.nack(0.3)
            else:
                await delivery.ack()
            if len(received) >= 2 * count:
                done.set()

    async with make() as first, make() as second:
        subscriptions = [
            await transport.subscribe(topic, group) for transport in (first, second, first, second)
        ]
        async with anyio.create_task_group() as tg:
            for subscription in subscriptions:
                tg.start_soon(consume, subscription)
            for i in range(count):
                await first.publish(topic, b"%d" % i)
            with anyio.fail_after(10):
                await done.wait()
            await anyio.sleep(0.5)
            tg.cancel_scope.cancel()
        assert await first.backlog(topic, group) == 0
        for subscription in subscriptions:
            await subscription.aclose()
    again = sorted(body for body, attempt in received if attempt == 2)
    assert again == sorted(b"%d" % i for i in range(count))
    assert len(received) == 2 * count


async def test_entries_of_a_dead_consumer_are_reclaimed(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    """Entries a consumer took and never settled go to a live consumer after
    claim_idle, with Redis's delivery count as attempt."""
    topic, group = unique_name("topic"), unique_name("group")
    stream = f"{prefix}:{topic}"
    async with make(claim_idle=0.3) as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"taken once")
        await transport.publish(topic, b"taken twice", {"h": "v"})
        # Consumers that read and die without acking.
        await raw.xreadgroup(group, "dead", {stream: ">"}, count=2)
        twice = (await _entries(raw, stream))[1][0]
        await raw.xclaim(stream, group, "dead too", 0, [twice])
        got = {}
        for _ in range(2):
            delivery = await receive(subscription, timeout=5)
            got[delivery.body] = (dict(delivery.headers), delivery.attempt)
            await delivery.ack()
        assert got == {b"taken once": ({}, 2), b"taken twice": ({"h": "v"}, 3)}
        assert (await raw.xpending(stream, group))["pending"] == 0
        await nothing(subscription, 0.8)
        await subscription.aclose()


async def test_a_live_consumer_keeps_what_it_holds(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    """A consumer that takes longer than claim_idle to settle keeps its entries
    while its process runs: nobody else gets them."""
    topic, group = unique_name("topic"), unique_name("group")
    async with make(claim_idle=0.3) as first, make(claim_idle=0.3) as second:
        slow = await first.subscribe(topic, group)
        other = await second.subscribe(topic, group)
        for i in range(3):
            await first.publish(topic, b"%d" % i)
        held = [await receive(slow)]  # two more wait in its buffer
        await nothing(other, 1.5)
        held += [await receive(slow), await receive(slow)]
        assert sorted(d.attempt for d in held) == [1, 1, 1]
        await slow.ack_many(held)
        assert (await raw.xpending(f"{prefix}:{topic}", group))["pending"] == 0
        await slow.aclose()
        await other.aclose()


async def test_close_gives_back_buffered_entries_without_counting_them(
    make: Callable[..., RedisTransport],
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    async with make(prefetch=10) as transport:
        first = await transport.subscribe(topic, group)
        for i in range(5):
            await transport.publish(topic, b"%d" % i)
        taken = await receive(first)
        assert taken.body == b"0"
        second = await transport.subscribe(topic, group)
        await first.aclose()
        got = {}
        for _ in range(5):
            delivery = await receive(second)
            got[delivery.body] = delivery.attempt
            await delivery.ack()
        assert got == {b"0": 2, b"1": 1, b"2": 1, b"3": 1, b"4": 1}
        assert await transport.backlog(topic, group) == 0
        await second.aclose()


async def test_close_interrupts_a_blocked_read_at_once(
    make: Callable[..., RedisTransport],
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    outcome: list[str] = []

    async def blocked(subscription: Subscription) -> None:
        try:
            await subscription.receive()
        except TransportClosed:
            outcome.append("closed")

    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked, subscription)
            await anyio.sleep(0.2)  # the read now waits on the server
            start = time.monotonic()
            await subscription.aclose()
        assert time.monotonic() - start < 0.5
        assert outcome == ["closed"]


async def test_receive_many_and_ack_many_over_both_streams(
    make: Callable[..., RedisTransport],
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        for i in range(4):
            await transport.publish(topic, b"%d" % i)
        await transport.publish(topic, b"own", group=group)
        got: list[Delivery] = []
        with anyio.fail_after(10):
            while len(got) < 5:
                batch = await subscription.receive_many(10)
                assert 1 <= len(batch) <= 10
                got.extend(batch)
        assert sorted(d.body for d in got) == [b"0", b"1", b"2", b"3", b"own"]
        assert await transport.backlog(topic, group) == 5
        await subscription.ack_many(got)
        assert await transport.backlog(topic, group) == 0
        await subscription.aclose()


async def test_backlog_counts_both_streams_and_the_delayed_set(
    make: Callable[..., RedisTransport],
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    async with make(prefetch=1) as transport:
        assert await transport.backlog(topic, group) == 0
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"a")
        await transport.publish(topic, b"b")
        await transport.publish(topic, b"c", group=group)
        assert await transport.backlog(topic, group) == 3
        delivery = await receive(subscription)
        await delivery.nack(5)
        assert await transport.backlog(topic, group) == 3
        rest = [await receive(subscription), await receive(subscription)]
        assert await transport.backlog(topic, group) == 3
        await subscription.ack_many(rest)
        assert await transport.backlog(topic, group) == 1
        await subscription.aclose()
        assert await transport.backlog(topic, group) == 1


# -- non-durable groups --------------------------------------------------------


async def test_non_durable_group_leaves_no_key(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    topic = unique_name("replies")
    async with make() as transport:
        inbox = await transport.subscribe(topic, topic, durable=False)
        again = await transport.subscribe(topic, topic, durable=False)
        for body in (b"1", b"2", b"3"):
            await transport.publish(topic, body)
        await transport.publish(topic, b"own", group=topic)
        delivery = await receive(inbox)
        await delivery.nack(30)
        await receive(inbox)  # held, not settled
        assert await _keys(raw, prefix) == {
            f"{prefix}:{topic}".encode(),
            f"{prefix}:{topic}:to:{topic}".encode(),
            f"{prefix}:{topic}:delayed:{topic}".encode(),
        }
        await inbox.aclose()
        assert await _keys(raw, prefix) != set()  # another subscription is open
        await again.aclose()
        assert await _keys(raw, prefix) == set()
        await transport.publish(topic, b"after the inbox closed")
        assert await _keys(raw, prefix) == set()


async def test_non_durable_group_beside_a_durable_one(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    topic, durable, inbox = unique_name("topic"), unique_name("durable"), unique_name("inbox")
    async with make() as transport:
        kept = await transport.subscribe(topic, durable)
        await kept.aclose()
        temporary = await transport.subscribe(topic, inbox, durable=False)
        await transport.publish(topic, b"both")
        await temporary.aclose()
        assert await _keys(raw, prefix) == {
            f"{prefix}:{topic}".encode(),
            f"{prefix}:{topic}:to:{durable}".encode(),
        }
        groups = await raw.xinfo_groups(f"{prefix}:{topic}")
        assert [g["name"] for g in groups] == [durable.encode()]
        assert await transport.backlog(topic, durable) == 1


async def test_non_durable_group_with_a_consumer_elsewhere_stays(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    topic = unique_name("replies")
    async with make() as first, make() as second:
        here = await first.subscribe(topic, topic, durable=False)
        there = await second.subscribe(topic, topic, durable=False)
        await here.aclose()
        await second.publish(topic, b"still listening")
        delivery = await receive(there)
        await delivery.ack()
        await there.aclose()
    assert await _keys(raw, prefix) == set()


# -- retention -----------------------------------------------------------------


async def test_retention_trims_what_every_group_settled(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    topic, group, idle = unique_name("topic"), unique_name("group"), unique_name("idle")
    count = 2500
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        asleep = await transport.subscribe(topic, idle)
        await asleep.aclose()  # a durable group that reads nothing

        async def consume() -> None:
            left = count
            while left:
                batch = await subscription.receive_many(100)
                await subscription.ack_many(batch)
                left -= len(batch)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for i in range(count):
                await transport.publish(topic, b"%d" % i)
        # The idle group has read nothing: nothing is trimmed.
        assert await raw.xlen(f"{prefix}:{topic}") == count
        assert await transport.backlog(topic, idle) == count
        # Once it reads and acks, the next trims catch up.
        reader = await transport.subscribe(topic, idle)
        left = count
        while left:
            batch = await reader.receive_many(500)
            await reader.ack_many(batch)
            left -= len(batch)
        for i in range(1000):
            await transport.publish(topic, b"more %d" % i)
        await reader.aclose()
        with anyio.fail_after(5):
            while await raw.xlen(f"{prefix}:{topic}") > 1001:
                await anyio.sleep(0.01)
        await subscription.aclose()


async def test_max_len_drops_the_oldest_with_a_warning(
    make: Callable[..., RedisTransport],
    raw: Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    async with make(max_len=50) as transport:
        subscription = await transport.subscribe(topic, group)
        await subscription.aclose()
        for i in range(300):
            await transport.publish(topic, b"%d" % i)
        with anyio.fail_after(5):
            while await raw.xlen(f"{prefix}:{topic}") > 55:
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        length = await raw.xlen(f"{prefix}:{topic}")
        assert await transport.backlog(topic, group) == length
        drops = [r for r in caplog.records if "max_len=50" in r.getMessage()]
        assert drops
        assert all(r.levelno == logging.WARNING for r in drops)
        counts = [re.search(r"dropped the (\d+) oldest", r.getMessage()) for r in drops]
        dropped = sum(int(found[1]) for found in counts if found is not None)
        assert dropped == 300 - length
        subscription = await transport.subscribe(topic, group)
        first = await receive(subscription)
        assert first.body == b"%d" % (300 - length)
        await subscription.aclose()


# -- entries written by others ------------------------------------------------


async def test_bad_entries_do_not_stop_a_consumer(
    make: Callable[..., RedisTransport],
    raw: Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    stream = f"{prefix}:{topic}"
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        await raw.xadd(stream, {"something": "else"})
        await raw.xadd(stream, {"body": b"\xff\x00\xfe not json", "headers": b"{not json"})
        await raw.xadd(stream, {"body": b"x", "headers": b'{"n": 1}', "attempt": b"many"})
        await raw.xadd(stream, {"body": b"y", "headers": b'["a"]', "attempt": b"2"})
        await transport.publish(topic, b"good", {"h": "v"})
        got = [await receive(subscription) for _ in range(5)]
        assert [(d.body, dict(d.headers), d.attempt) for d in got] == [
            (b"", {}, 1),
            (b"\xff\x00\xfe not json", {}, 1),
            (b"x", {}, 1),
            (b"y", {}, 3),
            (b"good", {"h": "v"}, 1),
        ]
        await subscription.ack_many(got)
        messages = [r.getMessage() for r in caplog.records if r.name == _LOGGER]
        assert sum("no body field" in m for m in messages) == 1
        assert sum("not a JSON object of strings" in m for m in messages) == 3
        await subscription.aclose()


# -- the server goes away -------------------------------------------------------


async def test_a_restart_loses_nothing(
    own_server: Callable[..., _Server], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing is lost across a restart of the server (appendonly yes)."""
    server = own_server()
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    async with RedisTransport(server.url(), prefix="t", prefetch=5) as transport:
        await check_a_restart_loses_nothing(transport, server.restart)
    assert any("lost the connection" in r.getMessage() for r in caplog.records)


async def test_a_group_lost_by_the_server_is_created_again(
    make: Callable[..., RedisTransport], raw: Redis, prefix: str
) -> None:
    topic, group = unique_name("topic"), unique_name("group")
    async with make() as transport:
        subscription = await transport.subscribe(topic, group)
        await transport.publish(topic, b"before")
        await (await receive(subscription)).ack()
        await nothing(subscription, 0.2)  # its read now waits on the server
        await raw.delete(*await _keys(raw, prefix))
        # Keys come back once the subscription reads again and finds its group gone.
        delivery = await publish_until_received(
            transport, subscription, topic, within=10, every=0.2
        )
        assert delivery.body == b"after"
        await delivery.ack()
        await subscription.aclose()


async def test_publish_waits_no_longer_than_its_timeout(
    own_server: Callable[..., _Server],
) -> None:
    server = own_server()
    async with RedisTransport(server.url(), publish_timeout=0.5) as transport:
        subscription = await transport.subscribe("t", "g")
        client = redis.Redis(port=server.port)
        try:
            client.client_pause(3000, all=True)
            start = time.monotonic()
            with pytest.raises(TransportError, match=r"no reply within 0\.5s"):
                await transport.publish("t", b"paused")
            assert time.monotonic() - start < 1.5
        finally:
            client.client_unpause()
            client.close()
        await transport.publish("t", b"resumed")
        await subscription.aclose()


# -- security -------------------------------------------------------------------


async def test_the_password_never_shows(
    own_server: Callable[..., _Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = own_server("--requirepass", PASSWORD)
    await check_the_password_never_shows(RedisTransport, server.url, caplog)


async def test_tls(own_server: Callable[..., _Server], tmp_path: Path) -> None:
    cert, key = await anyio.to_thread.run_sync(certificate, tmp_path)
    tls_port = free_port()
    own_server(
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no",
        "--requirepass", PASSWORD,
    )  # fmt: skip
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/0"
    await check_tls(
        RedisTransport(url, redis_options={"ssl_ca_certs": str(cert)}),
        RedisTransport(url, connect_timeout=2),
    )


# -- use -------------------------------------------------------------------------


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="prefetch"):
        RedisTransport("redis://localhost", prefetch=0)
    with pytest.raises(ValueError, match="claim_idle"):
        RedisTransport("redis://localhost", claim_idle=0)
    with pytest.raises(ValueError, match="max_len"):
        RedisTransport("redis://localhost", max_len=0)
    with pytest.raises(ValueError, match="prefix"):
        RedisTransport("redis://localhost", prefix="")
    with pytest.raises(ValueError, match="decode_responses"):
        RedisTransport("redis://localhost", redis_options={"decode_responses": True})
    with pytest.raises(ValueError, match="protocol"):
        RedisTransport("redis://localhost/0?protocol=3")


async def test_options_in_the_url(url: str, raw: Redis, prefix: str) -> None:
    transport = from_url(
        with_query(url, prefix=prefix, claim_idle=0.3, max_len="", health_check_interval=5)
    )
    assert isinstance(transport, RedisTransport)
    async with transport:
        subscription = await transport.subscribe("t", "g")
        await transport.publish("t", b"taken by the dead")
        await raw.xreadgroup("g", "dead", {f"{prefix}:t": ">"})
        delivery = await receive(subscription, timeout=3)  # reclaimed after 0.3 s
        assert (delivery.body, delivery.attempt) == (b"taken by the dead", 2)
        await delivery.ack()
        await subscription.aclose()
    with pytest.raises(ValueError, match="not a number") as bad:
        RedisTransport(f"redis://:{PASSWORD}@localhost/0?claim_idle=soon")
    assert PASSWORD not in str(bad.value)
