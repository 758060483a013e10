"""Soak runs: does a fastrpc server's memory or file descriptor count creep under sustained load?

Two soaks, each against a fresh ``python -m fastrpc serve`` on 127.0.0.1 at a
port the OS picks, the server pinned to CPU 0 and this driver to CPU 1 where
the machine has them:

- ``requests``: pipelined calls through ``fastrpc.loadgen`` (the engine of
  ``fastrpc bench``, which checks every reply), ``ping`` and ``echo`` of a
  small object on separate connections at the same time.
- ``connections``: connect, maybe call, disconnect, over and over, with
  several cycles at once. The cycles rotate through four endings (see
  ``CYCLE_KINDS``), so that the server's reset, FIN and half-close paths and
  a connection that never sends anything are all exercised.

Each soak first warms up with the same load (10 % of the count by default),
takes the server's RSS (VmRSS of /proc/<pid>/status) as its baseline, then
runs the count while sampling RSS and open file descriptors every
``--interval`` seconds. It passes when nothing failed, every request or
cycle completed, the server's descriptors are back to their count before
any client connected, and RSS at the end is at most ``--bound-mib`` above the
baseline.

The bounds (``--bound-mib``) are per soak, sized to what RSS does without
any leak. Under pipelined requests it is flat (about 100 KiB above the
baseline at the end of 20 million), so the requests soak allows 4 MiB: a
leak would have to stay under 0.21 bytes a request to fit in it over 20
million. Connection churn is another matter:
glibc's main heap keeps memory freed by closed connections resident
(fragmented, its top pinned), and the server's RSS swings by up to about 14
MiB above the baseline while Python's own object and block counts stay flat
and ``malloc_trim(0)`` in the server gives all of it back. So the connections
soak allows 24 MiB: over a million cycles a leak would have to stay under 25
bytes a cycle, less than one small Python object (a connection's own state is
kilobytes). ``rss_late_min_kib`` (the lowest sample of the last quarter)
helps tell the two apart: retention comes and goes, a leak raises the floor.

Three of the four cycle endings leave the client's side in TIME_WAIT. On
loopback Linux lets a new connection reuse such a port
(``net.ipv4.tcp_tw_reuse`` = 2, the default), which is what carries a million
cycles through some 28,000 ephemeral ports; with it off, expect connect
errors (EADDRNOTAVAIL) once they run out. The connections soak records the
setting.

    python bench/soak.py requests --count 20000000
    python bench/soak.py connections --count 1000000
    python bench/soak.py all --json        # both, at their default counts

Exit status: 0 every soak passed, 1 one failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

import orjson
import uvloop

import compare
from compare import HOST, LOAD_CPU, PY, SERVER_CPU, Running, ServerSpec, machine
from fastrpc.loadgen import Progress, run_load
from fastrpc.protocol import ABSENT

DEFAULT_REQUESTS = 20_000_000
DEFAULT_CYCLES = 1_000_000
BOUND_MIB = {"requests": 4.0, "connections": 24.0}  # allowed RSS growth after warm-up; see above
WARMUP_FRACTION = 0.1  # of the count, unless --warmup says otherwise
MAX_WARMUP = {"requests": 2_000_000, "connections": 50_000}
FD_SETTLE_TIMEOUT = 10.0  # seconds the server gets to close what the clients closed
STALL_TIMEOUT = 15.0  # seconds without one cycle completing before the connection soak gives up
CYCLE_TIMEOUT = 10.0  # seconds one connect/disconnect cycle may take
ECHO_PARAMS = {"soak": [1, 2.5, None, True, "x" * 32], "n": {"k": "v"}}

#: How the cycles of the connection soak end, in rotation:
#: ``ping-rst``: a call, then a close with SO_LINGER {1, 0}: a reset, no TIME_WAIT on either side.
#: ``ping-fin``: a call, then an ordinary close (FIN first from the client).
#: ``ping-eof``: the request, a half-close at once, the reply, then the server's close on that EOF.
#: ``bare-fin``: connect and close without sending anything.
CYCLE_KINDS = ("ping-rst", "ping-fin", "ping-eof", "bare-fin")
_LINGER_RESET = struct.pack("ii", 1, 0)
_PING_BODY = b'{"in":"ping"}'
_PING = len(_PING_BODY).to_bytes(4, "big") + _PING_BODY


# -- the server, seen from /proc ----------------------------------------------------------

def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def fd_count(pid: int) -> int:
    """File descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def settle_fds(pid: int, target: int, timeout: float = FD_SETTLE_TIMEOUT) -> int:
    """Wait (bounded) until ``pid`` is down to ``target`` descriptors; return its count then."""
    deadline = time.monotonic() + timeout
    count = fd_count(pid)
    while count > target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        count = fd_count(pid)
    return count


