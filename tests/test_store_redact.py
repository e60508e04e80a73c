"""No secret of a URL reaches an error, a repr or a log."""

from __future__ import annotations

import os
import re
import traceback
from typing import TYPE_CHECKING

import pytest

from flowkit._redact import MASK, redact_url
from flowkit.stores import SQLiteStore

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://user:s3cr3t@host/db", "postgresql://user:***@host/db"),
        (
            "postgresql://user:s3cr3t@host:5432/db?sslmode=require",
            "postgresql://user:***@host:5432/db?sslmode=require",
        ),
        ("redis://:s3cr3t@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("amqp://guest:guest@rabbit/%2F", "amqp://guest:***@rabbit/%2F"),
        ("nats://user:p%40ss@nats:4222", "nats://user:***@nats:4222"),
        ("nats://s3cr3t-token@nats:4222", "nats://***@nats:4222"),
        ("tls://s3cr3t-token@nats:4222", "tls://***@nats:4222"),
        ("redis://user@localhost:6379/0", "redis://user@localhost:6379/0"),
        ("redis://:pa/ss@host/0", "redis://:***@host/0"),
        ("redis://:pa?ss#x@host/0", "redis://:***@host/0"),
        (
            "kafka://broker:9092?password=s3cr3t&acks=all",
            "kafka://broker:9092?password=***&acks=all",
        ),
        (
            "https://api.example/v1?api_key=s3cr3t&Token=abc&page=2",
            "https://api.example/v1?api_key=***&Token=***&page=2",
        ),
        (
            "https://b.s3.example/o?X-Amz-Signature=abc&sig=def&x=1",
            "https://b.s3.example/o?X-Amz-Signature=***&sig=***&x=1",
        ),
        (
            "mongodb://u:p@h/db?authSource=admin&secret_key=k",
            "mongodb://u:***@h/db?authSource=admin&secret_key=***",
        ),
        ("amqp://guest@rabbit/", "amqp://guest@rabbit/"),
        ("http://host/path", "http://host/path"),
        ("sqlite:////tmp/flowkit.db", "sqlite:////tmp/flowkit.db"),
        ("/tmp/a:b@c/flowkit.db", "/tmp/a:b@c/flowkit.db"),
        ("/tmp/x.db?password=plain-path", "/tmp/x.db?password=plain-path"),
        ("relative/file.db", "relative/file.db"),
        ("", ""),
        (
            "cannot connect to 'redis://:s3cr3t@h:6379/0' (refused); "
            "retrying postgresql://u:s3cr3t@db/x",
            "cannot connect to 'redis://:***@h:6379/0' (refused); retrying postgresql://u:***@db/x",
        ),
    ],
)
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected
    assert redact_url(expected) == expected  # redacting twice changes nothing more


def test_redact_url_masks_with_the_mask() -> None:
    assert MASK == "***"
    assert SECRET not in redact_url(f"redis://default:{SECRET}@cache:6379?token={SECRET}")


# -- SQLiteStore refuses URLs of other databases, without echoing their secrets ------------


def _everything_shown(exc: BaseException) -> str:
    """Every text an error shows: its message, repr, and formatted traceback with causes."""
    return "\n".join(
        [str(exc), repr(exc), "".join(traceback.format_exception(exc)), *map(str, exc.args)]
    )


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        (f"postgresql://user:{SECRET}@host/db", "postgresql"),
        (f"postgres://user:{SECRET}@host:5432/db?sslmode=require", "postgres"),
        (f"redis://:{SECRET}@localhost:6379/0", "redis"),
        (f"mysql+pymysql://root:{SECRET}@db/app", "mysql+pymysql"),
        (f"file:///tmp/x.db?token={SECRET}", "file"),
        (f"HTTPS://u:{SECRET}@example.com/x.db", "https"),
    ],
)
def test_sqlite_store_refuses_other_urls_naming_the_scheme(url: str, scheme: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"not a '{scheme}' URL")) as caught:
        SQLiteStore(url)
    shown = _everything_shown(caught.value)
    assert SECRET not in shown
    assert "sqlite:///" in str(caught.value)  # says what it takes
    assert "file path" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"sqlite://user:{SECRET}@host/x.db", "no host or user"),
        (f"sqlite:///x.db?password={SECRET}", "no query or fragment"),
        (f"sqlite:///x.db#{SECRET}", "no query or fragment"),
    ],
)
def test_sqlite_store_refuses_sqlite_urls_it_cannot_take(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        SQLiteStore(url)
    assert SECRET not in _everything_shown(caught.value)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", ":memory:"])
async def test_sqlite_store_memory_urls(url: str) -> None:
    store = SQLiteStore(url)
    assert store.path == ":memory:"
    async with store:
        assert await store.list_workflows() == []


async def test_sqlite_store_takes_sqlite_urls_like_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = SQLiteStore(f"sqlite:///{tmp_path}/abs.db")  # sqlite:////tmp/.../abs.db
    assert absolute.path == str(tmp_path / "abs.db")
    relative = SQLiteStore("sqlite:///rel.db")
    assert relative.path == os.path.join(str(tmp_path), "rel.db")
    async with absolute, relative:
        pass
    assert (tmp_path / "abs.db").exists()
    assert (tmp_path / "rel.db").exists()
