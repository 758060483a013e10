"""``fastrpc serve --workers N``: N server processes sharing one port.

Each worker is a ``fastrpc serve --reuse-port`` process; the kernel spreads
new connections over their listening sockets (SO_REUSEPORT, Linux). The
parent only supervises: it restarts a worker that dies, and passes SIGTERM
and SIGINT on to all of them.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

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

    def __init__(self, command: List[str], count: int, *, shutdown_grace: float = 30.0) -> None:
        self.command = command
        self.count = count
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
        try:
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
