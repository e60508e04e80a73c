from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import re
import sqlite3
import sys
import traceback
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import pytest
from pydantic import BaseModel, ValidationError

from flowkit import Choreography, Event, Retry, Signing
from flowkit._cli.dlq import reason_of
from flowkit.cli import main
from flowkit.stores import DeadLetter, SQLiteStore, WorkflowRecord
from flowkit.testing import FaultPlan, SimulatedCrash
from flowkit.transports import from_url

from .brokers import on_brokers, with_query
from .brokers import prefix as prefix
from .brokers import url as url

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

APP = "tests.cli_app"


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A database path for tests/cli_app.py (no file yet), imported anew by each test."""
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


def letter_ids(path: Path) -> list[str]:
    async def ids() -> list[str]:
        async with SQLiteStore(path) as store:
            return [letter.id for letter in await store.list_dead_letters()]

    return anyio.run(ids)


def letter(
    letter_id: str,
    consumer: str,
    body: bytes = b'{"n": 1}',
    *,
    error_type: str = "ValueError",
    error: str | None = None,
) -> DeadLetter:
    return DeadLetter(
        id=letter_id,
        consumer=consumer,
        topic="Ping",
        body=body,
        headers={"trace": "t-1"},
        error_type=error_type,
        error=formatted(raised(ValueError("bad ping"))) if error is None else error,
        attempts=3,
        failed_at=datetime.now(UTC),
        message_id="m-1",
    )


def raised(exc: Exception) -> Exception:
    """``exc``, raised and caught, so that it carries a traceback."""
    try:
        raise exc
    except Exception as caught:
        return caught


def formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """Standard error, checked to be one line without a traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


# -- dlq list ----------------------------------------------------------------------------


