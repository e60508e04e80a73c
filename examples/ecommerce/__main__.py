"""`make demo`: the order workflow, choreographed then orchestrated."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

from .choreographed import run_choreography


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print("== Choreography: every service reacts to OrderPlaced on its own ==")
        result = await run_choreography(Path(tmp) / "choreography.db", echo=True)
        print()
        for order_id, timeline in sorted(result.timelines.items()):
            print(f"order history of {order_id}: {' -> '.join(timeline)}")
        for letter in result.dead_letters:
            print(
                f"dead letter: {letter.consumer} gave up on {letter.topic} "
                f"after {letter.attempts} attempt(s): {letter.error.splitlines()[-1]}"
            )


if __name__ == "__main__":
    anyio.run(main)
