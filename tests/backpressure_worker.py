"""A slow consumer in its own process, for the backpressure test and benchmark.

``python -m tests.backpressure_worker URL [--sleep S] [--concurrency N ...]`` runs a
bus on the transport at ``URL`` (``from_url``: the prefix and the transport's options
ride in its query) with one handler of :class:`Tick` per concurrency given, each in a
service of its own (``slow1``, ``slow4``, ...: every handler gets every event), that
sleeps ``S`` seconds per event.

It writes JSON lines on stdout:

* ``{"ready": true, "groups": {service: [topic, group]}, "rss": ...}`` once its
  consumers are subscribed (a message published after it reaches every group);
* ``{"t": ..., "rss": ..., "handled": {service: n}}`` every ``--every`` seconds, ``t``
  counted from ready, ``rss`` the resident set in bytes (``/proc/self/statm``);
* ``{"final": true, "handled": ..., "rss": ..., "maxrss": ...}`` when it stops, after
  the bus has stopped (what it handled is acked), ``maxrss`` the peak resident set of
  the whole process (``getrusage``), in bytes.

It stops when its stdin closes, or after ``--seconds``. The process that starts it
uses :func:`worker` (start it, read its lines, stop it) and :func:`flood` (publish
:class:`Tick` events as fast as the transport takes them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from anyio.streams.buffered import BufferedByteReceiveStream

from flowkit import Choreography, Event
from flowkit.transports import from_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from anyio.abc import Process

    from flowkit.transports import Transport

PAGE = os.sysconf("SC_PAGE_SIZE")


class Tick(Event, type_name="backpressure_test.Tick"):
    """An event of the flood: its number and some padding."""

    n: int
    pad: str = ""


def rss() -> int:
    """This process's resident set now, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def maxrss() -> int:
    """This process's peak resident set so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def say(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def slow_bus(
    transport: Transport, sleep: float, concurrencies: Sequence[int]
) -> tuple[Choreography, dict[str, int]]:
    """A bus on ``transport`` with one handler of :class:`Tick` per concurrency, in a
    service of its own (``slow1``, ``slow4``, ...), that sleeps ``sleep`` seconds per
    event; and how many events each service handled, kept up to date."""
    bus = Choreography(transport)
    handled: dict[str, int] = {}

    def handler(service: str) -> Callable[[Tick], Awaitable[None]]:
        handled[service] = 0

        async def handle(event: Tick) -> None:
            await anyio.sleep(sleep)
            handled[service] += 1

        return handle

    for concurrency in concurrencies:
        service = f"slow{concurrency}"
        bus.on(Tick, service=service, concurrency=concurrency, name="handle")(handler(service))
    return bus, handled


async def main(
    url: str, sleep: float, concurrencies: list[int], every: float, seconds: float
) -> None:
    bus, handled = slow_bus(from_url(url), sleep, concurrencies)
    async with bus:
        groups = {spec.service: [spec.topic, spec.consumer] for spec in bus.handlers}
        say({"ready": True, "groups": groups, "rss": rss()})
        start = time.monotonic()
        async with anyio.create_task_group() as tg:

            async def report() -> None:
                while True:
                    await anyio.sleep(every)
                    say({"t": time.monotonic() - start, "rss": rss(), "handled": dict(handled)})

            async def until_stdin_closes() -> None:
                await anyio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
                tg.cancel_scope.cancel()

            tg.start_soon(report)
            tg.start_soon(until_stdin_closes)
            tg.cancel_scope.deadline = anyio.current_time() + seconds
    say({"final": True, "handled": handled, "rss": rss(), "maxrss": maxrss()})


# -- the other side: the process that starts a worker and floods it ---------------------

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """A worker process seen from the process that started it (see :func:`worker`).

    Attributes:
        ready: its ready line: ``groups``, and ``rss`` when its consumers were subscribed.
        samples: its reports so far (``t``, ``rss``, ``handled``), oldest first.
        final: its last line, once it stopped.
    """

    def __init__(self, process: Process) -> None:
        self.process = process
        self.ready: dict[str, Any] = {}
        self.samples: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self._ended = anyio.Event()

    @property
    def groups(self) -> dict[str, tuple[str, str]]:
        """Per service: the topic and the consumer group its handler consumes."""
        return {service: (t, g) for service, (t, g) in self.ready["groups"].items()}

    @property
    def peak_rss(self) -> int:
        """The largest resident set it reported since it was ready, in bytes."""
        return max(int(s["rss"]) for s in [self.ready, *self.samples])

    def rss_at(self, t: float) -> int | None:
        """The resident set it reported about ``t`` seconds after ready (its first report
        at most 0.6 s before ``t`` or after), or None if it had not run that long."""
        return next((int(s["rss"]) for s in self.samples if s["t"] >= t - 0.6), None)

    async def _read(self, lines: BufferedByteReceiveStream) -> None:
        try:
            while True:
                line = json.loads(await lines.receive_until(b"\n", 1 << 20))
                if line.get("final"):
                    self.final = line
                else:
                    self.samples.append(line)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            pass
        finally:
            self._ended.set()

    async def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Close its stdin and wait for it to stop; its final line.

        Raises:
            RuntimeError: if it stopped without a final line.
        """
        assert self.process.stdin is not None
        await self.process.stdin.aclose()
        with anyio.fail_after(timeout):
            await self._ended.wait()
            await self.process.wait()
        if self.final is None:
            raise RuntimeError(f"the worker exited ({self.process.returncode}) without a report")
        return self.final


