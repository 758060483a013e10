"""Limits and backpressure: calls in flight per connection, clients that do not read their replies."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import orjson
import pytest

import fastrpc

from .conftest import frame, free_port, serving, wait_listening


def tracking_server(**kwargs: Any) -> "tuple[fastrpc.Server, Dict[str, int]]":
    server = fastrpc.Server(shutdown_grace=0.5, **kwargs)
    seen = {"now": 0, "most": 0, "done": 0}

    @server.method
    async def hold(seconds: float) -> int:
        seen["now"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        await asyncio.sleep(seconds)
        seen["now"] -= 1
        seen["done"] += 1
        return seen["done"]

    return server, seen


def test_in_flight_limit_pauses_reading(run: Any) -> None:
    async def main() -> None:
        server, seen = tracking_server(max_in_flight=10)
        async with serving(server) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = frame(b'{"in": "hold", "params": [0.2]}')
            for _ in range(5):  # five writes of ten: each fills the limit on its own
                writer.write(request * 10)
                await writer.drain()
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
            assert seen["now"] == 10  # the other 40 wait in the socket, unread
            replies = []
            for _ in range(50):
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 10), "big")
                replies.append(orjson.loads(await reader.readexactly(size))["result"])
            assert replies == list(range(1, 51))  # every call answered, in order
            assert seen["most"] == 10
            writer.close()

    run(main())


def test_bad_in_flight_limit() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        fastrpc.Server(max_in_flight=0)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read the server's memory")
def test_client_that_never_reads_is_not_buffered_for(tmp_path: Path) -> None:
    """A client floods echo requests and reads nothing: the server stops reading it, its memory stays
    bounded, and another client is served all along."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastrpc", "serve", "--port", str(port), "--log-level", "WARNING"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    flood = socket.socket()
    try:
        wait_listening(proc, port)  # type: ignore[arg-type]
        before = rss_bytes(proc.pid)
        flood.connect(("127.0.0.1", port))
        flood.setblocking(False)
        request = frame(b'{"in": "echo", "params": "' + b"x" * 16_000 + b'"}') * 16  # 256 KiB per send
        sent = 0
        with fastrpc.SyncClient("127.0.0.1", port, timeout=5) as other:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    sent += flood.send(request)
                except BlockingIOError:  # the server stopped reading: the socket buffers are full
                    assert other.call("echo", "still served") == "still served"
                    time.sleep(0.01)
            grown = rss_bytes(proc.pid) - before
            assert other.call_many([("ping", i) for i in range(100)]) == list(range(100))
        # Without backpressure the server reads all it is sent (hundreds of MB in 3 s) and keeps the
        # replies; with it, a few MB of socket buffers and one write buffer's worth.
        print(f"flooder sent {sent:,} bytes; server RSS grew {grown:,} bytes")
        assert sent < 64 * 2**20, sent
        assert grown < 64 * 2**20, grown
    finally:
        flood.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
