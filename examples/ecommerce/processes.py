"""The order workflow with each service in its own process, on a broker.

::

    python -m examples.ecommerce.processes --transport redis://127.0.0.1:6379/0

This process is the order service. It starts one ``flowkit worker`` process
per service of :mod:`examples.ecommerce.services` (two for logistics), all on
the broker the URL names (any of :func:`flowkit.transports.from_url`'s but
``memory://``, which cannot reach another process), sharing one SQLite store
(inboxes and dead letters) and one ledger of what the services did
(:class:`~examples.ecommerce.ledger.SharedWorld`).
Then it places orders twice: first by publishing ``OrderPlaced`` and letting
the services react (choreography), then by running the ``PlaceOrder`` saga
whose remote steps the worker processes answer (orchestration). It prints what
happened and stops the workers with SIGTERM (SIGKILL for one still running
after the grace period).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self
from urllib.parse import urlsplit

import anyio

from flowkit import Choreography
from flowkit.stores import SQLiteStore
from flowkit.transports import from_url

from . import logistics, notification, order_history, seller
from .events import OrderPlaced, PartnerAssigned, ShipmentPrepared
from .ledger import LEDGER_ENV, PROCESS_ENV, Effect, SharedWorld
from .orchestrated import ORDERS, order_saga
from .services import history_line

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType
    from typing import IO

    from anyio.abc import Process

    from flowkit import DeadLetter
    from flowkit.orchestration import Outcome

__all__ = [
    "APP",
    "SERVICES",
    "Worker",
    "Workers",
    "choreography_effects",
    "dead_letters",
    "main",
    "place_orders",
    "run_choreography",
    "run_orchestration",
    "wait_until",
]

APP = "examples.ecommerce.services:bus"
"""The bus the workers run, as ``flowkit worker`` takes it."""

SERVICES = {
    notification.SERVICE: 1,
    seller.SERVICE: 1,
    logistics.SERVICE: 2,
    order_history.SERVICE: 1,
}
"""The services and how many processes (replicas) each runs in."""

ROOT = Path(__file__).resolve().parents[2]
"""The directory ``examples`` is imported from: the workers run there."""


# -- the worker processes ------------------------------------------------------------


@dataclass
class Worker:
    """One ``flowkit worker`` process running one service.

    Attributes:
        name: its name in the ledger, ``service-N``.
        service: the service it runs.
        process: the process.
        log: the file its output goes to.
    """

    name: str
    service: str
    process: Process
    log: Path
    _out: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.process.returncode is None

    def output(self) -> str:
        """What the process printed so far (standard output and error)."""
        return self.log.read_text(errors="replace")


class Workers:
    """The service processes of one run: one transport URL, one store, one ledger.

    ``async with Workers(...) as workers:`` stops every process it started on
    the way out: SIGTERM, then SIGKILL for one still running after ``grace``
    seconds.

    Args:
        transport: the broker URL the workers use.
        store: the SQLite file the workers share (inboxes, dead letters).
        ledger: the ledger file of the services' effects.
        logs: the directory of the workers' output files.
        grace: seconds a worker gets to stop after SIGTERM.
    """

    def __init__(
        self, *, transport: str, store: Path, ledger: Path, logs: Path, grace: float = 10.0
    ) -> None:
        self.transport = transport
        self.store = store
        self.ledger = ledger
        self.logs = logs
        self.grace = grace
        self.started: list[Worker] = []
        self._numbers: Counter[str] = Counter()
        logs.mkdir(parents=True, exist_ok=True)

    def env(self, process: str) -> dict[str, str]:
        """The environment of a ``flowkit`` command on this run's transport, store and ledger."""
        return {
            **os.environ,
            "FLOWKIT_TRANSPORT": self.transport,
            "FLOWKIT_STORE": f"sqlite:///{self.store}",
            LEDGER_ENV: str(self.ledger),
            PROCESS_ENV: process,
        }

    def command(self, *args: str) -> list[str]:
        """``python -m flowkit ARGS --transport URL --store URL`` for this run."""
        return [
            sys.executable,
            "-m",
            "flowkit",
            *args,
            "--transport",
            self.transport,
            "--store",
            f"sqlite:///{self.store}",
        ]

    async def start(self, service: str, *, timeout: float = 30.0) -> Worker:
        """Start a worker running ``service`` and wait until it consumes.

        Raises:
            RuntimeError: if the worker exited, or did not say it was running
                within ``timeout`` seconds (the message has its output).
        """
        self._numbers[service] += 1
        name = f"{service}-{self._numbers[service]}"
        log = self.logs / f"{name}.log"
        out = log.open("wb")
        try:
            process = await anyio.open_process(
                self.command("worker", APP, "--services", service),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=self.env(name),
            )
        except BaseException:
            out.close()
            raise
        worker = Worker(name, service, process, log, out)
        self.started.append(worker)
        with anyio.move_on_after(timeout):
            while "flowkit worker running" not in worker.output():
                if not worker.running:
                    raise RuntimeError(
                        f"{name} exited with status {process.returncode}:\n{worker.output()}"
                    )
                await anyio.sleep(0.02)
            return worker
        raise RuntimeError(f"{name} did not start within {timeout}s:\n{worker.output()}")

    async def start_all(self, services: Iterable[str]) -> list[Worker]:
        """Start a worker per name in ``services`` (a service named twice gets two),
        all at once; returns them in that order."""
        names = list(services)
        workers: list[Worker | None] = [None] * len(names)

        async def start(i: int, service: str) -> None:
            workers[i] = await self.start(service)

        async with anyio.create_task_group() as tg:
            for i, service in enumerate(names):
                tg.start_soon(start, i, service)
        return [w for w in workers if w is not None]

    async def kill(self, worker: Worker) -> None:
        """Kill a worker at once (SIGKILL), as a crash would, and wait for it to exit."""
        if worker.running:
            worker.process.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            await worker.process.wait()
        worker._out.close()

    async def stop(self) -> None:
        """Stop every running worker: SIGTERM, then SIGKILL after the grace period."""
        with anyio.CancelScope(shield=True):
            running = [w for w in self.started if w.running]
            for worker in running:
                worker.process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(self.grace):
                for worker in running:
                    await worker.process.wait()
            for worker in running:
                if worker.running:
                    worker.process.send_signal(signal.SIGKILL)
            with anyio.move_on_after(10):
                for worker in running:
                    await worker.process.wait()
            for worker in self.started:
                worker._out.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


