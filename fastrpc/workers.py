"""``fastrpc serve --workers N``: N server processes sharing one port.

Each worker is a ``fastrpc serve --reuse-port`` process; the kernel spreads
new connections over their listening sockets (SO_REUSEPORT, Linux). The
parent only supervises: it restarts a worker that dies, and passes SIGTERM
and SIGINT on to all of them.

With ``--metrics-port`` the parent also serves ``/metrics`` for the whole
family: each worker writes a snapshot of its counts to a directory the parent
made (``Server.enable_metrics(snapshot_dir=...)``, every SNAPSHOT_INTERVAL and
once more when it stops), and a scrape adds them up. The last snapshot of a
worker that died is kept in the totals; so a worker killed with SIGKILL loses
only what it counted since its last snapshot (at most SNAPSHOT_INTERVAL's).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from .metrics import MetricsBindError, Snapshot, merge, read_snapshot
from .net import listen_failed

log = logging.getLogger("fastrpc.workers")

POLL_INTERVAL = 0.1  # seconds between checks on the workers
#: Seconds a worker gets after SIGTERM beyond its own shutdown grace (to answer
#: the calls it cancels and close) before it is killed.
STOP_MARGIN = 5.0
RESTART_DELAY_MAX = 10.0  # seconds: the longest wait before restarting a worker that keeps dying
QUICK_DEATH = 1.0  # seconds: a worker dying sooner than this after its start backs the restarts off


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket: it fixes the port when 0 was asked for.

    The kernel hands connections only to listening sockets, so this one
    takes none; it keeps the port in the family while workers come and go.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise SystemExit("fastrpc: --workers needs SO_REUSEPORT, which this platform lacks")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"fastrpc: {listen_failed(host, port, exc)}") from None
    return sock


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM if the supervisor dies, so no worker is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not glibc-like: the worker then outlives a killed parent
        pass


class Supervisor:
    """Keeps ``count`` copies of ``command`` running until told to stop."""

    def __init__(self, command: List[str], count: int, *, shutdown_grace: float = 30.0,
                 metrics_dir: Optional[str] = None, metrics_at: Optional[Tuple[str, int]] = None) -> None:
        """With ``metrics_dir`` (where the workers write their snapshots) and ``metrics_at``
        ((host, port)), serve their sum at /metrics; the directory is removed on return from ``run``."""
        self.command = command
        self.count = count
        self.metrics_dir = metrics_dir
        self.metrics_at = metrics_at
        self._carried: Snapshot = {"bounds": [], "families": {}}  # the counts of workers that exited
        self._metrics_lock = threading.Lock()  # scrapes come from the HTTP thread
        self.stop_timeout = shutdown_grace + STOP_MARGIN
        self.workers: Dict[int, subprocess.Popen[bytes]] = {}  # slot -> process
        self._started: Dict[int, float] = {}
        self._delay: Dict[int, float] = {}
        self._not_before: Dict[int, float] = {}  # slot -> when it may be restarted
        self._stop_signal: Optional[int] = None

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT; returns the exit status for the parent."""
        previous: Dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        http = None
        try:
            if self.metrics_at is not None and self.metrics_dir is not None:
                from .prometheus import MetricsThread

                host, port = self.metrics_at
                try:
                    http = MetricsThread(self.metrics_snapshot, host, port)
                except OSError as exc:
                    raise MetricsBindError(host, port, exc) from exc
                log.info("fastrpc serving metrics of all workers on http://%s:%s/metrics", host,
                         http.endpoint.sockets[0].getsockname()[1])
            for slot in range(self.count):
                self._start(slot)
            log.info("fastrpc supervising %d workers: pids %s", self.count, self.pids())
            while self._stop_signal is None:
                self._check()
                time.sleep(POLL_INTERVAL)
            return self._stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if http is not None:
                http.stop()
            if self.metrics_dir is not None:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def metrics_snapshot(self) -> Snapshot:
        """Counters and histograms summed over every worker that ever ran, gauges over those running."""
        assert self.metrics_dir is not None
        with self._metrics_lock:
            running = [s for s in map(read_snapshot, sorted(glob.glob(os.path.join(self.metrics_dir, "*.json")))) if s]
            return merge([self._carried, *running], running)

    def _carry(self, pid: int) -> None:
        """Worker ``pid`` exited: keep its last counts, and drop its file (a new worker may get its pid)."""
        if self.metrics_dir is None:
            return
        path = os.path.join(self.metrics_dir, f"{pid}.json")
        with self._metrics_lock:
            last = read_snapshot(path)
            if last is not None:
                self._carried = merge([self._carried, last], [])
            for leftover in (path, path + ".tmp"):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass

    def pids(self) -> List[int]:
        return [proc.pid for proc in self.workers.values()]

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def _start(self, slot: int) -> None:
        preexec: Optional[Callable[[], None]] = _die_with_parent if sys.platform.startswith("linux") else None
        self.workers[slot] = subprocess.Popen(self.command, preexec_fn=preexec)
        self._started[slot] = time.monotonic()

    def _check(self) -> None:
        now = time.monotonic()
        for slot in range(self.count):
            proc = self.workers.get(slot)
            if proc is not None:
                status = proc.poll()
                if status is None:
                    continue
                del self.workers[slot]
                self._carry(proc.pid)
                # A worker that dies at once (a broken app, a port taken)
                # would otherwise be restarted in a tight loop.
                lived = now - self._started[slot]
                delay = min(RESTART_DELAY_MAX, 2 * self._delay.get(slot, 0.25)) if lived < QUICK_DEATH else 0.0
                self._delay[slot] = delay
                self._not_before[slot] = now + delay
                log.warning("worker %d exited with status %s; restarting it%s", proc.pid, status,
                            f" in {delay:g} s" if delay else "")
            if now >= self._not_before.get(slot, 0.0):
                self._start(slot)
                log.info("worker %d started", self.workers[slot].pid)

    def _stop(self) -> int:
        signum = self._stop_signal or signal.SIGTERM
        log.info("fastrpc stopping %d workers (%s)", len(self.workers), signal.Signals(signum).name)
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signum)
        deadline = time.monotonic() + self.stop_timeout
        clean = True
        for proc in self.workers.values():
            try:
                status = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %g s; killing it", proc.pid, self.stop_timeout)
                proc.kill()
                status = proc.wait()
            clean = clean and status == 0
        return 0 if clean else 1
