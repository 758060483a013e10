"""Opt-in retries: a lost connection is replaced, and idempotent calls lost with it are sent again.

A proxy between client and server cuts connections on demand, with calls in flight; `fastrpc serve
--workers` has a worker SIGKILLed under load from retrying clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional, Set

import pytest

import fastrpc

from .conftest import demo_server, free_port, serve, serving
from .test_cli import worker_pids


class Proxy:
    """Pipes each accepted connection to the server; ``cut()`` aborts every connection it carries."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.transports: List[asyncio.BaseTransport] = []
        self.tasks: Set["asyncio.Task[None]"] = set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self.transports += [writer.transport, up_writer.transport]
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                data = await source.read(65536)
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        sink.transport.abort()

    def cut(self) -> None:
        for transport in self.transports:
            transport.abort()
        self.transports.clear()


@contextlib.asynccontextmanager
async def proxied(server: fastrpc.Server) -> AsyncIterator[Any]:
    """Serve ``server``; yield ``(proxy, port)``, the port the proxy listens on."""
    async with serving(server) as port:
        proxy = Proxy(port)
        listener = await asyncio.start_server(proxy._accept, "127.0.0.1", 0)
        try:
            yield proxy, listener.sockets[0].getsockname()[1]
        finally:
            listener.close()
            proxy.cut()
            for task in list(proxy.tasks):
                task.cancel()
            await asyncio.gather(*proxy.tasks, return_exceptions=True)


def counting_server() -> "tuple[fastrpc.Server, Dict[str, int]]":
    """The demo server plus ``slow``, which counts how many times it started running."""
    server = demo_server()
    runs = {"slow": 0}

    @server.method
    async def slow(seconds: float, value: Any) -> Any:
        runs["slow"] += 1
        await asyncio.sleep(seconds)
        return value

    return server, runs


async def until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


def test_idempotent_call_in_flight_is_sent_again(run: Any) -> None:
    async def main() -> None:
        server, runs = counting_server()
        async with proxied(server) as (proxy, port):
            async with fastrpc.connect("127.0.0.1", port, retries=2, idempotent={"slow"}, timeout=10) as client:
                call = asyncio.ensure_future(client.call("slow", [0.3, "kept"]))
                await until(lambda: runs["slow"] == 1)
                proxy.cut()
                assert await call == "kept"
                assert runs["slow"] == 2  # it ran again, on the new connection
                assert not client.closed

    run(main())


def test_other_calls_in_flight_fail_and_the_next_call_reconnects(run: Any) -> None:
    async def main() -> None:
        server, runs = counting_server()
        async with proxied(server) as (proxy, port):
            async with fastrpc.connect("127.0.0.1", port, retries=2, idempotent={"slow"}, timeout=10) as client:
                plain = asyncio.ensure_future(client.call("nap", [0.3, "once"]))
                opted_in = asyncio.ensure_future(client.call("nap", [0.3, "again"], idempotent=True))
                opted_out = asyncio.ensure_future(client.call("slow", [0.3, "no"], idempotent=False))
                await until(lambda: runs["slow"] == 1)  # sent after the naps, in the same write
                proxy.cut()
                with pytest.raises(fastrpc.ConnectionClosed):
                    await plain  # it may have run: it is not sent twice
                assert await opted_in == "again"
                with pytest.raises(fastrpc.ConnectionClosed):
                    await opted_out
                assert runs["slow"] == 1
                assert await client.call("add", [1, 2]) == 3  # not idempotent, but never sent: it reconnects

    run(main())


def test_without_retries_a_lost_connection_stays_lost(run: Any) -> None:
    async def main() -> None:
        server, runs = counting_server()
        async with proxied(server) as (proxy, port):
            async with fastrpc.connect("127.0.0.1", port, idempotent={"slow"}, timeout=10) as client:
                call = asyncio.ensure_future(client.call("slow", [0.3, "x"]))
                await until(lambda: runs["slow"] == 1)
                proxy.cut()
                with pytest.raises(fastrpc.ConnectionClosed):
                    await call
                with pytest.raises(fastrpc.ConnectionClosed):
                    await client.call("slow", [0, "y"])
                assert runs["slow"] == 1

    run(main())