# -- what the services must do -------------------------------------------------------


def choreography_effects(order: OrderPlaced) -> set[str]:
    """The ledger lines that the choreographed services must write for ``order``:
    all of them, each once. An order with an email that is not an address gets
    no confirmation (its notification is dead-lettered)."""
    o = order.order_id
    partner = logistics.PARTNERS[sum(map(ord, o)) % len(logistics.PARTNERS)]
    lines = {
        f"[{seller.SERVICE}] {order.seller_id} packs parcel-{o}",
        f"[{logistics.SERVICE}] {partner} will deliver order {o}",
        *(history_line(o, t.__name__) for t in (OrderPlaced, ShipmentPrepared, PartnerAssigned)),
    }
    if "@" in order.user_email:
        lines.add(f"[{notification.SERVICE}] emailed {order.user_email} about order {o}")
        lines.add(history_line(o, "ConfirmationSent"))
    return lines


async def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``predicate`` until it holds.

    Returns:
        The seconds it took.

    Raises:
        TimeoutError: after ``timeout`` seconds, naming ``what`` was awaited.
    """
    started = time.monotonic()
    with anyio.move_on_after(timeout):
        while True:
            if predicate():
                return time.monotonic() - started
            await anyio.sleep(interval)
    raise TimeoutError(f"{what}: not done after {timeout}s")


async def dead_letters(store: Path) -> list[DeadLetter]:
    """The dead letters in the shared store."""
    async with SQLiteStore(store) as opened:
        return await opened.list_dead_letters(limit=1000)


async def place_orders(
    transport: str, orders: Iterable[OrderPlaced], *, pace: float = 0, store: Path | None = None
) -> int:
    """Publish ``OrderPlaced`` for each order, as the order service; returns how many.

    Args:
        transport: the broker URL.
        orders: the orders.
        pace: seconds to wait after each publish.
        store: the SQLite file of the services' store: the publishes are
            recorded in its flow trace (``flowkit trace o-2``).
    """
    count = 0
    bus = Choreography(
        from_url(transport),
        store=SQLiteStore(store) if store is not None else None,
        outbox_relay=False,  # the workers relay the outbox of this store
    )
    async with bus.run(services=[]) as publisher:
        for order in orders:
            await publisher.publish(order)
            count += 1
            if pace:
                await anyio.sleep(pace)
    return count


def _orders(count: int) -> list[OrderPlaced]:
    """The demo's orders: the two of the single-process demo, then ``count`` more."""
    orders = [
        OrderPlaced(
            order_id="o-1",
            user_email="ada@example.com",
            seller_id="seller-9",
            items=["book"],
            total=25.0,
        ),
        OrderPlaced(
            order_id="o-2",
            user_email="not-an-email",
            seller_id="seller-9",
            items=["lamp"],
            total=40.0,
        ),
    ]
    for i in range(3, count + 3):
        orders.append(
            OrderPlaced(
                order_id=f"o-{i}",
                user_email=f"user{i}@example.com",
                seller_id=f"seller-{i % 4}",
                items=["mug"],
                total=10.0 + i,
            )
        )
    return orders