@dataclass
class Sample:
    seconds: float  # since the soak's window opened
    done: int  # requests or cycles completed by then (requests: as of the last progress report)
    rss_kib: int
    fds: int


class Sampler:
    """Samples the server's RSS and descriptors every ``interval`` seconds while a soak runs."""

    def __init__(self, pid: int, interval: float, done: Callable[[], int]) -> None:
        self.pid = pid
        self.interval = interval
        self.done = done
        self.samples: List[Sample] = []
        self._start = time.monotonic()
        self._task: Optional["asyncio.Task[None]"] = None

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def take(self) -> Sample:
        sample = Sample(self.elapsed(), self.done(), rss_kib(self.pid), fd_count(self.pid))
        self.samples.append(sample)
        return sample

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.take()

    def start(self) -> None:
        self._start = time.monotonic()
        self.take()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


# -- outcome ------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One soak's figures; ``passed`` is the verdict, ``failures`` says why not."""

    soak: str
    count: int  # requests or cycles asked for
    done: int  # completed, successes and errors alike
    errors: int
    seconds: float  # the soak itself, warm-up not included
    rate: float  # done per second
    warmup: int
    held: int  # connections open at once during the soak
    rss_start_kib: int  # before any client connected
    rss_warm_kib: int  # the baseline: after warm-up, its connections closed
    rss_min_kib: int  # over the samples after warm-up
    rss_late_min_kib: int  # over the last quarter of them: where a leak would have raised the floor
    rss_peak_kib: int
    rss_end_kib: int  # once the soak's connections are closed
    growth_kib: int  # end - warm
    bound_kib: int
    fds_start: int
    fds_peak: int
    fds_end: int
    passed: bool = False
    failures: List[str] = field(default_factory=list)
    error_samples: List[str] = field(default_factory=list)
    details: Dict[str, Any] = field(default_factory=dict)
    samples: List[Tuple[float, int, int, int]] = field(default_factory=list)  # (seconds, done, rss KiB, fds)


def judge(outcome: Outcome) -> Outcome:
    """Fill in ``passed`` and ``failures`` from the figures."""
    failures = []
    if outcome.errors:
        failures.append(f"{outcome.errors} errors")
    if outcome.done != outcome.count:
        failures.append(f"{outcome.done:,} of {outcome.count:,} completed")
    if outcome.fds_end != outcome.fds_start:
        failures.append(f"server holds {outcome.fds_end} descriptors at the end, {outcome.fds_start} before")
    if outcome.growth_kib > outcome.bound_kib:
        failures.append(f"RSS grew {outcome.growth_kib:,} KiB after warm-up, bound {outcome.bound_kib:,} KiB")
    outcome.failures = failures
    outcome.passed = not failures
    return outcome


