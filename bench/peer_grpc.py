"""Comparison peer: gRPC (``grpc.aio``) unary calls carrying fastrpc's JSON bodies.

What it represents: the same request and reply bodies fastrpc exchanges
(``{"in": "ping"|"echo", "params": ...}`` -> ``{"out": "pong"|"echo", "result": ...}``,
encoded and decoded with orjson), sent as the bytes of one gRPC unary call,
``/fastrpc.bench.Peer/Call``, over HTTP/2. No protobuf and no generated code:
a generic handler with no serializers passes bytes in and bytes out, so the
difference from fastrpc is gRPC's transport and call machinery alone. Server
and clients run on the default asyncio loop (grpc.aio supports only that and
its own). Messages of up to 64 MiB are allowed both ways.

    python bench/peer_grpc.py serve --host 127.0.0.1 --port 9001
    python bench/peer_grpc.py drive --port 9001 --connections 10 --depth 64 --duration 3 --warmup 1 \\
        --method echo --params '{"a": [1, 2]}' --server-pid PID
    python bench/peer_grpc.py drive --port 9001 --connections 1 --depth 4 --method echo --payload 4194304 \\
        --server-pid PID
    python bench/peer_grpc.py client --port 9001 --batch 64 --duration 3

``serve`` runs until SIGTERM or SIGINT. ``drive`` keeps ``--depth`` calls in
flight on each of ``--connections`` channels (each its own TCP connection),
checks every reply, and prints one JSON report: counts, latency percentiles
in ms and the server's CPU seconds over the window. ``client`` measures this
process's own CPU for one channel issuing ``--batch`` concurrent pings at a
time. Exit status 3: grpcio is not installed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any, AsyncIterator

import orjson

try:
    import grpc
    import grpc.aio
except ImportError:  # reported by peer_load.main(), so that the comparison can say why this peer is missing
    grpc = None  # type: ignore[assignment]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for peer_load, however this file is run
import peer_load  # noqa: E402
from peer_load import NOTHING  # noqa: E402

SERVICE = "fastrpc.bench.Peer"
METHOD = f"/{SERVICE}/Call"
COUNT_METHOD = f"/{SERVICE}/Count"  # server streaming, for bench/streams.py
MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
OUT = {"ping": "pong", "echo": "echo"}
CONNECT_TIMEOUT = 10.0


# -- server ---------------------------------------------------------------------------


async def handle(request: bytes, context: "grpc.aio.ServicerContext") -> bytes:
    body = orjson.loads(request)
    method = body.get("in")
    if method not in OUT:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"no method {method!r}")
    return orjson.dumps({"out": OUT[method], "result": body.get("params")})


async def count(request: bytes, context: "grpc.aio.ServicerContext") -> AsyncIterator[bytes]:
    """Stream the integers 0..n-1 of ``{"params": [n]}``, each message one item's JSON: fastrpc's ``count``."""
    for i in range(orjson.loads(request)["params"][0]):
        yield orjson.dumps({"item": i})


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=OPTIONS)
    handlers = {"Call": grpc.unary_unary_rpc_method_handler(handle), "Count": grpc.unary_stream_rpc_method_handler(count)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"grpc.aio peer listening on {host}:{bound}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(grace=0.5)


# -- client ---------------------------------------------------------------------------


class Connection:
    """One channel (its own TCP connection): ``call`` sends a request and returns the reply's result."""

    def __init__(self, host: str, port: int) -> None:
        # A local subchannel pool: without it, channels to one target share one connection.
        options = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        self.channel = grpc.aio.insecure_channel(f"{host}:{port}", options=options)
        self._call = self.channel.unary_unary(METHOD)

    async def call(self, method: str, params: Any = NOTHING) -> Any:
        request = {"in": method} if params is NOTHING else {"in": method, "params": params}
        reply = orjson.loads(await self._call(orjson.dumps(request)))
        if type(reply) is not dict or reply.get("out") != OUT[method] or "result" not in reply:
            raise ValueError(f"unexpected reply: {reply!r:.100}")
        return reply["result"]


def describe(exc: Exception) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"gRPC {exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


async def connect(host: str, port: int) -> Connection:
    connection = Connection(host, port)
    try:
        await asyncio.wait_for(connection.channel.channel_ready(), CONNECT_TIMEOUT)
    except asyncio.TimeoutError:
        await connection.channel.close()
        raise ConnectionError(f"no connection to {host}:{port} within {CONNECT_TIMEOUT:g} s") from None
    return connection


async def close(connection: Connection) -> None:
    await connection.channel.close()


# -- command line ---------------------------------------------------------------------

PEER = peer_load.Peer(name="peer_grpc", missing="grpcio is not installed" if grpc is None else None,
                      serve=serve, connect=connect, close=close, describe=describe)

if __name__ == "__main__":
    sys.exit(peer_load.main(PEER, __doc__.splitlines()[0]))
