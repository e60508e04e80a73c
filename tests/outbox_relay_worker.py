"""A process that only relays the outbox: ``python tests/outbox_relay_worker.py STORE
TRANSPORT LOG [--down S] [--delay S] [--lease S] [--schema NAME]``.

STORE and TRANSPORT are URLs (``memory://`` for a transport of its own); every
publish the transport takes is appended to LOG. The transport fails for the
first ``--down`` seconds. Prints ``ready`` once the relay runs, then runs until
killed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowkit import Choreography
from flowkit.stores import from_url as store_from_url
from flowkit.transports import from_url as transport_from_url
from tests._outbox_util import RecordingTransport


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("transport")
    parser.add_argument("log")
    parser.add_argument("--down", type=float, default=0.0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--schema", default=None)
    args = parser.parse_args()
    transport = RecordingTransport(
        transport_from_url(args.transport), delay=args.delay, log_path=args.log
    )
    transport.go_down(args.down)
    options = {"schema": args.schema} if args.schema else {}
    store = store_from_url(args.store, **options)
    bus = Choreography(transport, store=store, outbox_lease=args.lease)
    async with bus.run(services=[]):
        print("ready", flush=True)
        await anyio.sleep(3600)


if __name__ == "__main__":
    anyio.run(main)
