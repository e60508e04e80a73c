from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from flowkit.cli import main
from flowkit.stores import DeadLetter, SQLiteStore

ROOT = Path(__file__).parents[1]
APP = "tests.cli_app"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh database for tests/cli_app.py, imported anew by each test."""
    path = tmp_path / "cli.db"
    monkeypatch.setenv("FLOWKIT_CLI_DB", str(path))
    monkeypatch.delitem(sys.modules, APP, raising=False)
    return path


def add_letters(path: Path, *letters: DeadLetter) -> None:
    async def add() -> None:
        async with SQLiteStore(path) as store:
            for letter in letters:
                await store.add_dead_letter(letter)

    anyio.run(add)


def letter(letter_id: str, consumer: str, body: bytes = b"{}") -> DeadLetter:
    return DeadLetter(
        id=letter_id,
        consumer=consumer,
        topic="Ping",
        body=body,
        headers={},
        error_type="ValueError",
        error="Traceback...\nValueError: bad ping",
        attempts=3,
        failed_at=datetime.now(UTC),
        message_id="m-1",
    )


def test_dlq_list_prints_each_dead_letter(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_letters(db, letter("d-1", "pong:answer"), letter("d-2", "other:h", b"\xff"))
    assert main(["dlq", "list", f"{APP}:bus"]) == 0
    out = capsys.readouterr().out
    assert "d-1" in out and "pong:answer" in out and "ValueError: bad ping" in out
    assert main(["dlq", "list", f"{APP}:bus", "--consumer", "other:h", "--json"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert only["id"] == "d-2"
    assert only["body"] is None and only["body_hex"] == "ff"


def test_dlq_replay_by_id_and_all(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_letters(db, letter("d-1", "pong:answer"), letter("d-2", "pong:answer"))
    add_letters(db, letter("d-3", "other:h"))
    assert main(["dlq", "replay", f"{APP}:bus", "d-1"]) == 0
    assert "replayed 1" in capsys.readouterr().out
    assert main(["dlq", "replay", f"{APP}:bus", "--all", "--consumer", "pong:answer"]) == 0
    assert "replayed 1" in capsys.readouterr().out
    assert main(["dlq", "list", f"{APP}:bus", "--json"]) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == ["d-3"]


def test_dlq_replay_needs_ids_or_all(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "replay", f"{APP}:bus"]) == 2
    assert "give dead letter ids, or --all" in capsys.readouterr().err
    assert main(["dlq", "replay", f"{APP}:bus", "nope"]) == 1
    assert "NotFound" in capsys.readouterr().err


def test_workflows_list_and_show(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def run_two() -> None:
        from tests.cli_app import Ping, orders

        async with orders:
            await orders.run(Ping(n=1), workflow_id="w-ok")
            await orders.run(Ping(n=-1), workflow_id="w-undone")

    anyio.run(run_two)
    sys.modules.pop(APP)
    assert main(["workflows", "list", f"{APP}:orders"]) == 0
    out = capsys.readouterr().out
    assert "w-ok  COMPLETED" in out and "w-undone  COMPENSATED" in out
    assert main(["workflows", "list", f"{APP}:orders", "--status", "COMPENSATED", "--json"]) == 0
    (undone,) = json.loads(capsys.readouterr().out)
    assert undone["id"] == "w-undone" and undone["compensated"] == ["ok"]
    assert main(["workflows", "show", f"{APP}:orders", "w-undone"]) == 0
    out = capsys.readouterr().out
    assert "PingSaga w-undone: COMPENSATED" in out
    assert "step_compensated" in out
    assert main(["workflows", "show", f"{APP}:orders", "w-ok", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["steps"]["ok"]["result"] == 1 and shown["history"][0]["event"]
    assert main(["workflows", "show", f"{APP}:orders", "missing"]) == 1
    assert "WorkflowNotFound" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected module:attribute"),
        ("no_such_module_xyz:bus", "cannot import"),
        (f"{APP}:missing", "has no attribute"),
        (f"{APP}:not_a_bus", "is a int, expected a Choreography"),
    ],
)
def test_bad_targets_are_named(
    db: Path, capsys: pytest.CaptureFixture[str], target: str, message: str
) -> None:
    assert main(["dlq", "list", target]) == 2
    assert message in capsys.readouterr().err


def test_worker_rejects_unknown_services(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", f"{APP}:bus", "--services", "nope"]) == 2
    assert "no handler is declared for service(s) ['nope']" in capsys.readouterr().err


def test_worker_runs_until_sigterm_and_stops_gracefully(tmp_path: Path) -> None:
    env = {**os.environ, "FLOWKIT_CLI_DB": str(tmp_path / "w.db")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowkit", "worker", f"{APP}:bus", "--services", "pong"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the worker printed nothing within 20 s"
        first = proc.stdout.readline()
        assert "flowkit worker running: services pong" in first
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "received SIGTERM; stopping" in out
    assert "flowkit worker stopped" in out
