from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

if TYPE_CHECKING:
    from collections.abc import Callable


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.002)


async def race_two_claimers(command: list[str]) -> list[str]:
    """Run ``command`` twice at once and return the message ids both claimed.

    Each process prints ``ready``, waits for ``go`` on its standard input, claims,
    then prints the JSON list of the ids it won. Bounded: 60 s in all.
    """
    with anyio.fail_after(60):
        async with (
            await anyio.open_process(command) as one,
            await anyio.open_process(command) as two,
        ):
            processes = (one, two)
            outputs = []
            for proc in processes:
                assert proc.stdout is not None
                outputs.append(BufferedByteReceiveStream(proc.stdout))
            for output in outputs:
                assert await output.receive_until(b"\n", 100) == b"ready"
            for proc in processes:
                assert proc.stdin is not None
                await proc.stdin.send(b"go\n")
            results = [await output.receive_until(b"\n", 1 << 20) for output in outputs]
            for proc in processes:
                assert await proc.wait() == 0
    claimed: list[list[str]] = [json.loads(result) for result in results]
    return claimed[0] + claimed[1]
