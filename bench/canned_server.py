"""A server that answers every frame with the same canned pong, to measure the load generator's ceiling.

It splits frames (fastrpc's compiled FrameReader) but parses none: each read
is answered with one pre-encoded reply per complete frame, in one write. It
is far cheaper per request than any real server, so a load generator driving
it shows how many requests per second the generator itself can do. Bench use
only: it answers anything, even a frame that is not a request.

    python bench/canned_server.py --port 9000
"""

from __future__ import annotations

import asyncio
import socket
from typing import Optional

from fastrpc.errors import FrameTooLarge
from fastrpc.framing import FrameReader
from minimal_server import main  # the same serving loop, another protocol

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


if __name__ == "__main__":
    main(CannedProtocol, "canned server", __doc__.splitlines()[0])
