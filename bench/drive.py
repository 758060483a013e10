"""Drives any server that speaks fastrpc's wire format, for bench/compare.py.

``drive`` loads a server with ``fastrpc.loadgen`` (the engine of ``fastrpc
bench``): a warmup run, then a measured run with the server's CPU time read
from /proc at both ends, so CPU per request covers exactly the measured
requests (and the drain of their replies). ``client`` measures the other side:
the CPU this process spends per call with fastrpc's async client (``gather``
of a batch, or its ``call_many`` with ``--kind async-many``) or with ``SyncClient.call_many``.

Both print one JSON object on stdout, the format bench/peer_grpc.py and
bench/peer_msgpack.py print for their own libraries.

    python bench/drive.py drive --port 9000 --connections 50 --depth 1 --duration 5 --warmup 1 --server-pid 1234
    python bench/drive.py client --port 9000 --batch 64 --duration 3 --kind sync
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any, Dict

import uvloop

from fastrpc import SyncClient, connect
from fastrpc.loadgen import run_load
from fastrpc.protocol import ABSENT
from procstat import cpu_seconds

CLIENT_WARMUP = 0.5  # seconds of unmeasured calls before the client's window


async def drive(args: argparse.Namespace) -> Dict[str, Any]:
    params = "a" * args.payload if args.payload is not None else args.params
    shape = dict(method=args.method, params=params, connections=args.connections, depth=args.depth)
    if args.warmup:
        await run_load(args.host, args.port, duration=args.warmup, **shape)
    before = cpu_seconds(args.server_pid)
    report = await run_load(args.host, args.port, duration=args.duration, **shape)
    result = report.to_dict()
    result["server_cpu_s"] = cpu_seconds(args.server_pid) - before
    return result


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_calls(batch: Any, duration: float) -> Dict[str, Any]:
    """Run ``batch()`` (one batch of calls, returning how many) for ``duration`` seconds after a warmup."""
    end = time.monotonic() + CLIENT_WARMUP
    while time.monotonic() < end:
        batch()
    calls = 0
    cpu = own_cpu_seconds()
    start = time.monotonic()
    end = start + duration
    while time.monotonic() < end:
        calls += batch()
    return {"calls": calls, "seconds": time.monotonic() - start, "client_cpu_s": own_cpu_seconds() - cpu}


def client(args: argparse.Namespace) -> Dict[str, Any]:
    if args.kind == "sync":
        with SyncClient(args.host, args.port, timeout=30) as sync:
            calls = [("ping",)] * args.batch
            return measure_calls(lambda: len(sync.call_many(calls)), args.duration)

    loop = uvloop.new_event_loop()
    try:
        async_client = loop.run_until_complete(connect(args.host, args.port, timeout=30))

        pings = [("ping",)] * args.batch

        async def one_batch() -> int:
            if args.kind == "async-many":  # the async client's own batch call
                return len(await async_client.call_many(pings))
            return len(await asyncio.gather(*[async_client.call("ping") for _ in range(args.batch)]))

        result = measure_calls(lambda: loop.run_until_complete(one_batch()), args.duration)
        loop.run_until_complete(async_client.close())
        return result
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("drive", help="load a server; report throughput, latency and its CPU per request")
    load.add_argument("--connections", type=int, default=50)
    load.add_argument("--depth", type=int, default=1)
    load.add_argument("--duration", type=float, default=5.0)
    load.add_argument("--warmup", type=float, default=1.0)
    load.add_argument("--method", default="ping")
    params = load.add_mutually_exclusive_group()
    params.add_argument("--params", type=json.loads, default=ABSENT)
    params.add_argument("--payload", type=int, metavar="BYTES",
                        help="params: a string of BYTES letters (too big for a command line as JSON)")
    load.add_argument("--server-pid", type=int, required=True)
    calls = commands.add_parser("client", help="CPU per call of fastrpc's own clients")
    calls.add_argument("--batch", type=int, default=64)
    calls.add_argument("--duration", type=float, default=3.0)
    calls.add_argument("--kind", choices=["async", "async-many", "sync"], default="async")
    for command in (load, calls):
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    result = uvloop.run(drive(args)) if args.command == "drive" else client(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
