"""The dashboard over HTTP, in-process, on a store seeded by the e-commerce demo."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from examples.ecommerce.choreographed import run_choreography
from examples.ecommerce.orchestrated import run_orchestration
from flowkit import Choreography, Event, Retry, Signing
from flowkit.cli import main
from flowkit.stores import DeadLetter, SQLiteStore
from flowkit.transports import InMemoryTransport
from flowkit.ui import create_app

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

TOKEN = "correct horse battery"


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file holding both e-commerce demos' records."""
    path = tmp_path_factory.mktemp("ui") / "ecommerce.db"

    async def seed() -> None:
        await run_choreography(path)
        await run_orchestration(path)

    anyio.run(seed)
    return path


async def _client(app: object) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):  # type: ignore[attr-defined]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app),  # type: ignore[arg-type]
            base_url="http://127.0.0.1",
        ) as client:
            yield client


@pytest.fixture
async def client(demo_db: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(create_app(SQLiteStore(demo_db))):
        yield c


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match is not None
    return match.group(1)


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


async def test_the_workflow_list_shows_the_demo_orders(client: httpx.AsyncClient) -> None:
    page = await client.get("/workflows")
    assert page.status_code == 200
    for order in ("o-1", "o-2", "o-3"):
        assert f'href="/workflows/{order}"' in page.text
    # The counts by orchestrator and status: o-1 completed, o-2 and o-3 compensated.
    assert 'href="/workflows?name=place-order&amp;status=COMPLETED">1</a>' in page.text
    assert 'href="/workflows?name=place-order&amp;status=COMPENSATED">2</a>' in page.text
    failed = await client.get("/workflows", params={"status": "COMPENSATED"})
    assert 'href="/workflows/o-2"' in failed.text and 'href="/workflows/o-1"' not in failed.text
    bad = await client.get("/workflows", params={"status": "NOPE"})
    assert bad.status_code == 400 and "unknown status" in bad.text


async def test_the_list_is_paginated_by_cursor(demo_db: Path) -> None:
    from flowkit.ui import _workflows

    store = SQLiteStore(demo_db)
    async with store:
        rows, cursor = await _workflows.list_page(
            store, status=None, name=None, after=None, limit=2
        )
        assert [r.id for r in rows] == ["o-1", "o-2"] and cursor is not None
        rest, end = await _workflows.list_page(store, status=None, name=None, after=cursor, limit=2)
        assert [r.id for r in rest] == ["o-3"] and end is None


async def test_a_workflow_page_shows_its_compensations_in_order(client: httpx.AsyncClient) -> None:
    page = await client.get("/workflows/o-2")
    assert page.status_code == 200
    text = _text(page.text)
    assert "COMPENSATED" in text
    assert "prepare_shipment → charge_payment → reserve_stock" in text
    events = re.findall(r'data-event="(\w+)" data-step="(\w+)"', page.text)
    compensated = [step for event, step in events if event == "step_compensated"]
    assert compensated == ["prepare_shipment", "charge_payment", "reserve_stock"]
    assert "partner-api is unavailable" in text
    assert '"order_id": "o-2"' in page.text.replace("&#34;", '"')
    missing = await client.get("/workflows/nope")
    assert missing.status_code == 404


async def test_flows_are_found_by_order_id(client: httpx.AsyncClient) -> None:
    page = await client.get("/flows", params={"q": "o-2"})
    text = _text(page.text)
    assert "OrderPlaced" in text and "notification:confirm-order" in text
    assert 'class="handling failure"' in page.text  # the dead-lettered handling stands out
    assert "sequenceDiagram" in page.text
    nothing = await client.get("/flows", params={"q": "no-such-order"})
    assert "No flow in the trace" in nothing.text


async def test_dead_letters_are_grouped_with_reason_and_body(client: httpx.AsyncClient) -> None:
    page = await client.get("/dead-letters")
    text = _text(page.text)
    assert "notification:confirm-order" in text and "not an address" in text
    assert "ada" not in text or "&#34;user_email&#34;" in page.text  # the body is shown
    assert "Replaying needs the broker" in text


async def test_changes_need_the_csrf_token(client: httpx.AsyncClient) -> None:
    refused = await client.post("/dead-letters/delete", data={"id": "x"})
    assert refused.status_code == 403
    page = await client.get("/dead-letters")
    replay = await client.post(
        "/dead-letters/replay", data={"id": "x"}, headers={"x-csrf-token": _csrf(page.text)}
    )
    assert replay.status_code == 409 and "--transport" in replay.json()["message"]


async def test_delete_removes_a_dead_letter(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "letters.db")
    async with store:
        for n in (1, 2):
            await store.add_dead_letter(
                DeadLetter(
                    id=f"d-{n}",
                    consumer="billing:charge",
                    topic="OrderPlaced",
                    body=b'{"card": "4242"}',
                    headers={},
                    error_type="ValueError",
                    error="ValueError: bad card",
                    attempts=3,
                    failed_at=datetime.now(UTC),
                )
            )
    async for client in _client(create_app(SQLiteStore(tmp_path / "letters.db"))):
        page = await client.get("/dead-letters")
        assert page.text.count('data-letter="d-') == 2 and "bad card" in page.text
        csrf = {"x-csrf-token": _csrf(page.text)}
        done = await client.post("/dead-letters/delete", data={"id": "d-1"}, headers=csrf)
        assert done.json() == {"ok": True, "message": "deleted 1 dead letter(s)"}
        again = await client.post("/dead-letters/delete", data={"id": "d-1"}, headers=csrf)
        assert again.status_code == 404
        page = await client.get("/dead-letters")
        assert 'data-letter="d-1"' not in page.text and 'data-letter="d-2"' in page.text


async def test_cancel_asks_the_running_workflow_only(client: httpx.AsyncClient) -> None:
    page = await client.get("/workflows/o-2")
    csrf = {"x-csrf-token": _csrf(page.text)}
    done = await client.post("/workflows/o-2/action", data={"action": "cancel"}, headers=csrf)
    assert done.status_code == 409 and "nothing to cancel" in done.json()["message"]
    retry = await client.post(
        "/workflows/o-2/action", data={"action": "retry_forward"}, headers=csrf
    )
    assert retry.status_code == 409 and "--module" in retry.json()["message"]


async def test_a_token_is_asked_for(demo_db: Path) -> None:
    async for client in _client(create_app(SQLiteStore(demo_db), token=TOKEN)):
        page = await client.get("/workflows/o-2")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        wrong = await client.post("/login", data={"token": "not it at all"})
        assert wrong.status_code == 401 and "That is not the token" in wrong.text
        post = await client.post("/dead-letters/delete", data={"id": "x"})
        assert post.status_code == 401
        login = await client.post("/login?next=/workflows/o-2", data={"token": TOKEN})
        assert login.status_code == 303 and login.headers["location"] == "/workflows/o-2"
        page = await client.get("/workflows/o-2")
        assert page.status_code == 200 and "COMPENSATED" in page.text


def test_a_short_token_is_refused(demo_db: Path) -> None:
    with pytest.raises(ValueError, match="at least 8"):
        create_app(SQLiteStore(demo_db), token="short")


async def test_the_graph_needs_a_module(client: httpx.AsyncClient, demo_db: Path) -> None:
    assert (await client.get("/graph")).status_code == 404
    async for graphed in _client(
        create_app(SQLiteStore(demo_db), module="examples.ecommerce.services:bus")
    ):
        page = await graphed.get("/graph")
        assert page.status_code == 200
        assert "notification" in page.text and "flowchart" in page.text
        # the picture, inline, before the tables
        assert '<svg xmlns="http://www.w3.org/2000/svg" class="flow-graph"' in page.text
        assert page.text.index("<svg") < page.text.index("<table")
        assert 'data-id="hd__notification__confirm_2d_order"' in page.text


def test_the_command_refuses_another_host_without_a_token(
    demo_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flowkit.cli import main

    assert main(["ui", "--store", f"sqlite:///{demo_db}", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0 exposes the dashboard" in err and "--token" in err
    assert main(["ui", "--store", f"sqlite:///{demo_db}.missing"]) == 2
    assert "no such file" in capsys.readouterr().err


async def test_retry_buttons_run_the_workflow_again(tmp_path: Path) -> None:
    from tests import ui_retry_app as app

    path = tmp_path / "retry.db"
    app.CARRIER["up"] = app.REFUNDS["up"] = app.CARRIER["slow"] = False
    async with app.ShipSaga(SQLiteStore(path), recover=False) as ship:
        assert (await ship.run(app.Order(n=1), workflow_id="s-1")).status.value == "FAILED"
    async with app.RefundSaga(SQLiteStore(path), recover=False) as refund:
        assert (await refund.run(app.Order(n=2), workflow_id="r-1")).status.value == "FAILED"
    app.CARRIER["up"] = app.REFUNDS["up"] = True
    ui = create_app(SQLiteStore(path), module="tests.ui_retry_app")
    async for client in _client(ui):
        page = await client.get("/workflows/s-1")
        csrf = {"x-csrf-token": _csrf(page.text)}
        wrong = await client.post(
            "/workflows/s-1/action", data={"action": "retry_compensation"}, headers=csrf
        )
        assert wrong.status_code == 409
        forward = await client.post(
            "/workflows/s-1/action", data={"action": "retry_forward"}, headers=csrf
        )
        assert forward.status_code == 200 and "s-1 is COMPLETED" in forward.json()["message"]
        back = await client.post(
            "/workflows/r-1/action", data={"action": "retry_compensation"}, headers=csrf
        )
        assert back.status_code == 200 and "r-1 is COMPENSATED" in back.json()["message"]
        shown = _text((await client.get("/workflows/s-1")).text)
        assert "COMPLETED" in shown


async def test_a_retry_that_outlasts_its_wait_is_left_to_the_services(tmp_path: Path) -> None:
    from tests import ui_retry_app as app

    path = tmp_path / "slow.db"
    app.CARRIER["up"] = app.CARRIER["slow"] = False
    async with app.ShipSaga(SQLiteStore(path), recover=False) as ship:
        assert (await ship.run(app.Order(n=1), workflow_id="s-2")).status.value == "FAILED"
    app.CARRIER["up"] = app.CARRIER["slow"] = True
    try:
        ui = create_app(SQLiteStore(path), module="tests.ui_retry_app", retry_wait=0.5)
        async for client in _client(ui):
            page = await client.get("/workflows/s-2")
            csrf = {"x-csrf-token": _csrf(page.text)}
            with anyio.fail_after(10):
                reply = await client.post(
                    "/workflows/s-2/action", data={"action": "retry_forward"}, headers=csrf
                )
            assert reply.status_code == 200
            assert "still running after 0.5s" in reply.json()["message"]
    finally:
        app.CARRIER["slow"] = False
    async with SQLiteStore(path) as store:
        left = await store.load_workflow("s-2")
    # Stopped here; a service's orchestrator takes it over when the lease runs out.
    assert left.status == "RUNNING" and left.lease_until is not None


def test_retry_wait_must_be_positive(demo_db: Path) -> None:
    with pytest.raises(ValueError, match="retry_wait"):
        create_app(SQLiteStore(demo_db), retry_wait=0)


# -- waiting workflows -------------------------------------------------------------------

WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"


async def _park(path: Path) -> None:
    """w-1 waits up to a day for an Approval signal, w-open with no time limit,
    w-done completed after its signal."""
    from tests import cli_wait_app as app

    async with app.ApprovalSaga(SQLiteStore(path), recover=False) as approvals:
        await approvals.start(app.Order(n=1), workflow_id="w-1")
        await approvals.start(app.Order(n=2), workflow_id="w-done")
    async with app.OpenApprovalSaga(SQLiteStore(path), recover=False) as open_approvals:
        await open_approvals.start(app.Order(n=3), workflow_id="w-open")
    async with app.ApprovalSaga(SQLiteStore(path), recover=False) as approvals:
        await approvals.signal("w-done", app.Approval(by="ada"))
        assert (await approvals.resume())[0].status.value == "COMPLETED"


async def test_waiting_workflows_are_counted_filtered_and_say_what_they_wait_for(
    tmp_path: Path,
) -> None:
    path = tmp_path / "waits.db"
    await _park(path)
    async for client in _client(create_app(SQLiteStore(path))):
        page = await client.get("/workflows")
        assert page.status_code == 200
        assert "<th>WAITING</th>" in page.text
        assert 'href="/workflows?name=ApprovalSaga&amp;status=WAITING">1</a>' in page.text
        assert 'href="/workflows?name=OpenApprovalSaga&amp;status=WAITING">1</a>' in page.text
        assert "<option>WAITING</option>" in page.text
        waiting = await client.get("/workflows", params={"status": "WAITING"})
        text = _text(waiting.text)
        assert 'href="/workflows/w-1"' in waiting.text
        assert 'href="/workflows/w-open"' in waiting.text
        assert 'href="/workflows/w-done"' not in waiting.text
        assert '<span class="badge status-waiting">WAITING</span>' in waiting.text
        assert re.search(rf"waits for signal Approval until {WHEN}", text)
        assert "waits for signal Approval with no time limit" in text


async def test_a_waiting_workflow_page_shows_its_wait_and_offers_cancel(tmp_path: Path) -> None:
    path = tmp_path / "waits.db"
    await _park(path)
    async for client in _client(create_app(SQLiteStore(path))):
        page = await client.get("/workflows/w-1")
        text = _text(page.text)
        assert re.search(rf"waits for signal Approval until {WHEN}", text)
        assert '<span class="badge step-waiting">waiting</span>' in page.text
        assert 'class="tone-wait" data-event="waiting" data-step="wait_for_approval"' in page.text
        assert 'data-field-action="cancel"' in page.text
        done = await client.get("/workflows/w-done")
        assert 'data-field-action="cancel"' not in done.text and 'id="wait"' not in done.text
        assert 'data-event="woken"' in done.text
        csrf = {"x-csrf-token": _csrf(page.text)}
        cancel = await client.post("/workflows/w-1/action", data={"action": "cancel"}, headers=csrf)
        assert cancel.status_code == 200
        assert cancel.json()["message"] == (
            "cancel requested: w-1 is WAITING; the next process running ApprovalSaga wakes "
            "it and compensates it"
        )
        # Due now: the next process running ApprovalSaga takes it up.
        text = _text((await client.get("/workflows/w-1")).text)
        assert "cancel requested" in text
        assert re.search(rf"waits for signal Approval, due since {WHEN}", text)
        refused = await client.post(
            "/workflows/w-done/action", data={"action": "cancel"}, headers=csrf
        )
        assert refused.status_code == 409 and "nothing to cancel" in refused.json()["message"]
    async with SQLiteStore(path) as store:
        record = await store.load_workflow("w-1")
    assert record.status == "WAITING" and record.cancel_requested


@pytest.mark.parametrize(
    ("channel", "key", "what"),
    [
        (None, None, "timer"),
        ("signal:Approval", "w-1", "signal Approval"),
        ("event:SellerAccepted.order_id", "o-1", "event SellerAccepted with order_id o-1"),
        ("event:shop.Accepted.order_id", "o-1", "event shop.Accepted with order_id o-1"),
    ],
)
def test_what_a_record_waits_for(channel: str | None, key: str | None, what: str) -> None:
    from flowkit.ui._workflows import waiting_for

    assert waiting_for(channel, key) == what


# -- signing -------------------------------------------------------------------------------

KEY = bytes(range(32))


class Ping(Event):
    n: int


async def test_a_replay_through_the_dashboard_is_signed_with_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "signed.db"
    signing = Signing(keys={"2026-12": KEY}, active="2026-12")
    transport = InMemoryTransport()
    live = Choreography(transport, store=SQLiteStore(path), signing=signing)
    handled: list[int] = []
    down = True

    @live.on(Ping, service="pong", name="answer", retry=Retry(attempts=1))
    async def answer(event: Ping) -> None:
        if down:
            raise RuntimeError("pong is down")
        handled.append(event.n)

    async def replay(letter_id: str, keys: Signing | None) -> dict[str, object]:
        app = create_app(SQLiteStore(path), transport=transport, signing=keys)
        async for client in _client(app):
            page = await client.get("/dead-letters")
            done = await client.post(
                "/dead-letters/replay",
                data={"id": letter_id},
                headers={"x-csrf-token": _csrf(page.text)},
            )
            answer: dict[str, object] = done.json()
        return answer

    with anyio.fail_after(30):
        async with live:
            await live.publish(Ping(n=1))
            await live.publish(Ping(n=2))
            await live.wait_idle(10)
            letters = {json.loads(x.body)["payload"]["n"]: x.id for x in await live.dead_letters()}
            down = False
            # With the deployment's keys, the replay is signed and handled.
            ok = {"ok": True, "message": "replayed 1 dead letter(s)"}
            assert await replay(letters[1], signing) == ok
            await live.wait_idle(10)
            assert handled == [1]
            # Without them, it keeps the letter's old signature and is refused.
            assert await replay(letters[2], None) == ok
            await live.wait_idle(10)
            assert handled == [1]
            (refused,) = await live.dead_letters()
            assert refused.error_type == "flowkit.SignatureError"


def test_signing_must_be_a_signing(demo_db: Path) -> None:
    with pytest.raises(TypeError, match=r"signing must be a flowkit\.Signing or None, not str"):
        create_app(SQLiteStore(demo_db), signing="2026-12:abc")  # type: ignore[arg-type]


def test_flowkit_ui_passes_the_keys_of_the_environment(
    demo_db: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import flowkit.ui

    given: dict[str, object] = {}

    def fake_create_app(store: object, **options: object) -> object:
        given.update(options)
        raise ValueError("stopped here")

    monkeypatch.setattr(flowkit.ui, "create_app", fake_create_app)
    monkeypatch.setenv("FLOWKIT_SIGNING_KEYS", f"2026-12:{base64.b64encode(KEY).decode()}")
    monkeypatch.setenv("FLOWKIT_SIGNING_REQUIRED", "0")
    assert main(["ui", "--store", f"sqlite:///{demo_db}"]) == 2
    assert "stopped here" in capsys.readouterr().err
    signing = given["signing"]
    assert isinstance(signing, Signing)
    assert signing.key_ids == ("2026-12",) and signing.required is False
    monkeypatch.delenv("FLOWKIT_SIGNING_KEYS")
    assert main(["ui", "--store", f"sqlite:///{demo_db}"]) == 2
    assert given["signing"] is None
    capsys.readouterr()
    # Wrong keys: one line naming the variable, not the key.
    short = base64.b64encode(KEY[:8]).decode()
    monkeypatch.setenv("FLOWKIT_SIGNING_KEYS", f"2026-12:{short}")
    assert main(["ui", "--store", f"sqlite:///{demo_db}"]) == 2
    err = capsys.readouterr().err
    assert "the key of '2026-12' in FLOWKIT_SIGNING_KEYS is too short (8 bytes)" in err
    assert short not in err and len(err.strip().splitlines()) == 1
