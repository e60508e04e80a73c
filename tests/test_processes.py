"""The e-commerce example with each service in its own ``flowkit worker`` process, on
every broker.

Every service process shares one SQLite store (inboxes, dead letters) and one
ledger of effects (:class:`~examples.ecommerce.ledger.SharedWorld`), which
counts every repeated application of an idempotency key: the tests check that
each effect happened exactly once and none is missing, while processes are
started and killed under load.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import anyio
import pytest

from examples.ecommerce import logistics, notification, order_history, seller
from examples.ecommerce.events import OrderPlaced
from examples.ecommerce.ledger import SharedWorld
from examples.ecommerce.orchestrated import order_saga
from examples.ecommerce.processes import (
    ROOT,
    Workers,
    choreography_effects,
    dead_letters,
    place_orders,
    wait_until,
)
from flowkit.orchestration import Orchestrator, WorkflowStatus
from flowkit.stores import SQLiteStore
from flowkit.testing import assert_compensation_order
from flowkit.transports import from_url

from .brokers import kafka_url as kafka_url
from .brokers import nats_url as nats_url
from .brokers import rabbitmq_url as rabbitmq_url
from .brokers import redis_url as redis_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
    from pathlib import Path

    from examples.ecommerce.ledger import Effect
    from flowkit import DeadLetter
    from flowkit.orchestration import Outcome

pytestmark = pytest.mark.anyio

CLAIM_IDLE = 1.0
"""Seconds after which the live workers take over what a killed one held (the
saga's remote steps time out after 5 s)."""


@pytest.fixture
def anyio_backend() -> str:
    """The broker clients run on asyncio only."""
    return "asyncio"


@dataclass
class Shop:
    """One run of the example: its workers, its ledger, its keys in Redis (a prefix of
    its own), and order ids of its own."""

    url: str
    workers: Workers
    world: SharedWorld
    run: str

    def order(self, i: int, *, email: str | None = None, total: float = 20.0) -> OrderPlaced:
        return OrderPlaced(
            order_id=f"{self.run}-{i}",
            user_email=email or f"user{i}@example.com",
            seller_id=f"seller-{i % 3}",
            items=["mug"],
            total=total,
        )

    def effects(self) -> list[Effect]:
        return self.world.applied()

    async def dead_letters(self) -> list[DeadLetter]:
        return await dead_letters(self.workers.store)

    async def start_services(self, *services: str) -> None:
        await self.workers.start_all(services)


@dataclass(frozen=True)
class BrokerRun:
    """How one broker runs the example: the URL of a run of its own (names no
    other run shares; what a killed worker held taken over within about
    ``CLAIM_IDLE`` seconds), and how to clean up after it."""

    fixture: str  # the pytest fixture giving the server's base URL
    url: Callable[[str, str], str]  # (base URL, run prefix) -> the run's URL
    forget: Callable[[str, str], Awaitable[None]]  # (base URL, run prefix) -> clean up


def _with_query(url: str, **options: object) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(options)}"


async def _forget_redis(url: str, prefix: str) -> None:
    """Delete the keys a run wrote under its own prefix."""
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            await client.delete(key)
    finally:
        await client.aclose()


async def _forget_nats(url: str, prefix: str) -> None:
    """Delete the streams (and with them the consumers) a run made under its prefix."""
    import nats

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(f"{prefix}_"):
                await js.delete_stream(info.config.name)
    finally:
        await client.close()


