"""``flowkit worker``: run a bus's services until SIGINT or SIGTERM.

The first signal starts a graceful stop: consumers take no more messages and
the handlers still running get the grace period to finish; those still running
after it are cancelled without being acked, so the broker delivers their
messages again. A second signal cancels them at once; a third ends the process
without waiting for anything.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

import anyio

from .._errors import DefinitionError
from ..choreography import Choreography
from .common import UsageError, load_object, one_line, point_bus, require_broker
from .signing import warn_unsigned

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator
    from contextlib import AbstractAsyncContextManager

__all__ = ["parse_services", "run_worker"]


async def run_worker(args: argparse.Namespace) -> int:
    """``flowkit worker``: run the chosen services until stopped by a signal.

    Returns:
        0 once stopped gracefully; 128 + the signal's number when a second
        signal cut the stop short.
    """
    bus = load_object(args.app, Choreography)
    point_bus(bus, args)
    require_broker(
        bus, args.app, "a worker on it would receive nothing published by other processes"
    )
    services = parse_services(args.services, bus, args.app)
    warn_unsigned(bus, args.app, "its workers send unsigned messages and check none")
    running = _start(bus, services, args.grace)
    names = ", ".join(sorted(services if services is not None else bus.services))
    stopper = _Stopper(bus, bus.stop_grace if args.grace is None else args.grace)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stopper.watch, signals)
            with stopper.scope:
                async with running:
                    stopper.started = True
                    print(f"flowkit worker running: services {names}", flush=True)
                    await stopper.requested.wait()
            tg.cancel_scope.cancel()
    if stopper.forced is not None:
        print("flowkit worker stopped at once", flush=True)
        return 128 + stopper.forced
    print("flowkit worker stopped", flush=True)
    return 0


def parse_services(text: str | None, bus: Choreography, target: str) -> list[str] | None:
    """The services named by ``--services`` (None: all of the bus's).

    Raises:
        UsageError: if a name is empty, or the bus has no handler to run.
    """
    known = ", ".join(sorted(bus.services))
    if text is None:
        if not bus.services:
            raise UsageError(f"{target} declares no handler: there is nothing to run")
        return None
    names = [part.strip() for part in text.split(",")]
    if not any(names):
        raise UsageError(f"--services {text!r} names no service; known services: {known}")
    if not all(names):
        raise UsageError(f"--services {text!r} has an empty name; known services: {known}")
    return names


def _start(
    bus: Choreography, services: list[str] | None, grace: float | None
) -> AbstractAsyncContextManager[Choreography]:
    """``bus.run(...)``; ``--grace``, when given, overrides the bus's ``stop_grace``.

    Raises:
        UsageError: if a service is unknown.
    """
    try:
        return bus.run(services=services, stop_grace=grace)
    except DefinitionError as exc:
        raise UsageError(one_line(str(exc))) from None


class _Stopper:
    """Turns signals into a stop: the first graceful, the second at once, the
    third without waiting even for cancelled handlers to unwind."""

    def __init__(self, bus: Choreography, grace: float) -> None:
        self.bus = bus
        self.grace = grace
        self.requested = anyio.Event()
        self.started = False
        self.scope = anyio.CancelScope()
        self.forced: int | None = None

    async def watch(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not self.requested.is_set():
                self.requested.set()
                if self.started:
                    print(f"received {name}; {self._stopping()}", flush=True)
                else:
                    print(f"received {name} while starting; stopping", flush=True)
                    self.scope.cancel()
            elif self.forced is None:
                self.forced = signum
                print(
                    f"received {name} again; stopping now: cancelling running handlers "
                    "(their messages are not acked; the broker delivers them again)",
                    flush=True,
                )
                self.scope.cancel()
            else:
                print(f"received {name} a third time; exiting without waiting", flush=True)
                sys.stderr.flush()
                os._exit(128 + signum)

    def _stopping(self) -> str:
        busy = self.bus.in_flight
        if busy == 0:
            return "stopping: no handler is running"
        return (
            f"stopping: waiting up to {self.grace:g}s for {_plural(busy, 'handler')}; "
            "press Ctrl-C again to stop now"
        )


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