def _print_effects(effects: Iterable[Effect]) -> None:
    for effect in effects:
        repeated = f"  (applied {effect.repeats} more time(s))" if effect.repeats else ""
        print(f"  {effect.line:<60} by {effect.process}{repeated}")


# -- the two runs ----------------------------------------------------------------------


async def run_choreography(transport: str, workdir: Path, *, orders: int = 10) -> None:
    """Start a worker per service replica, publish orders, wait until they are
    settled, and print what each process did."""
    world = SharedWorld(workdir / "choreography-ledger.db", process="order")
    store = workdir / "choreography.db"
    async with Workers(
        transport=transport,
        store=store,
        ledger=Path(world.path),
        logs=workdir / "choreography-logs",
    ) as workers:
        started = await workers.start_all(
            service for service, replicas in SERVICES.items() for _ in range(replicas)
        )
        print("started " + ", ".join(f"{w.name} (pid {w.pid})" for w in started))
        placed = _orders(orders)
        world.fail("partner-api:o-2", times=2)  # logistics retries o-2 through it
        await place_orders(transport, placed, store=store)
        print(f"published {len(placed)} orders")
        expected = set().union(*(choreography_effects(o) for o in placed))
        bad = sum("@" not in o.user_email for o in placed)
        letters: list[DeadLetter] = []

        def settled() -> bool:
            return expected <= {e.line for e in world.applied()}

        took = await wait_until(settled, timeout=60, what="the orders")
        with anyio.fail_after(30):
            while True:
                letters = await dead_letters(store)
                if len(letters) >= bad:
                    break
                await anyio.sleep(0.1)
        print(f"every order settled {took:.2f}s after publishing")
        effects = [e for e in world.applied() if e.line in expected]
        for order in placed[:2]:
            mine = choreography_effects(order)
            print(f"\n{order.order_id} ({order.user_email}):")
            history = [e for e in effects if e.line in mine and e.service == order_history.SERVICE]
            _print_effects(e for e in effects if e.line in mine and e not in history)
            timeline = [e.line.rpartition(": ")[2] for e in history]
            print(f"  order history, as recorded: {' -> '.join(timeline)}")
        print(f"\n{', '.join(o.order_id for o in placed[2:])}: every effect, as above")
        for letter in letters:
            print(
                f"dead letter: {letter.consumer} gave up on {letter.topic} "
                f"after {letter.attempts} attempt(s): {letter.error_type}"
            )
        for service in SERVICES:
            by = Counter(e.process for e in effects if e.service == service)
            print(f"{service}: " + ", ".join(f"{n} by {p}" for p, n in sorted(by.items())))
        _print_repeats(effects)
        print("\nstopping the workers")
    world.close()