def test_retries_give_up_when_the_server_is_gone(run: Any) -> None:
    async def main() -> None:
        server, runs = counting_server()
        async with serving(server) as port:
            client = await fastrpc.connect("127.0.0.1", port, retries=3, idempotent={"slow"}, timeout=10)
        # The server is closed and its port no longer listens: every attempt to reconnect fails.
        with pytest.raises(fastrpc.ConnectionClosed, match="could not connect"):
            await client.call("slow", [0, "x"])
        await client.close()

    run(main())


def test_bad_retries_option() -> None:
    with pytest.raises(ValueError, match="retries"):
        fastrpc.connect("127.0.0.1", 9, retries=-1)
    with pytest.raises(ValueError, match="retries"):
        fastrpc.SyncClient("127.0.0.1", 9, retries=-1)


def test_sync_client_retries(run: Any) -> None:
    async def main() -> None:
        server, runs = counting_server()
        loop = asyncio.get_running_loop()
        async with proxied(server) as (proxy, port):
            client = await loop.run_in_executor(None, lambda: fastrpc.SyncClient(
                "127.0.0.1", port, retries=2, idempotent={"echo"}, timeout=10))
            try:
                batch = loop.run_in_executor(None, lambda: client.call_many(
                    [("slow", [0.3, "once"]), ("echo", ["kept"]), ("slow", [0.3, "again"])],
                    return_exceptions=True))
                await until(lambda: runs["slow"] == 2)
                proxy.cut()
                once, kept, again = await batch
                assert isinstance(once, fastrpc.ConnectionClosed) and isinstance(again, fastrpc.ConnectionClosed)
                assert kept == ["kept"]

                single = loop.run_in_executor(None, lambda: client.call("slow", [0.3, "single"], idempotent=True))
                await until(lambda: runs["slow"] == 3)
                proxy.cut()
                assert await single == "single" and runs["slow"] == 4
                assert await loop.run_in_executor(None, client.call, "add", [2, 3]) == 5
            finally:
                await loop.run_in_executor(None, client.close)

    run(main())


PID_ECHO_APP = """import os
import fastrpc
app = fastrpc.Server()

@app.method
def pid():
    return os.getpid()

@app.method(raw_params=True)
def echo(params):
    return params
"""


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="--workers needs SO_REUSEPORT")
def test_worker_killed_under_load_loses_no_idempotent_call(tmp_path: Path) -> None:
    """SIGKILL one of two workers while retrying clients call: every call gets its own answer."""
    (tmp_path / "pidapp.py").write_text(PID_ECHO_APP)
    port = free_port()
    threads, calls_each = 12, 400
    for proc in serve(["pidapp:app", "--port", str(port), "--workers", "2"], tmp_path):
        first = worker_pids(port, 2)
        clients = [fastrpc.SyncClient("127.0.0.1", port, retries=5, idempotent={"echo", "pid"}, timeout=20)
                   for _ in range(threads)]
        homes = [client.call("pid") for client in clients]
        victim = homes[0]  # at least one client is connected to it
        started = threading.Barrier(threads + 1, timeout=20)
        failures: List[BaseException] = []
        moved: List[Optional[int]] = [None] * threads

        def work(index: int, client: fastrpc.SyncClient) -> None:
            try:
                started.wait()
                for n in range(calls_each):
                    value = [index, n, "x" * (n % 50)]
                    assert client.call("echo", value) == value
                    if n % 8 == 0:
                        time.sleep(0.002)  # spread the load over the kill
                moved[index] = client.call("pid")
            except BaseException as exc:  # reported below, with the others
                failures.append(exc)

        workers = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
        for worker in workers:
            worker.start()
        started.wait()
        time.sleep(0.1)
        os.kill(victim, signal.SIGKILL)
        for worker in workers:
            worker.join(60)
        for client in clients:
            client.close()
        assert not failures, failures[:3]
        assert all(pid is not None and pid != victim for pid in moved)
        # The parent replaces the dead worker.
        replacement = worker_pids(port, 1, exclude=first) - first
        assert len(replacement) == 1
