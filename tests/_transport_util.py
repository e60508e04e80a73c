"""What the broker transport tests share: names, receiving with a bound, servers and
certificates of a test's own, and the checks run on them (the password never shows,
TLS, a restart loses nothing)."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import uuid
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio
import anyio.to_thread
import pytest

from flowkit._errors import TransportError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from flowkit.transports import Delivery, Subscription, Transport

PASSWORD = "pw-" + uuid.uuid4().hex
"""The password of the tests' servers and URLs, looked for in what they show."""


def unique_name(kind: str) -> str:
    """A topic or group name no other test uses."""
    return f"{kind}-{uuid.uuid4().hex[:8]}"


async def receive(subscription: Subscription, timeout: float = 10.0) -> Delivery:
    """The next delivery; fails the test after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        return await subscription.receive()


async def nothing(subscription: Subscription, window: float) -> None:
    """Fail the test if anything is delivered within ``window`` seconds."""
    with anyio.move_on_after(window):
        delivery = await subscription.receive()
        raise AssertionError(f"unexpected delivery {delivery.body!r} (attempt {delivery.attempt})")


async def publish_until_received(
    transport: Transport, subscription: Subscription, topic: str, *, within: float, every: float
) -> Delivery:
    """Publish ``b"after"`` to ``topic`` until ``subscription`` receives a message, and
    return it: a subscription whose group the server lost makes it again when it reads.

    Args:
        within: in seconds, how long it may take; the test fails after.
        every: in seconds, how long each read waits before the next publish.
    """
    with anyio.fail_after(within):
        while True:
            with anyio.move_on_after(every):
                return await subscription.receive()
            await transport.publish(topic, b"after")


def free_port() -> int:
    """A loopback port free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class OwnServer(Protocol):
    """A server a test starts in a directory of its own."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=OwnServer)


def own_servers(server: Callable[..., S], tmp_path: Path) -> Iterator[Callable[..., S]]:
    """The body of a fixture that starts servers of the test's own and stops them after.

    Args:
        server: makes a server from its directory and its command-line options.
        tmp_path: the test's temporary directory; each server gets one below it.

    Yields:
        A function that starts a server with the options it is given.
    """
    servers: list[S] = []

    def start(*options: str) -> S:
        directory = tmp_path / f"server{len(servers)}"
        directory.mkdir()
        started = server(directory, *options)
        servers.append(started)
        started.start()
        return started

    yield start
    for started in servers:
        started.stop()


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with openssl in
    ``directory``; skips the test without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("this test makes a certificate with openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def shown(*errors: BaseException) -> list[str]:
    """What ``errors`` show: the text and repr of each, and of what it was raised from."""
    texts: list[str] = []
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            texts += [str(chain), repr(chain)]
            chain = chain.__cause__ or chain.__context__
    return texts


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the test logged: the captured text and each record's message."""
    return [caplog.text, *(record.getMessage() for record in caplog.records)]


async def check_the_password_never_shows(
    transport: Callable[[str], Transport],
    url: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transport with the server's password carries messages, one with another
    password is refused, and :data:`PASSWORD` shows in no repr, error or log record.

    Args:
        transport: makes a transport from a URL.
        url: the server's URL with a password.
        caplog: the test's log capture.
    """
    caplog.set_level(logging.DEBUG)
    good = transport(url(PASSWORD))
    assert PASSWORD not in repr(good)
    topic = unique_name("t")
    async with good:
        subscription = await good.subscribe(topic, "g")
        await good.publish(topic, b"authenticated")
        assert (await receive(subscription)).body == b"authenticated"
        await subscription.aclose()
    wrong = transport(url("not-" + PASSWORD))
    with pytest.raises(TransportError) as refused:
        await wrong.__aenter__()
    texts = [*shown(refused.value), repr(good), repr(wrong), *logged(caplog)]
    assert all(PASSWORD not in text for text in texts)


async def check_tls(trusted: Transport, untrusted: Transport) -> None:
    """``trusted`` (given the test's certificate) carries messages over TLS; ``untrusted``
    (not given it) is refused, and the error does not show :data:`PASSWORD`."""
    topic = unique_name("t")
    async with trusted:
        subscription = await trusted.subscribe(topic, "tls")
        await trusted.publish(topic, b"over TLS")
        delivery = await receive(subscription)
        assert delivery.body == b"over TLS"
        await delivery.ack()
        await subscription.aclose()
    with pytest.raises(TransportError) as refused:
        await untrusted.__aenter__()
    assert PASSWORD not in str(refused.value)


async def check_a_restart_loses_nothing(
    transport: Transport,
    restart: Callable[[], object],
    *,
    held_come_back: bool = False,
    acks_confirmed: bool = True,
    timeout: float = 15.0,
) -> None:
    """Across a restart of the server, acked messages stay acked, unacked and unread
    ones are all delivered, and a receiver blocked meanwhile carries on.

    Of 30 messages, a group acks 10 and holds 5 while another group takes all; the
    server restarts (``restart``, in a thread) and 10 more are published.

    Args:
        transport: an open transport on the server.
        restart: stops the server and starts it again on its data.
        held_come_back: the 5 held come back after the restart (the server gave them
            back with the lost connection); otherwise they are acked after it.
        acks_confirmed: an ack is settled on the server when it returns. Otherwise
            (sent without waiting) one sent just before the restart may be lost, so
            its message may come again, and the backlog empties a little later.
        timeout: in seconds, how long a delivery after the restart may take.
    """
    topic, group, other = unique_name("topic"), unique_name("group"), unique_name("other")
    subscription = await transport.subscribe(topic, group)
    waiting = await transport.subscribe(topic, other)
    for i in range(30):
        await transport.publish(topic, b"%d" % i)
    for _ in range(10):
        await (await receive(subscription)).ack()
    held = [await receive(subscription) for _ in range(5)]
    other_got: list[bytes] = []

    async def wait_on_other() -> None:
        while len(other_got) < 40:
            delivery = await waiting.receive()
            other_got.append(delivery.body)
            await delivery.ack()

    first = 10 if held_come_back else 15
    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_on_other)
        with anyio.fail_after(10):
            while len(other_got) < 30:
                await anyio.sleep(0.01)
        if not acks_confirmed:
            await anyio.sleep(0.2)  # the acks reach the server before it stops
        await anyio.to_thread.run_sync(restart)
        for i in range(30, 40):
            await transport.publish(topic, b"%d" % i)
        after = []
        for _ in range(first, 40):
            delivery = await receive(subscription, timeout)
            after.append(delivery.body)
            await delivery.ack()
        await subscription.ack_many(held)  # of the lost connection, if they came back: a no-op
        with anyio.fail_after(10):
            while len(other_got) < 40:
                await anyio.sleep(0.01)
    assert sorted(after) == sorted(b"%d" % i for i in range(first, 40))
    every = sorted(b"%d" % i for i in range(40))
    assert (sorted(other_got) if acks_confirmed else sorted(set(other_got))) == every
    await nothing(subscription, 0.3)
    if acks_confirmed:
        assert await transport.backlog(topic, group) == 0
    else:
        with anyio.fail_after(5):
            while await transport.backlog(topic, group):
                await anyio.sleep(0.05)
    await subscription.aclose()
    await waiting.aclose()