async def run_orchestration(transport: str, workdir: Path) -> None:
    """Run the ``PlaceOrder`` saga in this process, its remote steps answered by
    worker processes, and print each outcome and what each process did."""
    world = SharedWorld(workdir / "orchestration-ledger.db", process="order")
    store = workdir / "orchestration.db"
    async with Workers(
        transport=transport,
        store=store,
        ledger=Path(world.path),
        logs=workdir / "orchestration-logs",
    ) as workers:
        started = await workers.start_all(
            (notification.SERVICE, seller.SERVICE, logistics.SERVICE, logistics.SERVICE)
        )
        print("started " + ", ".join(f"{w.name} (pid {w.pid})" for w in started))
        place_order = order_saga(world)
        outcomes: dict[str, Outcome] = {}
        async with place_order(SQLiteStore(store), transport=from_url(transport)) as saga:
            for order in ORDERS:
                if order.order_id == "o-2":
                    world.fail("partner-api", times=100)  # no partner can be booked
                outcomes[order.order_id] = await saga.run(order, workflow_id=order.order_id)
                world.repair("partner-api")
        for order_id, outcome in outcomes.items():
            line = f"\n{order_id}: {outcome.status.value}"
            if outcome.reason:
                line += f" ({outcome.reason})"
            print(line)
            if outcome.compensated:
                print(f"  compensated, in order: {', '.join(outcome.compensated)}")
            _print_effects(e for e in world.applied() if e.key.startswith(f"{order_id}:"))
        _print_repeats(world.applied())
        print("\nstopping the workers")
    world.close()


def _print_repeats(effects: list[Effect]) -> None:
    repeats = [e for e in effects if e.repeats]
    if not repeats:
        print("duplicates: none, every idempotency key was applied once")
    for e in repeats:
        print(f"duplicate: {e.key} applied {e.repeats} more time(s), last by {e.repeated_by}")


def where(url: str) -> str:
    """A broker URL as printed: its scheme, host and port, never its password."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.ecommerce.processes",
        description="Run the e-commerce example with each service in its own process, on a broker.",
    )
    parser.add_argument(
        "--transport",
        metavar="URL",
        default=os.environ.get("FLOWKIT_TRANSPORT") or os.environ.get("FLOWKIT_REDIS_URL"),
        help="the broker's URL, e.g. redis://127.0.0.1:6379/0 (default: $FLOWKIT_TRANSPORT, "
        "else $FLOWKIT_REDIS_URL)",
    )
    parser.add_argument(
        "--only",
        choices=("choreography", "orchestration"),
        help="run one of the two versions (default: both)",
    )
    parser.add_argument(
        "--orders", type=int, default=10, help="orders to place besides o-1 and o-2 (10)"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where the store, the ledger and the workers' logs go (default: a temporary "
        "directory, removed afterwards)",
    )
    return parser


async def main(args: argparse.Namespace, workdir: Path) -> None:
    """Run the choreographed version, then the orchestrated one."""
    only: Literal["choreography", "orchestration"] | None = args.only
    if only in (None, "choreography"):
        print(f"== Choreography: one process per service, on {where(args.transport)} ==")
        await run_choreography(args.transport, workdir, orders=args.orders)
    if only in (None, "orchestration"):
        if only is None:
            print()
        print(f"== Orchestration: this process runs the saga, on {where(args.transport)} ==")
        await run_orchestration(args.transport, workdir)


def _run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.transport:
        print(
            "give --transport URL, e.g. redis://HOST:PORT/DB (or set FLOWKIT_TRANSPORT)",
            file=sys.stderr,
        )
        return 2
    # flowkit logs retries, dead letters and failed steps: show them beside the rest.
    logging.basicConfig(level=logging.WARNING, format="  (%(levelname)s) %(message)s")
    with tempfile.TemporaryDirectory(prefix="ecommerce-") as tmp:
        workdir: Path = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        anyio.run(main, args, workdir, backend="asyncio")  # the broker clients run on asyncio
    return 0


if __name__ == "__main__":
    sys.exit(_run())
