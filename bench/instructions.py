"""User-space instructions per request of a server, counted by callgrind.

Timings on a shared 2-core machine move by 10 to 30 % from run to run;
instruction counts do not. This runs a server under ``valgrind
--tool=callgrind`` twice, once answering ``--base`` pings and once ``--base +
--requests``, on one connection with one request outstanding (every read then
holds exactly one request), and divides the difference of the two totals by
``--requests``: start-up and shutdown cancel out. Kernel time (the system
calls) is not counted; ``compare.py`` measures that. The valgrind processes
run side by side, ``--jobs`` at a time (the counts do not depend on load), and
with PYTHONHASHSEED=0 (from one hash seed to another the figures moved by up to
1 %).

    python bench/instructions.py                  # fastrpc and the floor
    python bench/instructions.py --servers fastrpc

Needs ``valgrind`` (Debian package). Both servers take about a minute on 2 cores.
``per_request()`` is the same measure for other code (tests/test_instruction_ratio.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
HOST = "127.0.0.1"
SERVERS: Dict[str, List[str]] = {
    "floor": [os.path.join(BENCH_DIR, "minimal_server.py"), "--host", HOST, "--port", "{port}"],
    "fastrpc": ["-m", "fastrpc", "serve", "--host", HOST, "--port", "{port}"],
}
BODY = b'{"in":"ping","params":"sha params","id":1000000001}'
FRAME = struct.pack(">I", len(BODY)) + BODY
START_TIMEOUT = 120.0  # seconds for a server to start listening under valgrind
REPLY_TIMEOUT = 60.0  # seconds for any one read of replies (valgrind is ~50x slower, and shares the CPUs)
STOP_TIMEOUT = 60.0  # seconds for it to exit and write its counts after SIGTERM
PORT_TRIES = 3  # a port picked free can be taken before the server binds it: then another is tried


class PortTaken(Exception):
    """The server could not bind the port picked for it: another process took it meanwhile."""


class Measured(NamedTuple):
    instructions: float  # user-space instructions per request
    listening: str  # the server's "listening on" line: fastrpc's names its framing and loop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def _wait_listening(server: str, proc: "subprocess.Popen[bytes]", log: str, port: int) -> str:
    """The server's line saying it listens on ``port`` (both servers print one once bound): waiting for it
    rather than for a connection to succeed means the server connected to is the one started here."""
    pattern = re.compile(rf"^.*listening on {re.escape(HOST)}:{port}\b.*$", re.M)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with open(log, errors="replace") as f:
            match = pattern.search(f.read())
        if match:
            return match.group(0)
        if proc.poll() is not None:
            tail = _tail(log)
            failure = PortTaken if "address already in use" in tail.lower() else RuntimeError
            raise failure(f"{server} exited ({proc.returncode}) before listening; its stderr ends:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server} did not start listening in {START_TIMEOUT:g} s; "
                               f"its stderr ends:\n{_tail(log)}")
        time.sleep(0.1)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the server closed the connection")
        data += chunk
    return data


Phases = Sequence[Tuple[int, int]]  # (writes, pings per write), in order, on one connection


def _drive(port: int, phases: Phases) -> None:
    with socket.create_connection((HOST, port), timeout=REPLY_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for writes, batch in phases:
            for _ in range(writes):
                sock.sendall(FRAME * batch)
                for _ in range(batch):
                    (size,) = struct.unpack(">I", recv_exactly(sock, 4))
                    if b'"pong"' not in recv_exactly(sock, size):
                        raise RuntimeError("a reply was not a pong")


def _die_with_parent() -> List[str]:
    """A prefix that has the server killed should this process die without cleaning up (SIGKILL, an
    unhandled SIGTERM): util-linux's setpriv sets the parent-death signal, where it can."""
    global _DIE_WITH_PARENT
    if _DIE_WITH_PARENT is None:
        prefix = ["setpriv", "--pdeathsig", "KILL"]
        try:
            usable = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            usable = False
        _DIE_WITH_PARENT = prefix if usable else []
    return _DIE_WITH_PARENT


_DIE_WITH_PARENT: Optional[List[str]] = None


