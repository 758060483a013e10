"""What the benchmark peers with their own clients share: ``serve``, ``drive`` and ``client`` subcommands.

A peer script (bench/peer_grpc.py, bench/peer_msgpack.py) supplies a
``Peer``: its server, how to open and close one client connection, whose
``call(method, params)`` returns the reply's result, and how to describe a
failed call. This module turns that into the command line bench/compare.py
runs, with the same report as bench/drive.py prints for fastrpc's wire format:

- ``serve``: serve until SIGTERM or SIGINT.
- ``drive``: ``--depth`` calls in flight on each of ``--connections``
  connections; after ``--warmup`` seconds, a window of ``--duration`` seconds
  counts and checks the calls started in it, records their latency, and reads
  the server's CPU time (from /proc) at both ends. Calls still unanswered
  ``DRAIN_TIMEOUT`` seconds after the window are errors.
- ``client``: this process's own CPU per call, one connection issuing
  ``--batch`` concurrent pings at a time.

Exit status 3: the peer's library is not installed (one line on stderr says so).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional

import orjson

from procstat import cpu_seconds

from fastrpc.loadgen import LatencyHistogram

METHODS = ("echo", "ping")  # both return their params (null when none is given)
NOTHING = object()  # no params given: the request carries none
DRAIN_TIMEOUT = 5.0  # seconds the calls of the window still in flight get once it is over
MAX_ERROR_SAMPLES = 5

_clock = time.perf_counter


@dataclass(frozen=True)
class Peer:
    name: str  # for messages: "peer_grpc"
    missing: Optional[str]  # why the library cannot be used ("grpcio is not installed"), or None
    serve: Callable[[str, int], Awaitable[None]]
    connect: Callable[[str, int], Awaitable[Any]]  # -> a connection with ``async call(method, params=NOTHING)``
    close: Callable[[Any], Awaitable[None]]
    describe: Callable[[Exception], str]


async def drive(peer: Peer, args: argparse.Namespace) -> Dict[str, Any]:
    if args.payload is not None:
        params: Any = "a" * args.payload
    else:
        params = NOTHING if args.params is None else orjson.loads(args.params)
    expected = None if params is NOTHING else params
    connections = await asyncio.gather(*(peer.connect(args.host, args.port) for _ in range(args.connections)))
    histogram = LatencyHistogram()
    samples: List[str] = []
    tally = {"successes": 0, "errors": 0}

    def error(message: str) -> None:
        tally["errors"] += 1
        message = " ".join(message.split())[:200]  # one line
        if len(samples) < MAX_ERROR_SAMPLES and message not in samples:
            samples.append(message)

    start = _clock() + args.warmup
    end = start + args.duration

    async def worker(connection: Any) -> None:
        while True:
            sent = _clock()
            if sent >= end:
                return
            counted = sent >= start
            try:
                result = await connection.call(args.method, params)
            except asyncio.CancelledError:
                if counted:
                    error(f"no reply within {DRAIN_TIMEOUT:g} s after the window closed")
                raise
            except Exception as exc:
                result, failure = None, peer.describe(exc)
            else:
                failure = None if result == expected else f"unexpected result: {result!r:.100}"
            if counted:
                histogram.record(_clock() - sent)
                if failure is None:
                    tally["successes"] += 1
                else:
                    error(failure)

    try:
        workers = [asyncio.ensure_future(worker(c)) for c in connections for _ in range(args.depth)]
        await asyncio.sleep(start - _clock())
        cpu_start = cpu_seconds(args.server_pid)
        await asyncio.sleep(end - _clock())
        _, late = await asyncio.wait(workers, timeout=DRAIN_TIMEOUT)
        for task in late:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        # Waiting for replies that never came is no time the server spent answering.
        seconds = (end if late else _clock()) - start
        try:
            server_cpu: Optional[float] = cpu_seconds(args.server_pid) - cpu_start
        except OSError:  # the server is gone: its CPU is unknown
            server_cpu = None
    finally:
        await asyncio.gather(*(peer.close(c) for c in connections), return_exceptions=True)
    requests = tally["successes"] + tally["errors"]
    return {
        "requests": requests,
        "successes": tally["successes"],
        "errors": tally["errors"],
        "seconds": seconds,
        "requests_per_s": requests / seconds,
        "p50": histogram.percentile(0.5) * 1e3,
        "p90": histogram.percentile(0.9) * 1e3,
        "p99": histogram.percentile(0.99) * 1e3,
        "p999": histogram.percentile(0.999) * 1e3,
        "max": histogram.max * 1e3,
        "server_cpu_s": server_cpu,
        "error_samples": samples,
    }


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread, grpc's C threads too
    return usage.ru_utime + usage.ru_stime


async def client(peer: Peer, args: argparse.Namespace) -> Dict[str, Any]:
    connection = await peer.connect(args.host, args.port)
    try:
        async def batch() -> None:
            results = await asyncio.gather(*(connection.call("ping") for _ in range(args.batch)))
            if any(result is not None for result in results):
                raise ValueError(f"unexpected results: {results[:3]!r:.100}")

        warm_until = _clock() + 0.5
        while _clock() < warm_until:
            await batch()
        calls = 0
        cpu_start, start = _cpu_self(), _clock()
        while _clock() - start < args.duration:
            await batch()
            calls += args.batch
        seconds, cpu = _clock() - start, _cpu_self() - cpu_start
    finally:
        await peer.close(connection)
    return {"calls": calls, "seconds": seconds, "client_cpu_s": cpu}


def parse_args(description: str, argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("serve", "drive", "client"):
        command = commands.add_parser(name)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, required=True)
        if name == "drive":
            command.add_argument("--connections", type=int, default=1)
            command.add_argument("--depth", type=int, default=1)
            command.add_argument("--duration", type=float, default=3.0)
            command.add_argument("--warmup", type=float, default=1.0)
            command.add_argument("--method", choices=METHODS, default="ping")
            params = command.add_mutually_exclusive_group()
            params.add_argument("--params", help="a JSON value (default: no params)")
            params.add_argument("--payload", type=int, metavar="BYTES",
                                help="params: a string of BYTES letters (too big for a command line as JSON)")
            command.add_argument("--server-pid", type=int, required=True)
        elif name == "client":
            command.add_argument("--batch", type=int, default=64)
            command.add_argument("--duration", type=float, default=3.0)
    return parser.parse_args(argv)


def main(peer: Peer, description: str, argv: Optional[List[str]] = None) -> int:
    args = parse_args(description, argv)
    if peer.missing is not None:
        print(peer.missing, file=sys.stderr)
        return 3
    try:
        if args.command == "serve":
            asyncio.run(peer.serve(args.host, args.port))
            return 0
        report = asyncio.run(drive(peer, args) if args.command == "drive" else client(peer, args))
    except Exception as exc:  # could not run at all: one line saying why
        print(f"{peer.name} {args.command}: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    print(orjson.dumps(report).decode())
    return 0
