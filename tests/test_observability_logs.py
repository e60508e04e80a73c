"""Readable logs: the DEBUG lines of the bus and of the saga engine, their
``flowkit_*`` fields, the text and JSON formats, and the command's options."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from pydantic import BaseModel

from flowkit import Choreography, Context, DeadLetter, Event, Retry
from flowkit.cli import main
from flowkit.observability import JsonLogFormatter, TextLogFormatter, setup_logging
from flowkit.orchestration import Orchestrator, Step, StepContext, WorkflowStatus
from flowkit.transports import InMemoryTransport

from ._util import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from flowkit.stores import MemoryStore

ROOT = Path(__file__).parents[1]

# A payload value that must reach no log record, whatever happens to its message.
SECRET = "card-4111-1111-secret"
FAST = Retry(attempts=2, backoff=0.001, jitter=0)


class PaymentTaken(Event, type_name="logs_test.payment_taken"):
    order_id: str
    card: str


def payment(order_id: str = "o-1") -> PaymentTaken:
    return PaymentTaken(order_id=order_id, card=SECRET)


@pytest.fixture
def debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record at DEBUG, of every logger; none may hold the payload's secret."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    assert_no_secret(caplog.get_records("call"))


def assert_no_secret(records: list[logging.LogRecord]) -> None:
    """No record, whichever way it is shown, holds the secret payload value."""
    assert records
    text, js = TextLogFormatter(), JsonLogFormatter()
    for record in records:
        shown = [text.format(record), js.format(record), repr(vars(record))]
        assert not any(SECRET in s for s in shown), record.getMessage()


def of(caplog: pytest.LogCaptureFixture, action: str, logger: str = "flowkit.bus") -> list[Any]:
    """The records of one action, in order."""
    return [
        r for r in caplog.records if r.name == logger and r.__dict__.get("flowkit_action") == action
    ]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k.startswith("flowkit_")}


# -- the bus -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_handled_message_is_received_then_handled_with_its_ids(
    debug: pytest.LogCaptureFixture,
) -> None:
    bus = Choreography(InMemoryTransport())
    done: list[str] = []

    # No context, no inbox, no timeout: the handler's fast path, left while DEBUG is on.
    @bus.on(PaymentTaken, service="billing", name="invoice")
    async def invoice(event: PaymentTaken) -> None:
        done.append(event.order_id)

    async with bus:
        sent = await bus.publish(payment(), correlation_id="o-1")
        await wait_until(lambda: done == ["o-1"])
        await wait_until(lambda: bool(of(debug, "handled")))

    (published,) = of(debug, "published")
    assert published.levelno == logging.DEBUG
    assert published.getMessage() == f"published logs_test.payment_taken {sent.message_id}"
    assert fields(published) == {
        "flowkit_action": "published",
        "flowkit_message_type": "logs_test.payment_taken",
        "flowkit_message_id": sent.message_id,
        "flowkit_correlation_id": "o-1",
        "flowkit_causation_id": None,
    }
    (received,) = of(debug, "received")
    assert received.getMessage() == (
        f"billing:invoice received logs_test.payment_taken {sent.message_id} (attempt 1)"
    )
    assert fields(received) == {
        "flowkit_action": "received",
        "flowkit_service": "billing",
        "flowkit_handler": "invoice",
        "flowkit_consumer": "billing:invoice",
        "flowkit_message_type": "logs_test.payment_taken",
        "flowkit_message_id": sent.message_id,
        "flowkit_correlation_id": "o-1",
        "flowkit_causation_id": None,
        "flowkit_attempt": 1,
    }
    (handled,) = of(debug, "handled")
    assert handled.getMessage().startswith(
        f"billing:invoice handled logs_test.payment_taken {sent.message_id} in "
    )
    assert handled.getMessage().endswith(" ms (attempt 1)")
    assert handled.flowkit_duration_ms >= 0
    assert (
        fields(handled).items()
        >= {
            "flowkit_correlation_id": "o-1",
            "flowkit_message_id": sent.message_id,
            "flowkit_attempt": 1,
        }.items()
    )


@pytest.mark.anyio
async def test_a_retried_message_logs_the_failed_attempt_then_the_success(
    debug: pytest.LogCaptureFixture,
) -> None:
    bus = Choreography(InMemoryTransport())
    attempts: list[int] = []

    @bus.on(PaymentTaken, service="logistics", name="assign", retry=FAST)
    async def assign(event: PaymentTaken, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        ctx.logger.info("assigning a partner")
        if ctx.attempt == 1:
            raise ConnectionError("partner API down")

    async with bus:
        sent = await bus.publish(payment("o-2"), correlation_id="o-2")
        await wait_until(lambda: bool(of(debug, "handled")))

    assert attempts == [1, 2]
    (failed,) = of(debug, "attempt_failed")
    assert failed.getMessage().startswith(
        f"logistics:assign failed on logs_test.payment_taken {sent.message_id} after "
    )
    assert failed.getMessage().endswith("(attempt 1, ConnectionError); it will be retried")
    assert "partner API down" not in failed.getMessage()  # the WARNING line tells it
    assert (
        fields(failed).items()
        >= {
            "flowkit_consumer": "logistics:assign",
            "flowkit_message_id": sent.message_id,
            "flowkit_correlation_id": "o-2",
            "flowkit_attempt": 1,
            "flowkit_will_retry": True,
            "flowkit_error_type": "ConnectionError",
        }.items()
    )
    assert failed.flowkit_duration_ms >= 0
    (handled,) = of(debug, "handled")
    assert handled.flowkit_attempt == 2
    assert [r.flowkit_attempt for r in of(debug, "received")] == [1, 2]
    # The bus's WARNING and the handler's own lines carry the same fields.
    (warning,) = [vars(r) for r in debug.records if r.levelno == logging.WARNING]
    assert warning["name"] == "flowkit.bus" and "retrying" in warning["msg"]
    assert warning["flowkit_correlation_id"] == "o-2"
    assert warning["flowkit_consumer"] == "logistics:assign"
    mine = [vars(r) for r in debug.records if r.name == "flowkit.service.logistics"]
    assert [r["flowkit_attempt"] for r in mine] == [1, 2]
    assert {r["flowkit_correlation_id"] for r in mine} == {"o-2"}


@pytest.mark.anyio
async def test_a_dead_lettered_message_logs_its_dead_letter(
    debug: pytest.LogCaptureFixture,
) -> None:
    bus = Choreography(InMemoryTransport())

    @bus.on(PaymentTaken, service="logistics", name="assign", retry=FAST)
    async def assign(event: PaymentTaken) -> None:
        raise ConnectionError(f"no partner for {event.order_id}")

    async with bus:
        sent = await bus.publish(payment("o-3"), correlation_id="o-3")
        await wait_until(lambda: bool(of(debug, "dead_lettered")))
        (letter,) = await bus.dead_letters()

    failed = of(debug, "attempt_failed")
    assert [(r.flowkit_attempt, r.flowkit_will_retry) for r in failed] == [(1, True), (2, False)]
    assert failed[-1].getMessage().endswith("(attempt 2, ConnectionError); giving up")
    (dead,) = of(debug, "dead_lettered")
    assert dead.getMessage() == (
        f"logistics:assign dead-lettered logs_test.payment_taken {sent.message_id} "
        f"after 2 attempt(s) as dead letter {letter.id}"
    )
    assert fields(dead) == {
        "flowkit_action": "dead_lettered",
        "flowkit_service": "logistics",
        "flowkit_handler": "assign",
        "flowkit_consumer": "logistics:assign",
        "flowkit_message_type": "logs_test.payment_taken",
        "flowkit_message_id": sent.message_id,
        "flowkit_correlation_id": "o-3",
        "flowkit_causation_id": None,
        "flowkit_attempt": 2,
        "flowkit_error_type": "ConnectionError",
        "flowkit_dead_letter_id": letter.id,
    }


@pytest.mark.anyio
async def test_a_dead_letter_that_is_no_envelope_is_logged_without_ids(
    debug: pytest.LogCaptureFixture,
) -> None:
    bus = Choreography(InMemoryTransport())
    letter = DeadLetter(
        id="d-1",
        consumer="billing:invoice",
        topic="logs_test.payment_taken",
        body=f"not json {SECRET}".encode(),
        headers={},
        error_type="flowkit.DecodeError",
        error="invalid JSON",
        attempts=0,
        failed_at=datetime.now(UTC),
    )
    bus.observers[0].dead_lettered(letter)
    (dead,) = of(debug, "dead_lettered")
    assert "(undecodable)" in dead.getMessage()
    assert dead.flowkit_correlation_id is None and dead.flowkit_message_id is None


@pytest.mark.anyio
async def test_with_debug_off_the_bus_logs_nothing_and_its_log_does_not_watch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flowkit")
    bus = Choreography(InMemoryTransport())
    done: list[str] = []

    @bus.on(PaymentTaken, service="billing", name="invoice")
    async def invoice(event: PaymentTaken) -> None:
        done.append(event.order_id)

    (log,) = bus.observers
    assert repr(log) == "HandlingLog(logger='flowkit.bus')"
    assert not log.watching()
    async with bus:
        await bus.publish(payment())
        await wait_until(lambda: done == ["o-1"])
    assert [r for r in caplog.records if r.levelno < logging.INFO] == []
    caplog.set_level(logging.DEBUG, logger="flowkit")
    assert log.watching()


# -- the saga engine --------------------------------------------------------------------


class Order(BaseModel):
    order_id: str
    card: str


async def reserve(ctx: StepContext, order: Order) -> str:
    ctx.logger.info("reserving")
    return "r-1"


async def release(ctx: StepContext, order: Order) -> None:
    pass


async def charge(ctx: StepContext, order: Order) -> None:
    raise RuntimeError("card declined")


class Checkout(Orchestrator[Order]):
    steps = (
        Step(reserve, compensate=release),
        Step(charge, retry=Retry(attempts=2, backoff=0.001, jitter=0)),
    )


@pytest.mark.anyio
async def test_a_compensated_saga_logs_each_step_attempt_and_compensation(
    debug: pytest.LogCaptureFixture, memory_store: MemoryStore
) -> None:
    async with Checkout(store=memory_store) as checkout:
        outcome = await checkout.run(Order(order_id="o-4", card=SECRET), workflow_id="w-4")
    assert outcome.status is WorkflowStatus.COMPENSATED

    saga: list[Any] = [
        r for r in debug.records if r.name == "flowkit.orchestration" and r.levelno == logging.DEBUG
    ]
    assert [(r.flowkit_action, r.__dict__.get("flowkit_step")) for r in saga] == [
        ("workflow_started", None),
        ("step_started", "reserve"),
        ("step_succeeded", "reserve"),
        ("step_started", "charge"),
        ("step_failed", "charge"),
        ("step_started", "charge"),
        ("step_failed", "charge"),
        ("compensation_started", "reserve"),
        ("step_compensated", "reserve"),
        ("workflow_finished", None),
    ]
    assert {r.flowkit_workflow_id for r in saga} == {"w-4"}
    assert {r.flowkit_correlation_id for r in saga} == {"w-4"}
    assert {r.flowkit_workflow for r in saga} == {"Checkout"}
    first, last = (r for r in saga if r.flowkit_action == "step_failed")
    assert first.getMessage().startswith("Checkout w-4: step charge failed after ")
    assert first.getMessage().endswith("(attempt 1, RuntimeError); retrying in 1.0 ms")
    assert (
        fields(first).items()
        >= {
            "flowkit_step": "charge",
            "flowkit_attempt": 1,
            "flowkit_compensating": False,
            "flowkit_will_retry": True,
            "flowkit_retry_delay_ms": 1.0,
            "flowkit_error_type": "RuntimeError",
        }.items()
    )
    assert last.flowkit_attempt == 2 and last.flowkit_will_retry is False
    assert last.getMessage().endswith("(attempt 2, RuntimeError); giving up")
    compensated = next(r for r in saga if r.flowkit_action == "step_compensated")
    assert compensated.getMessage().startswith(
        "Checkout w-4: compensation of reserve succeeded after "
    )
    assert compensated.flowkit_compensating is True and compensated.flowkit_attempt == 1
    assert compensated.flowkit_duration_ms >= 0
    started = next(r for r in saga if r.flowkit_action == "step_started")
    assert started.getMessage() == "Checkout w-4: step reserve started (attempt 1)"
    assert started.flowkit_duration_ms is None
    finished = saga[-1]
    assert finished.getMessage().startswith("Checkout w-4 finished COMPENSATED in ")
    assert finished.flowkit_status == "COMPENSATED"
    assert finished.flowkit_error_type == "RuntimeError"
    # A step's own lines carry the workflow's fields too.
    (mine,) = [r for r in debug.records if r.getMessage() == "reserving"]
    assert (
        fields(mine).items()
        >= {
            "flowkit_workflow_id": "w-4",
            "flowkit_correlation_id": "w-4",
            "flowkit_step": "reserve",
        }.items()
    )


# -- formats -------------------------------------------------------------------------------


def record_with_error() -> logging.LogRecord:
    logger = logging.getLogger("flowkit.bus")
    try:
        raise ValueError("cannot reach redis://:hunter2@cache:6379/0")
    except ValueError:
        return logger.makeRecord(
            "flowkit.bus",
            logging.ERROR,
            __file__,
            1,
            "billing:invoice gave up on message %s",
            ("m-1",),
            sys.exc_info(),
            extra={
                "flowkit_message_id": "m-1",
                "flowkit_correlation_id": "o-9",
                "flowkit_attempt": 3,
                "flowkit_when": Path("/x"),  # not JSON: written as its str
            },
        )


def test_the_json_format_is_one_object_per_line_with_the_fields() -> None:
    line = JsonLogFormatter().format(record_with_error())
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "ERROR" and data["logger"] == "flowkit.bus"
    assert data["message"] == "billing:invoice gave up on message m-1"
    assert data["time"].endswith("+00:00")
    assert data["flowkit_message_id"] == "m-1" and data["flowkit_correlation_id"] == "o-9"
    assert data["flowkit_attempt"] == 3 and data["flowkit_when"] == "/x"
    assert data["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: cannot reach redis://:***@cache:6379/0" in data["exception"]
    assert "hunter2" not in line
    assert not {"args", "msg", "exc_info", "levelno", "pathname"} & data.keys()


def test_the_text_format_shows_the_ids_the_message_does_not() -> None:
    text = TextLogFormatter().format(record_with_error())
    first, *trace = text.splitlines()
    assert " ERROR    flowkit.bus  billing:invoice gave up on message m-1  correlation_id=o-9" in (
        first
    )
    assert "message_id=" not in first  # the message shows it
    assert trace[0] == "Traceback (most recent call last):"
    assert "hunter2" not in text and "\x1b[" not in text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "no_color", "colored"),
    [
        (Terminal, None, True),
        (Terminal, "1", False),
        (Terminal, "", True),  # NO_COLOR set but empty does not count
        (io.StringIO, None, False),
    ],
)
def test_colour_only_on_a_terminal_without_no_color(
    stream: type[io.StringIO],
    no_color: str | None,
    colored: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TERM", raising=False)
    if no_color is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color)
    out = stream()
    with restored_logging():
        setup_logging("info", "text", out)
        logging.getLogger("flowkit.bus").warning(
            "partner down", extra={"flowkit_correlation_id": "o-5"}
        )
    line = out.getvalue()
    assert "partner down" in line and "correlation_id=o-5" in line
    assert ("\x1b[33mWARNING" in line) is colored
    assert ("\x1b[" in line) is colored


def test_setup_logging_replaces_its_handler_and_sets_the_levels() -> None:
    out = io.StringIO()
    with restored_logging():
        first = setup_logging("debug", "json", io.StringIO())
        second = setup_logging("DEBUG", "json", out)
        root = logging.getLogger()
        assert first not in root.handlers and second in root.handlers
        assert logging.getLogger("flowkit").level == logging.DEBUG
        assert root.level == logging.INFO  # other libraries' DEBUG stays off
        logging.getLogger("flowkit.orchestration").debug("hello")
        logging.getLogger("somelib").debug("not shown")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["message"] == "hello"


def test_setup_logging_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match=r"unknown log level 'loud'; use one of debug, info"):
        setup_logging("loud")
    with pytest.raises(ValueError, match=r"unknown log format 'xml'; use 'text' or 'json'"):
        setup_logging("info", "xml")  # type: ignore[arg-type]


class restored_logging:
    """Puts the root logger's handlers and the levels back, whatever a test did."""

    def __enter__(self) -> None:
        root = logging.getLogger()
        self.saved = (list(root.handlers), root.level, logging.getLogger("flowkit").level)

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        handlers, level, flowkit_level = self.saved
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("flowkit").setLevel(flowkit_level)


