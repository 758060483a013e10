"""A server that answers every frame with the same canned pong, to measure the load generator's ceiling.

It splits frames (fastrpc's compiled FrameReader) but parses none: each read
is answered with one pre-encoded reply per complete frame, in one write. It
is far cheaper per request than any real server, so a load generator driving
it shows how many requests per second the generator itself can do. Bench use
only: it answers anything, even a frame that is not a request.

    python bench/canned_server.py --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from typing import Optional

import uvloop

from fastrpc.errors import FrameTooLarge
from fastrpc.framing import FrameReader

_BODY = b'{"out": "pong", "result": "sha params"}'
CANNED = len(_BODY).to_bytes(4, "big") + _BODY


class CannedProtocol(asyncio.BufferedProtocol):
    """One connection: counts the complete frames of a read and writes as many canned replies."""

    def __init__(self) -> None:
        self._reader = reader = FrameReader()
        self.get_buffer = reader.get_buffer  # type: ignore[method-assign]  # looked up once per connection
        self._transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get_buffer(self, sizehint: int) -> memoryview:  # replaced per instance in __init__
        return self._reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        reader = self._reader
        reader.buffer_updated(nbytes)
        next_frame = reader.next_frame
        transport = self._transport
        count = 0
        aligned = True
        try:
            while next_frame() is not None:
                count += 1
        except FrameTooLarge:
            aligned = False
        if count:
            transport.write(CANNED * count)  # type: ignore[union-attr]
        if not aligned:
            # The stream no longer lines up with frames: answer what came before, then hang up.
            transport.close()  # type: ignore[union-attr]


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop: "asyncio.Future[None]" = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_stop)
    server = await loop.create_server(CannedProtocol, host, port, backlog=1024)
    print(f"canned server listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
