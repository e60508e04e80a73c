"""No bad message or handler can crash, hang, leak or silently lose work."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from pydantic import field_validator

from flowkit import (
    BusNotStarted,
    Choreography,
    Command,
    Context,
    Event,
    Message,
    MessageTooLarge,
    RemoteError,
    RequestTimeout,
    Retry,
    StoreError,
    TransportError,
)
from flowkit._events import encode
from flowkit.choreography import BusObserver
from flowkit.choreography._consumer import DecodeCache, Decoded
from flowkit.stores import Claim, MemoryStore
from flowkit.transports import InMemoryTransport

pytestmark = pytest.mark.anyio

FAST = Retry(attempts=3, backoff=0.001, jitter=0)


class Ping(Event):
    n: int


class Blob(Event):
    data: str


class Payment(Event):
    card_number: str
    amount: int


class Echo(Message):
    text: str


class Shout(Command[Echo]):
    text: str


class Wait(Command[Echo]):
    seconds: float


class Custom(BaseException):
    """A BaseException of the user's own."""


# -- a BaseException from a handler is that message's failure ------------------------


@pytest.mark.parametrize(
    "make",
    [KeyboardInterrupt, SystemExit, Custom, GeneratorExit, asyncio.CancelledError],
    ids=["KeyboardInterrupt", "SystemExit", "custom", "GeneratorExit", "hand-raised-cancel"],
)
async def test_a_base_exception_from_a_handler_dead_letters_only_that_message(
    make: type[BaseException],
) -> None:
    # asyncio.CancelledError raised by hand is not a cancellation of the bus (on
    # asyncio it is the cancellation class; trio's own cannot be raised by hand).
    bus = Choreography(InMemoryTransport())
    handled: list[tuple[str, int]] = []

    @bus.on(Ping, service="fragile", retry=FAST)
    async def fragile(event: Ping) -> None:
        if event.n == 1:
            raise make()
        handled.append(("fragile", event.n))

    @bus.on(Ping, service="steady")
    async def steady(event: Ping) -> None:
        handled.append(("steady", event.n))

    with anyio.fail_after(10):
        async with bus:
            for n in range(3):
                await bus.publish(Ping(n=n))
            await bus.wait_idle(5)
            letters = await bus.dead_letters()
    assert sorted(handled) == [("fragile", 0), ("fragile", 2)] + [("steady", n) for n in range(3)]
    (letter,) = letters
    assert letter.consumer.startswith("fragile:")
    assert letter.attempts == 1  # never retried: not an ordinary error
    assert letter.error_type.endswith(type(make()).__name__)


async def test_only_a_real_cancellation_stops_the_bus() -> None:
    bus = Choreography(InMemoryTransport(), stop_grace=30)
    started = anyio.Event()

    @bus.on(Ping, service="slow")
    async def slow(event: Ping) -> None:
        started.set()
        await anyio.sleep(60)

    begun = time.monotonic()
    with anyio.fail_after(10), anyio.CancelScope() as scope:
        async with bus:
            await bus.publish(Ping(n=1))
            await started.wait()
            scope.cancel()
            await anyio.sleep(60)
    assert scope.cancelled_caught
    assert time.monotonic() - begun < 5
    assert not bus.running


async def test_a_ctrl_c_during_the_graceful_stop_stops_at_once() -> None:
    bus = Choreography(InMemoryTransport(), stop_grace=30)
    started = anyio.Event()

    @bus.on(Ping, service="slow")
    async def slow(event: Ping) -> None:
        started.set()
        await anyio.sleep(60)

    begun = time.monotonic()
    with anyio.fail_after(10), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def interrupt() -> None:
                await started.wait()
                await anyio.sleep(0.3)  # the block has been left: the graceful stop waits
                scope.cancel()

            tg.start_soon(interrupt)
            async with bus:
                await bus.publish(Ping(n=1))
                await started.wait()
    assert time.monotonic() - begun < 5


# -- publishing never deadlocks ------------------------------------------------------


