"""Transports and stores opened from URLs (the command line's --transport and
--store are tested with the other command-line tests)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest

from flowkit import MissingDependency
from flowkit.stores import MemoryStore, SQLiteStore
from flowkit.stores import from_url as store_from_url
from flowkit.transports import InMemoryTransport
from flowkit.transports import from_url as transport_from_url

if TYPE_CHECKING:
    from pathlib import Path


def test_a_transport_from_its_url() -> None:
    assert isinstance(transport_from_url("memory://"), InMemoryTransport)
    assert transport_from_url("memory://", max_buffer=5).max_buffer == 5  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "url", ["kafka2://u:s3cret@host", "postgresql://user:s3cret@db/x", "no scheme at all"]
)
def test_an_unknown_transport_url_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError, match="flowkit knows memory://, redis://") as caught:
        transport_from_url(url)
    assert "s3cret" not in str(caught.value)


def test_a_missing_client_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if redis-py were not installed, and the Redis transport never imported.
    for name in [n for n in sys.modules if n == "redis" or n.startswith("redis.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "redis", None)
    for name in [n for n in sys.modules if n.startswith("flowkit.transports._redis")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(MissingDependency, match=r"pip install 'flowkit\[redis\]'"):
        transport_from_url("redis://localhost:6379/0")


def test_a_store_from_its_url(tmp_path: Path) -> None:
    assert isinstance(store_from_url("memory://"), MemoryStore)
    store = store_from_url(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(store, SQLiteStore) and store.path == f"{tmp_path}/x.db"
    with pytest.raises(ValueError, match="flowkit knows sqlite://, memory://") as caught:
        store_from_url("mysql://user:s3cret@db/x")
    assert "s3cret" not in str(caught.value)
