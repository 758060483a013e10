"""Graceful shutdown: running calls finish or are answered, new ones are refused, no reply is lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, List

import orjson
import pytest

import fastrpc
from fastrpc.protocol import encode_request

from .conftest import RawConnection, demo_server, frame, free_port, serving, wait_listening


def test_running_calls_finish_and_new_ones_are_refused(run: Any) -> None:
    async def main() -> None:
        server = demo_server(shutdown_grace=10)
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            running = [asyncio.ensure_future(client.call("sleep", 0.3)) for _ in range(20)]
            await asyncio.sleep(0.1)
            server.close()
            assert server.closing
            with pytest.raises(fastrpc.ShuttingDown, match="shutting down") as refused:
                await client.call("ping")
            assert refused.value.never_ran and refused.value.data == {"started": False}
            assert await asyncio.gather(*running) == [0.3] * 20  # within the grace: answered in full
            started = time.monotonic()
            await asyncio.wait_for(server.wait_closed(), 5)
            assert time.monotonic() - started < 2  # closed once nothing was owed, not after the grace
            with pytest.raises(fastrpc.ConnectionClosed):
                await client.call("ping")
            with pytest.raises(fastrpc.ConnectionClosed):  # no longer accepting
                await fastrpc.connect("127.0.0.1", port)

    run(main())


def test_calls_past_the_grace_are_answered_with_shutting_down(run: Any) -> None:
    async def main() -> None:
        server = demo_server(shutdown_grace=0.2)
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            running = [asyncio.ensure_future(client.call("sleep", 30)) for _ in range(10)]
            ordered = await fastrpc.connect("127.0.0.1", port, ids=False)  # id-less: answered in order
            running += [asyncio.ensure_future(ordered.call("sleep", 30)) for _ in range(5)]
            await asyncio.sleep(0.1)
            server.close()
            outcomes = await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), 5)
            assert all(isinstance(o, fastrpc.ShuttingDown) for o in outcomes), outcomes
            assert "before the call finished" in str(outcomes[0])
            # They had started: not safe to send again, and the wire says so.
            assert all(not o.never_ran and o.data == {"started": True} for o in outcomes)
            await asyncio.wait_for(server.wait_closed(), 5)
            await ordered.close()

    run(main())


def test_close_with_no_connections_returns_at_once(run: Any) -> None:
    async def main() -> None:
        server = demo_server()
        async with serving(server):
            pass
        assert server.closing and not server._connections

    run(main())


def test_bad_grace() -> None:
    with pytest.raises(ValueError, match="shutdown_grace"):
        fastrpc.Server(shutdown_grace=-1)


APP = """
import asyncio
import fastrpc

server = fastrpc.Server()

@server.method
async def work(n):
    await asyncio.sleep(0.3 + (n % 7) * 0.05)
    return n