@asynccontextmanager
async def worker(
    url: str,
    *,
    sleep: float,
    concurrencies: Sequence[int],
    stderr: Path,
    ready_within: float = 30.0,
) -> AsyncIterator[Worker]:
    """Start ``python -m tests.backpressure_worker`` and wait until it is ready.

    Args:
        url: the transport's URL, with its prefix and options in the query.
        sleep: seconds its handlers sleep per event.
        concurrencies: one handler per concurrency.
        stderr: a file that takes what it writes on stderr.
        ready_within: seconds it may take to subscribe.

    Raises:
        RuntimeError: it exited before it was ready (with its stderr).
    """
    command = [sys.executable, "-m", "tests.backpressure_worker", url, "--sleep", str(sleep)]
    command += ["--concurrency", *map(str, concurrencies)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with stderr.open("wb") as err:
        process = await anyio.open_process(command, cwd=ROOT, env=env, stderr=err)
    try:
        assert process.stdout is not None
        lines = BufferedByteReceiveStream(process.stdout)
        seen = Worker(process)
        try:
            with anyio.fail_after(ready_within):
                seen.ready = json.loads(await lines.receive_until(b"\n", 1 << 20))
        except (anyio.EndOfStream, anyio.IncompleteRead):
            await process.wait()
            said = (await anyio.Path(stderr).read_text())[-3000:]
            raise RuntimeError(f"the worker exited ({process.returncode}): {said}") from None
        async with anyio.create_task_group() as tg:
            tg.start_soon(seen._read, lines)
            yield seen
            if seen.final is None:
                await seen.stop()
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()


async def flood(
    bus: Choreography, *, seconds: float, events: int, pad: int, in_flight: int = 16
) -> int:
    """Publish :class:`Tick` events through ``bus`` as fast as it takes them, ``in_flight``
    publishes awaited at once, for ``seconds`` or until ``events`` are published.

    Returns:
        How many were published.
    """
    padding = "x" * pad
    published = 0
    deadline = time.monotonic() + seconds

    async def publisher() -> None:
        nonlocal published
        while published < events and time.monotonic() < deadline:
            n = published
            published += 1
            await bus.publish(Tick(n=n, pad=padding))

    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(publisher)
    return published


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--sleep", type=float, default=0.004, help="seconds per event")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--every", type=float, default=0.5, help="seconds between reports")
    parser.add_argument("--seconds", type=float, default=300.0, help="the longest it runs")
    args = parser.parse_args()
    anyio.run(main, args.url, args.sleep, args.concurrency, args.every, args.seconds)


if __name__ == "__main__":
    cli()