async def _forget_kafka(url: str, prefix: str) -> None:
    """Delete the Kafka topics a run made under its prefix (its groups go with them)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=url.removeprefix("kafka://").split("?")[0])
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(f"{prefix}..")]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def _forget_rabbitmq(url: str, prefix: str) -> None:
    """Delete the queues and exchanges a run declared under its prefix."""
    from .rabbitmq_server import forget_rabbitmq

    await forget_rabbitmq(url, prefix)


#: Every broker the example runs on, by the name tests are parametrized with.
BROKERS: dict[str, BrokerRun] = {
    "redis": BrokerRun(
        "redis_url",
        lambda url, prefix: _with_query(url, claim_idle=CLAIM_IDLE, prefix=prefix),
        _forget_redis,
    ),
    "nats": BrokerRun(
        "nats_url",
        lambda url, prefix: _with_query(url, ack_wait=CLAIM_IDLE, prefix=prefix),
        _forget_nats,
    ),
    "kafka": BrokerRun(
        "kafka_url",
        lambda url, prefix: _with_query(url, session_timeout=1.5 * CLAIM_IDLE, prefix=prefix),
        _forget_kafka,
    ),
    # A killed worker's connection closes with it: RabbitMQ gives back what it held at once.
    "rabbitmq": BrokerRun(
        "rabbitmq_url", lambda url, prefix: _with_query(url, prefix=prefix), _forget_rabbitmq
    ),
}


@pytest.fixture(params=sorted(BROKERS))
async def shop(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Shop]:
    broker = BROKERS[request.param]
    base = request.getfixturevalue(broker.fixture)
    run = uuid.uuid4().hex[:8]
    prefix = f"flowkit-test-{run}"
    url = broker.url(base, prefix)
    world = SharedWorld(tmp_path / "ledger.db", process="test")
    workers = Workers(
        transport=url,
        store=tmp_path / "flowkit.db",
        ledger=tmp_path / "ledger.db",
        logs=tmp_path / "logs",
        grace=5.0,
    )
    try:
        yield Shop(url, workers, world, run)
    finally:
        await workers.stop()
        world.close()
        await broker.forget(base, prefix)
        for worker in workers.started:
            if worker.process.returncode not in (0, -signal.SIGKILL):
                print(f"--- {worker.name} exited with {worker.process.returncode}:")
                print(worker.output())


ALL_SERVICES = (
    notification.SERVICE,
    seller.SERVICE,
    order_history.SERVICE,
    logistics.SERVICE,
)


def _expected(orders: Iterable[OrderPlaced]) -> set[str]:
    return set().union(*(choreography_effects(o) for o in orders))


async def _all_done(shop: Shop, expected: set[str], timeout: float) -> float:
    """Wait until every expected effect is in the ledger; returns the seconds it took.

    Raises:
        TimeoutError: naming how many effects are missing, and a few of them.
    """
    try:
        return await wait_until(
            lambda: expected <= {e.line for e in shop.effects()},
            timeout=timeout,
            what="every effect of every order",
        )
    except TimeoutError as exc:
        missing = sorted(expected - {e.line for e in shop.effects()})
        raise TimeoutError(f"{exc}: {len(missing)} missing, such as {missing[:5]}") from None


def _assert_each_effect_once(effects: list[Effect], expected: set[str]) -> None:
    lines = Counter(e.line for e in effects)
    assert {line for line, n in lines.items() if n > 1} == set(), "an effect happened twice"
    assert expected - set(lines) == set(), "an effect is missing"
    assert set(lines) - expected == set(), "an effect nobody asked for"


@pytest.mark.slow  # a minute when the kill lands on a message being handled (see below)
async def test_killed_replica_work_is_taken_over_and_every_effect_happens_once(
    shop: Shop,
) -> None:
    await shop.start_services(notification.SERVICE, seller.SERVICE, order_history.SERVICE)
    first, _ = await shop.workers.start_all([logistics.SERVICE, logistics.SERVICE])
    orders = [shop.order(i) for i in range(200)]
    expected = _expected(orders)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: place_orders(shop.url, orders))
        await wait_until(
            lambda: sum(e.process == first.name for e in shop.effects()) >= 10,
            timeout=20,
            what=f"{first.name} handling orders",
        )
        await shop.workers.kill(first)
        killed = time.monotonic()
        killed_at = time.time()

    # What the killed replica held goes to the survivor: the messages it had read
    # are reclaimed after claim_idle; the one it was handling stays claimed in the
    # shared inbox until the claim lease (the bus's shortest, a minute) runs out,
    # and the survivor looks again with the handler's retry backoff (at most 30 s).
    await _all_done(shop, expected, timeout=CLAIM_IDLE + 60.0 + 30.0 + 20.0)
    print(f"every effect done {time.monotonic() - killed:.1f}s after the kill")
    await anyio.sleep(0.5)  # a late duplicate would show now
    effects = shop.effects()
    _assert_each_effect_once(effects, expected)
    booked = Counter(e.process for e in effects if e.service == logistics.SERVICE)
    assert set(booked) == {"logistics-1", "logistics-2"}
    assert any(
        e.process == "logistics-2" and e.applied_at > killed_at
        for e in effects
        if e.service == logistics.SERVICE
    )
    # The inbox ran every other handling once; the only repeat possible is the
    # message the killed replica was handling, if it acted before it died.
    repeated = [e for e in effects if e.repeats]
    assert len(repeated) <= 1, repeated
    for e in repeated:
        assert (e.service, e.process, e.repeats) == (logistics.SERVICE, first.name, 1)
    assert await shop.dead_letters() == []


async def test_a_second_replica_started_while_the_first_runs_shares_the_work(
    shop: Shop,
) -> None:
    await shop.start_services(
        notification.SERVICE, seller.SERVICE, order_history.SERVICE, logistics.SERVICE
    )
    orders = [shop.order(i) for i in range(200)]

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: place_orders(shop.url, orders[:100], pace=0.01))
        await wait_until(
            lambda: sum(e.service == logistics.SERVICE for e in shop.effects()) >= 20,
            timeout=20,
            what="logistics-1 handling orders",
        )
        second = await shop.workers.start(logistics.SERVICE)  # while orders come in
    await place_orders(shop.url, orders[100:], pace=0.01)

    expected = _expected(orders)
    await _all_done(shop, expected, timeout=30)
    await anyio.sleep(0.5)
    effects = shop.effects()
    _assert_each_effect_once(effects, expected)
    booked = Counter(e.process for e in effects if e.service == logistics.SERVICE)
    assert booked["logistics-1"] > 0 and booked[second.name] > 0, booked
    assert [e for e in effects if e.repeats] == []  # the shared inbox ran each handling once


def _saga_plan(i: int) -> str:
    return ("completed", "completed", "bad email", "declined")[i % 4]


def _saga_keys(workflow_id: str, plan: str) -> set[str]:
    forward = ["reserve_stock", "charge_payment", "prepare_shipment", "assign_partner"]
    if plan == "completed":
        steps = [*forward, "send_confirmation"]
    elif plan == "bad email":
        steps = [*forward, *(f"{step}:compensate" for step in forward)]
    else:
        steps = ["reserve_stock", "reserve_stock:compensate"]
    return {f"{workflow_id}:{step}" for step in steps}


async def test_sagas_complete_or_compensate_as_planned_when_a_worker_is_killed(
    shop: Shop,
) -> None:
    await shop.start_services(notification.SERVICE, seller.SERVICE)
    first, _ = await shop.workers.start_all([logistics.SERVICE, logistics.SERVICE])
    world = SharedWorld(shop.world.path, process="order")
    place_order = order_saga(world)
    ids = [f"{shop.run}-{i}" for i in range(60)]
    plans = {workflow_id: _saga_plan(i) for i, workflow_id in enumerate(ids)}
    outcomes: dict[str, Outcome] = {}
    killed_at = float("inf")

    def order(i: int, workflow_id: str) -> OrderPlaced:
        plan = plans[workflow_id]
        return OrderPlaced(
            order_id=workflow_id,
            user_email="nobody" if plan == "bad email" else f"user{i}@example.com",
            seller_id=f"seller-{i % 3}",
            items=["mug"],
            total=9000.0 if plan == "declined" else 20.0,
        )

    async def run(saga: Orchestrator[OrderPlaced], i: int, workflow_id: str) -> None:
        outcomes[workflow_id] = await saga.run(order(i, workflow_id), workflow_id=workflow_id)

    try:
        async with place_order(
            SQLiteStore(shop.workers.store), transport=from_url(shop.url)
        ) as saga:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i, workflow_id in enumerate(ids):
                        tg.start_soon(run, saga, i, workflow_id)
                        await anyio.sleep(0.02)
                        if i == 15:
                            await wait_until(
                                lambda: any(e.process == first.name for e in shop.effects()),
                                timeout=10,
                                what=f"{first.name} answering",
                            )
                            await shop.workers.kill(first)
                            killed_at = time.time()
    finally:
        world.close()

    for workflow_id, plan in plans.items():
        outcome = outcomes[workflow_id]
        if plan == "completed":
            assert outcome.status is WorkflowStatus.COMPLETED, (workflow_id, outcome.reason)
        elif plan == "bad email":  # the confirmation, the pivot, failed: all is undone
            assert outcome.status is WorkflowStatus.COMPENSATED, (workflow_id, outcome.reason)
            assert_compensation_order(
                outcome,
                [{"prepare_shipment", "assign_partner"}, "charge_payment", "reserve_stock"],
            )
        else:
            assert outcome.status is WorkflowStatus.COMPENSATED, (workflow_id, outcome.reason)
            assert outcome.compensated == ("reserve_stock",)
    effects = shop.effects()
    keys = Counter(e.key for e in effects)
    expected = set().union(*(_saga_keys(w, p) for w, p in plans.items()))
    assert set(keys) == expected
    assert any(e.process == "logistics-2" and e.applied_at > killed_at for e in effects)
    # Commands have no inbox: a request the killed worker was answering is answered
    # again by the survivor, with the same idempotency key, and does nothing twice.
    for e in effects:
        if e.repeats:
            assert (e.service, e.process) == (logistics.SERVICE, first.name), e


async def test_dlq_replay_from_another_process_reaches_a_worker(shop: Shop) -> None:
    await shop.start_services(*ALL_SERVICES)
    shop.world.fail("warehouse", times=1_000_000)  # down for good
    order = shop.order(1)
    await place_orders(shop.url, [order])

    with anyio.fail_after(20):
        while not await shop.dead_letters():
            await anyio.sleep(0.05)
    [letter] = await shop.dead_letters()
    assert letter.consumer == "seller:prepare-shipment"
    assert letter.attempts == 3
    packed = f"[seller] {order.seller_id} packs parcel-{order.order_id}"
    assert packed not in {e.line for e in shop.effects()}

    shop.world.repair("warehouse")  # the cause is fixed
    env = shop.workers.env("dlq")
    command = shop.workers.command(
        "dlq", "replay", "examples.ecommerce.services:bus", "--all", "--consumer", letter.consumer
    )
    with anyio.fail_after(30):  # on timeout, the process is killed
        done = await anyio.run_process(
            command, cwd=ROOT, env=env, stderr=subprocess.STDOUT, check=False
        )
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out
    assert "replayed 1 dead letter(s)" in out

    expected = choreography_effects(order)
    await _all_done(shop, expected, timeout=20)
    effects = shop.effects()
    _assert_each_effect_once(effects, expected)
    assert {e.process for e in effects if e.line == packed} == {"seller-1"}
    assert [e for e in effects if e.repeats] == []
    assert await shop.dead_letters() == []


def test_the_processes_example_needs_a_broker_url() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.ecommerce.processes"],
        cwd=ROOT,
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("FLOWKIT_REDIS_URL", "FLOWKIT_TRANSPORT")
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--transport" in done.stderr
