"""The dashboard in a real headless browser: Debian's chromium driven by
Playwright, against ``flowkit ui`` run as a process on the e-commerce demo's
records and a Redis broker.

Screenshots go to ``$FLOWKIT_ARTIFACTS`` when set (the docs' pictures are made
with ``FLOWKIT_ARTIFACTS=docs/images``), else to the test's temporary directory;
the test prints where.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from examples.ecommerce.choreographed import run_choreography
from examples.ecommerce.orchestrated import run_orchestration
from flowkit.stores import SQLiteStore
from flowkit.transports import InMemoryTransport, from_url

from .brokers import REQUIRE_BROKERS
from .brokers import redis_url as redis_url

if TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.sync_api import Page

BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        message = "needs Debian's chromium (apt-get install chromium)"
        if os.environ.get(REQUIRE_BROKERS) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _seed(db: Path, transport_url: str) -> None:
    """The demo's records, and a dead letter of the labels service on Redis."""
    from tests import ui_app

    await run_choreography(db)
    await run_orchestration(db)
    bus = ui_app.bus
    bus.use(transport=from_url(transport_url), store=SQLiteStore(db))
    async with bus:
        await bus.publish(ui_app.LabelRequested(order_id="o-7"))
        with anyio.fail_after(20):
            while not await bus.dead_letters():
                await anyio.sleep(0.1)
    bus.use(transport=InMemoryTransport())


def _started(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("FLOWKIT_ARTIFACTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {where}")
    return where


@pytest.fixture
def dashboard(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, Path]]:
    """``flowkit ui`` and a labels worker, both on the seeded store and Redis; the
    dashboard's URL and the file that fixes the labels handler."""
    chromium = _chromium()
    del chromium
    db = tmp_path / "ecommerce.db"
    fixed = tmp_path / "fixed"
    separator = "&" if "?" in redis_url else "?"
    transport = f"{redis_url}{separator}prefix=flowkit-ui-{uuid.uuid4().hex[:8]}"
    os.environ["FLOWKIT_UI_FIXED"] = str(fixed)
    anyio.run(_seed, db, transport)
    env = {**os.environ, "FLOWKIT_UI_FIXED": str(fixed), "PYTHONPATH": os.getcwd()}
    port = _free_port()
    flowkit = [sys.executable, "-m", "flowkit"]
    store = ["--store", f"sqlite:///{db}", "--transport", transport]
    worker = _started(
        [*flowkit, "worker", "tests.ui_app:bus", *store], env, tmp_path / "worker.log"
    )
    ui = _started(
        [*flowkit, "ui", *store, "--port", str(port), "--module", "examples.ecommerce.services"],
        env,
        tmp_path / "ui.log",
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if ui.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "flowkit ui did not start: " + (tmp_path / "ui.log").read_text()
                    ) from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", fixed
    finally:
        for process in (ui, worker):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def page() -> Iterator[Page]:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("dialog", lambda dialog: dialog.accept())  # the confirmations
            yield page
        finally:
            browser.close()


def test_the_dashboard_in_a_browser(
    dashboard: tuple[str, Path], page: Page, artifacts: Path
) -> None:
    from playwright.sync_api import expect

    url, fixed = dashboard

    # the workflows list of the e-commerce demo
    page.goto(f"{url}/workflows")
    for order in ("o-1", "o-2", "o-3"):
        expect(page.locator(f'#workflows a[href="/workflows/{order}"]')).to_be_visible()
    page.screenshot(path=artifacts / "dashboard-workflows.png", full_page=True)

    # o-2 and its compensations, in order
    page.click('#workflows a[href="/workflows/o-2"]')
    expect(page.locator("#status")).to_have_text("COMPENSATED")
    compensated = page.locator('#timeline li[data-event="step_compensated"] .step')
    expect(compensated).to_have_text(["prepare_shipment", "charge_payment", "reserve_stock"])
    expect(page.locator("#compensated")).to_have_text(
        "prepare_shipment → charge_payment → reserve_stock"
    )
    page.screenshot(path=artifacts / "dashboard-workflow.png", full_page=True)

    # a dead letter replayed, once its cause is fixed, and handled
    page.goto(f"{url}/dead-letters")
    group = page.locator('section.group[data-consumer="labels:print"]')
    expect(group).to_contain_text("the label printer is offline")
    page.screenshot(path=artifacts / "dashboard-dead-letters.png", full_page=True)
    fixed.touch()
    group.locator("button[data-one=replay]").click()
    expect(page.locator("#notice")).to_have_text("replayed 1 dead letter(s)")
    expect(page.locator('section.group[data-consumer="labels:print"]')).to_have_count(0)
    handled = Path(f"{fixed}.handled")
    deadline = time.monotonic() + 20
    while not (handled.exists() and handled.read_text() == "o-7\n"):
        assert time.monotonic() < deadline, "the replayed dead letter was not handled"
        time.sleep(0.1)

    # a flow searched by its order id
    page.click('nav a[href="/flows"]')
    page.wait_for_url(f"{url}/flows")
    page.fill('input[name="q"]', "o-2")
    page.press('input[name="q"]', "Enter")
    expect(page.locator("section.flow").first).to_contain_text("OrderPlaced")
    expect(page.locator(".tree li.failure").first).to_contain_text("notification:confirm-order")
    page.screenshot(path=artifacts / "dashboard-flow.png", full_page=True)

    page.goto(f"{url}/graph")
    expect(page.locator("h1")).to_have_text("Flow graph")
    # the graph drawn: a box per handler, in a box that scrolls sideways
    picture = page.locator("#graph svg.flow-graph")
    expect(picture).to_be_visible()
    expect(picture.locator('g.node.handler[data-id="hd__seller__prepare"]')).to_contain_text(
        "prepare"
    )
    page.locator("#graph").screenshot(path=artifacts / "dashboard-graph.png")
