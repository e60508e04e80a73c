from __future__ import annotations

import logging
import re
import traceback
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

# A URL whose user info shows a password (``user:pw@``, not ``user:***@`` or any
# other run of asterisks), or a secret query parameter that is not masked.
_VISIBLE_SECRET = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:'\"]*:(?!\*+@)[^\s@/'\"]+@"
    r"|[?&](?:password|passwd|token|secret|sasl_password)=(?!\*+(?:[&\s'\"]|$))[^&\s'\"]+",
    re.IGNORECASE,
)


class _SecretWatch(logging.Handler):
    """Keeps the records that show a secret: flowkit's at every level, the client
    libraries' at the levels they are let through."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name
        if name.startswith(("flowkit.service.", "tests.")):
            return  # a service's own logger, or a test's: their records are the user's
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += "".join(traceback.format_exception(record.exc_info[1]))
        if _VISIBLE_SECRET.search(text):
            self.found.append(f"{name} {record.levelname}: {text[:300]}")


@pytest.fixture(autouse=True)
def _no_secret_in_logs() -> Iterator[None]:
    """Whatever a test does, no log record shows a password or a secret query
    parameter: every record of flowkit's loggers, DEBUG included, and every record
    the client libraries' loggers let through."""
    watch = _SecretWatch()
    root = logging.getLogger()
    flowkit = logging.getLogger("flowkit")
    level = flowkit.level
    if level == logging.NOTSET or level > logging.DEBUG:
        flowkit.setLevel(logging.DEBUG)
    root.addHandler(watch)
    try:
        yield
    finally:
        root.removeHandler(watch)
        flowkit.setLevel(level)
    assert not watch.found, "a secret was logged:\n" + "\n".join(watch.found)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """asyncpg runs on asyncio only: a test run with a PostgreSQL store (a
    ``postgres`` parameter) is run on asyncio, not on trio."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("anyio_backend") == "trio" and "postgres" in params.values():
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