def finish(soak: str, count: int, done: int, errors: int, seconds: float, warmup: int, held: int,
           start: Sample, warm: Sample, end: Sample, sampler: Sampler, bound_mib: float) -> Outcome:
    after = sampler.samples + [end]
    return judge(Outcome(
        soak=soak, count=count, done=done, errors=errors, seconds=seconds,
        rate=done / seconds if seconds > 0 else 0.0, warmup=warmup, held=held,
        rss_start_kib=start.rss_kib, rss_warm_kib=warm.rss_kib,
        rss_min_kib=min(s.rss_kib for s in after),
        rss_late_min_kib=min(s.rss_kib for s in after[len(after) * 3 // 4:]),
        rss_peak_kib=max(s.rss_kib for s in after),
        rss_end_kib=end.rss_kib, growth_kib=end.rss_kib - warm.rss_kib, bound_kib=round(bound_mib * 1024),
        fds_start=start.fds, fds_peak=max(s.fds for s in after), fds_end=end.fds,
        samples=[(round(s.seconds, 2), s.done, s.rss_kib, s.fds) for s in after],
    ))


async def snapshot(pid: int, fds_target: Optional[int] = None) -> Sample:
    """The server now, or once it is down to ``fds_target`` descriptors (the clients' closes reached it)."""
    fds = fd_count(pid) if fds_target is None else await settle_fds(pid, fds_target)
    return Sample(0.0, 0, rss_kib(pid), fds)


# -- requests -----------------------------------------------------------------------------

async def _pipelined(port: int, count: int, connections: int, depth: int,
                     progress: Optional[Dict[str, int]] = None) -> Tuple[int, int, float, List[str]]:
    """``count`` requests, ping and echo half each on their own connections at once.

    Returns (done, errors, seconds, error samples)."""
    streams = [("ping", ABSENT), ("echo", ECHO_PARAMS)]
    shares = [count // 2, count - count // 2]
    spread = [max(1, connections // 2), max(1, connections - connections // 2)]

    def reporter(method: str) -> Optional[Callable[[Progress], None]]:
        if progress is None:
            return None

        def report(p: Progress) -> None:
            progress[method] = p.requests
        return report

    started = time.monotonic()
    reports = await asyncio.gather(*(
        run_load(HOST, port, method=method, params=params, connections=conns, depth=depth,
                 duration=None, requests=share, progress=reporter(method))
        for (method, params), share, conns in zip(streams, shares, spread) if share
    ))
    seconds = time.monotonic() - started
    samples = [message for report in reports for message in report.error_samples]
    return sum(r.requests for r in reports), sum(r.errors for r in reports), seconds, samples


async def soak_requests(pid: int, port: int, count: int, warmup: int, connections: int, depth: int,
                        interval: float, bound_mib: float) -> Outcome:
    start = await snapshot(pid)
    if warmup:
        _, warm_errors, _, _ = await _pipelined(port, warmup, connections, depth)
    else:
        warm_errors = 0
    warm = await snapshot(pid, start.fds)
    progress: Dict[str, int] = {}
    sampler = Sampler(pid, interval, lambda: sum(progress.values()))
    sampler.start()
    try:
        done, errors, seconds, error_samples = await _pipelined(port, count, connections, depth, progress)
    finally:
        await sampler.stop()
    end = await snapshot(pid, start.fds)
    end.seconds, end.done = sampler.elapsed(), done
    outcome = finish("requests", count, done, errors, seconds, warmup, max(2, connections), start, warm, end,
                     sampler, bound_mib)
    outcome.error_samples = error_samples
    outcome.details = {"connections": max(2, connections), "depth": depth, "methods": "ping, echo",
                       "echo_params": ECHO_PARAMS, "warmup_errors": warm_errors}
    if warm_errors:
        outcome.failures.append(f"{warm_errors} errors in the warm-up")
        outcome.passed = False
    return outcome


# -- connections --------------------------------------------------------------------------

class _Cycle(asyncio.Protocol):
    """One connection's life: maybe a ping, then the ending its ``kind`` names.

    ``done`` gets None when the cycle went as it should, else what went wrong."""

    def __init__(self, kind: str, done: "asyncio.Future[Optional[str]]") -> None:
        self.kind = kind
        self.done = done
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = b""
        self.answered = False
        self.problem: Optional[str] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.kind == "bare-fin":
            transport.close()
            return
        self.transport.write(_PING)
        if self.kind == "ping-eof":
            self.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < 4:
            return
        size = int.from_bytes(self.buffer[:4], "big")
        if len(self.buffer) < 4 + size:
            return
        body, extra = self.buffer[4:4 + size], self.buffer[4 + size:]
        self.buffer = b""
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError:
            reply = None
        if self.answered or extra or type(reply) is not dict or reply.get("out") != "pong":
            self._fail(f"unexpected reply: {bytes(body[:100])!r}{' and more' if extra else ''}")
            return
        self.answered = True
        if self.kind == "ping-rst":
            sock = self.transport.get_extra_info("socket")  # type: ignore[union-attr]
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            self.transport.abort()  # type: ignore[union-attr]
        elif self.kind == "ping-fin":
            self.transport.close()  # type: ignore[union-attr]
        # ping-eof: the server closes once it has answered

    def eof_received(self) -> bool:
        if self.kind == "ping-eof" and not self.answered:
            self.problem = "the server closed before answering"
        elif self.kind != "ping-eof":
            self.problem = "the server closed the connection first"
        return False

    def _fail(self, problem: str) -> None:
        self.problem = problem
        self.transport.abort()  # type: ignore[union-attr]

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        problem = self.problem
        if problem is None and self.kind != "bare-fin" and not self.answered:
            problem = f"connection lost before the reply: {exc}"
        if problem is None and exc is not None and self.kind != "ping-rst":
            problem = f"connection lost: {exc}"
        if not self.done.done():
            self.done.set_result(problem)


def _sysctl(name: str) -> Optional[str]:
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip()
    except OSError:
        return None


class _Cycler:
    """Runs ``total`` cycles with ``concurrency`` of them at once, counting outcomes."""

    def __init__(self, port: int, total: int, concurrency: int) -> None:
        self.port = port
        self.total = total
        self.concurrency = concurrency
        self.started = self.done = self.errors = 0
        self.by_kind = {kind: 0 for kind in CYCLE_KINDS}
        self.error_samples: List[str] = []

    def _error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5 and message not in self.error_samples:
            self.error_samples.append(message[:200])

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while self.started < self.total:
            kind = CYCLE_KINDS[self.started % len(CYCLE_KINDS)]
            self.started += 1
            done: "asyncio.Future[Optional[str]]" = loop.create_future()
            try:
                transport, _ = await loop.create_connection(lambda: _Cycle(kind, done), HOST, self.port)
            except OSError as exc:
                self._error(f"connect: {exc}")
            else:
                timer = loop.call_later(CYCLE_TIMEOUT, transport.abort)
                problem = await done
                if not timer.cancelled():
                    timer.cancel()
                if problem is not None:
                    self._error(f"{kind}: {problem}")
            self.by_kind[kind] += 1
            self.done += 1

    async def run(self) -> float:
        """All the cycles; returns their seconds. Gives up (as errors) if none completes for STALL_TIMEOUT."""
        workers = [asyncio.ensure_future(self._worker()) for _ in range(min(self.concurrency, self.total))]
        started = time.monotonic()
        last, last_change = -1, started
        while not all(w.done() for w in workers):
            await asyncio.wait(workers, timeout=1.0)
            now = time.monotonic()
            if self.done != last:
                last, last_change = self.done, now
            elif now - last_change > STALL_TIMEOUT:
                for worker in workers:
                    worker.cancel()
                await asyncio.wait(workers, timeout=CYCLE_TIMEOUT)
                self._error(f"stalled: no cycle completed for {STALL_TIMEOUT:g} s")
                break
        for worker in workers:
            if worker.done() and not worker.cancelled() and worker.exception() is not None:
                self._error(f"worker failed: {worker.exception()!r}")
        return time.monotonic() - started


async def soak_connections(pid: int, port: int, count: int, warmup: int, concurrency: int,
                           interval: float, bound_mib: float) -> Outcome:
    start = await snapshot(pid)
    warm_errors = 0
    if warmup:
        warming = _Cycler(port, warmup, concurrency)
        await warming.run()
        warm_errors = warming.errors
    warm = await snapshot(pid, start.fds)
    cycler = _Cycler(port, count, concurrency)
    sampler = Sampler(pid, interval, lambda: cycler.done)
    sampler.start()
    try:
        seconds = await cycler.run()
    finally:
        await sampler.stop()
    end = await snapshot(pid, start.fds)
    end.seconds, end.done = sampler.elapsed(), cycler.done
    outcome = finish("connections", count, cycler.done, cycler.errors, seconds, warmup, concurrency, start, warm,
                     end, sampler, bound_mib)
    outcome.error_samples = cycler.error_samples
    outcome.details = {"concurrency": concurrency, "kinds": dict(cycler.by_kind), "warmup_errors": warm_errors,
                       "tcp_tw_reuse": _sysctl("net/ipv4/tcp_tw_reuse")}
    if warm_errors:
        outcome.failures.append(f"{warm_errors} errors in the warm-up")
        outcome.passed = False
    return outcome


# -- running ------------------------------------------------------------------------------

def start_server(loop_kind: str, no_extensions: bool, app: Optional[str]) -> Running:
    """``python -m fastrpc serve`` on a free port, pinned to the server CPU (compare.Running does both)."""
    command = [PY, "-m", "fastrpc", "serve", "--host", HOST, "--port", "{port}", "--loop", loop_kind,
               "--log-level", "WARNING"]
    if app:
        command.append(app)
    env = {"FASTRPC_NO_EXTENSIONS": "1"} if no_extensions else {}
    return Running(ServerSpec("fastrpc", command, env=env))


def default_warmup(soak: str, count: int, warmup: Optional[int]) -> int:
    if warmup is not None:
        return warmup
    return min(MAX_WARMUP[soak], int(count * WARMUP_FRACTION))


def run_soak(soak: str, args: argparse.Namespace, cpus: Optional[Set[int]]) -> Outcome:
    """One soak against its own server; ``cpus``: the driver's CPUs to start it from (None: no pinning)."""
    count = args.count if args.soak != "all" else (args.requests if soak == "requests" else args.cycles)
    bound_mib = BOUND_MIB[soak] if args.bound_mib is None else args.bound_mib
    warmup = default_warmup(soak, count, args.warmup if args.soak != "all" else None)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # the server must be free to go to its own CPU
    server = start_server(args.loop, args.no_extensions, args.app)
    if cpus is not None:
        pin_self(cpus)
    pid = server.process.pid
    try:
        if soak == "requests":
            coro = soak_requests(pid, server.port, count, warmup, args.connections, args.depth, args.interval,
                                 bound_mib)
        else:
            coro = soak_connections(pid, server.port, count, warmup, args.concurrency, args.interval,
                                    bound_mib)
        outcome = uvloop.run(coro)
        if server.process.poll() is not None:
            outcome.failures.append(f"the server exited with status {server.process.returncode}")
            outcome.passed = False
    finally:
        server.stop()
    outcome.details.update(server_loop=args.loop, server_framing="pure Python" if args.no_extensions else "compiled",
                           app=args.app or "fastrpc.demo")
    return outcome


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def format_outcome(o: Outcome) -> str:
    unit = "requests" if o.soak == "requests" else "cycles"
    lines = [
        f"{o.soak} soak: {'PASS' if o.passed else 'FAIL'}",
        f"  {o.done:,} of {o.count:,} {unit}, {o.errors:,} errors, in {o.seconds:.1f} s ({o.rate:,.0f} {unit}/s);"
        f" warm-up {o.warmup:,} {unit}; {o.held} connections at a time",
        f"  server RSS: {_mib(o.rss_start_kib)} at start, {_mib(o.rss_warm_kib)} after warm-up,"
        f" {_mib(o.rss_min_kib)} to {_mib(o.rss_peak_kib)} during ({_mib(o.rss_late_min_kib)} at least in the last"
        f" quarter), {_mib(o.rss_end_kib)} at the end",
        f"  growth after warm-up: {o.growth_kib:+,} KiB (bound {o.bound_kib:,} KiB)",
        f"  server descriptors: {o.fds_start} before, {o.fds_peak} at most, {o.fds_end} at the end",
    ]
    if o.details.get("kinds"):
        lines.append("  cycle endings: " + ", ".join(f"{k} {v:,}" for k, v in o.details["kinds"].items()))
    lines += [f"  failed: {failure}" for failure in o.failures]
    lines += [f"  error: {message}" for message in o.error_samples]
    return "\n".join(lines)


def pinnable() -> Optional[Set[int]]:
    """This process's CPUs, if they include both the server's and the load's; else None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = os.sched_getaffinity(0)
    return cpus if {SERVER_CPU, LOAD_CPU} <= cpus else None


def pin_self(cpus: Set[int]) -> None:
    """Move this driver to the load CPU (the server went to SERVER_CPU)."""
    os.sched_setaffinity(0, {LOAD_CPU} & cpus)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bound-mib", type=float,
                        help="allowed RSS growth after warm-up (default: requests 4, connections 24)")
    common.add_argument("--interval", type=float, default=0.5, help="seconds between samples (default 0.5)")
    common.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="uvloop", help="the server's loop")
    common.add_argument("--no-extensions", action="store_true", help="server with FASTRPC_NO_EXTENSIONS=1")
    common.add_argument("--app", help="MODULE:ATTR of the server to soak (default: the demo)")
    common.add_argument("--connections", type=int, default=10, help="requests soak: connections (default 10)")
    common.add_argument("--depth", type=int, default=64, help="requests soak: in flight per connection (default 64)")
    common.add_argument("--concurrency", type=int, default=32, help="connections soak: cycles at once (default 32)")
    common.add_argument("--no-pin", action="store_true", help="leave both processes on any CPU")
    common.add_argument("--json", action="store_true", help="print one JSON object")
    sub = parser.add_subparsers(dest="soak", required=True)
    for name, default in (("requests", DEFAULT_REQUESTS), ("connections", DEFAULT_CYCLES)):
        one = sub.add_parser(name, parents=[common])
        one.add_argument("--count", type=int, default=default, help=f"(default {default:,})")
        one.add_argument("--warmup", type=int, help=f"{name} before the baseline (default 10 %% of the count)")
    both = sub.add_parser("all", parents=[common])
    both.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    both.add_argument("--cycles", type=int, default=DEFAULT_CYCLES)
    args = parser.parse_args(argv)
    counts = [args.requests, args.cycles] if args.soak == "all" else [args.count]
    if args.bound_mib is not None and args.bound_mib < 0:
        parser.error("--bound-mib must not be negative")
    if min(counts) < 1 or args.connections < 1 or args.depth < 1 or args.concurrency < 1 or not args.interval > 0:
        parser.error("counts, connections, depth and concurrency must be at least 1, the interval positive")
    if args.soak != "all" and args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    cpus = None if args.no_pin else pinnable()
    if cpus is None:
        compare.SERVER_CPU = -1  # compare.Running then pins the server nowhere
    soaks = ["requests", "connections"] if args.soak == "all" else [args.soak]
    outcomes = [run_soak(soak, args, cpus) for soak in soaks]
    if args.json:
        pinned = None if cpus is None else {"server": SERVER_CPU, "load": LOAD_CPU}
        print(json.dumps({"machine": machine(), "argv": sys.argv[1:], "pinned": pinned,
                          "soaks": [asdict(o) for o in outcomes]}, indent=1))
    else:
        print("\n".join(format_outcome(o) for o in outcomes))
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
