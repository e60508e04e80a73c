"""Sagas on SQLiteStore survive SIGKILL at random points.

A child process (``tests/crash/saga_worker.py``) runs 1,000 workflows, 20 at a
time, and is killed with SIGKILL at a random moment, twenty times; each new
child first resumes what the previous one left. A last child runs to the end.
Then every workflow must have the outcome its plan dictates, and every effect
(applied by the steps in a separate database, keyed by idempotency key) must be
there exactly once, even though some calls ran more than once.

The children alternate between asyncio and trio, so this one test covers both
backends; it does not use the anyio plugin because the test itself only starts
and kills processes.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from flowkit.stores._sqlite import SQLiteStore

if TYPE_CHECKING:
    from flowkit.stores._base import WorkflowRecord

WORKER = Path(__file__).parent / "crash" / "saga_worker.py"
WORKFLOWS = 1000
KILLS = 20
STEPS = ("reserve", "charge", "pack", "notify")


def spawn(store: Path, effects: Path, seed: int) -> subprocess.Popen[str]:
    backend = ("asyncio", "trio")[seed % 2]
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(store), str(effects), str(WORKFLOWS), str(seed), backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def load_records(path: Path) -> list[WorkflowRecord]:
    async with SQLiteStore(path) as store:
        return await store.list_workflows(name="CrashSaga")


def expected(number: int) -> tuple[str, int, set[str], set[str]]:
    """Status, balance, forward effects and compensation effects planned for a workflow."""
    if number % 7 == 3:  # confirm fails, releasing the stock always fails
        if number % 5 == 1:  # the charge was declined first
            return "FAILED", 1, {"reserve"}, set()
        return "FAILED", 1001, set(STEPS), {"charge", "pack"}
    if number % 5 == 1:  # the charge is declined
        return "COMPENSATED", 0, {"reserve"}, {"reserve"}
    return "COMPLETED", 1111, set(STEPS), set()


@pytest.mark.slow
def test_sagas_reach_their_planned_end_and_apply_each_effect_once_despite_sigkill(
    tmp_path: Path,
) -> None:
    store, effects = tmp_path / "store.db", tmp_path / "effects.db"
    rng = random.Random(1234)
    started = time.monotonic()
    kills = 0
    for seed in range(KILLS):
        child = spawn(store, effects, seed)
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready, "the worker printed nothing within 30 s"
        assert child.stdout.readline().strip() == "ready", "the worker did not start"
        time.sleep(rng.uniform(0.05, 0.4))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait(timeout=30)
        child.stdout.close()
    last = spawn(store, effects, KILLS)
    out, _ = last.communicate(timeout=60)
    assert last.returncode == 0 and out.split() == ["ready", "done"]
    assert time.monotonic() - started < 60
    assert kills >= KILLS // 2, "most children should have been killed mid-run"

    records = {r.id: r for r in anyio.run(load_records, store)}
    assert len(records) == WORKFLOWS
    db = sqlite3.connect(effects)
    balances = dict(db.execute("SELECT workflow, amount FROM balances"))
    applied: dict[str, set[tuple[str, bool]]] = {}
    for key, workflow, step in db.execute("SELECT key, workflow, step FROM effects"):
        applied.setdefault(workflow, set()).add((step, key.endswith(":compensate")))
    repeated = db.execute("SELECT COUNT(*) FROM calls WHERE n > 1").fetchone()[0]
    db.close()

    for number in range(WORKFLOWS):
        wid = f"wf-{number}"
        status, balance, forward, undone = expected(number)
        record = records[wid]
        assert record.status == status, (wid, record.status, record.state.get("reason"))
        assert balances.get(wid, 0) == balance, wid
        assert applied.get(wid, set()) == {(s, False) for s in forward} | {
            (s, True) for s in undone
        }, wid
        if status == "FAILED":
            assert record.state["remaining"] == ["reserve"], wid
            assert "compensation of step 'reserve' failed" in record.state["reason"]
    # crashes made some calls run again; their effects were still applied once
    assert repeated > 0