# -- the command ---------------------------------------------------------------------------


APP_LOGGING_ON_IMPORT = """
import logging
from tests.cli_app import orders

logging.getLogger("flowkit.service.demo").debug(
    "imported", extra={"flowkit_correlation_id": "o-6", "flowkit_attempt": 1}
)
logging.getLogger("flowkit.service.demo").info("password in redis://:hunter2@cache/0")
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``logs_on_import:orders``: tests/cli_app.py's orchestrator, with one
    workflow in its database, in a module that logs when imported."""
    monkeypatch.setenv("FLOWKIT_CLI_DB", str(tmp_path / "cli.db"))
    monkeypatch.delitem(sys.modules, "tests.cli_app", raising=False)
    from tests.cli_app import Ping, orders

    async def run_one() -> None:
        async with orders:
            await orders.run(Ping(n=1), workflow_id="w-1")

    anyio.run(run_one)
    sys.modules.pop("tests.cli_app")
    (tmp_path / "logs_on_import.py").write_text(APP_LOGGING_ON_IMPORT)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "logs_on_import", raising=False)
    return "logs_on_import:orders"


def test_the_command_logs_json_and_leaves_logging_as_it_was(
    app: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("flowkit").level)
    args = ["--log-level", "debug", "--log-format", "json", "workflows", "list"]
    assert main([*args, app]) == 0
    assert (list(root.handlers), root.level, logging.getLogger("flowkit").level) == before
    captured = capsys.readouterr()
    assert "w-1  COMPLETED" in captured.out
    first, second = (json.loads(line) for line in captured.err.splitlines())
    assert first["level"] == "DEBUG" and first["logger"] == "flowkit.service.demo"
    assert first["message"] == "imported"
    assert first["flowkit_correlation_id"] == "o-6" and first["flowkit_attempt"] == 1
    assert second["message"] == "password in redis://:***@cache/0"


