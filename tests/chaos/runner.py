"""The chaos runner: the e-commerce example under faults, then a ledger check.

::

    python -m tests.chaos --transport redis --store sqlite --orders 10000 --seed 7

For each broker x store of the command line, it starts a private server of the
broker (:mod:`tests.chaos.servers`: ``redis-server`` with ``appendfsync always``,
``nats-server`` with JetStream, a RabbitMQ node, or Tansu), on a free port with
its data in the run's directory, and the store (``sqlite``: a
file; ``postgres``: a fresh schema of ``$FLOWKIT_POSTGRES_URL``, dropped
afterwards), then the example's services, each in its own ``flowkit worker``
process (two logistics replicas), on them. Then it places the orders at
``--rate`` a second (choreography: ``OrderPlaced`` published; orchestration:
``PlaceOrder`` sagas started in this process), and meanwhile, at seeded random
times, injects faults, each recorded with its time:

* ``kill``: SIGKILL a worker, and start a replacement;
* ``replica``: start one more replica of a service;
* ``restart``: restart the broker's server, same port, same data (a RabbitMQ
  node takes seconds to come back); not Tansu, whose data is in memory only;
* ``pause-db``: hold the store's write lock for 2 s (SQLite: ``BEGIN
  EXCLUSIVE``; PostgreSQL: ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` on the
  schema's workflows and inbox tables);
* ``fail``: the warehouse and the partner API fail twice (handlers retry);
* ``slow``: the warehouse and the partner API take 0.3 s a call for 3 s;

and publishes a few undecodable messages (``--poison``) on ``OrderPlaced``.
When every order is settled (or ``--settle-timeout`` passed) it checks the
ledger and the store (:func:`check`), measures the recovery after each fault
(:func:`recovery`), prints a table and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import anyio

from examples.ecommerce import logistics, notification, order_history, seller
from examples.ecommerce.events import OrderPlaced
from examples.ecommerce.orchestrated import order_saga
from examples.ecommerce.processes import APP, ROOT, Worker, Workers, choreography_effects
from flowkit import Choreography, TransportError
from flowkit.orchestration import WorkflowStatus
from flowkit.stores import from_url as store_from_url
from flowkit.transports import from_url as transport_from_url

from .servers import BrokerServer, private_server
from .services import ChaosWorld

if TYPE_CHECKING:
    from flowkit.orchestration import Orchestrator, Outcome
    from flowkit.stores import StateStore

__all__ = ["Fault", "Result", "main", "run_cell"]

CHAOS_APP = "tests.chaos.services:bus"
SERVICES = {
    notification.SERVICE: 1,
    seller.SERVICE: 1,
    logistics.SERVICE: 2,
    order_history.SERVICE: 1,
}
MAX_REPLICAS = 3
"""A service gets no more replicas than this from the ``replica`` fault."""
CLAIM_IDLE = 1.0
"""Seconds after which a killed worker's messages are taken over by another."""
ORDERPLACED_CONSUMERS = 4
"""The consumer groups of ``OrderPlaced``: each dead-letters an undecodable one."""
SAGA_STEPS = ("reserve_stock", "charge_payment", "prepare_shipment", "assign_partner")
BROKERS = ("redis", "nats", "rabbitmq", "kafka")
STORES = ("sqlite", "postgres")
ALL_FAULTS = ("kill", "replica", "restart", "pause-db", "fail", "slow")
ORDER_ID = re.compile(r"\bc-\d+\b")
SAGA_ID = re.compile(r"\bs-\d+\b")
NAMESPACE = uuid.UUID("5f0c7c1e-3a38-4a8e-9a43-0c1f0e7c2a11")

log = logging.getLogger("chaos")


# -- the workers ----------------------------------------------------------------------


