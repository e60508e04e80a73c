from __future__ import annotations

from collections import Counter

import anyio
import pytest

from flowkit import (
    BusNotStarted,
    Choreography,
    Command,
    Context,
    DeadLetter,
    DefinitionError,
    Event,
    HandlerTimeout,
    Message,
    NonRetryableError,
    RemoteError,
    RequestTimeout,
    Retry,
    StoreError,
)
from flowkit.stores import Claim, MemoryStore
from flowkit.testing._faults import FaultyTransport
from flowkit.transports import InMemoryTransport

from ._util import wait_until

pytestmark = pytest.mark.anyio

FAST = Retry(attempts=3, backoff=0.001, jitter=0)


class OrderPlaced(Event):
    order_id: str


class ConfirmationSent(Event):
    order_id: str


class Stock(Message):
    sku: str
    count: int


class CheckStock(Command[Stock]):
    sku: str


async def test_every_service_gets_every_event() -> None:
    bus = Choreography(InMemoryTransport())
    seen: list[tuple[str, str]] = []
    for service in ("notification", "seller", "logistics"):

        @bus.on(OrderPlaced, service=service, name="react")
        async def react(event: OrderPlaced, ctx: Context) -> None:
            seen.append((ctx.service, event.order_id))

    async with bus:
        for i in range(5):
            await bus.publish(OrderPlaced(order_id=f"o-{i}"))
        await wait_until(lambda: len(seen) == 15)
    assert Counter(s for s, _ in seen) == {"notification": 5, "seller": 5, "logistics": 5}


async def test_publishing_before_start_fails_loudly() -> None:
    bus = Choreography(InMemoryTransport())
    with pytest.raises(BusNotStarted):
        await bus.publish(OrderPlaced(order_id="o"))


