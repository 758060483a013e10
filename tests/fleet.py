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

import asyncio
import collections
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Counter, Deque, Iterable, Iterator, List, Optional, Sequence, Tuple

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


# -- load: callers making work calls while servers come and go ------------------------------------------

#: Seconds each ``work`` call takes: with many callers, calls are in flight whenever a server stops.
DELAY = 0.02


class Callers:
    """Callers making ``work`` calls, each with an id of its own, until told to stop (or ``limit`` s
    pass); what each sent, got back and failed with is kept. A caller stops at its first failure
    unless told to go on (``keep_going``: where some failures are expected)."""

    def __init__(self, limit: float = 45.0, keep_going: bool = False) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.keep_going = keep_going
        self.sent: List[str] = []
        self.idempotent: set = set()  # ids sent as idempotent calls
        self.answered: Counter[str] = collections.Counter()  # per server name
        self.answers: List[Tuple[float, str]] = []  # (monotonic time, server name) of every answer
        self.failed: List[Tuple[str, BaseException]] = []  # (call id, what it raised or returned)
        self.deadline = time.monotonic() + limit

    def calling(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline

    def _new_id(self, caller: str, n: int, idempotent: bool) -> str:
        call_id = f"{caller}-{n}"
        with self.lock:
            self.sent.append(call_id)
            if idempotent:
                self.idempotent.add(call_id)
        return call_id

    def _record(self, call_id: str, outcome: Any) -> bool:
        """Note how call ``call_id`` ended; True if the caller goes on."""
        ok = isinstance(outcome, dict) and outcome.get("id") == call_id and "server" in outcome
        with self.lock:
            if ok:
                self.answered[outcome["server"]] += 1
                self.answers.append((time.monotonic(), outcome["server"]))
            else:
                self.failed.append((call_id, outcome))
        return ok or (self.keep_going and isinstance(outcome, BaseException))

    async def run_async(self, open_client: Callable[[], Any], clients: int, per_client: int,
                        idempotent: bool = False) -> None:
        """``clients`` async clients (each from ``await open_client()``), ``per_client`` concurrent callers on each."""
        async def caller(client: Any, name: str) -> None:
            for n in itertools.count():
                if not self.calling():
                    return
                call_id = self._new_id(name, n, idempotent)
                try:
                    outcome = await client.call("work", [call_id, DELAY], idempotent=idempotent)
                except Exception as exc:  # noqa: BLE001 (every failure is recorded)
                    outcome = exc
                if not self._record(call_id, outcome):
                    return

        opened = [await open_client() for _ in range(clients)]
        try:
            await asyncio.gather(*(caller(c, f"async{'i' if idempotent else ''}{i}.{j}")
                                   for i, c in enumerate(opened) for j in range(per_client)))
        finally:
            for client in opened:
                await asyncio.wait_for(client.close(), 5)

    def async_thread(self, open_client: Callable[[], Any], clients: int, per_client: int,
                     idempotent: bool = False) -> threading.Thread:
        """``run_async`` in a thread of its own (with its own event loop), not started."""
        return threading.Thread(target=lambda: asyncio.run(self.run_async(open_client, clients, per_client, idempotent)),
                                name="async-callers")

    def run_sync(self, client: Any, name: str, idempotent: bool = False) -> None:
        """One thread's calls on a SyncClient that other threads share."""
        for n in itertools.count():
            if not self.calling():
                return
            call_id = self._new_id(name, n, idempotent)
            try:
                outcome = client.call("work", [call_id, DELAY], idempotent=idempotent)
            except Exception as exc:  # noqa: BLE001
                outcome = exc
            if not self._record(call_id, outcome):
                return

    def sync_threads(self, client: Any, name: str, count: int, idempotent: bool = False) -> List[threading.Thread]:
        """``count`` threads calling through ``client``, not started."""
        return [threading.Thread(target=self.run_sync, args=(client, f"{name}{'i' if idempotent else ''}.{j}", idempotent),
                                 name=f"{name}-caller-{j}") for j in range(count)]

    def summary(self) -> str:
        kinds = collections.Counter(re.sub(r"\d+", "N", repr(what))[:120] for _, what in self.failed)
        return (f"{len(self.sent)} sent, {sum(self.answered.values())} answered {dict(self.answered)}, "
                f"{len(self.failed)} failed; failures by kind: {dict(kinds.most_common(8))}; first: {self.failed[:5]}")


@contextlib.contextmanager
def running(threads: Sequence[threading.Thread], callers: Callers) -> Iterator[None]:
    """Start ``threads``; at the end of the block stop the callers and join them (bounded), failing if
    one is still running."""
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        callers.stop.set()
        for thread in threads:
            thread.join(20)
    alive = [thread.name for thread in threads if thread.is_alive()]
    assert not alive, f"callers still running 20 s after being told to stop: {alive}"