async def test_a_handler_publishing_to_its_own_full_topic_does_not_deadlock() -> None:
    bus = Choreography(InMemoryTransport(max_buffer=3, publish_timeout=0.2))
    seen: list[int] = []

    @bus.on(Ping, service="echo", retry=Retry(attempts=2, backoff=0.01, jitter=0))
    async def echo(event: Ping, ctx: Context) -> None:
        seen.append(event.n)
        if event.n == 0:
            for n in range(1, 11):  # more than its own group's buffer can take
                await ctx.publish(Ping(n=n))

    with anyio.fail_after(20):
        async with bus:
            await bus.publish(Ping(n=0))
            await bus.wait_idle(15)
            letters = await bus.dead_letters()
    assert seen[:1] == [0]
    (letter,) = letters  # the flooding message failed twice, then was kept
    assert letter.error_type == "flowkit.TransportError"
    assert "max_buffer" in letter.error


async def test_a_publish_to_a_full_group_fails_after_the_publish_timeout() -> None:
    transport = InMemoryTransport(max_buffer=1, publish_timeout=0.1)
    async with transport:
        await transport.subscribe("t", "stuck")
        await transport.publish("t", b"1")
        with anyio.fail_after(5), pytest.raises(TransportError, match="'stuck'"):
            await transport.publish("t", b"2")


# -- memory and size bounds ----------------------------------------------------------


def test_the_decode_cache_is_bounded_by_count_and_bytes() -> None:
    cache = DecodeCache(max_entries=10, max_bytes=1000, max_entry=300)
    entry = Decoded({}, Ping(n=1))
    cache.put(b"x" * 301, entry)
    assert len(cache) == 0  # too large to keep
    for i in range(100):
        cache.put(b"%03d" % i + b"y" * 200, entry)
        assert cache.size <= 1000 and len(cache) <= 10


async def test_publishing_a_message_over_the_size_limit_is_refused() -> None:
    bus = Choreography(InMemoryTransport(), max_message_size=1000)
    async with bus:
        with pytest.raises(MessageTooLarge, match=r"Blob.*over the limit of 1,000 bytes"):
            await bus.publish(Blob(data="x" * 2000))
        await bus.publish(Blob(data="x" * 100))


async def test_a_received_message_over_the_size_limit_is_dead_lettered() -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport, max_message_size=1000)
    got: list[int] = []

    @bus.on(Blob, service="s")
    async def handle(event: Blob) -> None:
        got.append(len(event.data))

    async with bus:
        _, big = encode(Blob(data="x" * 5000))
        _, small = encode(Blob(data="ok"))
        await transport.publish("Blob", big)
        await transport.publish("Blob", small)
        await bus.wait_idle(5)
        (letter,) = await bus.dead_letters()
    assert got == [2]
    assert letter.error_type == "flowkit.MessageTooLarge"
    assert letter.body == big and letter.attempts == 0


async def test_large_messages_are_not_kept_alive_after_the_bus_stops() -> None:
    bus = Choreography(InMemoryTransport(), max_message_size=8 * 1024 * 1024)
    count = 0

    for service in ("a", "b"):

        @bus.on(Blob, service=service, name="h")
        async def handle(event: Blob) -> None:
            nonlocal count
            count += 1

    tracemalloc.start()
    try:
        async with bus:
            for _ in range(20):
                await bus.publish(Blob(data="x" * (2 * 1024 * 1024)))
            await bus.wait_idle(30)
        gc.collect()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 40
    assert current < 16 * 1024 * 1024  # not 20 bodies of 2 MB (and their decoded copies)


async def test_dead_letters_kept_without_a_store_are_bounded() -> None:
    transport = InMemoryTransport(max_buffer=20_000)
    bus = Choreography(transport)

    @bus.on(Ping, service="s")
    async def handle(event: Ping) -> None:
        raise AssertionError("never called: every body is garbage")

    async with bus:
        for i in range(10_050):
            await transport.publish("Ping", b"not json %d" % i)
        await bus.wait_idle(60)
        letters = await bus.dead_letters(limit=20_000)
    assert 9_000 <= len(letters) <= 10_000  # the oldest are dropped in batches
    assert letters[-1].body == b"not json 10049"
    assert letters[0].body != b"not json 0"


# -- poison payloads ---------------------------------------------------------------


