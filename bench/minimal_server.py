"""The floor for bench/compare.py: the least work a ping/echo server can do.

Each frame is a 4-byte big-endian length and a UTF-8 JSON body. For every
request this server does only what any server must: split the frame, parse it
with orjson, build ``{"out": "pong", "result": params, "id": id}`` (``"echo"``
for echo; ``id`` only when the request has one) and encode it with orjson.
There is no method registry and no validation: two string comparisons pick
the reply, any other method gets the method-not-found error, and a frame that
is not a request object breaks its connection. It exists so that fastrpc's
CPU per request can be compared with a number that nothing Python-level can
beat by much. SIGTERM or SIGINT stops it (exit status 0).

    python bench/minimal_server.py --host 127.0.0.1 --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
import sys
from typing import Callable

import orjson
import uvloop

# Bound once at import: attribute lookups per frame are a measurable share of
# a few microseconds.
_loads = orjson.loads
_dumps = orjson.dumps
_header = struct.Struct(">I")
_unpack_from = _header.unpack_from
_pack = _header.pack
_NOT_FOUND = {"code": -32601, "message": "method not found"}


class PingProtocol(asyncio.Protocol):
    """One connection: answers every complete frame of one read in one write.

    A plain ``Protocol`` rather than a ``BufferedProtocol``: for frames of
    tens of bytes, uvloop handing over one ``bytes`` per read is cheaper than
    two Python-level calls (``get_buffer``/``buffer_updated``) plus the
    memoryview bookkeeping.
    """

    __slots__ = ("_transport", "_rest")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport: asyncio.Transport = transport  # type: ignore[assignment]
        self._rest = b""  # the start of a frame that a read cut in two
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        end = len(data)
        pos = 0
        out = []
        append = out.append
        while end - pos >= 4:
            stop = pos + 4 + _unpack_from(data, pos)[0]
            if stop > end:
                break
            request = _loads(data[pos + 4 : stop])
            method = request["in"]
            if method == "ping":
                reply = {"out": "pong", "result": request.get("params")}
            elif method == "echo":
                reply = {"out": "echo", "result": request.get("params")}
            else:
                reply = {"out": "error", "error": _NOT_FOUND}
            rid = request.get("id")
            if rid is not None:
                reply["id"] = rid
            body = _dumps(reply)
            append(_pack(len(body)))
            append(body)
            pos = stop
        self._rest = data[pos:]
        if out:
            self._transport.write(b"".join(out))


async def serve(host: str, port: int, protocol: Callable[[], asyncio.BaseProtocol] = PingProtocol,
                name: str = "minimal server") -> None:
    """Serve ``protocol`` until SIGINT or SIGTERM (bench/canned_server.py serves its own this way)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(protocol, host, port, backlog=1024)
    # Same wording as fastrpc's log line, so the same readiness check fits both.
    print(f"{name} listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:  # closing it closes the connections too (uvloop)
        await stop.wait()


def main(protocol: Callable[[], asyncio.BaseProtocol] = PingProtocol, name: str = "minimal server",
         description: str = __doc__.splitlines()[0]) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, protocol, name))


if __name__ == "__main__":
    main()
