"""Both brakes at once: the in-flight limit and a client slow to read its replies."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Dict, List

import orjson
import pytest

from fastrpc import ErrorCode
from fastrpc.server import HANG_UP_LINGER

from .conftest import demo_server, frame, serving, serving_in_thread

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


async def _raw_connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _read_replies(sock: socket.socket, count: int, seconds: float) -> List[Dict[str, Any]]:
    loop = asyncio.get_running_loop()
    data = bytearray()

    async def fill(n: int) -> None:
        while len(data) < n:
            chunk = await loop.sock_recv(sock, 1 << 20)
            if not chunk:
                raise ConnectionError(f"server closed the connection after {len(replies)} replies")
            data.extend(chunk)

    async def read_all() -> None:
        while len(replies) < count:
            await fill(4)
            size = int.from_bytes(data[:4], "big")
            await fill(4 + size)
            replies.append(orjson.loads(bytes(data[4:4 + size])))
            del data[:4 + size]

    replies: List[Dict[str, Any]] = []
    await asyncio.wait_for(read_all(), seconds)
    return replies


def test_a_stopping_server_answers_held_frames_once_a_slow_reader_reads(run: Any) -> None:
    """Frames held past max_in_flight while the client does not read are requests the server read:
    a graceful stop answers them (refused, as they had not started) instead of closing over them."""
    async def main() -> None:
        server = demo_server(max_in_flight=2, shutdown_grace=5)
        async with serving(server) as port:
            sock = await _raw_connect(port)
            try:
                bodies = [{"in": "grow", "params": [4_000_000], "id": i} for i in range(4)]  # fill every buffer
                bodies += [{"in": "nap", "params": [0.05, i], "id": i} for i in range(4, 10)]  # 2 run, 4 held
                await asyncio.get_running_loop().sock_sendall(sock, b"".join(frame(orjson.dumps(b)) for b in bodies))
                await asyncio.sleep(0.3)
                server.close()
                await asyncio.sleep(1.0)  # past LINGER and DRAIN_LIMIT, reading nothing
                replies = await _read_replies(sock, 10, 10)
            finally:
                sock.close()
        by_id = {reply["id"]: reply for reply in replies}
        assert sorted(by_id) == list(range(10))
        assert [len(by_id[i]["result"]) for i in range(4)] == [4_000_000] * 4
        assert [by_id[i]["result"] for i in (4, 5)] == [4, 5]
        assert [by_id[i]["error"]["code"] for i in range(6, 10)] == [ErrorCode.SHUTTING_DOWN] * 4

    run(main())


def test_a_half_closed_peer_that_never_reads_does_not_hold_the_server(run: Any) -> None:
    """A client that sends, shuts its write side and never reads its (large) replies: its socket is
    dropped HANG_UP_LINGER after the replies are written, and a stop finishes in bounded time."""
    async def main() -> None:
        server = demo_server(shutdown_grace=0.5)

        @server.method
        async def big(n: int) -> str:
            await asyncio.sleep(0.05)  # the half-close arrives while the calls run
            return "y" * n

        async with serving(server) as port:
            sock = await _raw_connect(port)
            try:
                requests = b"".join(frame(orjson.dumps({"in": "big", "params": [4_000_000], "id": i})) for i in range(4))
                await asyncio.get_running_loop().sock_sendall(sock, requests)
                sock.shutdown(socket.SHUT_WR)
                await asyncio.sleep(0.2)
                server.close()
                await asyncio.wait_for(server.wait_closed(), HANG_UP_LINGER + 3)
            finally:
                sock.close()

    run(main())