class Fussy(Event):
    code: str

    @field_validator("code")
    @classmethod
    def _check(cls, value: str) -> str:
        if value == "boom":
            raise KeyError(value)  # not a ValueError: pydantic passes it on
        return value


async def test_a_validator_raising_any_exception_dead_letters_the_message_at_once() -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport)
    got: list[str] = []

    @bus.on(Fussy, service="s", retry=Retry(attempts=5, backoff=1.0))
    async def handle(event: Fussy) -> None:
        got.append(event.code)

    body = json.dumps(
        {
            "id": "m-1",
            "type": "Fussy",
            "version": 1,
            "correlation_id": "c",
            "occurred_at": "2026-01-01T00:00:00+00:00",
            "payload": {"code": "boom"},
        }
    ).encode()
    with anyio.fail_after(5):
        async with bus:
            await transport.publish("Fussy", body)
            await bus.publish(Fussy(code="fine"))
            await bus.wait_idle(3)
            (letter,) = await bus.dead_letters()
    assert got == ["fine"]
    assert letter.error_type == "flowkit.DecodeError" and letter.attempts == 0
    assert "KeyError" in letter.error and "boom" not in letter.error
    assert letter.message_id == "m-1"


@dataclass(frozen=True)
class CountingRetry(Retry):
    """A retry policy that records which delays the bus asked it for."""

    def delay(self, attempt: int) -> float:
        ASKED.append(attempt)
        return 0.001


ASKED: list[int] = []


