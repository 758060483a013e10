"""The floor for server_bench.py: the least work a ping server over fastrpc's wire format can do.

Each frame is a 4-byte big-endian length and a UTF-8 JSON body. For every
request this server does only what any server must: split the frame, parse it
with orjson, build ``{"out": "pong", "result": params, "id": id}`` and encode it
with orjson. There is no method registry, no validation and no error handling:
it exists so that fastrpc's CPU per request can be compared with a number that
nothing Python-level can beat by much.

    python bench/minimal_server.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys

import orjson
import uvloop

# Bound once at import: attribute lookups per frame are a measurable share of
# a few microseconds.
_loads = orjson.loads
_dumps = orjson.dumps
_header = struct.Struct(">I")
_unpack_from = _header.unpack_from
_pack = _header.pack


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
            body = _dumps({"out": "pong", "result": request["params"], "id": request["id"]})
            append(_pack(len(body)))
            append(body)
            pos = stop
        self._rest = data[pos:]
        if out:
            self._transport.write(b"".join(out))


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(PingProtocol, host, port, backlog=1024)
    # Same wording as fastrpc's log line, so the same readiness check fits both.
    print(f"minimal server listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # SIGTERM keeps its default action (exit at once): there is no state to save.
    try:
        uvloop.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
