"""RabbitMQ for the tests: removing a run's queues and exchanges, and a server of a test's own.

AMQP cannot list queues, so :func:`forget_rabbitmq` asks ``rabbitmqctl`` of the server
``scripts/brokers.sh`` started (its state in ``$FLOWKIT_BROKERS_DIR`` or ``.brokers/``);
for another server it removes nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

_BIN = Path("/usr/lib/rabbitmq/bin")
_ROOT = Path(__file__).resolve().parent.parent


def _ports() -> tuple[int, int, int]:
    found = []
    for _ in range(3):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            found.append(probe.getsockname()[1])
    return found[0], found[1], found[2]


def node_env(directory: Path) -> dict[str, str]:
    """The environment a node in ``directory`` and its ``rabbitmqctl`` share."""
    port, dist, epmd = (directory / "ports").read_text().split()
    return {
        **os.environ,
        "HOME": str(directory),
        "RABBITMQ_NODENAME": "flowkit@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": port,
        "RABBITMQ_DIST_PORT": dist,
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": epmd,
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_PID_FILE": str(directory / "rabbit.pid"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq"),
    }


def ctl(directory: Path, *args: str, timeout: float = 60) -> str:
    """Run ``rabbitmqctl`` against the node in ``directory``; its output."""
    done = subprocess.run(
        [str(_BIN / "rabbitmqctl"), "-n", "flowkit@localhost", *args],
        env=node_env(directory),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return done.stdout


def _scripts_node(url: str) -> Path | None:
    """The data directory of the node scripts/brokers.sh started, if it serves ``url``."""
    state = Path(os.environ.get("FLOWKIT_BROKERS_DIR", _ROOT / ".brokers")) / "rabbitmq.env"
    try:
        lines = dict(line.split("=", 1) for line in state.read_text().split())
    except (OSError, ValueError):
        return None
    if str(urlsplit(url).port) != lines.get("PORT"):
        return None
    return Path(lines["DIR"])


async def forget_rabbitmq(url: str, prefix: str) -> None:
    """Delete the queues and exchanges whose names start with ``prefix:``."""
    import aiormq

    directory = _scripts_node(url)
    if directory is None or not _BIN.joinpath("rabbitmqctl").exists():
        return
    queues = ctl(directory, "list_queues", "name", "--quiet", "--no-table-headers").split()
    exchanges = ctl(directory, "list_exchanges", "name", "--quiet", "--no-table-headers").split()
    mine = f"{prefix}:"
    plain = url.split("?", 1)[0]
    async with aiormq.Connection(plain) as connection:
        channel = await connection.channel()
        for queue in queues:
            if queue.startswith(mine):
                await channel.queue_delete(queue)
        for exchange in exchanges:
            if exchange.startswith(mine):
                await channel.exchange_delete(exchange)


class OwnServer:
    """A RabbitMQ node of a test's own, on free loopback ports, in ``directory``.

    Args:
        directory: its home, data and logs.
        config: more lines of ``rabbitmq.conf`` (TLS listeners, for one).
    """

    def __init__(self, directory: Path, config: str = "") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port, dist, epmd = _ports()
        self.epmd = epmd
        (directory / "ports").write_text(f"{self.port} {dist} {epmd}\n")
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq.conf").write_text(f"loopback_users = none\n{config}")

    @staticmethod
    def available() -> bool:
        return _BIN.joinpath("rabbitmq-server").exists() and shutil.which("pgrep") is not None

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/"

    def start(self) -> None:
        subprocess.run(
            [str(_BIN / "rabbitmq-server"), "-detached"],
            env=node_env(self.directory),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        ctl(self.directory, "wait", "--timeout", "60", str(self.directory / "rabbit.pid"))

    def restart(self) -> None:
        """Stop the node (and its epmd) and start it again on its data: durable
        queues and persistent messages come back."""
        self.stop()
        self.start()

    def restart_app(self) -> None:
        """Stop the broker (every connection drops) and start it again on the same node."""
        ctl(self.directory, "stop_app")
        time.sleep(0.5)
        ctl(self.directory, "start_app")

    def stop(self) -> None:
        pidfile = self.directory / "rabbit.pid"
        try:
            ctl(self.directory, "stop", str(pidfile))
        except (subprocess.SubprocessError, OSError):
            if pidfile.exists():
                try:
                    os.kill(int(pidfile.read_text().strip()), 9)
                except (ProcessLookupError, ValueError):
                    pass
        # The node's epmd outlives it: stop the one on this node's port.
        for line in subprocess.run(
            ["pgrep", "-x", "epmd"], capture_output=True, text=True, check=False
        ).stdout.split():
            try:
                environ = Path(f"/proc/{line}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"ERL_EPMD_PORT={self.epmd}".encode() in environ:
                os.kill(int(line), 15)
