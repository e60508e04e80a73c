"""Fuzzed input published raw to a running bus (through the transport's own publish,
past the bus's encoder), in memory and on each broker: every input is handled (when
valid), dead-lettered with a reason that names what was wrong, or (a request past its
forged deadline) dropped; none is lost, no payload value shows in a reason or a log
record, the consumers keep running, and memory stays bounded.

The inputs are in ``_fuzz_inputs.py``. Each test prints how many inputs it tried and
the process's resident memory before and after.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from flowkit import BusObserver, Choreography, Context, Retry
from flowkit.choreography._headers import REPLY_TO
from flowkit.stores import MemoryStore
from flowkit.transports import InMemoryTransport

from ._fuzz_inputs import (
    COMMAND_TOPIC,
    EVENT_TOPIC,
    MARKER,
    MAX_MESSAGE_SIZE,
    Answer,
    Fuzzed,
    Input,
    Probe,
    forged_requests,
    fuzzed_inputs,
    outcome,
)
from .brokers import make as make
from .brokers import on_brokers
from .brokers import prefix as prefix
from .brokers import url as url

if TYPE_CHECKING:
    from collections.abc import Callable

    from flowkit.stores import DeadLetter
    from flowkit.transports import Transport

    from .brokers import Broker

MIB = 1024 * 1024
RSS_GROWTH_LIMIT = 100 * MIB


def rss() -> int:
    """This process's resident memory, in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Outcomes(BusObserver):
    """Which messages the bus handled (the handler returned and, for a command, its
    reply was sent), by message id."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()

    def handled(self, ctx: Context, duration: float) -> None:
        self.ids[ctx.envelope.message_id] += 1


@dataclass
class Tally:
    """What the fuzzing of one transport came to."""

    inputs: int = 0
    handled: int = 0
    dead: int = 0
    expired: int = 0
    reply_failed: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        self.inputs += other.inputs
        self.handled += other.handled
        self.dead += other.dead
        self.expired += other.expired
        self.reply_failed += other.reply_failed
        self.kinds.update(other.kinds)

    def line(self, name: str, before: int, after: int) -> str:
        return (
            f"fuzz[{name}]: {self.inputs} inputs tried: {self.handled} handled, "
            f"{self.dead} dead-lettered ({self.reply_failed} of them requests whose forged "
            f"reply-to the transport refused), {self.expired} expired requests dropped; "
            f"RSS {before / MIB:.1f} MiB -> {after / MIB:.1f} MiB "
            f"({(after - before) / MIB:+.1f} MiB)"
        )


def _expired_ids(records: list[logging.LogRecord]) -> Counter[str]:
    return Counter(
        str(r.args[1])
        for r in records
        if r.name == "flowkit.bus"
        and r.msg.startswith("%s dropped request")
        and isinstance(r.args, tuple)
    )


def _checked_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The records a payload value must not reach: flowkit's at every level, and every
    logger's from INFO up. (aiormq and aiokafka trace each frame, bodies included, at
    DEBUG on their own loggers: that is the client's, not flowkit's, to keep quiet.)"""
    return [r for r in caplog.records if r.name.startswith("flowkit") or r.levelno >= logging.INFO]


def _check_no_marker(caplog: pytest.LogCaptureFixture, letters: list[DeadLetter]) -> None:
    for letter in letters:
        assert MARKER not in letter.error, letter.error
        assert MARKER not in letter.error_type
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in _checked_records(caplog):
        assert MARKER not in formatter.format(record), formatter.format(record)
        assert MARKER not in str(record.__dict__), record.__dict__


