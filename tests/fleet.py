"""A fleet of real ``fastrpc serve`` processes for tests of restarts, draining and balancing.

Each :class:`FleetServer` runs ``python -m fastrpc serve tests.fleet_app:server`` (see tests/fleet_app.py)
from the repository root, as its own process, and can be stopped (SIGTERM: the graceful stop), killed
(SIGKILL) and restarted on the same port. Every completed ``work`` call is appended to the server's log
file, which outlives its incarnations, so a test can check that each call ran exactly once::

    with fleet(3) as servers:
        ...  # clients call work(call_id, delay) on servers[i].address
        servers[0].restart()
        ...
        assert_once(executions(*servers), sent_ids)

``fleet`` kills whatever is still running when the block ends, however it ends. In a test,
``from .fleet import make_fleet`` gives the fixture form: ``servers = make_fleet(3)``, cleaned up at
teardown. Call ids are compared as text (the log holds ``str(call_id)``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Counter, Deque, Iterable, Iterator, List, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the repository root: `tests.fleet_app` imports from here
APP = "tests.fleet_app:server"
START_TIMEOUT = 15.0
_LISTENING = re.compile(r"fastrpc listening on \S+:(\d+)")


class FleetServer:
    """One ``fastrpc serve`` process at a time, named ``name``, logging executions under ``log_dir``."""

    def __init__(self, name: str, log_dir: "os.PathLike[str] | str", extra_args: Sequence[str] = (),
                 grace: float = 5.0) -> None:
        self.name = name
        self.log = Path(log_dir) / f"{name}.log"
        self.extra_args = list(extra_args)
        self.grace = grace
        self.port = 0  # 0 until the first start; then kept, so a restart binds the same port
        self.output: Deque[str] = collections.deque(maxlen=400)  # last lines, all incarnations
        self._proc: Optional["subprocess.Popen[str]"] = None
        self._reader: Optional[threading.Thread] = None
        self._listening = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, port: Optional[int] = None) -> "FleetServer":
        """Start serving on ``port`` (default: the port it had, or one the OS picks the first time);
        return once its listening line is out, within START_TIMEOUT s."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        port = self.port if port is None else port
        command = [sys.executable, "-m", "fastrpc", "serve", APP, "--host", "127.0.0.1", "--port", str(port),
                   "--shutdown-grace", str(self.grace), *self.extra_args]
        env = {**os.environ, "FLEET_LOG": str(self.log), "FLEET_NAME": self.name}
        self._listening.clear()
        self._proc = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, errors="replace")
        # Read its output from a thread for as long as it runs: a full pipe would block the server.
        self._reader = threading.Thread(target=self._read, args=(self._proc,), name=f"fleet-{self.name}", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.name} did not start listening on port {port} "
                                     f"within {START_TIMEOUT:g} s; its output:\n{self.tail()}")
        return self

    def _read(self, proc: "subprocess.Popen[str]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line.rstrip("\n"))
            found = _LISTENING.search(line)
            if found and not self._listening.is_set():
                self.port = int(found.group(1))
                self._listening.set()
        proc.stdout.close()

    def stop(self, timeout: Optional[float] = None) -> int:
        """SIGTERM (the graceful stop), then wait for the exit, at most ``timeout`` s (default: the grace
        plus 10 s); return the exit status. A server still running then is killed, and this fails."""
        proc = self._proc
        if proc is None:
            raise RuntimeError(f"{self.name} was never started")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        limit = self.grace + 10 if timeout is None else timeout
        try:
            status = proc.wait(limit)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {limit:g} s of SIGTERM; its output:\n"
                                 f"{self.tail()}") from None
        self._join_reader()
        return status

    def kill(self) -> None:
        """SIGKILL, if it runs, and reap it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        self._join_reader()

    def restart(self) -> int:
        """``stop()`` then ``start()`` on the same port (re-bound at once: asyncio sets SO_REUSEADDR);
        return the stopped incarnation's exit status."""
        status = self.stop()
        self.start()
        return status

    def executions(self) -> Counter[str]:
        """How many times each call id ran on this server, over all its incarnations."""
        try:
            text = self.log.read_text()
        except FileNotFoundError:
            return collections.Counter()
        return collections.Counter(line for line in text.splitlines() if line)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(list(self.output)[-lines:])

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(5)  # the pipe is at EOF once the process is gone

    def __repr__(self) -> str:
        return f"<FleetServer {self.name} {self.address} {'running' if self.running else 'stopped'}>"


@contextlib.contextmanager
def fleet(n: int, extra_args: Sequence[str] = (), log_dir: "os.PathLike[str] | str | None" = None,
          grace: float = 5.0) -> Iterator[List[FleetServer]]:
    """Start ``n`` servers named a, b, c, ... (on ports the OS picks) and yield them; whatever still runs
    at the end is killed, however the block ends. Without ``log_dir`` the logs go to a temporary
    directory removed afterwards: read executions inside the block."""
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-"))
        servers = [FleetServer(chr(ord("a") + i), log_dir, extra_args, grace) for i in range(n)]
        for server in servers:
            stack.callback(server.kill)  # registered first: runs even if a later start fails
        for server in servers:
            server.start()
        yield servers


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., List[FleetServer]]]:
    """``make_fleet(n, extra_args=(), grace=5.0)`` starts a fleet that is killed at the test's teardown."""
    made = 0
    with contextlib.ExitStack() as stack:
        def make(n: int, extra_args: Sequence[str] = (), grace: float = 5.0) -> List[FleetServer]:
            nonlocal made
            made += 1
            log_dir = tmp_path / f"fleet{made}"
            log_dir.mkdir()
            return stack.enter_context(fleet(n, extra_args, log_dir, grace))

        yield make


def executions(*servers: FleetServer) -> Counter[str]:
    """The executions of every call id, summed over ``servers``."""
    total: Counter[str] = collections.Counter()
    for server in servers:
        total.update(server.executions())
    return total


def assert_once(counter: Counter[str], ids: Iterable[object], show: int = 20) -> None:
    """Fail unless every id in ``ids`` ran exactly once and nothing else ran, listing what did not."""
    expected = {str(i) for i in ids}
    missing = sorted(expected - set(counter))
    repeated = sorted((i, n) for i, n in counter.items() if n > 1)
    unexpected = sorted(set(counter) - expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} never ran: {missing[:show]}")
    if repeated:
        problems.append(f"{len(repeated)} ran more than once (id, times): {repeated[:show]}")
    if unexpected:
        problems.append(f"{len(unexpected)} ran but were not sent: {unexpected[:show]}")
    assert not problems, f"of {len(expected)} calls: " + "; ".join(problems)
