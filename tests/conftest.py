from __future__ import annotations

import logging
import re
import traceback
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

# A URL whose user info shows a password (``user:pw@``, not ``user:***@``), or a
# secret query parameter that is not masked.
_VISIBLE_SECRET = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:'\"]*:(?!\*\*\*@)[^\s@/'\"]+@"
    r"|[?&](?:password|passwd|token|secret|sasl_password)=(?!\*\*\*)[^&\s'\"]+",
    re.IGNORECASE,
)


class _SecretWatch(logging.Handler):
    """Keeps the records of flowkit's own loggers that show a secret."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name
        if not (name == "flowkit" or name.startswith("flowkit.")) or name.startswith(
            "flowkit.service."  # a service's own logger: its records are the user's
        ):
            return
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += "".join(traceback.format_exception(record.exc_info[1]))
        if _VISIBLE_SECRET.search(text):
            self.found.append(f"{name} {record.levelname}: {text[:300]}")


@pytest.fixture(autouse=True)
def _no_secret_in_flowkit_logs() -> Iterator[None]:
    """Whatever a test does, no record of flowkit's loggers shows a password or a
    secret query parameter, at any level the test lets through."""
    watch = _SecretWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        yield
    finally:
        root.removeHandler(watch)
    assert not watch.found, "flowkit logged a secret:\n" + "\n".join(watch.found)


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