async def fuzz(
    transport: Transport,
    inputs: list[Input],
    caplog: pytest.LogCaptureFixture,
    *,
    wait: float,
) -> Tally:
    """Publish ``inputs`` raw to a bus on ``transport`` and check what became of each."""
    run = uuid.uuid4().hex[:8]
    items = [item.with_id(f"fz-{run}-{i:05d}") for i, item in enumerate(inputs)]
    expected = [outcome(item) for item in items]
    for item, (result, _) in zip(items, expected, strict=True):
        if item.intent == "valid":
            assert result == "handled" or (result == "expired" and item.topic == COMMAND_TOPIC), (
                item
            )
        elif item.intent == "invalid":
            assert result == "dead", item
    observer = Outcomes()
    bus = Choreography(
        transport,
        store=MemoryStore(),
        max_message_size=MAX_MESSAGE_SIZE,
        stop_grace=1.0,
        observers=[observer],
    )
    retry = Retry(attempts=2, backoff=0.01, jitter=0)
    after: list[int] = []

    @bus.on(Fuzzed, service="fuzz", name="events", retry=retry)
    async def on_event(event: Fuzzed) -> None:
        if event.note == "after the fuzz":
            after.append(event.n)

    @bus.handles(Probe, service="fuzz", name="commands", retry=retry)
    async def on_command(command: Probe) -> Answer:
        return Answer(n=command.n)

    caplog.clear()
    with anyio.fail_after(wait + 30):
        async with bus:
            for item in items:
                await transport.publish(item.topic, item.body, item.headers)
            # Wait until every input is accounted for.
            with anyio.fail_after(wait):
                while True:
                    letters = await bus.dead_letters(limit=100_000)
                    expired = _expired_ids(caplog.records)
                    settled = sum(observer.ids.values()) + len(letters) + expired.total()
                    if settled >= len(items):
                        break
                    await anyio.sleep(0.01)
            # The consumers still run: a valid event and a valid request after the fuzz.
            await bus.publish(Fuzzed(n=-1, note="after the fuzz"))
            answer = await bus.request(Probe(n=7, note="after"), timeout=wait)
            assert answer == Answer(n=7)
            with anyio.fail_after(wait):
                while not after:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.05)  # anything more would show now
            letters = await bus.dead_letters(limit=100_000)
    assert after == [-1]
    handled = observer.ids.copy()
    expired = _expired_ids(caplog.records)

    # Every input accounted for once: handled, dead-lettered or dropped as expired.
    tally = Tally(inputs=len(items))
    letters_by_body: dict[tuple[str, bytes], list[DeadLetter]] = {}
    for letter in letters:
        letters_by_body.setdefault((letter.topic, letter.body), []).append(letter)
    for item, (result, words) in zip(items, expected, strict=True):
        message_id = _id(item)
        tally.kinds[item.what] += 1
        if result == "handled":
            if handled[message_id] == 1:
                handled[message_id] = 0
                tally.handled += 1
                continue
            # A command whose forged reply-to names a topic the transport refuses:
            # handled, but its reply could not be sent: dead-lettered, naming that.
            assert REPLY_TO in item.headers and item.topic == COMMAND_TOPIC, (item, handled)
            letter = letters_by_body[item.topic, item.body].pop()
            assert letter.error_type == "flowkit.TransportError", letter
            assert "publish" in letter.error, letter.error
            tally.dead += 1
            tally.reply_failed += 1
        elif result == "expired":
            assert expired[message_id] == 1, item
            expired[message_id] = 0
            tally.expired += 1
        else:
            matching = letters_by_body.get((item.topic, item.body))
            assert matching, f"no dead letter for {item.what}: {item.body[:200]!r}"
            letter = matching.pop()
            assert letter.attempts == 0
            assert letter.error_type in ("flowkit.DecodeError", "flowkit.MessageTooLarge")
            assert words in letter.error, (words, letter.error)
            consumer = "fuzz:events" if item.topic == EVENT_TOPIC else "fuzz:commands"
            assert letter.consumer == consumer
            tally.dead += 1
    # Nothing more: no message handled twice or unasked for, no dead letter left over.
    assert not [m for m, n in handled.items() if n and m.startswith("fz-")]
    assert not [b for left in letters_by_body.values() for b in left]
    assert not +expired
    assert tally.handled + tally.dead + tally.expired == tally.inputs
    _check_no_marker(caplog, letters)
    return tally


def _id(item: Input) -> str:
    """The message id an input's envelope carries (the one it was given)."""
    start = item.body.find(b'"id": "fz-')
    if start == -1:
        return ""
    start += len(b'"id": "')
    return item.body[start : item.body.index(b'"', start)].decode()


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


# -- in memory: many examples -------------------------------------------------------


def test_fuzzed_input_in_memory(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    total = Tally()
    gc.collect()
    before = rss()

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.lists(fuzzed_inputs, min_size=1, max_size=12))
    def check(inputs: list[Input]) -> None:
        total.add(anyio.run(lambda: fuzz(InMemoryTransport(), inputs, caplog, wait=10)))

    check()
    total.add(anyio.run(lambda: fuzz(InMemoryTransport(), forged_requests(), caplog, wait=10)))
    gc.collect()
    after = rss()
    _report(capsys, total.line("memory", before, after))
    assert total.inputs >= 500
    assert after - before < RSS_GROWTH_LIMIT


# -- on each broker: fewer, in one run -------------------------------------------------

BROKER_INPUTS = 80


@functools.cache
def draw_inputs(count: int, seed_value: int) -> tuple[Input, ...]:
    """``count`` fuzzed inputs drawn by Hypothesis (once: every broker gets the same)."""
    drawn: list[Input] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzzed_inputs)
    def collect(item: Input) -> None:
        drawn.append(item)

    collect()
    return tuple(drawn)


@pytest.mark.anyio
@on_brokers()
async def test_fuzzed_input_on_a_broker(
    broker: Broker,
    make: Callable[..., Transport],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    inputs = [*draw_inputs(BROKER_INPUTS, 20240513), *forged_requests()]
    gc.collect()
    before = rss()
    tally = await fuzz(make(), inputs, caplog, wait=broker.wait + 20)
    gc.collect()
    after = rss()
    _report(capsys, tally.line(broker.name, before, after))
    assert tally.inputs >= BROKER_INPUTS // 2
    assert after - before < RSS_GROWTH_LIMIT


def _too_long_for_amqp(topic: str | None) -> bool:
    return topic is not None and len(topic.encode()) > 255


@pytest.mark.anyio
@on_brokers()
async def test_a_reply_to_a_topic_too_long_for_the_broker_leaves_the_bus_working(
    broker: Broker,
    make: Callable[..., Transport],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    long_reply_to = [
        item for item in forged_requests() if _too_long_for_amqp(item.headers.get(REPLY_TO))
    ]
    assert long_reply_to
    # The request is handled (or, if the reply cannot be sent, dead-lettered naming
    # the publish that failed), and the bus still answers a request after it.
    await fuzz(make(publish_timeout=2), long_reply_to, caplog, wait=broker.wait + 10)
