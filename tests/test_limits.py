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

from .conftest import RawConnection, demo_server, frame, free_port, serving, wait_listening, within

STEP = 5.0  # seconds any one step of a test may take


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


@pytest.mark.parametrize("kwargs, match", [
    ({"max_in_flight": 0}, "max_in_flight"), ({"max_connections": 0}, "max_connections"),
    ({"idle_timeout": 0}, "idle_timeout"), ({"frame_timeout": -1}, "frame_timeout"),
])
def test_bad_limits(kwargs: Dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fastrpc.Server(**kwargs)


def test_max_connections(run: Any) -> None:
    # Every step is bounded (STEP seconds, under the client's own 10 s connect timeout) and names itself
    # when it fails, with the TCP sockets on the port: once on CPython 3.13 (asyncio loop, pure-Python
    # framing) this test hung in a connect until the 30 s limit and said no more. See conftest.within.
    async def main() -> None:
        server = demo_server(max_connections=2)
        async with serving(server) as port:
            first = await within("first connect", fastrpc.connect("127.0.0.1", port), STEP, port)
            second = await within("second connect", fastrpc.connect("127.0.0.1", port), STEP, port)
            third = await RawConnection.open(port, timeout=STEP)
            reply = orjson.loads(await within("the busy reply", third.read_frame(), STEP, port))
            assert reply["error"]["code"] == -32001 and "maximum of 2 connections" in reply["error"]["message"]
            assert await within("the refused connection's end", third.at_eof(), STEP, port)
            assert await first.call("add", [1, 2], timeout=STEP) == 3  # still served
            assert await second.call("ping", timeout=STEP) is None
            await within("closing the first", first.close(), STEP, port)
            # The server frees the place when it sees the first connection go: wait for that, not a fixed time.
            deadline = time.monotonic() + STEP
            while len(server._connections) >= 2:
                assert time.monotonic() < deadline, f"the server still counts {len(server._connections)} connections"
                await asyncio.sleep(0.01)
            fourth = await within("fourth connect", fastrpc.connect("127.0.0.1", port), STEP, port)
            assert await fourth.call("ping", 4, timeout=STEP) == 4  # a place was free again
            for client in (second, fourth):
                await within("closing a client", client.close(), STEP, port)
            await within("closing the refused connection", third.close(), STEP, port)

    run(main())


def test_idle_connections_are_closed(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server(idle_timeout=0.3)) as port:
            idle = await RawConnection.open(port)
            busy = await fastrpc.connect("127.0.0.1", port)
            sleeping = asyncio.ensure_future(busy.call("sleep", 0.8))  # in flight: not idle
            chatty = await fastrpc.connect("127.0.0.1", port)
            started = time.monotonic()
            for _ in range(8):  # keeps talking: never idle for 0.3 s
                assert await chatty.call("ping") is None
                await asyncio.sleep(0.1)
            assert await asyncio.wait_for(idle.at_eof(), 5)
            assert 0.3 <= time.monotonic() - started  # not before its time
            assert await sleeping == 0.8 and await chatty.call("ping", 1) == 1
            await asyncio.sleep(0.6)  # now both are idle
            with pytest.raises(fastrpc.ConnectionClosed):
                await busy.call("ping")
            for client in (busy, chatty):
                await client.close()
            await idle.close()

    run(main())


def test_slow_frames_are_cut_off(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server(frame_timeout=0.3)) as port:
            slow = await RawConnection.open(port)
            data = frame(b'{"in": "echo", "params": "' + b"x" * 100 + b'", "id": 1}')

            async def trickle() -> None:  # the header and a little, then a byte every 50 ms
                await slow.send(data[:20])
                for i in range(20, len(data) - 1):
                    await asyncio.sleep(0.05)
                    slow.writer.write(data[i:i + 1])

            sending = asyncio.ensure_future(trickle())
            started = time.monotonic()
            reply = orjson.loads(await asyncio.wait_for(slow.read_frame(), 5))
            assert time.monotonic() - started >= 0.3
            assert reply["error"]["code"] == -32003 and "took more than 0.3 s" in reply["error"]["message"]
            assert await slow.at_eof()
            sending.cancel()
            # A client sending whole frames, however far apart, is not a slow sender.
            patient = await fastrpc.connect("127.0.0.1", port)
            for _ in range(4):
                assert await patient.call("echo", "x") == "x"
                await asyncio.sleep(0.2)
            await patient.close()
            await slow.close()

    run(main())


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
        unsent = memoryview(b"")  # a send may take part of a batch: the rest goes first, or frames break
        with fastrpc.SyncClient("127.0.0.1", port, timeout=15) as other:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    unsent = unsent or memoryview(request)
                    count = flood.send(unsent)
                    sent += count
                    unsent = unsent[count:]
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


def test_async_client_bounds_its_pending_calls(run: Any) -> None:
    async def main() -> None:
        server, seen = tracking_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, max_pending=5) as client:
            calls = [asyncio.ensure_future(client.call("hold", [0.1])) for _ in range(20)]
            await asyncio.sleep(0.05)
            assert client._link.core.pending == 5 and seen["now"] == 5  # the other 15 wait in the client, unsent
            assert sorted(await asyncio.gather(*calls)) == list(range(1, 21))
            assert seen["most"] == 5
            # Waiting for room counts against the call's timeout.
            blockers = [asyncio.ensure_future(client.call("hold", [0.5])) for _ in range(5)]
            await asyncio.sleep(0.05)
            with pytest.raises(fastrpc.CallTimeout, match="waiting to be sent"):
                await client.call("hold", [0], timeout=0.1)
            await asyncio.gather(*blockers)
        with pytest.raises(ValueError, match="max_pending"):
            await fastrpc.connect("127.0.0.1", port, max_pending=0)

    run(main())