def test_dlq_list_prints_each_dead_letter_with_its_reason_once(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_letters(db, letter("d-1", "pong:answer"), letter("d-2", "other:h", b"\xff"))
    assert main(["dlq", "list", f"{APP}:bus"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("d-1  ") and "pong:answer  Ping  attempts=3" in lines[0]
    assert lines[0].endswith("  ValueError: bad ping")
    assert "Traceback" not in "\n".join(lines)


def test_dlq_list_verbose_shows_the_traceback(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        try:
            raise ConnectionError("refused")
        except ConnectionError as cause:
            raise ConnectionError("ConnectionError: the payment service is down") from cause
    except ConnectionError as exc:
        error = formatted(exc)
    add_letters(db, letter("d-1", "pay:charge", error_type="ConnectionError", error=error))
    assert main(["dlq", "list", f"{APP}:bus"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("ConnectionError: the payment service is down")
    assert "ConnectionError: ConnectionError" not in out and "Traceback" not in out
    assert main(["dlq", "list", f"{APP}:bus", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "    Traceback (most recent call last):" in out
    assert "    message id: m-1" in out


def test_dlq_list_drops_pydantic_links_and_joins_lines(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Order(BaseModel):
        quantity: int

    try:
        Order.model_validate({"quantity": "many"})
    except ValidationError as exc:
        error, message = formatted(exc), str(exc)
    add_letters(
        db,
        letter("d-1", "shop:order", error_type="pydantic_core.ValidationError", error=error),
        letter("d-2", "shop:decode", error_type="flowkit.DecodeError", error=message),
    )
    assert main(["dlq", "list", f"{APP}:bus"]) == 0
    out = capsys.readouterr().out
    assert "errors.pydantic.dev" not in out
    first, second = out.splitlines()
    assert first.endswith(
        "pydantic_core.ValidationError: 1 validation error for Order; quantity; "
        "Input should be a valid integer, unable to parse string as an integer "
        "[type=int_parsing, input_value='many', input_type=str]"
    )
    assert second.endswith(
        "flowkit.DecodeError: 1 validation error for Order; quantity; "
        + (
            "Input should be a valid integer, unable to parse string as an integer "
            "[type=int_parsing, input_value='many', input_type=str]"
        )
    )


def test_dlq_list_json_holds_objects(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_letters(
        db,
        letter("d-1", "pong:answer"),
        letter("d-2", "other:h", b"\xff\x00"),
        letter("d-3", "other:h", b"plain words"),
    )
    assert main(["dlq", "list", f"{APP}:bus", "--json"]) == 0
    first, binary, text = json.loads(capsys.readouterr().out)
    assert first["body_encoding"] == "json" and first["body"] == {"n": 1}
    assert first["headers"] == {"trace": "t-1"}
    assert first["error_type"] == "ValueError" and first["reason"] == "bad ping"
    assert "error" not in first
    assert binary["body_encoding"] == "base64" and binary["body"] == "/wA="
    assert text["body_encoding"] == "text" and text["body"] == "plain words"
    assert main(["dlq", "list", f"{APP}:bus", "--consumer", "pong:answer", "--json", "-v"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert only["id"] == "d-1"
    assert only["error"].startswith("Traceback (most recent call last):\n")
    assert only["error"].endswith("\nValueError: bad ping")


def test_dlq_list_without_dead_letters(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_letters(db)
    assert main(["dlq", "list", f"{APP}:bus"]) == 0
    assert capsys.readouterr().out == "no dead letters\n"
    assert main(["dlq", "list", f"{APP}:bus", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# -- inspection never creates anything ---------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["dlq", "list", f"{APP}:bus"],
        ["dlq", "replay", f"{APP}:broker_bus", "--all"],
        ["workflows", "list", f"{APP}:orders"],
        ["workflows", "show", f"{APP}:orders", "w-1"],
        ["dlq", "prune", f"{APP}:bus", "--older-than", "7d"],
        ["dlq", "prune", f"{APP}:bus", "--older-than", "7d", "--dry-run"],
        ["workflows", "prune", f"{APP}:orders", "--older-than", "30d"],
        ["workflows", "prune", f"{APP}:orders", "--older-than", "30d", "--dry-run"],
    ],
)
def test_a_mistyped_database_path_creates_nothing(
    db: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    assert main(command) == 2
    err = one_line_error(capsys)
    assert f"no flowkit data at {db}: no such file" in err
    assert list(db.parent.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [
        ["dlq", "list", f"{APP}:bus"],
        ["workflows", "list", f"{APP}:orders"],
        ["workflows", "show", f"{APP}:orders", "w-1"],
        ["dlq", "prune", f"{APP}:bus", "--older-than", "7d"],
        ["workflows", "prune", f"{APP}:orders", "--older-than", "30d"],
    ],
)
def test_a_database_of_something_else_is_left_alone(
    db: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE other (x INTEGER)")
    conn.close()
    assert main(command) == 2
    assert "holds no flowkit data" in one_line_error(capsys)
    with sqlite3.connect(db) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert tables == ["other"]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["dlq", "list", f"{APP}:storeless_bus"], "has no store: its dead letters stay"),
        (["dlq", "list", f"{APP}:memory_bus"], "keeps its dead letters in memory"),
        (["dlq", "replay", f"{APP}:storeless_bus", "--all"], "has no store"),
        (["dlq", "replay", f"{APP}:memory_bus", "--all"], "keeps its dead letters in memory"),
        (["workflows", "list", f"{APP}:memory_orders"], "keeps its workflows in memory"),
        (["dlq", "prune", f"{APP}:storeless_bus", "--older-than", "1d"], "has no store"),
        (
            ["dlq", "prune", f"{APP}:memory_bus", "--older-than", "1d"],
            "keeps its dead letters in memory",
        ),
        (
            ["workflows", "prune", f"{APP}:memory_orders", "--older-than", "1d"],
            "keeps its workflows in memory",
        ),
    ],
)
def test_records_kept_in_another_process_memory_are_refused(
    db: Path, capsys: pytest.CaptureFixture[str], command: list[str], message: str
) -> None:
    assert main(command) == 2
    assert message in one_line_error(capsys)


# -- dlq replay --------------------------------------------------------------------------


def test_dlq_replay_by_id_and_all(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.cli_app import broker

    add_letters(db, letter("d-1", "pong:answer"), letter("d-2", "pong:answer"))
    add_letters(db, letter("d-3", "other:h"))
    assert main(["dlq", "replay", f"{APP}:broker_bus", "d-1"]) == 0
    assert capsys.readouterr().out == "replayed 1 dead letter(s)\n"
    assert main(["dlq", "replay", f"{APP}:broker_bus", "--all", "--consumer", "pong:answer"]) == 0
    assert capsys.readouterr().out == "replayed 1 dead letter(s)\n"
    assert broker.published == 2
    assert letter_ids(db) == ["d-3"]


def test_dlq_replay_refuses_a_process_local_transport(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_letters(db, letter("d-1", "pong:answer"))
    assert main(["dlq", "replay", f"{APP}:bus", "d-1"]) == 2
    err = one_line_error(capsys)
    assert "InMemoryTransport, which only reaches this process" in err
    assert "run it with a broker transport (Redis, RabbitMQ, NATS, Kafka)" in err
    assert letter_ids(db) == ["d-1"]


def test_dlq_replay_keeps_the_dead_letter_when_the_publish_fails(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cli_app import broker

    add_letters(db, letter("d-1", "pong:answer"), letter("d-2", "pong:answer"))
    broker.fail_next_publish(times=1)
    assert main(["dlq", "replay", f"{APP}:broker_bus", "d-1", "d-2"]) == 1
    err = one_line_error(capsys)
    assert err.startswith("flowkit: dead letter d-1: TransportError: ")
    assert err.rstrip().endswith("(0 of 2 replayed before it)")
    assert letter_ids(db) == ["d-1", "d-2"]


def test_dlq_replay_command_line_mistakes(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_letters(db, letter("d-1", "pong:answer"))
    assert main(["dlq", "replay", f"{APP}:broker_bus"]) == 2
    assert "give dead letter ids, or --all" in one_line_error(capsys)
    assert main(["dlq", "replay", f"{APP}:broker_bus", "d-1", "--consumer", "pong:answer"]) == 2
    assert "not with ids" in one_line_error(capsys)
    assert main(["dlq", "replay", f"{APP}:broker_bus", "d-1", "nope"]) == 1
    err = one_line_error(capsys)
    assert "dead letter nope: NotFound" in err and "(1 of 2 replayed before it)" in err


# -- workflows ---------------------------------------------------------------------------


def run_two_workflows() -> None:
    async def run_two() -> None:
        from tests.cli_app import Ping, orders

        async with orders:
            await orders.run(Ping(n=1), workflow_id="w-ok")
            await orders.run(Ping(n=-1), workflow_id="w-undone")

    anyio.run(run_two)
    sys.modules.pop(APP)


def test_workflows_list_and_show(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_two_workflows()
    assert main(["workflows", "list", f"{APP}:orders"]) == 0
    out = capsys.readouterr().out
    assert "w-ok  COMPLETED" in out and "w-undone  COMPENSATED" in out
    assert "errors.pydantic.dev" not in out
    assert main(["workflows", "show", f"{APP}:orders", "w-undone"]) == 0
    out = capsys.readouterr().out
    assert "PingSaga w-undone: COMPENSATED" in out
    assert "step_compensated" in out and "errors.pydantic.dev" not in out
    assert main(["workflows", "show", f"{APP}:orders", "missing"]) == 1
    assert "WorkflowNotFound" in one_line_error(capsys)


def test_workflows_list_pages_with_after(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_two_workflows()
    assert main(["workflows", "list", f"{APP}:orders", "--limit", "1"]) == 0
    first = capsys.readouterr()
    assert "w-ok  COMPLETED" in first.out and "w-undone" not in first.out
    [hint] = first.err.splitlines()
    assert hint.startswith("next page: --after ")
    cursor = hint.removeprefix("next page: --after ")
    assert main(["workflows", "list", f"{APP}:orders", "--limit", "1", "--after", cursor]) == 0
    second = capsys.readouterr()
    assert "w-undone  COMPENSATED" in second.out and "w-ok" not in second.out
    assert main(["workflows", "list", f"{APP}:orders", "--after", "nonsense"]) == 1
    assert "cursor" in one_line_error(capsys)


def test_workflows_cancel_leaves_a_request_that_the_next_holder_acts_on(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def crash_one() -> None:
        from tests.cli_app import Ping, PingSaga, refuse

        plan = FaultPlan().crash(refuse, at="started")
        async with plan.install(PingSaga(store=SQLiteStore(db), recover=False)) as saga:
            with pytest.raises(SimulatedCrash):
                await saga.run(Ping(n=1), workflow_id="w-left")

    anyio.run(crash_one)
    assert main(["workflows", "list", f"{APP}:orders"]) == 0
    assert "w-left  RUNNING" in capsys.readouterr().out
    assert main(["workflows", "cancel", f"{APP}:orders", "w-left", "--wait", "0.2"]) == 1
    out, err = capsys.readouterr()
    assert "cancel requested" in out and "still RUNNING after 0.2s" in err
    assert main(["workflows", "list", f"{APP}:orders"]) == 0
    assert "(cancel requested)" in capsys.readouterr().out

    async def take_over() -> list[str]:
        from tests.cli_app import orders

        async with orders:
            return [o.status.value for o in await orders.resume()]

    assert anyio.run(take_over) == ["COMPENSATED"]
    sys.modules.pop(APP)
    assert main(["workflows", "cancel", f"{APP}:orders", "w-left"]) == 0
    assert "w-left is COMPENSATED: nothing to cancel" in capsys.readouterr().out
    assert main(["workflows", "cancel", f"{APP}:orders", "missing"]) == 1
    assert "WorkflowNotFound" in one_line_error(capsys)


def test_workflows_json_holds_objects(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_two_workflows()
    assert main(["workflows", "list", f"{APP}:orders", "--status", "compensated", "--json"]) == 0
    (undone,) = json.loads(capsys.readouterr().out)
    assert undone["id"] == "w-undone" and undone["compensated"] == ["ok"]
    assert undone["input"] == {"n": -1} and "history" not in undone
    assert undone["error"]["type"] == "NonRetryableError"
    assert undone["error"]["message"] == "negative"
    assert main(["workflows", "show", f"{APP}:orders", "w-ok", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["steps"]["ok"]["result"] == 1 and shown["history"][0]["event"]


def test_workflows_status_is_any_case_and_checked(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_two_workflows()
    assert main(["workflows", "list", f"{APP}:orders", "--status", "Completed,FAILED"]) == 0
    assert capsys.readouterr().out.startswith("w-ok  COMPLETED")
    assert main(["workflows", "list", f"{APP}:orders", "--status", "done"]) == 2
    err = one_line_error(capsys)
    assert "unknown status 'done'" in err
    assert "RUNNING, WAITING, COMPENSATING, COMPLETED, COMPENSATED, FAILED" in err


# -- waiting workflows -------------------------------------------------------------------

WAIT_APP = "tests.cli_wait_app"
WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"


@pytest.fixture
def wait_db(db: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The database of tests/cli_wait_app.py, imported anew by each test."""
    monkeypatch.delitem(sys.modules, WAIT_APP, raising=False)
    return db


def park(*workflow_ids: str, saga: str = "ApprovalSaga") -> None:
    """Start workflows of ``saga`` that reach their wait and are left WAITING."""

    async def start() -> None:
        app = importlib.import_module(WAIT_APP)
        cls = getattr(app, saga)
        async with cls(SQLiteStore(app.DB), recover=False) as orchestrator:
            for n, workflow_id in enumerate(workflow_ids, 1):
                await orchestrator.start(app.Order(n=n), workflow_id=workflow_id)
        async with cls(SQLiteStore(app.DB), recover=False) as orchestrator:
            for workflow_id in workflow_ids:
                assert (await orchestrator.get(workflow_id)).status.value == "WAITING"

    anyio.run(start)


def finish(workflow_id: str) -> tuple[str, object]:
    """Start approvals' orchestrator and let it take the workflow up (a due
    waiting one within ``wait_poll``, a free running one within half a lease)
    until it is finished: its status and the result of its last step."""

    async def wait() -> tuple[str, object]:
        app = importlib.import_module(WAIT_APP)
        async with app.ApprovalSaga(SQLiteStore(app.DB), wait_poll=0.05, lease=1.0) as saga:
            with anyio.fail_after(10):
                outcome = await saga.wait(workflow_id)
        return outcome.status.value, outcome.results.get("ship")

    return anyio.run(wait)


def test_workflows_list_and_show_what_a_workflow_waits_for(
    wait_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    park("w-1")
    park("w-open", saga="OpenApprovalSaga")
    assert main(["workflows", "list", f"{WAIT_APP}:approvals", "--status", "Waiting"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"w-1  WAITING  {WHEN}  waits for signal Approval until {WHEN}", line)
    until = datetime.strptime(line.rsplit("until ", 1)[1], "%Y-%m-%d %H:%M:%SZ")
    left = until.replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(hours=23) < left <= timedelta(days=1)
    assert main(["workflows", "list", f"{WAIT_APP}:open_approvals", "--status", "waiting"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("  waits for signal Approval with no time limit\n")
    assert main(["workflows", "list", f"{WAIT_APP}:approvals", "--status", "running"]) == 0
    assert capsys.readouterr().out == "no workflows\n"

    assert main(["workflows", "show", f"{WAIT_APP}:approvals", "w-1"]) == 0
    out = capsys.readouterr().out
    assert "ApprovalSaga w-1: WAITING" in out
    assert re.search(rf"^waits for signal Approval until {WHEN}$", out, re.MULTILINE)
    assert "  step reserve: succeeded after 1 attempt(s)" in out
    assert "  step wait_for_approval: waiting for signal Approval\n" in out
    assert "  step ship: pending after 0 attempt(s)" in out
    assert "  waiting  wait_for_approval  attempt 1  for signal Approval until " in out


def test_workflows_json_says_what_a_workflow_waits_for(
    wait_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    park("w-1")
    listing = ["workflows", "list", f"{WAIT_APP}:approvals", "--status", "WAITING", "--json"]
    assert main(listing) == 0
    (waiting,) = json.loads(capsys.readouterr().out)
    assert waiting["status"] == "WAITING" and waiting["waiting_for"] == "signal Approval"
    wake_at = datetime.fromisoformat(waiting["wake_at"])
    assert timedelta(hours=23) < wake_at - datetime.now(UTC) <= timedelta(days=1)
    assert waiting["steps"]["wait_for_approval"]["status"] == "waiting"
    assert main(["workflows", "show", f"{WAIT_APP}:approvals", "w-1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["waiting_for"] == "signal Approval" and shown["wake_at"] == waiting["wake_at"]
    assert "waiting" in [entry["event"] for entry in shown["history"]]
    park("w-open", saga="OpenApprovalSaga")
    assert main(["workflows", "show", f"{WAIT_APP}:open_approvals", "w-open", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["waiting_for"] == "signal Approval" and shown["wake_at"] is None
    run_two_workflows()
    assert main(["workflows", "show", f"{APP}:orders", "w-ok", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["waiting_for"] is None and shown["wake_at"] is None


def test_workflows_signal_wakes_a_waiting_workflow(
    wait_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    park("w-1")
    signal = ["workflows", "signal", f"{WAIT_APP}:approvals", "w-1", "Approval"]
    assert main([*signal, '{"by": "ada", "amount": 3}']) == 0
    assert capsys.readouterr().out == "signal Approval delivered: w-1 was waiting for it\n"
    # Due now, for the next process running the orchestrator to take it up.
    assert main(["workflows", "list", f"{WAIT_APP}:approvals"]) == 0
    due = rf"^w-1  WAITING  {WHEN}  waits for signal Approval, due since {WHEN}$"
    assert re.search(due, capsys.readouterr().out, re.MULTILINE)
    assert finish("w-1") == ("COMPLETED", "approved by ada")
    # Past its wait: a second signal is refused.
    assert main([*signal, '{"by": "bob"}']) == 1
    err = one_line_error(capsys)
    assert "InvalidWorkflowState" in err and "COMPLETED" in err


def test_workflows_signal_is_kept_for_a_workflow_not_waiting_yet(
    wait_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def crash_before_the_wait() -> None:
        from tests.cli_wait_app import DB, ApprovalSaga, Order, reserve

        plan = FaultPlan().crash(reserve, at="started")
        async with plan.install(ApprovalSaga(SQLiteStore(DB), recover=False)) as saga:
            with pytest.raises(SimulatedCrash):
                await saga.run(Order(n=1), workflow_id="w-2")

    anyio.run(crash_before_the_wait)
    sys.modules.pop(WAIT_APP)
    signal = ["workflows", "signal", f"{WAIT_APP}:approvals", "w-2", "Approval", '{"by": "cy"}']
    assert main([*signal, "--signal-id", "approval-1"]) == 0
    assert capsys.readouterr().out == "signal Approval kept: w-2 gets it when it reaches its wait\n"
    assert main([*signal, "--signal-id", "approval-1"]) == 0  # sent again: kept once
    capsys.readouterr()
    assert finish("w-2") == ("COMPLETED", "approved by cy")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["w-1", "Nope"], "approvals waits for no signal 'Nope'; it waits for Approval"),
        (["w-1", "Approval", "{by: 1}"], "the fields of signal Approval are not valid JSON"),
        (["w-1", "Approval", '["ada"]'], "must be a JSON object, such as"),
        (
            ["w-1", "Approval", '{"by": "ada", "amout": 3}'],
            "signal Approval has no field 'amout'; its fields are: amount, by",
        ),
        (
            ["w-1", "Approval", '{"amount": "secret-value"}'],
            "signal Approval is not valid: by: Field required; amount: Input should be a valid "
            "integer",
        ),
        (["w-1", "Approval", '{"by": "ada", "amount": -5}'], "amount: Input should be greater"),
        (["w-1", "Approval", '{"by": "ada"}', "--signal-id", ""], "--signal-id must not be empty"),
        (["w-1", "Approval", '{"by": "ada"}', "--store", "sqlite:///missing.db"], "no such file"),
    ],
)
def test_workflows_signal_refuses_what_it_cannot_send_with_status_2(
    wait_db: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    park("w-1")
    assert main(["workflows", "signal", f"{WAIT_APP}:approvals", *argv]) == 2
    err = one_line_error(capsys)
    assert err.startswith("flowkit: error: ") and message in err
    assert "secret-value" not in err and "-5" not in err


def test_workflows_signal_refused_by_the_orchestrator_exits_1(
    wait_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    park("w-1")
    run_two_workflows()
    signal = ["workflows", "signal", f"{WAIT_APP}:approvals"]
    assert main([*signal, "missing", "Approval", '{"by": "ada"}']) == 1
    assert "WorkflowNotFound" in one_line_error(capsys)
    assert main([*signal, "w-ok", "Approval", '{"by": "ada"}']) == 1  # another orchestrator's
    assert "WorkflowNotFound: workflow 'w-ok' belongs to 'PingSaga'" in one_line_error(capsys)
    assert main(["workflows", "signal", f"{APP}:orders", "w-ok", "Approval"]) == 2
    assert "waits for no signal: it has no WaitForSignal step" in one_line_error(capsys)


def test_workflows_cancel_of_a_waiting_workflow_wakes_it_to_compensate(
    wait_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    park("w-1")
    cancel = ["workflows", "cancel", f"{WAIT_APP}:approvals", "w-1"]
    assert main([*cancel, "--wait", "0.2"]) == 1
    out, err = capsys.readouterr()
    assert out == (
        "cancel requested: w-1 is WAITING; the next process running ApprovalSaga wakes it "
        "and compensates it\n"
    )
    assert err == "w-1 is still WAITING after 0.2s\n"
    assert main(["workflows", "list", f"{WAIT_APP}:approvals"]) == 0
    assert "(cancel requested)" in capsys.readouterr().out

    assert finish("w-1") == ("COMPENSATED", None)
    app = importlib.import_module(WAIT_APP)
    assert app.RELEASED == [1]
    assert main(cancel) == 0
    assert capsys.readouterr().out == "w-1 is COMPENSATED: nothing to cancel\n"


# -- bad command lines -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "expected module:attribute, got 'no_colon'"),
        (":bus", "expected module:attribute"),
        ("no_such_module_xyz:bus", "cannot import 'no_such_module_xyz': no module named"),
        (
            "tests.cli_app_broken:bus",
            "importing 'tests.cli_app_broken' raised RuntimeError: cannot read the "
            "configuration; at /etc/myshop.toml",
        ),
        (f"{APP}:missing", f"module {APP!r} has no attribute 'missing'"),
        (f"{APP}:not_a_bus", "is of type int, expected a Choreography"),
        (f"{APP}:orders", "is of type PingSaga, expected a Choreography"),
    ],
)
@pytest.mark.parametrize("command", [["dlq", "list"], ["dlq", "replay"], ["worker"]])
def test_bad_targets_are_named_on_one_line(
    db: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    target: str,
    message: str,
) -> None:
    assert main([*command, target, "--all"] if command[-1] == "replay" else [*command, target]) == 2
    assert message in one_line_error(capsys)


def test_an_orchestrator_class_is_not_an_instance(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["workflows", "list", f"{APP}:PingSaga"]) == 2
    assert "is the class PingSaga; give an instance of it" in one_line_error(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker", f"{APP}:bus"], "InMemoryTransport, which only reaches this process"),
        (["worker", f"{APP}:broker_bus", "--services", ","], "names no service"),
        (["worker", f"{APP}:broker_bus", "--services", "pong,,x"], "has an empty name"),
        (
            ["worker", f"{APP}:broker_bus", "--services", "nope"],
            "no handler is declared for service(s) ['nope']; known services: ['pong']",
        ),
        (["worker", f"{APP}:idle_bus"], "declares no handler: there is nothing to run"),
        (["worker", f"{APP}:broker_bus", "--grace", "-1"], "expected seconds >= 0"),
        (["worker", f"{APP}:broker_bus", "--grace", "soon"], "expected seconds, got 'soon'"),
        (["worker"], "the following arguments are required: app"),
        (["dlq", "list", f"{APP}:bus", "--limit", "0"], "expected a number of at least 1"),
        (["nonsense"], "invalid choice: 'nonsense'"),
        (
            ["dlq", "prune", f"{APP}:bus", "--older-than", "7x"],
            "expected a duration such as 90s, 15m, 12h or 7d, got '7x'",
        ),
        (["dlq", "prune", f"{APP}:bus", "--older-than", "0d"], "at least 1s"),
        (["dlq", "prune", f"{APP}:bus", "--older-than", "-1d"], "expected one argument"),
        (["dlq", "prune", f"{APP}:bus", "--older-than", "99999999999d"], "too long"),
        (["dlq", "prune", f"{APP}:bus"], "the following arguments are required: --older-than"),
        (
            ["workflows", "prune", f"{APP}:orders", "--older-than", "1 week"],
            "expected a duration such as",
        ),
        (
            ["workflows", "prune", f"{APP}:orders", "--older-than", "1d", "--status", "done"],
            "unknown status 'done'",
        ),
    ],
)
def test_bad_command_lines_exit_2_on_one_line(
    db: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert err.startswith("flowkit: error: ") and message in err


# -- prune -------------------------------------------------------------------------------


def aged(letter_id: str, consumer: str, days: int) -> DeadLetter:
    """A dead letter that failed ``days`` days ago."""
    return dataclasses.replace(
        letter(letter_id, consumer), failed_at=datetime.now(UTC) - timedelta(days=days)
    )


def test_dlq_prune_removes_old_letters(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add_letters(db, aged("d-old", "pong:answer", 10), aged("d-other", "other:h", 9))
    add_letters(db, aged("d-new", "pong:answer", 1))
    command = ["dlq", "prune", f"{APP}:bus", "--older-than", "7d"]
    assert main([*command, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would prune 2 dead letter(s) failed before ")
    assert main([*command, "--consumer", "pong:answer"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("pruned 1 dead letter(s) failed before ") and err == ""
    assert letter_ids(db) == ["d-other", "d-new"]
    assert main([*command, "--topic", "Elsewhere"]) == 0
    assert capsys.readouterr().out.startswith("pruned 0 dead letter(s)")
    assert main([*command, "--topic", "Ping"]) == 0
    assert capsys.readouterr().out.startswith("pruned 1 dead letter(s)")
    assert letter_ids(db) == ["d-new"]


def test_prune_shows_its_progress_in_batches(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flowkit._cli.common.PRUNE_BATCH", 2)
    add_letters(db, *(aged(f"d-{n}", "pong:answer", 30 + n) for n in range(5)))
    assert main(["dlq", "prune", f"{APP}:bus", "--older-than", "12h", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would prune 5 dead letter(s)")
    assert main(["dlq", "prune", f"{APP}:bus", "--older-than", "12h"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["pruned 2 dead letters so far", "pruned 4 dead letters so far"]
    assert out.startswith("pruned 5 dead letter(s)")
    assert letter_ids(db) == []


def age_workflows(path: Path, *, days: int) -> None:
    at = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE flowkit_workflows SET updated_at = ?", (at,))
    conn.close()


def workflow_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM flowkit_workflows ORDER BY id")]
    conn.close()
    return ids


def test_workflows_prune_removes_old_finished_workflows(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_two_workflows()

    async def add_running() -> None:
        async with SQLiteStore(db) as store:
            await store.create_workflow(WorkflowRecord("w-stuck", "PingSaga", "RUNNING", {}))
            await store.create_workflow(WorkflowRecord("w-else", "OtherSaga", "COMPLETED", {}))

    anyio.run(add_running)
    command = ["workflows", "prune", f"{APP}:orders"]
    assert main([*command, "--older-than", "30d"]) == 0
    assert capsys.readouterr().out.startswith(
        "pruned 0 COMPLETED/COMPENSATED/FAILED workflow(s) of PingSaga updated before "
    )
    age_workflows(db, days=40)
    assert main([*command, "--older-than", "30d", "--status", "completed", "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would prune 1 COMPLETED workflow(s) of PingSaga")
    assert main([*command, "--older-than", "30d", "--status", "completed"]) == 0
    assert capsys.readouterr().out.startswith("pruned 1 COMPLETED workflow(s)")
    assert workflow_ids(db) == ["w-else", "w-stuck", "w-undone"]
    assert main([*command, "--older-than", "30d"]) == 0
    assert capsys.readouterr().out.startswith("pruned 1 COMPLETED/COMPENSATED/FAILED")
    assert workflow_ids(db) == ["w-else", "w-stuck"]
    assert main([*command, "--older-than", "30d", "--status", "RUNNING"]) == 0
    assert capsys.readouterr().out.startswith("pruned 1 RUNNING workflow(s) of PingSaga")
    assert workflow_ids(db) == ["w-else"]


# -- reasons -----------------------------------------------------------------------------


def chained() -> None:
    try:
        raise KeyError("k")
    except KeyError as exc:
        raise ConnectionError("ConnectionError: down") from exc


def group_of_one() -> None:
    raise ExceptionGroup("unhandled errors in a TaskGroup", [ConnectionError("refused")])


def nested_groups() -> None:
    try:
        raise ValueError("ValueError: inner")
    except ValueError as exc:
        raise ExceptionGroup("outer", [ExceptionGroup("mid", [exc])]) from None


def group_of_two() -> None:
    raise ExceptionGroup("two", [ValueError("a"), KeyError("b")])


def with_note() -> None:
    exc = ValueError("first\nsecond")
    exc.add_note("a note")
    raise exc


@pytest.mark.parametrize(
    ("fail", "reason"),
    [
        (chained, "down"),
        (
            group_of_one,
            "unhandled errors in a TaskGroup (1 sub-exception): ConnectionError: refused",
        ),
        (
            nested_groups,
            "outer (1 sub-exception): ExceptionGroup: mid (1 sub-exception): ValueError: inner",
        ),
        (group_of_two, "two (2 sub-exceptions)"),
        (with_note, "first; second; a note"),
    ],
)
def test_the_reason_is_the_last_exception_once(fail: Callable[[], None], reason: str) -> None:
    try:
        fail()
    except Exception as exc:
        dead = letter("d-1", "a:b", error_type=type(exc).__name__, error=formatted(exc))
    assert reason_of(dead) == reason


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "list", "--help"]) == 0
    assert "--verbose" in capsys.readouterr().out


def test_workflows_of_an_orchestrator_with_remote_steps_open_no_transport(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_two_workflows()
    from tests.cli_app import remote_transport

    assert main(["workflows", "list", f"{APP}:remote_orders"]) == 0
    assert capsys.readouterr().out == "no workflows\n"
    assert main(["workflows", "show", f"{APP}:remote_orders", "w-ok"]) == 1
    assert "WorkflowNotFound" in one_line_error(capsys)
    assert remote_transport.opened == 0


# -- --transport and --store ----------------------------------------------------------


def test_the_command_line_takes_a_store_url(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.db"
    add_letters(other, letter("d-9", "pong:answer"))
    assert main(["dlq", "list", f"{APP}:bus", "--store", f"sqlite:///{other}"]) == 0
    assert "d-9" in capsys.readouterr().out
    assert not db.exists()  # the bus's own database was never opened


def test_the_store_url_may_come_from_the_environment(
    tmp_path: Path, db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.db"
    add_letters(other, letter("d-8", "pong:answer"))
    monkeypatch.setenv("FLOWKIT_STORE", f"sqlite:///{other}")
    assert main(["dlq", "list", f"{APP}:bus"]) == 0
    assert "d-8" in capsys.readouterr().out


def test_a_memory_transport_url_is_refused_where_a_broker_is_needed(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", f"{APP}:broker_bus", "--transport", "memory://"]) == 2
    assert "only reaches this process" in one_line_error(capsys)


def test_a_bad_transport_url_is_one_line(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dlq", "replay", f"{APP}:broker_bus", "--all", "--transport", "amqp2://x"]) == 2
    assert "no transport for 'amqp2://'" in one_line_error(capsys)


# -- signing keys from the environment ------------------------------------------------------

SIGNED_APP = "signed_cli_app"
SIGNING_KEY = bytes(range(32))
SIGNING_KEYS = f"2026-12:{base64.b64encode(SIGNING_KEY).decode()}"

# An application whose bus takes its keys from the environment, as a deployment's does.
SIGNED_APP_SOURCE = """
import os

from flowkit import Choreography, Event, Signing
from flowkit.stores import SQLiteStore
from flowkit.transports import from_url


class Ping(Event):
    n: int


bus = Choreography(
    from_url(os.environ["SIGNED_APP_TRANSPORT"]),
    store=SQLiteStore(os.environ["FLOWKIT_CLI_DB"]),
    signing=Signing.from_env(),
)


@bus.on(Ping, service="pong", name="answer")
async def answer(event: Ping) -> None:
    pass
"""


def write_signed_app(directory: Path, monkeypatch: pytest.MonkeyPatch, transport: str) -> None:
    """Write ``signed_cli_app`` on ``transport`` to a directory put on sys.path."""
    (directory / f"{SIGNED_APP}.py").write_text(SIGNED_APP_SOURCE)
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.delitem(sys.modules, SIGNED_APP, raising=False)
    monkeypatch.setenv("SIGNED_APP_TRANSPORT", transport)
    monkeypatch.delenv("FLOWKIT_SIGNING_KEYS", raising=False)


@pytest.fixture
def signed_app(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, prefix: str
) -> str:
    """The transport URL of ``signed_cli_app``, on the test Redis under a prefix of its own."""
    transport_url = with_query(url, prefix=prefix)
    write_signed_app(tmp_path, monkeypatch, transport_url)
    return transport_url


class Ping(Event):
    n: int


@pytest.mark.anyio
@on_brokers("redis")
async def test_dlq_replay_signs_with_the_keys_of_the_environment(
    signed_app: str,
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    signing = Signing(keys={"2026-12": SIGNING_KEY}, active="2026-12")
    live = Choreography(from_url(signed_app), store=SQLiteStore(db), signing=signing)
    handled: list[int] = []
    down = True

    @live.on(Ping, service="pong", name="answer", retry=Retry(attempts=1))
    async def answer(event: Ping) -> None:
        if down:
            raise RuntimeError("pong is down")
        handled.append(event.n)

    async def replay(letter_id: str) -> int:
        monkeypatch.delitem(sys.modules, SIGNED_APP, raising=False)  # read the keys anew
        argv = ["dlq", "replay", f"{SIGNED_APP}:bus", letter_id]
        status: int = await anyio.to_thread.run_sync(main, argv)
        return status

    with anyio.fail_after(60):
        async with live:
            await live.publish(Ping(n=1))
            await live.publish(Ping(n=2))
            await live.wait_idle(30)
            letters = {json.loads(x.body)["payload"]["n"]: x for x in await live.dead_letters()}
            assert sorted(letters) == [1, 2]
            assert all("flowkit-signature" in x.headers for x in letters.values())
            down = False

            # With the keys, the replay is signed for the handler's group and handled.
            monkeypatch.setenv("FLOWKIT_SIGNING_KEYS", SIGNING_KEYS)
            assert await replay(letters[1].id) == 0
            await live.wait_idle(30)
            assert handled == [1]
            assert await live.dead_letters() == [letters[2]]

            # Without them, the app's bus signs nothing: the replay keeps the letter's
            # old signature, which no longer matches, and the consumer refuses it.
            monkeypatch.delenv("FLOWKIT_SIGNING_KEYS")
            assert await replay(letters[2].id) == 0
            await live.wait_idle(30)
            assert handled == [1]
            (refused,) = await live.dead_letters()
            assert refused.error_type == "flowkit.SignatureError"
            assert refused.error.startswith("bad signature")
            assert json.loads(refused.body)["payload"]["n"] == 2
    out = capfd.readouterr().out
    assert out.count("replayed 1 dead letter(s)") == 2


def test_dlq_replay_warns_when_the_keys_go_unused(
    db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    add_letters(db, letter("d-1", "pong:answer"))
    monkeypatch.setenv("FLOWKIT_SIGNING_KEYS", SIGNING_KEYS)
    assert main(["dlq", "replay", f"{APP}:broker_bus", "d-1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "replayed 1 dead letter(s)\n"
    assert captured.err.startswith(
        f"flowkit: warning: FLOWKIT_SIGNING_KEYS is set, but {APP}:broker_bus signs nothing: "
    )
    assert "signing=Signing.from_env()" in captured.err
    assert SIGNING_KEYS.partition(":")[2] not in captured.err
    monkeypatch.delenv("FLOWKIT_SIGNING_KEYS")
    add_letters(db, letter("d-2", "pong:answer"))
    assert main(["dlq", "replay", f"{APP}:broker_bus", "d-2"]) == 0
    assert capsys.readouterr().err == ""


def test_wrong_keys_in_the_environment_stop_an_app_that_reads_them(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_signed_app(tmp_path, monkeypatch, "memory://")
    secret = base64.b64encode(bytes(16)).decode()
    monkeypatch.setenv("FLOWKIT_SIGNING_KEYS", f"2026-12:{secret}")
    assert main(["dlq", "replay", f"{SIGNED_APP}:bus", "d-1"]) == 2
    err = one_line_error(capsys)
    assert "the key of '2026-12' in FLOWKIT_SIGNING_KEYS is too short (16 bytes)" in err
    assert secret not in err


def test_output_to_a_closed_pipe_ends_quietly() -> None:
    """`flowkit asyncapi app | head -c 10`: no traceback, exit 141 (a closed pipe)."""
    import os
    import subprocess

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flowkit", "asyncapi", "tests.graph_app:bus"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert "Traceback" not in done.stderr
