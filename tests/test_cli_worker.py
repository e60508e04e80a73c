"""``flowkit worker`` in a subprocess, stopped by signals (tests/cli_worker_app.py)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).parents[1]
APP = "tests.cli_worker_app:bus"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Worker:
    """A ``flowkit worker`` process whose output lines are read as they come."""

    def __init__(self, proc: subprocess.Popen[str], err: Path) -> None:
        self.proc = proc
        self.err = err
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read_until(self, text: str, timeout: float = 30) -> str:
        """The first line containing ``text``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                pytest.fail(
                    f"the worker did not print {text!r} within {timeout}s; "
                    f"stdout: {self.out}; stderr: {self.errors!r}"
                )
            if line is None:
                pytest.fail(
                    f"the worker exited before printing {text!r}; "
                    f"stdout: {self.out}; stderr: {self.errors!r}"
                )
            self.out.append(line)
            if text in line:
                return line

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 20) -> float:
        """Wait for the process to end and read the rest of its output; the
        seconds it took to end."""
        start = time.monotonic()
        self.proc.wait(timeout=timeout)
        took = time.monotonic() - start
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.out.append(line)
        return took

    @property
    def output(self) -> str:
        return "".join(self.out)

    @property
    def errors(self) -> str:
        return self.err.read_text()


class StartWorker(Protocol):
    def __call__(self, *options: str, nap: float = 60) -> Worker: ...


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Starts ``flowkit worker`` processes; kills those still running at the end."""
    procs: list[subprocess.Popen[str]] = []

    def start(*options: str, nap: float = 60) -> Worker:
        err = tmp_path / f"stderr-{len(procs)}.txt"
        with err.open("w") as err_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "flowkit", "worker", APP, *options],
                cwd=ROOT,
                env={**os.environ, "FLOWKIT_NAP": str(nap)},
                stdout=subprocess.PIPE,
                stderr=err_file,
                text=True,
            )
        procs.append(proc)
        return Worker(proc, err)

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()


def test_a_first_signal_waits_for_handlers_no_longer_than_the_grace(
    start_worker: StartWorker,
) -> None:
    worker = start_worker("--grace", "0.5")  # the bus's own stop_grace is 60 s
    assert "flowkit worker running: services napper" in worker.read_until("running")
    worker.read_until("napping 60s")
    worker.signal(signal.SIGINT)
    took = worker.wait()
    assert worker.proc.returncode == 0, worker.errors
    assert took < 10  # the grace left would be 60 s
    assert "received SIGINT; stopping: waiting up to 0.5s for 1 handler;" in worker.output
    assert "; press Ctrl-C again to stop now\n" in worker.output
    assert worker.output.endswith("flowkit worker stopped\n")
    assert "Traceback" not in worker.errors


def test_a_second_signal_stops_at_once(start_worker: StartWorker) -> None:
    worker = start_worker()
    worker.read_until("napping 60s")
    worker.signal(signal.SIGINT)
    assert "waiting up to 60s for 1 handler;" in worker.read_until("stopping")
    worker.signal(signal.SIGINT)
    took = worker.wait()
    assert worker.proc.returncode == 128 + signal.SIGINT, worker.errors
    assert took < 10  # the grace left would be 60 s
    assert "received SIGINT again; stopping now: cancelling running handlers" in worker.output
    assert worker.output.endswith("flowkit worker stopped at once\n")
    assert "Traceback" not in worker.errors


def test_sigterm_stops_gracefully_once_handlers_are_done(start_worker: StartWorker) -> None:
    worker = start_worker(nap=0.1)
    worker.read_until("napping 0.1s")
    time.sleep(0.5)
    worker.signal(signal.SIGTERM)
    worker.wait()
    assert worker.proc.returncode == 0, worker.errors
    assert "received SIGTERM; stopping: no handler is running\n" in worker.output
    assert worker.output.endswith("flowkit worker stopped\n")
    assert "Traceback" not in worker.errors