class _Live:
    """The valgrind processes running now, so that a failure anywhere kills all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: Set["subprocess.Popen[bytes]"] = set()
        self._stopped = False

    def start(self, argv: List[str], env: Optional[Mapping[str, str]], log: str) -> "subprocess.Popen[bytes]":
        with self._lock:
            if self._stopped:
                raise RuntimeError("the measurement was stopped")
            with open(log, "wb") as stderr:
                # The signal is sent when the thread that started it ends: here one that waits for it.
                proc = subprocess.Popen(_die_with_parent() + argv, cwd=REPO_DIR,
                                        env=None if env is None else dict(env),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
            self._procs.add(proc)
            return proc

    def done(self, proc: "subprocess.Popen[bytes]") -> None:
        with self._lock:
            self._procs.discard(proc)
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def kill_all(self) -> None:
        with self._lock:
            self._stopped = True
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def count(server: str, phases: Phases, env: Optional[Mapping[str, str]] = None,
          live: Optional[_Live] = None) -> Tuple[int, str]:
    """Total instructions of one server process that answered the ``phases``' writes, each of a phase's
    pings (the next write once all its replies are in), and its "listening" line. ``env``: the server's
    environment (default: this one's), with PYTHONHASHSEED=0 unless it names one, so that dict and set
    layouts, and what they cost, are the same in every run."""
    live = live or _Live()
    env = dict(os.environ if env is None else env)
    env.setdefault("PYTHONHASHSEED", "0")
    for attempt in range(PORT_TRIES):
        try:
            return _count_once(server, phases, env, live)
        except PortTaken:
            if attempt == PORT_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _count_once(server: str, phases: Phases, env: Mapping[str, str], live: _Live) -> Tuple[int, str]:
    port = free_port()
    argv = [arg.replace("{port}", str(port)) for arg in SERVERS[server]]
    with tempfile.TemporaryDirectory() as tmp:
        out, log = os.path.join(tmp, "callgrind.out"), os.path.join(tmp, "stderr")
        proc = live.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, *argv],
                          env, log)
        try:
            listening = _wait_listening(server, proc, log, port)
            try:
                _drive(port, phases)
            except (OSError, RuntimeError) as exc:
                raise RuntimeError(f"{server}, {list(phases)}: {exc}; its stderr ends:\n{_tail(log)}") from exc
            # SIGTERM: both servers exit on it and callgrind writes its counts.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{server} did not exit within {STOP_TIMEOUT:g} s of SIGTERM") from None
        finally:
            live.done(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{server} exited with status {proc.returncode}; its stderr ends:\n{_tail(log)}")
        with open(out) as f:
            match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if match is None:
            raise RuntimeError(f"no totals in callgrind's output for {server}")
        return int(match.group(1)), listening


def instructions(server: str, requests: int, batch: int = 1) -> int:
    """Total instructions of one server process that answered ``requests`` writes of ``batch`` pings
    each (the next write once all their replies are in)."""
    return count(server, [(requests, batch)])[0]


def per_request(pairs: Iterable[Tuple[str, int]], base: int, requests: int, jobs: Optional[int] = None,
                env: Optional[Mapping[str, str]] = None) -> Dict[Tuple[str, int], Measured]:
    """User-space instructions per request for each (server, pings per write).

    Each server first answers ``base`` pings at each of its batch sizes (the warm-up: buffers grown,
    code specialized, for every path measured), then ``requests`` more at one of them, and the run
    that stops after the warm-up is subtracted: the difference over ``requests`` is the figure. Pings
    are counted in whole writes (at least one). A server measured at N batch sizes runs N + 1 times
    under valgrind, ``jobs`` processes at a time (default: one per CPU); should one fail, the others
    are killed. ``env``: the servers' environment (see count())."""
    batches: Dict[str, List[int]] = {}
    for server, batch in dict.fromkeys(pairs):
        batches.setdefault(server, []).append(batch)
    warmup = {server: [(max(1, base // b), b) for b in sizes] for server, sizes in batches.items()}
    measured = {(server, b): (max(1, requests // b), b) for server, sizes in batches.items() for b in sizes}
    # The longer runs first, so that the last to start are the short ones.
    runs: Dict[Tuple[str, Optional[int]], Phases] = {
        pair: [*warmup[pair[0]], phase] for pair, phase in measured.items()}
    runs.update({(server, None): phases for server, phases in warmup.items()})
    live = _Live()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1)
    try:
        futures = {run: pool.submit(count, run[0], phases, env, live) for run, phases in runs.items()}
        # The first failure, wherever it is, stops the lot (result() in order would wait for the others).
        done, _ = concurrent.futures.wait(futures.values(), return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in done:
            future.result()
        totals = {run: future.result() for run, future in futures.items()}
    except BaseException:
        live.kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    figures = {}
    for (server, batch), (writes, _) in measured.items():
        total, listening = totals[server, batch]
        figures[server, batch] = Measured((total - totals[server, None][0]) / (writes * batch), listening)
    return figures


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", choices=sorted(SERVERS), default=["floor", "fastrpc"])
    parser.add_argument("--base", type=int, default=2000, help="requests of the shorter run (default 2000)")
    parser.add_argument("--requests", type=int, default=10000, help="extra requests of the longer run (default 10000)")
    parser.add_argument("--batch", type=int, default=1,
                        help="pings per write, all answered before the next (default 1); "
                             "--base and --requests count writes")
    parser.add_argument("--jobs", type=int, default=None, help="valgrind processes at a time (default: one per CPU)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    figures = per_request([(server, args.batch) for server in args.servers],
                          args.base * args.batch, args.requests * args.batch, args.jobs)
    per_server = {server: figures[server, args.batch].instructions for server in args.servers}
    for server, figure in per_server.items():
        print(f"{server:8} {figure:9,.0f} instructions/request", flush=True)
    if "floor" in per_server and "fastrpc" in per_server:
        print(f"fastrpc / floor: {per_server['fastrpc'] / per_server['floor']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
