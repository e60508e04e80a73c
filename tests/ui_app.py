"""A bus for the dashboard's browser test: its one handler gives up until the
file named by FLOWKIT_UI_FIXED exists, then records each order it handled in
that file with ``.handled`` appended. The transport and store come from the
command line (``flowkit worker tests.ui_app:bus --transport ... --store ...``)."""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from flowkit import Choreography, Event, NonRetryableError
from flowkit.transports import InMemoryTransport

FIXED = Path(os.environ.get("FLOWKIT_UI_FIXED", "flowkit-ui-fixed"))


class LabelRequested(Event):
    order_id: str


bus = Choreography(InMemoryTransport())


@bus.on(LabelRequested, service="labels", name="print")
async def print_label(event: LabelRequested) -> None:
    if not await anyio.Path(FIXED).exists():
        raise NonRetryableError(f"the label printer is offline (order {event.order_id})")
    async with await anyio.open_file(f"{FIXED}.handled", "a") as handled:
        await handled.write(f"{event.order_id}\n")
