"""`make demo`: the order workflow, choreographed then orchestrated, on the embedded
default (in-memory transport, SQLite store)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import anyio

from .choreographed import run_choreography
from .orchestrated import run_orchestration


async def main() -> None:
    # flowkit logs retries and dead letters; show them beside what the services print.
    logging.basicConfig(level=logging.WARNING, format="  (%(levelname)s) %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        print("== Choreography: every service reacts to OrderPlaced on its own ==")
        result = await run_choreography(Path(tmp) / "choreography.db", echo=True)
        print()
        for order_id, timeline in sorted(result.timelines.items()):
            print(f"order history of {order_id}: {' -> '.join(timeline)}")
        for letter in result.dead_letters:
            print(
                f"dead letter: {letter.consumer} gave up on {letter.topic} "
                f"after {letter.attempts} attempt(s): {letter.error_type}"
            )

        print()
        print("== Orchestration: the order service runs the PlaceOrder saga ==")
        saga = await run_orchestration(Path(tmp) / "orchestration.db", echo=True)
        for order_id, outcome in saga.outcomes.items():
            print()
            line = f"{order_id}: {outcome.status.value}"
            if outcome.reason:
                line += f" ({outcome.reason})"
            print(line)
            if outcome.compensated:
                print(f"  compensated, in order: {', '.join(outcome.compensated)}")
            for t in saga.infos[order_id].history:
                parts = [t.at.strftime("%H:%M:%S.%f")[:-3], t.event]
                if t.step:
                    parts.append(t.step)
                if t.attempt:
                    parts.append(f"attempt {t.attempt}")
                if t.error:
                    parts.append(f"error: {t.error}")
                print("  " + "  ".join(parts))


if __name__ == "__main__":
    anyio.run(main)
