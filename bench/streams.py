"""Server streaming, fastrpc against grpc.aio: items/s and the server's CPU per item.

    python bench/streams.py --kind fastrpc --port P --server-pid PID [--streams 4 --items 200000]
    python bench/streams.py --kind grpc --port P --server-pid PID

Opens one connection (one gRPC channel), runs ``--streams`` concurrent streams of the integers
0..N-1 (fastrpc: the demo's ``count``; gRPC: ``/fastrpc.bench.Peer/Count`` of bench/peer_grpc.py,
each message the JSON of one item), checks every item in order, and prints one JSON report: items,
seconds, the server's CPU seconds over exactly those items (from /proc) and this client's own CPU per
item. bench/compare.py runs it pinned to another CPU than the server's and puts the figures in its report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Tuple

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procstat import cpu_seconds  # noqa: E402

import fastrpc  # noqa: E402


Opened = Tuple[Callable[[int], AsyncIterator[int]], Callable[[], Awaitable[None]]]  # (stream of n, close)


async def fastrpc_streams(host: str, port: int, window: int) -> Opened:
    client = await fastrpc.connect(host, port)
    await client.call("ping")  # connected before the clock starts
    return (lambda n: client.stream("count", [n], window=window)), client.close


async def grpc_streams(host: str, port: int, window: int) -> Opened:
    from peer_grpc import COUNT_METHOD, Connection

    connection = Connection(host, port)
    await connection.channel.channel_ready()
    count = connection.channel.unary_stream(COUNT_METHOD)

    async def items(n: int) -> AsyncIterator[int]:
        async for message in count(orjson.dumps({"in": "count", "params": [n]})):
            yield orjson.loads(message)["item"]

    return items, connection.channel.close


async def checked(items: AsyncIterator[int]) -> int:
    """How many items came: 0, 1, 2... in order, else ValueError."""
    expected = 0
    async for item in items:
        if item != expected:
            raise ValueError(f"item {expected} was {item!r}")
        expected += 1
    return expected


async def main(args: argparse.Namespace) -> Dict[str, Any]:
    opened = {"fastrpc": fastrpc_streams, "grpc": grpc_streams}[args.kind]
    stream, close = await opened(args.host, args.port, args.window)
    cpu = cpu_seconds(args.server_pid)
    own = _own_cpu()
    started = time.perf_counter()
    try:
        total = sum(await asyncio.gather(*(checked(stream(args.items)) for _ in range(args.streams))))
    finally:
        await close()
    seconds = time.perf_counter() - started
    server_cpu = cpu_seconds(args.server_pid) - cpu
    client_cpu = _own_cpu() - own
    return {"kind": args.kind, "streams": args.streams, "items": total, "seconds": seconds,
            "items_per_s": total / seconds, "server_cpu_s": server_cpu, "server_us_per_item": server_cpu / total * 1e6,
            "client_us_per_item": client_cpu / total * 1e6}


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("fastrpc", "grpc"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--items", type=int, default=200_000, help="items per stream")
    parser.add_argument("--window", type=int, default=256, help="fastrpc's credit window")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