class ChaosWorkers(Workers):
    """The example's :class:`Workers`, running :data:`CHAOS_APP` on any store URL."""

    def __init__(self, *, store_url: str, **kwargs: Any) -> None:
        super().__init__(store=Path(os.devnull), **kwargs)
        self.store_url = store_url

    def env(self, process: str) -> dict[str, str]:
        env = super().env(process)
        env["FLOWKIT_STORE"] = self.store_url
        paths = [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        return env

    def command(self, *args: str) -> list[str]:
        args = tuple(CHAOS_APP if a == APP else a for a in args)
        return [
            sys.executable,
            "-m",
            "flowkit",
            *args,
            "--transport",
            self.transport,
            "--store",
            self.store_url,
        ]

    def running(self, service: str | None = None) -> list[Worker]:
        return [w for w in self.started if w.running and service in (None, w.service)]


# -- what happened --------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault: its kind, when (seconds since the epoch), what it hit."""

    kind: str
    at: float
    detail: str
    until: float = 0.0
    recovery: float | None = None


@dataclass
class Result:
    """One broker x store run: what was injected and what the checks found."""

    broker: str
    store: str
    style: str
    seed: int
    orders: int
    choreography_orders: int = 0
    sagas: int = 0
    messages: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    stuck: int = 0
    redelivered: int = 0
    saga_status: dict[str, int] = field(default_factory=dict)
    unplanned_turns: dict[str, int] = field(default_factory=dict)
    dead_letters_expected: int = 0
    dead_letters_found: int = 0
    replayed: int = 0
    poison_copies: dict[str, int] = field(default_factory=dict)
    recovery_max: float | None = None
    recovery_median: float | None = None
    started_at: float = 0.0
    placing_seconds: float = 0.0
    settle_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    fault_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


# -- the orders -----------------------------------------------------------------------


def plan_orders(count: int, style: str) -> list[OrderPlaced]:
    """``count`` orders; choreography ``c-N`` (every 50th with an email that is not an
    address: its confirmation is dead-lettered), sagas ``s-N`` (every 10th declined:
    compensated). ``both`` alternates."""
    orders = []
    for i in range(count):
        saga = style == "orchestration" or (style == "both" and i % 2 == 1)
        prefix = "s" if saga else "c"
        email = f"user{i}@example.com"
        if not saga and i % 50 == 8:
            email = f"user{i}-no-address"
        total = 9000.0 if saga and i % 10 == 9 else 10.0 + i % 90
        orders.append(
            OrderPlaced(
                order_id=f"{prefix}-{i}",
                user_email=email,
                seller_id=f"seller-{i % 4}",
                items=["mug"],
                total=total,
            )
        )
    return orders


def saga_keys(order: OrderPlaced, status: str) -> tuple[set[str], set[str]]:
    """The ledger keys a saga of ``order`` that ended in ``status`` must have, and
    those it may have (a compensated saga's remote steps may have acted or not)."""
    wid = order.order_id
    forward = [f"{wid}:{step}" for step in (*SAGA_STEPS, "send_confirmation")]
    undo = [f"{wid}:{step}:compensate" for step in SAGA_STEPS]
    if status == "COMPLETED":
        return set(forward), set(forward)
    return set(), set(forward) | set(undo)


# -- faults ---------------------------------------------------------------------------


class Chaos:
    """Injects the faults of one run."""

    def __init__(
        self,
        *,
        rng: random.Random,
        workers: ChaosWorkers,
        world: ChaosWorld,
        broker: BrokerServer,
        store_url: str,
        schema: str | None,
    ) -> None:
        self.rng = rng
        self.workers = workers
        self.world = world
        self.broker = broker
        self.store_url = store_url
        self.schema = schema
        self.faults: list[Fault] = []

    async def inject(self, kind: str) -> None:
        fault = Fault(kind, time.time(), "")
        self.faults.append(fault)
        if kind == "kill":
            victim = self.rng.choice(sorted(self.workers.running(), key=lambda w: w.name))
            await self.workers.kill(victim)
            fresh = await self.workers.start(victim.service)
            fault.detail = f"killed {victim.name} (pid {victim.pid}); started {fresh.name}"
        elif kind == "replica":
            services = [s for s in SERVICES if len(self.workers.running(s)) < MAX_REPLICAS]
            if not services:
                fault.detail = "every service has its maximum of replicas"
            else:
                extra = await self.workers.start(self.rng.choice(services))
                fault.detail = f"started {extra.name}"
        elif kind == "restart":
            await anyio.to_thread.run_sync(self.broker.restart)
            fault.detail = f"restarted {self.broker.name} (pid now {self.broker.pid})"
        elif kind == "pause-db":
            await self._pause_db(2.0)
            fault.detail = "store write-locked for 2 s"
        elif kind == "fail":
            self.world.fail("warehouse", times=2)
            self.world.fail("partner-api", times=2)
            fault.detail = "warehouse and partner API fail their next 2 calls"
        elif kind == "slow":
            self.world.slow("warehouse", 3.0, 0.3)
            self.world.slow("partner-api", 3.0, 0.3)
            fault.detail = "warehouse and partner API take 0.3 s a call for 3 s"
        else:
            raise ValueError(f"unknown fault {kind!r}")
        fault.until = time.time()
        if kind == "slow":
            fault.until = fault.at + 3.0
        log.info("fault %s: %s", kind, fault.detail)

    async def _pause_db(self, seconds: float) -> None:
        if self.schema is None:  # SQLite: one connection holds the write lock
            path = self.store_url.removeprefix("sqlite:///")

            def hold() -> None:
                conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
                try:
                    conn.execute("BEGIN EXCLUSIVE")
                    time.sleep(seconds)
                    conn.execute("COMMIT")
                finally:
                    conn.close()

            await anyio.to_thread.run_sync(hold)
            return
        import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

        conn = await asyncpg.connect(self.store_url.split("?")[0])
        try:
            async with conn.transaction():
                await conn.execute(
                    f'LOCK TABLE "{self.schema}".flowkit_workflows, "{self.schema}".flowkit_inbox '
                    "IN ACCESS EXCLUSIVE MODE"
                )
                await anyio.sleep(seconds)
        finally:
            await conn.close()


def schedule(
    rng: random.Random, kinds: list[str], duration: float, every: float
) -> list[tuple[float, str]]:
    """Fault times (seconds after the first order) and kinds: each kind at least once,
    about one fault per ``every`` seconds, spread over ``duration`` with seeded jitter."""
    count = max(len(kinds), int(duration / every))
    chosen = list(kinds) + [rng.choice(kinds) for _ in range(count - len(kinds))]
    rng.shuffle(chosen)
    return [(duration * (i + rng.uniform(0.2, 0.8)) / count, kind) for i, kind in enumerate(chosen)]


# -- measuring ------------------------------------------------------------------------


def recovery(fault: Fault, completions: list[float]) -> float | None:
    """Seconds from the start of a fault until the orders complete again at half the
    rate of the 5 s before it (in a 1 s window); without such a rate, until the
    next order completes. None if no order completed after it."""
    before = sum(1 for t in completions if fault.at - 5 <= t < fault.at) / 5
    after = [t for t in completions if t >= fault.at]
    if not after:
        return None
    if before >= 2:
        t = fault.at
        last = after[-1]
        while t <= last:
            if sum(1 for c in after if t <= c < t + 1) >= before / 2:
                return max(0.0, t - fault.at)
            t += 0.1
    return after[0] - fault.at


# -- one run --------------------------------------------------------------------------


def broker_url(broker: str, server: BrokerServer, prefix: str) -> str:
    """The transport URL of ``broker`` on ``server``, its keys under ``prefix``, a killed
    worker's messages taken over after about :data:`CLAIM_IDLE` seconds."""
    options: dict[str, object] = {"prefix": prefix}
    if broker == "redis":
        options["claim_idle"] = CLAIM_IDLE
    elif broker == "nats":
        options["ack_wait"] = CLAIM_IDLE
    elif broker == "kafka":
        options["session_timeout"] = 1.5 * CLAIM_IDLE
    base = server.url
    return f"{base}{'&' if '?' in base else '?'}{urlencode(options)}"


async def publish_retrying(bus: Choreography, order: OrderPlaced, deadline: float) -> None:
    """Publish ``order`` with a message id of its own, so that a retry after a failed
    publish (the broker restarting) is one message, not two."""
    message_id = str(uuid.uuid5(NAMESPACE, order.order_id))
    while True:
        try:
            await bus.publish(order, message_id=message_id)
            return
        except TransportError:
            if time.monotonic() > deadline:
                raise
            await anyio.sleep(0.2)


async def run_cell(args: argparse.Namespace, broker: str, store: str, workdir: Path) -> Result:
    rng = random.Random(f"{args.seed}-{broker}-{store}")
    result = Result(broker, store, args.style, args.seed, args.orders)
    run = uuid.uuid4().hex[:8]
    prefix = f"chaos-{run}"
    schema: str | None = None
    kinds = [k for k in args.faults.split(",") if k]
    if store == "sqlite":
        store_url = f"sqlite:///{workdir / 'flowkit.db'}"
    else:
        base = os.environ.get("FLOWKIT_POSTGRES_URL", "").strip()
        if not base:
            raise RuntimeError("--store postgres needs $FLOWKIT_POSTGRES_URL")
        schema = f"chaos_{run}"
        store_url = f"{base}{'&' if '?' in base else '?'}schema={schema}"
    server = await anyio.to_thread.run_sync(private_server, broker, workdir / broker)
    if not server.restartable:  # a restart would lose what it holds
        kinds = [k for k in kinds if k != "restart"]
    url = broker_url(broker, server, prefix)
    world = ChaosWorld(workdir / "ledger.db", process="runner")
    world.applied()  # creates the ledger
    workers = ChaosWorkers(
        transport=url, store_url=store_url, ledger=workdir / "ledger.db", logs=workdir / "logs"
    )
    orders = plan_orders(args.orders, args.style)
    chor = [o for o in orders if o.order_id.startswith("c-")]
    sagas = [o for o in orders if o.order_id.startswith("s-")]
    result.choreography_orders, result.sagas = len(chor), len(sagas)
    outcomes: dict[str, Outcome] = {}
    saga_done: dict[str, float] = {}
    chaos = Chaos(
        rng=rng, workers=workers, world=world, broker=server, store_url=store_url, schema=schema
    )
    duration = len(orders) / args.rate
    plan = schedule(rng, kinds, duration, args.fault_every) if kinds else []
    poison_at = sorted(rng.uniform(0.1, 0.9) * duration for _ in range(args.poison))
    opened: StateStore = store_from_url(store_url)
    try:
        await anyio.to_thread.run_sync(server.start)
        async with workers:
            await workers.start_all(s for s, n in SERVICES.items() for _ in range(n))
            log.info("%s x %s: workers started; placing %d orders", broker, store, len(orders))
            place_order = order_saga(world)
            publisher = Choreography(transport_from_url(url))
            raw = transport_from_url(url)
            async with (
                opened,
                publisher.run(services=[]),
                raw,
                place_order(opened, transport=transport_from_url(url)) as saga,
                anyio.create_task_group() as tg,
            ):
                started = time.monotonic()
                result.started_at = time.time()

                async def faults() -> None:
                    for offset, kind in plan:
                        await anyio.sleep_until(started + offset)
                        try:
                            await chaos.inject(kind)
                        except Exception as exc:
                            result.failures.append(f"fault {kind} could not be injected: {exc!r}")

                async def poison() -> None:
                    # A publish that failed (the broker restarting) may have been stored
                    # all the same: the message published again is then a second copy.
                    for i, offset in enumerate(poison_at):
                        await anyio.sleep_until(started + offset)
                        body = b"\xff poisoned order %d: not JSON" % i
                        result.poison_copies[body.decode(errors="replace")] = 1
                        while True:
                            try:
                                await raw.publish(OrderPlaced.__flowkit_type__, body)
                                break
                            except TransportError:
                                result.poison_copies[body.decode(errors="replace")] += 1
                                await anyio.sleep(0.2)

                async def follow(saga: Orchestrator[OrderPlaced], wid: str) -> None:
                    outcomes[wid] = await saga.wait(wid)
                    saga_done[wid] = time.time()

                tg.start_soon(faults)
                tg.start_soon(poison)
                started_sagas = 0
                for i, order in enumerate(orders):
                    await anyio.sleep_until(started + i / args.rate)
                    deadline = time.monotonic() + 60
                    if order.order_id.startswith("c-"):
                        await publish_retrying(publisher, order, deadline)
                    else:
                        while started_sagas - len(saga_done) >= args.max_sagas:
                            await anyio.sleep(0.05)
                        started_sagas += 1
                        while True:
                            try:
                                await saga.start(order, workflow_id=order.order_id)
                                break
                            except Exception:
                                if time.monotonic() > deadline:
                                    raise
                                await anyio.sleep(0.2)
                        tg.start_soon(follow, saga, order.order_id)
                result.placing_seconds = time.monotonic() - started
                log.info("placed %d orders in %.1fs", len(orders), result.placing_seconds)
                expected_lines = set().union(set(), *(choreography_effects(o) for o in chor))
                bad = sum("@" not in o.user_email for o in chor)
                result.dead_letters_expected = bad + args.poison * ORDERPLACED_CONSUMERS
                settle = time.monotonic()
                with anyio.move_on_after(args.settle_timeout):
                    while True:
                        lines = {e.line for e in world.applied()}
                        letters = await opened.list_dead_letters(limit=1_000_000)
                        if (
                            expected_lines <= lines
                            and len(saga_done) == len(sagas)
                            and len(letters) >= result.dead_letters_expected
                        ):
                            break
                        await anyio.sleep(0.5)
                result.replayed = await replay_outages(url, opened)
                if result.replayed:
                    with anyio.move_on_after(args.settle_timeout):
                        while not expected_lines <= {e.line for e in world.applied()}:
                            await anyio.sleep(0.5)
                result.settle_seconds = time.monotonic() - settle
                tg.cancel_scope.cancel()
            letters = await _dead_letters(store_url)
            check(result, world, chor, sagas, outcomes, letters, chaos.faults, saga_done)
    finally:
        world.close()
        try:
            server.stop()
        finally:
            if schema is not None:
                await _drop_schema(store_url, schema)
        for worker in workers.started:
            if worker.process.returncode not in (0, -signal.SIGKILL, None):
                log.warning("%s exited with %s", worker.name, worker.process.returncode)
    return result


async def replay_outages(url: str, store: StateStore) -> int:
    """Replay the dead letters of messages whose handler gave up on an outside system's
    outage (the ``fail`` fault's ``ConnectionError``), as an operator would once it is
    over; how many.

    A message's attempts count its deliveries, so a broker restart that gave a
    message back uses one of its handler's retries: an outage can then outlast them.
    The replay goes to the consumer that gave up; its effects are checked after it.
    Events only: the caller of a command that gave up was answered with the
    failure, and its saga compensated.
    """
    letters = [
        letter
        for letter in await store.list_dead_letters(limit=1_000_000)
        if letter.error_type == "ConnectionError"
        and "flowkit-reply-to" not in letter.headers  # a command's caller has its answer
    ]
    if not letters:
        return 0
    replayer = Choreography(transport_from_url(url), store=store)
    async with replayer.run(services=[]):
        for letter in letters:
            await replayer.replay(letter.id)
    return len(letters)


async def _dead_letters(store_url: str) -> list[Any]:
    async with store_from_url(store_url) as opened:
        return await opened.list_dead_letters(limit=1_000_000)


async def _drop_schema(store_url: str, schema: str) -> None:
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    conn = await asyncpg.connect(store_url.split("?")[0])
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


# -- the checks -----------------------------------------------------------------------


def check(
    result: Result,
    world: ChaosWorld,
    chor: list[OrderPlaced],
    sagas: list[OrderPlaced],
    outcomes: dict[str, Outcome],
    letters: list[Any],
    faults: list[Fault],
    saga_done: dict[str, float],
) -> None:
    effects = world.applied()
    by_line = Counter(e.line for e in effects)
    by_key = {e.key: e for e in effects}
    result.redelivered = sum(e.repeats for e in effects)
    completions: list[float] = []
    messages = 0

    # choreography: every effect of the chain, once
    for order in chor:
        expected = choreography_effects(order)
        if not expected <= set(by_line):
            result.lost += 1
            if result.lost <= 5:
                missing = sorted(expected - set(by_line))
                result.failures.append(f"{order.order_id}: missing {missing}")
        else:
            completions.append(max(e.applied_at for e in effects if e.line in expected))
        result.duplicated += sum(by_line[line] - 1 for line in expected if by_line[line] > 1)
        messages += 1 + sum(1 for line in expected if not line.startswith("[order-history]"))
    by_id = {o.order_id: o for o in chor}
    for e in effects:
        match = ORDER_ID.search(e.line)
        if (
            match
            and match.group(0) in by_id
            and e.line not in choreography_effects(by_id[match.group(0)])
        ):
            result.unexpected += 1
            result.failures.append(f"unexpected effect: {e.line}")

    # orchestration: every saga ended, with a reason when it turned back; its
    # effects are the ones its end allows, each once
    status: Counter[str] = Counter()
    turns: Counter[str] = Counter()
    for order in sagas:
        wid = order.order_id
        outcome = outcomes.get(wid)
        if outcome is None or outcome.status not in (
            WorkflowStatus.COMPLETED,
            WorkflowStatus.COMPENSATED,
            WorkflowStatus.FAILED,
        ):
            result.stuck += 1
            status["unfinished"] += 1
            continue
        status[outcome.status.value] += 1
        completions.append(saga_done[wid])
        if order.total <= 1000 and outcome.status is not WorkflowStatus.COMPLETED:
            reason = re.sub(r"\(message [^)]*\) ", "", outcome.reason or "")
            turns[f"{outcome.status.value}: {reason}"] += 1
        if outcome.status is not WorkflowStatus.COMPLETED and not outcome.reason:
            result.failures.append(f"{wid}: {outcome.status.value} without a reason")
        if order.total > 1000 and outcome.status is not WorkflowStatus.COMPENSATED:
            result.failures.append(f"{wid}: a declined card ended {outcome.status.value}")
        must, may = saga_keys(order, outcome.status.value)
        keys = {k for k in by_key if k.startswith(f"{wid}:")}
        if not must <= keys:
            result.lost += 1
            missing = sorted(must - keys)
            result.failures.append(f"{wid}: {outcome.status.value} but missing {missing}")
        if keys - may:
            result.unexpected += len(keys - may)
            result.failures.append(f"{wid}: unexpected effects {sorted(keys - may)}")
        # a local step undone must have been done, a local step done must be undone
        if outcome.status is WorkflowStatus.COMPENSATED:
            for step in ("reserve_stock", "charge_payment"):
                if (f"{wid}:{step}" in keys) != (f"{wid}:{step}:compensate" in keys):
                    result.failures.append(f"{wid}: {step} done and undone do not match")
        remote = [k for k in keys if not k.split(":", 1)[1].startswith(("reserve", "charge"))]
        messages += 2 * len(remote)  # a command and its reply
    result.saga_status = dict(status)
    result.unplanned_turns = dict(turns.most_common())

    # duplicated effects: the same thing done under two idempotency keys
    result.duplicated += sum(n - 1 for line, n in by_line.items() if n > 1 and SAGA_ID.search(line))
    result.messages = messages

    # dead letters: the bad emails and the poisoned messages, and nothing else
    poison = [letter for letter in letters if letter.error_type == "flowkit.DecodeError"]
    bad_email = [
        letter
        for letter in letters
        if letter.consumer == f"{notification.SERVICE}:confirm-order"
        and letter.error_type != "flowkit.DecodeError"
    ]
    result.dead_letters_found = len(letters)
    result.messages += len(poison)
    others = [letter for letter in letters if letter not in poison and letter not in bad_email]
    # Each poisoned message once per consumer of OrderPlaced, or once per copy of it
    # stored by a publish that failed and was made again.
    copies = Counter((letter.consumer, letter.body) for letter in poison)
    extra = sum(n - 1 for n in result.poison_copies.values())
    for (consumer, body), n in sorted(copies.items()):
        stored = result.poison_copies.get(body.decode(errors="replace"), 1)
        if n > stored:
            result.failures.append(
                f"{consumer} dead-lettered one undecodable message {n} times "
                f"({stored} stored): {body[:40]!r}"
            )
    found_poison = len(copies)  # distinct (consumer, message)
    if (
        len(bad_email) + found_poison != result.dead_letters_expected
        or len(poison) > found_poison + extra * ORDERPLACED_CONSUMERS
        or others
    ):
        result.failures.append(
            f"dead letters: {len(letters)} found, {result.dead_letters_expected} expected "
            f"({len(poison)} undecodable, {len(bad_email)} bad emails, {len(others)} others)"
        )
    for letter in others[:5]:
        result.failures.append(
            f"unexpected dead letter: {letter.consumer} on {letter.topic}: "
            f"{letter.error_type}: {letter.error[:200]}"
        )
    if result.duplicated:
        result.failures.append(f"{result.duplicated} effect(s) applied twice")
    if result.stuck:
        result.failures.append(f"{result.stuck} saga(s) unfinished")

    # recovery after each fault
    completions.sort()
    recoveries = []
    for fault in faults:
        fault.recovery = recovery(fault, completions)
        if fault.recovery is not None:
            recoveries.append(fault.recovery)
    result.faults = dict(Counter(f.kind for f in faults))
    result.fault_log = [asdict(f) for f in faults]
    if recoveries:
        result.recovery_max = max(recoveries)
        result.recovery_median = statistics.median(recoveries)


# -- the command ----------------------------------------------------------------------


def table(results: list[Result]) -> str:
    """The results as a text table, one row per broker x store."""
    header = (
        "broker", "store", "style", "orders", "messages", "faults", "lost", "dup",
        "unexp", "stuck", "redeliv", "DLQ exp/found", "recov max", "recov med", "result",
    )  # fmt: skip

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}s"

    rows = [header]
    for r in results:
        faults = " ".join(f"{k}:{n}" for k, n in sorted(r.faults.items())) or "-"
        rows.append(
            (
                r.broker, r.store, r.style, str(r.orders), str(r.messages), faults,
                str(r.lost), str(r.duplicated), str(r.unexpected), str(r.stuck),
                str(r.redelivered),
                f"{r.dead_letters_expected}/{r.dead_letters_found}"
                + (f" +{r.replayed} replayed" if r.replayed else ""),
                seconds(r.recovery_max), seconds(r.recovery_median), "ok" if r.ok else "FAIL",
            )
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        lines.append(
            f"\n{r.broker} x {r.store}: placed in {r.placing_seconds:.1f}s, settled "
            f"{r.settle_seconds:.1f}s later; sagas {r.saga_status}"
        )
        for reason, n in list(r.unplanned_turns.items())[:5]:
            lines.append(f"  not planned: {n} saga(s) {reason}")
        t0 = r.started_at  # the first order
        for f in r.fault_log:
            rec = "-" if f["recovery"] is None else f"{f['recovery']:.2f}s"
            lines.append(f"  +{f['at'] - t0:7.1f}s {f['kind']:<8} recovery {rec:>6}  {f['detail']}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Run the e-commerce example's workers under faults and check the ledger.",
    )
    p.add_argument("--transport", default="redis", help=f"comma-separated, of {', '.join(BROKERS)}")
    p.add_argument("--store", default="sqlite", help=f"comma-separated, of {', '.join(STORES)}")
    p.add_argument("--orders", type=int, default=1000, help="orders per broker x store (1000)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--style", choices=("choreography", "orchestration", "both"), default="both",
        help="how orders are placed; both: alternately (default)",
    )  # fmt: skip
    p.add_argument("--rate", type=float, default=100.0, help="orders placed a second (100)")
    p.add_argument(
        "--faults", default=",".join(ALL_FAULTS),
        help=f"the kinds of fault to inject, comma-separated (default: {','.join(ALL_FAULTS)})",
    )  # fmt: skip
    p.add_argument(
        "--fault-every", type=float, default=5.0,
        help="about one fault per this many seconds of placing orders (5); each kind at least once",
    )  # fmt: skip
    p.add_argument("--poison", type=int, default=3, help="undecodable messages to publish (3)")
    p.add_argument("--max-sagas", type=int, default=300, help="sagas running at once at most")
    p.add_argument(
        "--settle-timeout", "--duration-limit", dest="settle_timeout", type=float, default=120.0,
        help="seconds to wait, after the last order, for every order to settle (120)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    p.add_argument("--workdir", type=Path, help="keep the stores, ledgers and logs here")
    p.add_argument("-v", "--verbose", action="store_true", help="log each fault as injected")
    return p


async def run_all(args: argparse.Namespace, workdir: Path) -> list[Result]:
    results = []
    for broker in args.transport.split(","):
        for store in args.store.split(","):
            cell = workdir / f"{broker}-{store}"
            cell.mkdir(parents=True, exist_ok=True)
            result = await run_cell(args, broker, store, cell)
            results.append(result)
            print(f"{broker} x {store}: {'ok' if result.ok else 'FAILED'}", flush=True)
            for failure in result.failures[:20]:
                print(f"  {failure}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for broker in args.transport.split(","):
        if broker not in BROKERS:
            parser().error(f"unknown broker {broker!r}")
    for store in args.store.split(","):
        if store not in STORES:
            parser().error(f"unknown store {store!r}")
    for kind in args.faults.split(","):
        if kind and kind not in ALL_FAULTS:
            parser().error(f"unknown fault {kind!r}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.verbose:  # while a broker restarts, its clients log each failed attempt
        for client in ("aiokafka", "aiormq", "aio_pika", "nats"):
            logging.getLogger(client).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        workdir: Path = args.workdir or Path(tmp)
        results = anyio.run(run_all, args, workdir, backend="asyncio")
    print()
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps([{**asdict(r), "ok": r.ok} for r in results], indent=2) + "\n"
        )
    return 0 if all(r.ok for r in results) else 1