class FlakyInbox(MemoryStore):
    """A store whose inbox fails its first claim."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> Claim:
        if self.failures:
            self.failures -= 1
            raise StoreError("the inbox is down")
        return await super().inbox_claim(consumer, message_id, lease=lease)


async def test_a_store_failure_around_a_handler_is_retried_by_the_policy() -> None:
    ASKED.clear()
    bus = Choreography(InMemoryTransport(), store=FlakyInbox())
    got: list[int] = []

    @bus.on(Ping, service="s", retry=CountingRetry())
    async def handle(event: Ping) -> None:
        got.append(event.n)

    with anyio.fail_after(5):
        async with bus:
            await bus.publish(Ping(n=1))
            await bus.wait_idle(3)
    assert got == [1]
    assert ASKED == [1]  # the redelivery waited the policy's delay, not a fixed second


# -- no payload value in logs or errors ------------------------------------------------


async def test_validation_failures_name_fields_never_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport)

    class Pay(Command[Echo]):
        card_number: str
        amount: int

    @bus.handles(Pay, service="payments")
    async def pay(command: Pay) -> Echo:
        return Echo(text="paid")

    body = json.dumps(
        {
            "id": "m-2",
            "type": "Pay",
            "version": 1,
            "correlation_id": "c",
            "occurred_at": "2026-01-01T00:00:00+00:00",
            "payload": {"card_number": "4111111111111111", "amount": "12 euros 4111"},
        }
    ).encode()
    caplog.set_level(logging.DEBUG)
    async with bus:
        await transport.publish("Pay", body, {"flowkit-reply-to": "r", "flowkit-request-id": "q"})
        await bus.wait_idle(3)
        (letter,) = await bus.dead_letters()
    assert "4111" not in caplog.text
    assert "4111" not in letter.error
    assert "amount" in letter.error and "int_parsing" in letter.error
    assert letter.body == body  # kept whole for whoever may read the store


async def test_a_remote_error_for_a_bad_request_carries_no_value() -> None:
    bus = Choreography(InMemoryTransport())

    class Strict(Message):
        amount: int

    class Charge(Command[Echo]):
        card_number: str

        @field_validator("card_number")
        @classmethod
        def _luhn(cls, value: str) -> str:
            if value.startswith("4"):
                raise ValueError(f"card {value} failed the check")
            return value

    @bus.handles(Charge, service="payments")
    async def charge(command: Charge) -> Echo:
        return Echo(text="ok")

    # The caller's own model accepts the card; the service's copy refuses it.
    ok = Charge.model_construct(card_number="4111111111111111")
    async with bus:
        with pytest.raises(RemoteError) as caught:
            await bus.request(ok, timeout=5)
    assert "4111" not in str(caught.value)
    assert "card_number" in str(caught.value)


# -- waiting until idle; what the in-memory transport drops ----------------------------


async def test_wait_idle_waits_for_retries_and_times_out_with_a_count() -> None:
    bus = Choreography(InMemoryTransport())
    calls = 0

    @bus.on(Ping, service="s", retry=Retry(attempts=3, backoff=0.05, jitter=0))
    async def handle(event: Ping) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("not yet")

    async with bus:
        await bus.publish(Ping(n=1))
        await bus.wait_idle(5)
        assert calls == 3

    never = Choreography(InMemoryTransport())

    @never.on(Ping, service="s", retry=Retry(attempts=5, backoff=30, jitter=0))
    async def stuck(event: Ping) -> None:
        raise RuntimeError("always")

    async with never:
        await never.publish(Ping(n=1))
        with pytest.raises(TimeoutError, match="1 message"):
            await never.wait_idle(0.3)
    with pytest.raises(BusNotStarted):
        await never.wait_idle()


async def test_closing_the_memory_transport_says_how_many_messages_it_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Choreography(InMemoryTransport())

    @bus.on(Ping, service="s", retry=Retry(attempts=5, backoff=30, jitter=0))
    async def handle(event: Ping) -> None:
        raise RuntimeError("flaky")

    caplog.set_level(logging.WARNING)
    async with bus:
        await bus.publish(Ping(n=1))
        await bus.publish(Ping(n=2))
        with anyio.fail_after(5):
            while "retrying" not in caplog.text or caplog.text.count("retrying") < 2:
                await anyio.sleep(0.01)
    assert "closed with 2 message(s) not yet handled (2 waiting for a retry)" in caplog.text


# -- request/reply under load ---------------------------------------------------------


async def test_a_command_handler_answers_concurrent_requests_by_default() -> None:
    bus = Choreography(InMemoryTransport())
    inside = 0
    both = anyio.Event()

    @bus.handles(Shout, service="echo")
    async def shout(command: Shout) -> Echo:
        nonlocal inside
        inside += 1
        if inside == 2:
            both.set()
        await both.wait()  # with one request at a time, this would wait forever
        return Echo(text=command.text.upper())

    replies: list[str] = []

    async def ask(text: str) -> None:
        replies.append((await bus.request(Shout(text=text), timeout=5)).text)

    with anyio.fail_after(10):
        async with bus, anyio.create_task_group() as tg:
            tg.start_soon(ask, "a")
            tg.start_soon(ask, "b")
    assert sorted(replies) == ["A", "B"]


async def test_a_request_whose_caller_gave_up_is_not_started() -> None:
    transport = InMemoryTransport()
    caller = Choreography(transport)
    server = Choreography(transport)
    ran: list[str] = []

    @server.handles(Shout, service="echo")
    async def shout(command: Shout) -> Echo:
        ran.append(command.text)
        return Echo(text=command.text)

    async with transport:
        # The service's group exists (as on a broker), but no consumer runs yet.
        async with server:
            pass
        async with caller.run(services=[]):
            with pytest.raises(RequestTimeout) as caught:
                await caller.request(Shout(text="late"), timeout=0.2)
            assert caught.value.taken is False
            assert "no service took" in str(caught.value)
            async with server:
                await server.wait_idle(3)
    assert ran == []


async def test_retries_of_a_request_stop_at_its_deadline() -> None:
    bus = Choreography(InMemoryTransport())
    attempts: list[int] = []

    @bus.handles(Shout, service="echo", retry=Retry(attempts=50, backoff=0.1, jitter=0))
    async def shout(command: Shout, ctx: Context) -> Echo:
        attempts.append(ctx.attempt)
        raise RuntimeError("down")

    async with bus:
        with pytest.raises(RequestTimeout) as caught:
            await bus.request(Shout(text="x"), timeout=0.35)
        assert caught.value.taken is True
        assert "was taken by its service" in str(caught.value)
        await bus.wait_idle(3)
        assert await bus.dead_letters() == []  # nobody waits for it any more
    assert 1 <= len(attempts) <= 4


async def test_a_request_taken_but_not_answered_in_time_says_so() -> None:
    bus = Choreography(InMemoryTransport(), stop_grace=0.1)

    @bus.handles(Wait, service="slow")
    async def wait(command: Wait) -> Echo:
        await anyio.sleep(command.seconds)
        return Echo(text="late")

    async with bus:
        with pytest.raises(RequestTimeout) as caught:
            await bus.request(Wait(seconds=5), timeout=0.2)
    assert caught.value.taken is True


# -- one message, one handling, across buses sharing a store ---------------------------


async def test_two_buses_sharing_a_store_handle_a_duplicate_once() -> None:
    store = MemoryStore()
    handled: list[str] = []
    buses = []
    transports = [InMemoryTransport(), InMemoryTransport()]
    for transport in transports:
        bus = Choreography(transport, store=store)

        @bus.on(Ping, service="billing", name="bill", retry=FAST)
        async def bill(event: Ping, ctx: Context) -> None:
            handled.append(ctx.envelope.message_id)
            await anyio.sleep(0.05)  # both copies are in flight at once

        buses.append(bus)
    _, body = encode(Ping(n=1))
    with anyio.fail_after(10):
        async with buses[0], buses[1]:
            for transport in transports:
                await transport.publish("Ping", body)
            for bus in buses:
                await bus.wait_idle(5)
    assert len(handled) == 1


# -- observers --------------------------------------------------------------------------


async def test_observers_see_the_work_and_a_failing_one_breaks_nothing() -> None:
    seen: list[str] = []

    class Watch(BusObserver):
        def published(self, envelope: object) -> None:
            seen.append("published")

        def handled(self, ctx: Context, duration: float) -> None:
            seen.append(f"handled {ctx.service}")
            raise RuntimeError("an observer bug")

    bus = Choreography(InMemoryTransport(), observers=[Watch()])

    @bus.on(Ping, service="s")
    async def handle(event: Ping) -> None:
        pass

    async with bus:
        await bus.publish(Ping(n=1))
        await bus.publish(Ping(n=2))
        await bus.wait_idle(3)
    assert seen.count("published") == 2 and seen.count("handled s") == 2


async def test_the_transport_and_store_cannot_be_swapped_while_running() -> None:
    bus = Choreography(InMemoryTransport())
    async with bus:
        with pytest.raises(RuntimeError, match="running bus"):
            bus.use(store=MemoryStore())
        with pytest.raises(RuntimeError, match="running bus"):
            bus.add_observer(BusObserver())


def test_a_real_ctrl_c_inside_a_handler_on_trio_stops_the_bus() -> None:
    """trio delivers Ctrl-C as a KeyboardInterrupt inside the running handler: that
    one is the process stopping, not the handler's failure."""
    script = Path(__file__).with_name("ctrl_c_app.py")
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=script.parent.parent,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "handling"
        time.sleep(0.2)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, (out, err)
    assert "stopped by Ctrl-C" in out
    assert "gave up" not in err and "the bus carried on" not in out


async def test_the_inbox_is_pruned_while_the_bus_runs() -> None:
    store = MemoryStore()
    bus = Choreography(InMemoryTransport(), store=store, claim_lease=0.5, inbox_retention=1.0)
    handled: list[str] = []

    @bus.on(Ping, service="s", name="h")
    async def handle(event: Ping, ctx: Context) -> None:
        handled.append(ctx.envelope.message_id)

    with anyio.fail_after(15):
        async with bus:
            await bus.publish(Ping(n=1))
            await bus.wait_idle(5)
            (message_id,) = handled
            assert await store.inbox_claim("s:h", message_id, lease=0.1) is Claim.DONE
            # Past the retention, the bus forgets the entry on its own.
            while await store.inbox_claim("s:h", message_id, lease=0.1) is Claim.DONE:
                await anyio.sleep(0.2)


def test_inbox_retention_must_outlast_the_claim_lease() -> None:
    with pytest.raises(ValueError, match="inbox_retention must be longer than claim_lease"):
        Choreography(InMemoryTransport(), claim_lease=60, inbox_retention=30)
    assert Choreography(InMemoryTransport(), inbox_retention=None).inbox_retention is None