def test_the_command_logs_warnings_only_by_default_and_text_on_request(
    app: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["workflows", "list", app]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.delitem(sys.modules, "logs_on_import")
    assert main(["--log-level", "INFO", "workflows", "list", app]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" INFO     flowkit.service.demo  password in redis://:***@cache/0")


def test_the_command_refuses_a_bad_level_or_format(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--log-level", "loud", "workflows", "list", "tests.cli_app:orders"]) == 2
    assert "unknown log level 'loud'" in capsys.readouterr().err
    assert main(["--log-format", "xml", "workflows", "list", "tests.cli_app:orders"]) == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
    monkeypatch.setenv("FLOWKIT_LOG_FORMAT", "xml")
    assert main(["workflows", "list", "tests.cli_app:orders"]) == 2
    assert "FLOWKIT_LOG_FORMAT: unknown log format 'xml'" in capsys.readouterr().err
    monkeypatch.delenv("FLOWKIT_LOG_FORMAT")
    monkeypatch.setenv("FLOWKIT_LOG_LEVEL", "loud")
    assert main(["workflows", "list", "tests.cli_app:orders"]) == 2
    assert "FLOWKIT_LOG_LEVEL: unknown log level 'loud'" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("how", ["options", "environment"])
def test_a_worker_logs_each_handling_as_json_lines(tmp_path: Path, how: str) -> None:
    options = ["--log-level", "debug", "--log-format", "json"] if how == "options" else []
    env = {**os.environ, "FLOWKIT_NAP": "0.05"}
    if how == "environment":
        env.update(FLOWKIT_LOG_LEVEL="DEBUG", FLOWKIT_LOG_FORMAT="json")
    err = tmp_path / "stderr.txt"
    with err.open("w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowkit", *options, "worker", "tests.cli_worker_app:bus"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err_file,
            text=True,
        )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while '"flowkit_action": "handled"' not in err.read_text():
            assert time.monotonic() < deadline, err.read_text()
            assert proc.poll() is None, err.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err.read_text()
    assert "napping 0.05s" in out and out.endswith("flowkit worker stopped\n")
    records = [json.loads(line) for line in err.read_text().splitlines()]
    actions = [r.get("flowkit_action") for r in records if r["logger"] == "flowkit.bus"]
    assert actions == ["published", "received", "handled"]
    handled = next(r for r in records if r.get("flowkit_action") == "handled")
    assert handled["level"] == "DEBUG"
    assert handled["flowkit_consumer"] == "napper:nap"
    assert handled["flowkit_attempt"] == 1 and handled["flowkit_duration_ms"] >= 50
    assert handled["flowkit_message_id"] == handled["flowkit_correlation_id"]
    assert set(handled) >= {"time", "level", "logger", "message"}
