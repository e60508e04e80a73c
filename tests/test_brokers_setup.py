"""The broker test setup: tests/brokers.py and scripts/brokers.sh."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import pytest

from .brokers import REQUIRE_BROKERS, broker_url
from .brokers import postgres_url as postgres_url
from .brokers import redis_url as redis_url

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "brokers.sh"
VAR = "FLOWKIT_EXAMPLE_URL"


def test_broker_url_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "redis://127.0.0.1:7000/0")
    monkeypatch.setenv(REQUIRE_BROKERS, "1")
    assert broker_url("Example", VAR) == "redis://127.0.0.1:7000/0"


@pytest.mark.parametrize("required", [None, "0", ""])
@pytest.mark.parametrize("value", [None, "", "  "])
def test_a_missing_url_skips_unless_brokers_are_required(
    monkeypatch: pytest.MonkeyPatch, required: str | None, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, value)
    if required is None:
        monkeypatch.delenv(REQUIRE_BROKERS, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_BROKERS, required)
    with pytest.raises(pytest.skip.Exception) as info:
        broker_url("Example", VAR)
    message = str(info.value)
    assert f"set {VAR}" in message
    assert "make test-brokers" in message


@pytest.mark.parametrize("value", [None, ""])
def test_a_missing_url_fails_when_brokers_are_required(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, value)
    monkeypatch.setenv(REQUIRE_BROKERS, "1")
    with pytest.raises(pytest.fail.Exception) as info:
        broker_url("Example", VAR)
    message = str(info.value)
    assert f"{VAR} is missing" in message
    assert f"{REQUIRE_BROKERS}=1" in message


def resp_command(*args: str) -> bytes:
    """One command in RESP, the Redis protocol."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    return data


def redis_ping(url: str) -> bytes:
    """PING the server at ``url`` over a plain socket, without a Redis client."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 5) as s:
        s.settimeout(5)
        if parts.password is not None:
            auth = [unquote(parts.password)]
            if parts.username:
                auth.insert(0, unquote(parts.username))
            s.sendall(resp_command("AUTH", *auth))
            assert read_line(s) == b"+OK\r\n"
        s.sendall(b"PING\r\n")
        return read_line(s)


def test_the_redis_server_answers_ping(redis_url: str) -> None:
    assert redis_ping(redis_url) == b"+PONG\r\n"


SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
"""A PostgreSQL SSLRequest: length 8, code 80877103."""


def postgres_ssl_answer(url: str) -> bytes:
    """Send an SSLRequest to the server at ``url`` over a plain socket, without a driver.

    A PostgreSQL server answers with one byte: ``N`` (no TLS) or ``S`` (TLS follows).
    """
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 5) as s:
        s.settimeout(5)
        s.sendall(SSL_REQUEST)
        return s.recv(1)


def test_the_postgres_server_answers_an_ssl_request(postgres_url: str) -> None:
    assert urlsplit(postgres_url).scheme == "postgresql"
    assert postgres_ssl_answer(postgres_url) in (b"N", b"S")


def brokers_sh(state: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLOWKIT_BROKERS_DIR": str(state)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def process_exists(pid: int) -> bool:
    """Running, not merely waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_reuse_and_stop(
    state: Path, name: str, url_of: Callable[[int], str], answers: Callable[[str], bool]
) -> None:
    """Start server ``name``, check its record, URL and answer, start it again, stop it."""
    var = f"FLOWKIT_{name.upper()}_URL"
    record_file = state / f"{name}.env"
    brokers_sh(state, "start", name)
    try:
        record = dict(line.split("=", 1) for line in record_file.read_text().splitlines())
        pid, port, data = int(record["PID"]), int(record["PORT"]), Path(record["DIR"])
        assert process_exists(pid)
        assert data.is_dir()
        url = url_of(port)
        assert brokers_sh(state, "env").stdout == f"export {var}={url}\n"
        assert answers(url)

        again = brokers_sh(state, "start", name)
        assert "already running" in again.stderr
        assert record_file.read_text().startswith(f"PID={pid}\n")
    finally:
        brokers_sh(state, "stop")
    assert not process_exists(pid)
    assert not data.exists()
    assert not record_file.exists()
    assert brokers_sh(state, "env").stdout == ""
    missing = brokers_sh(state, "env", name, check=False)
    assert missing.returncode == 1
    assert "not running" in missing.stderr


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_the_script_starts_reuses_and_stops_a_redis_server(tmp_path: Path) -> None:
    start_reuse_and_stop(
        tmp_path / "state",
        "redis",
        lambda port: f"redis://127.0.0.1:{port}/0",
        lambda url: redis_ping(url) == b"+PONG\r\n",
    )


@pytest.mark.skipif(
    not glob.glob("/usr/lib/postgresql/*/bin/initdb"), reason="PostgreSQL is not installed"
)
def test_the_script_starts_reuses_and_stops_a_postgres_server(tmp_path: Path) -> None:
    start_reuse_and_stop(
        tmp_path / "state",
        "postgres",
        lambda port: f"postgresql://postgres@127.0.0.1:{port}/postgres",
        lambda url: postgres_ssl_answer(url) in (b"N", b"S"),
    )


def test_the_script_refuses_an_unknown_server(tmp_path: Path) -> None:
    result = brokers_sh(tmp_path, "start", "no-such-broker", check=False)
    assert result.returncode == 1
    assert "unknown server 'no-such-broker'" in result.stderr
