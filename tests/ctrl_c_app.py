"""A bus on trio whose handler is busy in Python code when Ctrl-C arrives.

Run as a script: it prints "handling" once the handler runs, then the test
sends SIGINT. trio raises the KeyboardInterrupt inside the handler's task; the
bus must stop (the script exits with KeyboardInterrupt), not dead-letter the
message and carry on.
"""

from __future__ import annotations

import sys
import time

import trio

from flowkit import Choreography, Event
from flowkit.transports import InMemoryTransport


class Spin(Event):
    seconds: float


bus = Choreography(InMemoryTransport(), stop_grace=0.5)


@bus.on(Spin, service="busy")
async def spin(event: Spin) -> None:
    print("handling", flush=True)
    until = time.monotonic() + event.seconds
    while time.monotonic() < until:
        sum(range(1000))  # Python code, not waiting: where trio delivers a Ctrl-C
    print("finished without being interrupted", flush=True)


async def main() -> None:
    async with bus:
        await bus.publish(Spin(seconds=20))
        await trio.sleep(30)
    print("the bus carried on", flush=True)


if __name__ == "__main__":
    try:
        trio.run(main)
    except KeyboardInterrupt:
        print("stopped by Ctrl-C", flush=True)
        sys.exit(130)
