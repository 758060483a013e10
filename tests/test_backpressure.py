"""Both brakes at once: the in-flight limit and a client slow to read its replies."""

from __future__ import annotations

import socket
import time
from typing import Any, Dict

import orjson
import pytest

from .conftest import demo_server, frame, serving_in_thread

CALLS = 12
REPLY = 1_000_000  # bytes: two replies fill the socket buffers and the transport's high-water mark


def _read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        chunks = []
        while n:
            chunk = sock.recv(min(n, 1 << 20))
            if not chunk:
                raise ConnectionError("server closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    return exactly(int.from_bytes(exactly(4), "big"))


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_held_frames_are_answered_once_a_slow_reader_reads(loop_kind: str, framing_impl: Any) -> None:
    """At max_in_flight with the write buffer full too, the frames held back are taken up once the
    client reads: every request is answered (it used to stall until the frame timeout hung up)."""
    server = demo_server(max_in_flight=2, frame_timeout=30)

    @server.method
    async def big(i: int) -> Dict[str, Any]:
        return {"i": i, "pad": "x" * REPLY}

    with serving_in_thread(server, loop_kind) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(b"".join(frame(orjson.dumps({"in": "big", "params": [i], "id": i})) for i in range(CALLS)))
            time.sleep(1.0)  # read nothing: the server is at its in-flight limit and its writes are paused
            sock.settimeout(10)  # a stalled server shows as a timeout here
            ids = sorted(orjson.loads(_read_frame(sock))["id"] for _ in range(CALLS))
    assert ids == list(range(CALLS))
