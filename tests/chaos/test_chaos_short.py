"""The chaos runner, short: 200 orders on a private Redis (restarted once) and
SQLite, one worker killed, one slow spell, two poisoned messages (dead-lettered
by each of the four consumers of OrderPlaced) and four orders whose
confirmation is dead-lettered.

The runner is a process of its own (``python -m tests.chaos``), as ``make chaos``
runs it; its JSON report is checked here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..brokers import unavailable

ROOT = Path(__file__).resolve().parents[2]

if shutil.which("redis-server") is None:
    unavailable("this test starts a server of its own: install redis-server")


def test_a_short_chaos_run_loses_nothing_and_does_nothing_twice(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    paths = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    done = subprocess.run(
        [
            sys.executable, "-m", "tests.chaos",
            "--transport", "redis", "--store", "sqlite",
            "--orders", "200", "--rate", "25", "--seed", "7",
            "--faults", "kill,restart,slow", "--fault-every", "1000",
            "--poison", "2", "--settle-timeout", "30",
            "--json", str(report), "--workdir", str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert report.exists(), out
    [result] = json.loads(report.read_text())
    assert done.returncode == 0, out
    assert result["faults"] == {"kill": 1, "restart": 1, "slow": 1}, out
    assert (result["lost"], result["duplicated"], result["unexpected"], result["stuck"]) == (
        0, 0, 0, 0,
    ), out  # fmt: skip
    # each poisoned message (or each copy stored by a publish made again after a failure,
    # the broker restarting) is dead-lettered by the four consumers of OrderPlaced
    extra = sum(result["poison_copies"].values()) - len(result["poison_copies"])
    assert result["dead_letters_expected"] == 2 * 4 + 4, out
    assert result["dead_letters_found"] == result["dead_letters_expected"] + 4 * extra, out
    assert result["choreography_orders"] == result["sagas"] == 100
    assert sum(result["saga_status"].values()) == 100
    assert all(f["recovery"] is not None for f in result["fault_log"]), out