async def test_context_publish_carries_correlation_and_causation() -> None:
    bus = Choreography(InMemoryTransport())
    got: list[Context] = []

    @bus.on(OrderPlaced, service="notification", emits=[ConfirmationSent])
    async def confirm(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(ConfirmationSent(order_id=event.order_id))

    @bus.on(ConfirmationSent, service="audit")
    async def audit(event: ConfirmationSent, ctx: Context) -> None:
        got.append(ctx)

    async with bus:
        first = await bus.publish(OrderPlaced(order_id="o-1"), headers={"tenant": "acme"})
        await wait_until(lambda: len(got) == 1)
    envelope = got[0].envelope
    assert envelope.correlation_id == first.message_id
    assert envelope.causation_id == first.message_id
    assert envelope.message_id != first.message_id
    assert envelope.message_id > first.message_id  # still time-ordered


async def dead_letters_eventually(
    bus: Choreography, n: int, timeout: float = 5.0
) -> list[DeadLetter]:
    with anyio.fail_after(timeout):
        while True:
            letters = await bus.dead_letters()
            if len(letters) >= n:
                return letters
            await anyio.sleep(0.002)


async def test_failures_are_retried_with_growing_attempts_then_succeed() -> None:
    bus = Choreography(InMemoryTransport())
    attempts: list[int] = []

    @bus.on(OrderPlaced, service="logistics", retry=FAST)
    async def assign(event: OrderPlaced, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("partner API down")

    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await wait_until(lambda: attempts == [1, 2, 3])
        await anyio.sleep(0.02)
    assert attempts == [1, 2, 3]
    assert await bus.dead_letters() == []


async def test_exhausted_retries_dead_letter_with_error_and_attempts() -> None:
    bus = Choreography(InMemoryTransport())

    @bus.on(OrderPlaced, service="logistics", retry=FAST)
    async def assign(event: OrderPlaced, ctx: Context) -> None:
        raise ConnectionError(f"no partner for {event.order_id}")

    async with bus:
        sent = await bus.publish(OrderPlaced(order_id="o-7"))
        (letter,) = await dead_letters_eventually(bus, 1)
    assert letter.attempts == 3
    assert letter.error_type == "ConnectionError"
    assert "no partner for o-7" in letter.error
    assert "Traceback" in letter.error
    assert letter.message_id == sent.message_id
    assert letter.consumer.startswith("logistics:")
    assert letter.topic == "OrderPlaced"


async def test_non_retryable_errors_dead_letter_at_once() -> None:
    bus = Choreography(InMemoryTransport())
    calls = 0

    @bus.on(OrderPlaced, service="billing", retry=Retry(attempts=5, non_retryable=(KeyError,)))
    async def bill(event: OrderPlaced) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("unknown customer")

    @bus.on(OrderPlaced, service="fraud", retry=Retry(attempts=5))
    async def check(event: OrderPlaced) -> None:
        nonlocal calls
        calls += 1
        raise NonRetryableError("blocked")

    async with bus:
        await bus.publish(OrderPlaced(order_id="o"))
        letters = await dead_letters_eventually(bus, 2)
    assert calls == 2
    assert sorted(x.attempts for x in letters) == [1, 1]


async def test_a_slow_handler_times_out_and_is_retried() -> None:
    bus = Choreography(InMemoryTransport())
    attempts: list[int] = []

    @bus.on(OrderPlaced, service="slow", timeout=0.02, retry=Retry(attempts=2, backoff=0))
    async def slow(event: OrderPlaced, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        await anyio.sleep(1)

    async with bus:
        await bus.publish(OrderPlaced(order_id="o"))
        (letter,) = await dead_letters_eventually(bus, 1)
    assert attempts == [1, 2]
    assert letter.error_type == f"flowkit.{HandlerTimeout.__name__}"
    assert "timeout of 0.02s" in letter.error


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"\x00\x01 garbage", "body is not valid JSON"),
        (b'{"hello": "world"}', "not a flowkit envelope"),
        (
            b'{"id":"m1","type":"OrderPlaced","version":1,"correlation_id":"m1",'
            b'"occurred_at":"2026-01-01T00:00:00+00:00","payload":{"order_id":42}}',
            "payload failed validation",
        ),
    ],
)
async def test_bad_input_is_dead_lettered_and_the_consumer_keeps_going(
    body: bytes, kind: str
) -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport)
    handled: list[str] = []

    @bus.on(OrderPlaced, service="seller")
    async def prepare(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    async with bus:
        await transport.publish("OrderPlaced", body)
        await bus.publish(OrderPlaced(order_id="good"))
        (letter,) = await dead_letters_eventually(bus, 1)
        await wait_until(lambda: handled == ["good"])
    assert letter.body == body
    assert letter.attempts == 0
    assert letter.error_type == "flowkit.DecodeError"
    assert kind in letter.error


class _KeepsThenHangs(MemoryStore):
    """Keeps each dead letter, then holds its consumer until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.kept = anyio.Event()
        self.release = anyio.Event()

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await super().add_dead_letter(letter)
        self.kept.set()
        await self.release.wait()


async def test_a_message_dead_lettered_by_two_consumers_of_its_group_is_kept_once() -> None:
    # The first consumer keeps the dead letter, then dies before its ack; the message
    # goes to the next consumer, which dead-letters it too: one letter, by broker id.
    faulty = FaultyTransport(InMemoryTransport())
    store = _KeepsThenHangs()
    bus = Choreography(faulty, store=store)

    @bus.on(OrderPlaced, service="seller")
    async def prepare(event: OrderPlaced) -> None:
        pass

    async with bus:
        await faulty.publish("OrderPlaced", b"\x00 not json")
        with anyio.fail_after(5):
            await store.kept.wait()
        await faulty.drop_consumers(topic="OrderPlaced")
        store.kept = anyio.Event()
        store.release.set()
        with anyio.fail_after(5):
            await store.kept.wait()  # kept again by the consumer that took the message over
        await bus.wait_idle(5)
        letters = await bus.dead_letters()
    assert [letter.body for letter in letters] == [b"\x00 not json"]


async def test_alike_messages_published_apart_are_dead_lettered_apart() -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport)

    @bus.on(OrderPlaced, service="seller")
    async def prepare(event: OrderPlaced) -> None:
        pass

    async with bus:
        for _ in range(3):
            await transport.publish("OrderPlaced", b"\x00 not json", {"x-h": "same"})
        letters = await dead_letters_eventually(bus, 3)
    assert len({letter.id for letter in letters}) == 3


async def test_replay_redelivers_to_the_failed_handler_only() -> None:
    bus = Choreography(InMemoryTransport())
    broken = True
    seen: Counter[str] = Counter()

    @bus.on(OrderPlaced, service="seller", retry=Retry.never())
    async def prepare(event: OrderPlaced) -> None:
        seen["seller"] += 1
        if broken:
            raise RuntimeError("bug")

    @bus.on(OrderPlaced, service="notification")
    async def notify(event: OrderPlaced) -> None:
        seen["notification"] += 1

    async with bus:
        await bus.publish(OrderPlaced(order_id="o"))
        (letter,) = await dead_letters_eventually(bus, 1)
        broken = False
        await bus.replay(letter.id)
        await wait_until(lambda: seen["seller"] == 2)
        await anyio.sleep(0.02)
        assert await bus.dead_letters() == []
    assert seen == {"seller": 2, "notification": 1}


async def test_with_a_store_a_redelivered_event_is_handled_once() -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport, store=MemoryStore())
    handled: list[str] = []

    @bus.on(OrderPlaced, service="seller")
    async def prepare(event: OrderPlaced, ctx: Context) -> None:
        handled.append(ctx.envelope.message_id)

    async with bus:
        first = await bus.publish(OrderPlaced(order_id="o"), message_id="fixed-id")
        await bus.publish(OrderPlaced(order_id="o"), message_id="fixed-id")
        await bus.publish(OrderPlaced(order_id="p"))
        await wait_until(lambda: len(handled) == 2)
        await anyio.sleep(0.02)
    assert handled.count(first.message_id) == 1


async def test_a_retried_handler_republishes_the_same_ids() -> None:
    bus = Choreography(InMemoryTransport(), store=MemoryStore())
    downstream: list[str] = []

    @bus.on(OrderPlaced, service="notification", retry=FAST)
    async def confirm(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(ConfirmationSent(order_id=event.order_id))
        if ctx.attempt == 1:
            raise RuntimeError("crashed after publishing")

    @bus.on(ConfirmationSent, service="audit")
    async def audit(event: ConfirmationSent, ctx: Context) -> None:
        downstream.append(ctx.envelope.message_id)

    async with bus:
        await bus.publish(OrderPlaced(order_id="o"))
        await wait_until(lambda: len(downstream) == 1)
        await anyio.sleep(0.05)
    assert len(downstream) == 1


async def test_run_starts_only_the_named_services() -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport)
    seen: list[str] = []

    @bus.on(OrderPlaced, service="a")
    async def a(event: OrderPlaced) -> None:
        seen.append("a")

    @bus.on(OrderPlaced, service="b")
    async def b(event: OrderPlaced) -> None:
        seen.append("b")

    async with bus.run(services=["a"]):
        await bus.publish(OrderPlaced(order_id="o"))
        await wait_until(lambda: seen == ["a"])
        await anyio.sleep(0.02)
    assert seen == ["a"]


async def test_stop_lets_in_flight_handlers_finish() -> None:
    bus = Choreography(InMemoryTransport())
    done: list[str] = []
    started = anyio.Event()

    @bus.on(OrderPlaced, service="seller")
    async def prepare(event: OrderPlaced) -> None:
        started.set()
        await anyio.sleep(0.05)
        done.append(event.order_id)

    async with bus:
        await bus.publish(OrderPlaced(order_id="o"))
        await started.wait()
    assert done == ["o"]


async def test_a_handler_cut_off_at_stop_is_delivered_again_later() -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport, stop_grace=0.01)
    runs: list[int] = []
    started = anyio.Event()

    @bus.on(OrderPlaced, service="seller")
    async def prepare(event: OrderPlaced, ctx: Context) -> None:
        runs.append(ctx.attempt)
        started.set()
        if ctx.attempt == 1:
            await anyio.sleep(10)

    async with transport:
        async with bus:
            await bus.publish(OrderPlaced(order_id="o"))
            await started.wait()
        assert runs == [1]
        async with bus:
            await wait_until(lambda: runs == [1, 2])


async def test_a_dropped_consumer_resubscribes_and_gets_the_message_again() -> None:
    faulty = FaultyTransport(InMemoryTransport())
    bus = Choreography(faulty)
    runs: list[int] = []
    started = anyio.Event()
    release = anyio.Event()

    @bus.on(OrderPlaced, service="seller")
    async def prepare(event: OrderPlaced, ctx: Context) -> None:
        runs.append(ctx.attempt)
        started.set()
        if ctx.attempt == 1:
            await release.wait()

    async with bus:
        await bus.publish(OrderPlaced(order_id="o"))
        await started.wait()
        await faulty.drop_consumers(topic="OrderPlaced")
        release.set()  # the first attempt ends, but its ack is lost with its consumer
        await wait_until(lambda: runs == [1, 2])


async def test_concurrency_runs_handlers_side_by_side() -> None:
    bus = Choreography(InMemoryTransport())
    active = 0
    peak = 0

    @bus.on(OrderPlaced, service="seller", concurrency=4)
    async def prepare(event: OrderPlaced) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.02)
        active -= 1

    async with bus:
        for i in range(8):
            await bus.publish(OrderPlaced(order_id=str(i)))
        await wait_until(lambda: peak == 4)
    assert peak == 4


# -- request / reply -----------------------------------------------------------


async def test_request_returns_the_typed_reply() -> None:
    bus = Choreography(InMemoryTransport())

    @bus.handles(CheckStock, service="inventory")
    async def check(command: CheckStock, ctx: Context) -> Stock:
        return Stock(sku=command.sku, count=len(command.sku))

    async with bus:
        replies = [await bus.request(CheckStock(sku="x" * n), timeout=2) for n in (1, 2, 3)]
    assert [r.count for r in replies] == [1, 2, 3]
    assert all(isinstance(r, Stock) for r in replies)


async def test_requests_across_two_buses_on_one_transport() -> None:
    transport = InMemoryTransport()
    inventory = Choreography(transport)
    caller = Choreography(transport)

    @inventory.handles(CheckStock, service="inventory", concurrency=2)
    async def check(command: CheckStock) -> Stock:
        await anyio.sleep(0.01)
        return Stock(sku=command.sku, count=7)

    async with inventory, caller.run(services=[]):
        results: dict[str, int] = {}

        async def ask(sku: str) -> None:
            results[sku] = (await caller.request(CheckStock(sku=sku), timeout=2)).count

        async with anyio.create_task_group() as tg:
            for sku in "abcdef":
                tg.start_soon(ask, sku)
    assert results == dict.fromkeys("abcdef", 7)


async def test_a_request_nobody_answers_times_out() -> None:
    bus = Choreography(InMemoryTransport())
    async with bus.run(services=[]):
        with pytest.raises(RequestTimeout, match="is a service handling 'CheckStock' running"):
            await bus.request(CheckStock(sku="x"), timeout=0.05)


async def test_a_failing_command_handler_raises_remote_error() -> None:
    bus = Choreography(InMemoryTransport())

    @bus.handles(CheckStock, service="inventory", retry=Retry(attempts=2, backoff=0))
    async def check(command: CheckStock) -> Stock:
        if command.sku == "gone":
            raise NonRetryableError("discontinued")
        raise LookupError(f"unknown sku {command.sku}")

    async with bus:
        with pytest.raises(RemoteError) as info:
            await bus.request(CheckStock(sku="zz"), timeout=2)
        assert info.value.service == "inventory"
        assert info.value.error_type == "LookupError"
        assert info.value.message == "unknown sku zz"
        assert info.value.retryable is True
        with pytest.raises(RemoteError) as info:
            await bus.request(CheckStock(sku="gone"), timeout=2)
        assert info.value.retryable is False


async def test_a_handler_returning_the_wrong_type_is_a_remote_error() -> None:
    bus = Choreography(InMemoryTransport())

    @bus.handles(CheckStock, service="inventory", retry=Retry.never())
    async def check(command: CheckStock):  # type: ignore[no-untyped-def]
        return {"count": 1}

    async with bus:
        with pytest.raises(RemoteError, match="expected Stock"):
            await bus.request(CheckStock(sku="x"), timeout=2)


async def test_publish_refuses_commands_and_request_refuses_events() -> None:
    bus = Choreography(InMemoryTransport())
    async with bus.run(services=[]):
        with pytest.raises(TypeError, match="request"):
            await bus.publish(CheckStock(sku="x"))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Command"):
            await bus.request(OrderPlaced(order_id="x"))  # type: ignore[arg-type]


async def test_handlers_cannot_be_added_while_running() -> None:
    bus = Choreography(InMemoryTransport())
    async with bus.run(services=[]):
        with pytest.raises(DefinitionError, match="while the bus is running"):

            @bus.on(OrderPlaced, service="late")
            async def late(event: OrderPlaced) -> None:
                pass


class _FlakyStore(MemoryStore):
    """A store whose inbox fails the first time it is asked."""

    failures = 1

    async def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> Claim:
        if self.failures:
            self.failures -= 1
            raise StoreError("database is restarting")
        return await super().inbox_claim(consumer, message_id, lease=lease)


async def test_a_failing_store_does_not_kill_the_consumer() -> None:
    bus = Choreography(InMemoryTransport(), store=_FlakyStore())
    handled: list[str] = []

    @bus.on(OrderPlaced, service="seller")
    async def prepare(event: OrderPlaced) -> None:
        handled.append(event.order_id)

    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.publish(OrderPlaced(order_id="o-2"))
        await wait_until(lambda: sorted(handled) == ["o-1", "o-2"])


async def test_starting_a_running_bus_is_refused() -> None:
    bus = Choreography(InMemoryTransport())
    async with bus.run(services=[]):
        with pytest.raises(RuntimeError, match="already running"):
            await bus.run(services=[]).__aenter__()


async def test_stopping_the_bus_ends_waiting_requests() -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport)
    errors: list[BaseException] = []

    async def ask() -> None:
        try:
            await bus.request(CheckStock(sku="x"), timeout=30)
        except BusNotStarted as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, transport:
            listener = await transport.subscribe("CheckStock", "listener")
            async with bus.run(services=[]):
                tg.start_soon(ask)
                await listener.receive()  # the request is out: the caller waits
    assert len(errors) == 1
    assert "stopped while waiting" in str(errors[0])


async def test_replay_all_replays_one_handlers_dead_letters() -> None:
    bus = Choreography(InMemoryTransport())
    broken = True
    handled: list[str] = []

    @bus.on(OrderPlaced, service="seller", retry=Retry.never())
    async def prepare(event: OrderPlaced) -> None:
        if broken:
            raise RuntimeError("bug")
        handled.append(event.order_id)

    @bus.on(OrderPlaced, service="billing", retry=Retry.never())
    async def bill(event: OrderPlaced) -> None:
        raise RuntimeError("always")

    async with bus:
        for i in range(3):
            await bus.publish(OrderPlaced(order_id=f"o-{i}"))
        await dead_letters_eventually(bus, 6)
        broken = False
        (seller,) = {s.consumer for s in bus.handlers if s.service == "seller"}
        assert await bus.replay_all(consumer=seller) == 3
        await wait_until(lambda: sorted(handled) == ["o-0", "o-1", "o-2"])
        left = await bus.dead_letters()
    assert {letter.consumer.split(":")[0] for letter in left} == {"billing"}


async def test_an_error_in_the_block_comes_out_as_itself() -> None:
    bus = Choreography(InMemoryTransport())
    with pytest.raises(KeyError, match="mine"):
        async with bus:
            raise KeyError("mine")
    assert not bus.running
