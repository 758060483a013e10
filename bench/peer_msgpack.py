"""Comparison peer: msgpack-RPC over TCP on asyncio, with the ``aio-msgpack-rpc`` library (PyPI).

What it represents: an off-the-shelf pure-asyncio RPC library with a binary
encoding. Requests and replies are MessagePack-RPC messages
(``[0, msgid, method, [params]]`` -> ``[1, msgid, error, result]``) over asyncio
streams, one task per request on the server, as aio-msgpack-rpc 0.2.0 does
them. The methods have fastrpc's demo semantics: ``ping(params=None)`` and
``echo(params=None)`` both return their params (null when none is given).
Server and clients run on the default asyncio loop, which is what the library
is written and documented for (it works on any asyncio loop).

    python bench/peer_msgpack.py serve --host 127.0.0.1 --port 9002
    python bench/peer_msgpack.py drive --port 9002 --connections 10 --depth 64 --duration 3 --warmup 1 \\
        --method echo --params '{"a": [1, 2]}' --server-pid PID
    python bench/peer_msgpack.py drive --port 9002 --connections 1 --depth 4 --method echo --payload 4194304 \\
        --server-pid PID
    python bench/peer_msgpack.py client --port 9002 --batch 64 --duration 3

``serve`` runs until SIGTERM or SIGINT. ``drive`` keeps ``--depth`` calls in
flight on each of ``--connections`` connections, checks every reply, and
prints one JSON report: counts, latency percentiles in ms and the server's
CPU seconds over the window. ``client`` measures this process's own CPU for
one connection issuing ``--batch`` concurrent pings at a time. Exit status 3:
aio-msgpack-rpc is not installed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

try:
    import aio_msgpack_rpc
except ImportError:  # reported by peer_load.main(), so that the comparison can say why this peer is missing
    aio_msgpack_rpc = None  # type: ignore[assignment]

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for peer_load, however this file is run
import peer_load  # noqa: E402
from peer_load import NOTHING  # noqa: E402

CONNECT_TIMEOUT = 10.0


# -- server ---------------------------------------------------------------------------


class Peer:
    """The methods: aio-msgpack-rpc calls ``getattr(handler, method)(*params)``."""

    def ping(self, params: Any = None) -> Any:
        return params

    def echo(self, params: Any = None) -> Any:
        return params


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(aio_msgpack_rpc.Server(Peer()), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"aio-msgpack-rpc peer listening on {host}:{bound}", file=sys.stderr, flush=True)
    await stop.wait()
    # No wait_closed(): the library's connection tasks end only when their
    # clients hang up; asyncio.run cancels them on the way out.
    server.close()


# -- client ---------------------------------------------------------------------------


class Connection:
    """One TCP connection: ``call`` sends a request and returns the reply's result."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.client = aio_msgpack_rpc.Client(reader, writer)

    async def call(self, method: str, params: Any = NOTHING) -> Any:
        if params is NOTHING:
            return await self.client.call(method)
        return await self.client.call(method, params)


def describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"  # a remote error is an RPCResponseError holding the server's message


async def connect(host: str, port: int) -> Connection:
    return Connection(*await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT))


async def close(connection: Connection) -> None:
    connection.client.close()


# -- command line ---------------------------------------------------------------------

PEER = peer_load.Peer(name="peer_msgpack", missing="aio-msgpack-rpc is not installed" if aio_msgpack_rpc is None else None,
                      serve=serve, connect=connect, close=close, describe=describe)

if __name__ == "__main__":
    sys.exit(peer_load.main(PEER, __doc__.splitlines()[0]))