"""


def test_sigterm_with_ten_thousand_calls_in_flight(tmp_path: Path) -> None:
    """50 connections x 200 calls in flight when SIGTERM arrives: every one answered, exit status 0."""
    (tmp_path / "shutdown_app.py").write_text(APP)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastrpc", "serve", "shutdown_app:server", "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(proc, port)

        async def main() -> List[Any]:
            clients = [await fastrpc.connect("127.0.0.1", port, timeout=30) for _ in range(50)]
            calls = [asyncio.ensure_future(c.call("work", [i * 200 + j])) for i, c in enumerate(clients) for j in range(200)]
            await asyncio.sleep(0.15)  # sent, and running on the server
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)
            late = [asyncio.ensure_future(c.call("work", [0])) for c in clients[:5]]  # sent after the signal
            outcomes = await asyncio.gather(*calls, *late, return_exceptions=True)
            for client in clients:
                await client.close()
            return outcomes

        outcomes = asyncio.run(main())
        results = outcomes[:10_000]
        # Answered or refused, never lost (a ConnectionClosed would be a lost reply).
        assert [o for o in outcomes if not isinstance(o, (int, fastrpc.ShuttingDown))] == []
        assert sum(isinstance(o, int) for o in results) > 0
        assert [o for o in results if isinstance(o, int)] == sorted(o for o in results if isinstance(o, int))
        assert all(o == i for i, o in enumerate(results) if isinstance(o, int))  # each its own answer
        assert proc.wait(30) == 0
        assert "shutting down" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]


def test_serve_shutdown_grace_option(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fastrpc", "serve", "--port", str(port), "--shutdown-grace", "0.2"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(proc, port)  # type: ignore[arg-type]
        with fastrpc.SyncClient("127.0.0.1", port, timeout=10) as client:
            # 30 s calls running, then SIGTERM: past the 0.2 s grace they are refused, well before 30 s.
            outcome: List[Any] = []
            caller = threading.Thread(target=lambda: outcome.append(
                client.call_many([("sleep", [30])] * 3, return_exceptions=True)))
            caller.start()
            time.sleep(0.3)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            caller.join(10)
            assert time.monotonic() - started < 5
            [replies] = outcome
            assert all(isinstance(r, fastrpc.ShuttingDown) and "before the call finished" in str(r) for r in replies)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_while_a_client_never_stops_calling(tmp_path: Path) -> None:
    """A SyncClient calling every 10 ms does not keep a stopping server up: it exits within the grace and a
    bounded flush, every call it read is answered, and the client learns it is gone (it used to run on)."""
    port = free_port()
    grace = 2.0
    proc = subprocess.Popen([sys.executable, "-m", "fastrpc", "serve", "--port", str(port), "--shutdown-grace", str(grace)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outcomes: List[Any] = []
    stop = threading.Event()

    def keep_calling() -> None:
        with fastrpc.SyncClient("127.0.0.1", port, timeout=5) as client:
            for _ in range(5000):  # bounded: 50 s at most
                if stop.is_set():
                    return
                try:
                    outcomes.append(client.call("ping"))
                except fastrpc.FastRPCError as exc:
                    outcomes.append(exc)
                    if isinstance(exc, fastrpc.ConnectionClosed):
                        return
                time.sleep(0.01)

    caller = threading.Thread(target=keep_calling)
    try:
        wait_listening(proc, port)  # type: ignore[arg-type]
        caller.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        status = proc.wait(grace + 10)
        exited_after = time.monotonic() - started
        caller.join(10)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        caller.join(10)
    assert status == 0
    assert exited_after < grace + 5, exited_after  # the grace, then at most about 2 s more
    kinds = ["ok" if o is None else type(o).__name__ for o in outcomes]
    # Answers, then refusals, then the connection ends: nothing else, in that order.
    assert kinds[0] == "ok" and kinds[-1] == "ConnectionClosed", kinds
    assert set(kinds) <= {"ok", "ShuttingDown", "ConnectionClosed"}, kinds
    assert kinds == sorted(kinds, key=["ok", "ShuttingDown", "ConnectionClosed"].index), kinds


def test_close_is_bounded_while_a_client_keeps_calling(run: Any) -> None:
    """In process: a client calling without pause, and a handler that ignores its cancellation, cannot
    hold wait_closed() past the grace and the flush limit."""
    from fastrpc.server import DRAIN_LIMIT, FLUSH_LIMIT, HANG_UP_LINGER

    async def main() -> None:
        server = demo_server(shutdown_grace=0.3)
        released = asyncio.Event()
        finished = asyncio.Event()

        @server.method
        async def stubborn() -> str:
            try:
                for _ in range(100):  # bounded: 10 s at most
                    if released.is_set():
                        break
                    try:
                        await asyncio.sleep(0.1)
                    except asyncio.CancelledError:
                        pass  # ignores the end of the grace
                return "done"
            finally:
                finished.set()

        async with serving(server) as port:
            client = await fastrpc.connect("127.0.0.1", port)
            stubborn_call = asyncio.ensure_future(client.call("stubborn"))
            seen: List[Any] = []

            async def flood() -> None:
                for _ in range(100_000):  # bounded
                    try:
                        seen.append(await client.call("ping"))
                    except fastrpc.FastRPCError as exc:
                        seen.append(exc)
                        if isinstance(exc, fastrpc.ConnectionClosed):
                            return

            flooding = asyncio.ensure_future(flood())
            await asyncio.sleep(0.2)
            started = time.monotonic()
            server.close()
            await asyncio.wait_for(server.wait_closed(), 0.3 + DRAIN_LIMIT + FLUSH_LIMIT + HANG_UP_LINGER + 2)
            assert time.monotonic() - started < 0.3 + FLUSH_LIMIT + HANG_UP_LINGER + 1.5
            await asyncio.wait_for(flooding, 5)
            with pytest.raises(fastrpc.ConnectionClosed):  # its handler never finished: no reply was owed to send
                await asyncio.wait_for(stubborn_call, 5)
            await client.close()
        released.set()  # leave nothing running
        await asyncio.wait_for(finished.wait(), 5)
        await asyncio.sleep(0)
        # Results, then (for calls that crossed the drain notice) refusals, then the failed reconnection.
        assert all(o is None or isinstance(o, fastrpc.ShuttingDown) for o in seen[:-1]), seen[-3:]
        assert isinstance(seen[-1], fastrpc.ConnectionClosed)

    run(main())


def test_a_call_refused_while_stopping_never_ran(run: Any) -> None:
    """The -32002 refusal is decided before any handler starts: a counting handler never counts one.
    The calls come from a client that did not ask for notices (an older one): it keeps sending."""
    async def main() -> None:
        server = demo_server(shutdown_grace=5)
        runs: List[int] = []

        @server.method
        async def count(n: int) -> int:
            runs.append(n)
            return n

        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            holder = asyncio.ensure_future(client.call("sleep", 0.5))  # keeps the server draining
            raw = await RawConnection.open(port)
            await raw.send(frame(encode_request("count", [0], 0)))
            assert orjson.loads(await raw.read_frame())["result"] == 0
            server.close()
            await raw.send(b"".join(frame(encode_request("count", [i], i)) for i in range(1, 200)))
            replies = [orjson.loads(await raw.read_frame()) for _ in range(1, 200)]
            assert all(r["error"]["code"] == -32002 and r["error"]["data"] == {"started": False} for r in replies), replies[:3]
            assert runs == [0]
            assert await holder == 0.5
            await raw.close()

    run(main())


def test_health_says_not_serving_while_the_server_drains(run: Any) -> None:
    async def main() -> None:
        server = demo_server(shutdown_grace=5)
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            assert await client.call("rpc.health") == "SERVING"
            server.serving = False  # the application takes itself out of rotation
            assert await client.call("rpc.health") == "NOT_SERVING"
            server.serving = True
            holder = asyncio.ensure_future(client.call("sleep", 0.5))
            await asyncio.sleep(0.05)
            raw = await RawConnection.open(port)  # a client that did not ask for notices: it keeps sending
            server.close()
            await raw.send(frame(encode_request("rpc.health", rid=1)) + frame(encode_request("ping", rid=2)))
            assert orjson.loads(await raw.read_frame())["result"] == "NOT_SERVING"  # answered, not refused, while draining
            assert orjson.loads(await raw.read_frame())["error"]["code"] == -32002
            assert await holder == 0.5
            await raw.close()

    run(main())
