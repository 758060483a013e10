"""Streams (docs/protocol.md section 12): generator handlers, both clients, credit, cancellation, errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Iterator, List, Tuple

import orjson
import pytest

import fastrpc
from fastrpc import protocol
from fastrpc.middleware import CallInfo

from .conftest import RawConnection, demo_server, frame, free_port, serving, serving_in_thread, wait_listening, within

ROOT = Path(__file__).resolve().parent.parent


class Probe:
    """What the server's generators did: items produced, and whose ``finally`` ran."""

    def __init__(self) -> None:
        self.produced: Dict[str, int] = {}
        self.closed: Dict[str, asyncio.Event] = {}
        self.closed_sync: Dict[str, threading.Event] = {}

    def closing(self, tag: str) -> None:
        self.closed.setdefault(tag, asyncio.Event()).set()
        self.closed_sync.setdefault(tag, threading.Event()).set()

    async def wait_closed(self, tag: str, seconds: float = 2.0) -> None:
        """The generator tagged ``tag`` ran its ``finally`` within ``seconds`` (the bound these tests state)."""
        await within(f"the finally of stream {tag!r}", self.closed.setdefault(tag, asyncio.Event()).wait(), seconds)


def stream_server(probe: Probe, **kwargs: Any) -> fastrpc.Server:
    server = demo_server(**kwargs)

    @server.method
    async def numbers(n: int, tag: str = "", fail_at: int = -1, pause: float = 0.0) -> AsyncIterator[int]:
        """Yield 0..n-1; raise at ``fail_at``; ``pause`` between items."""
        try:
            for i in range(n):
                if i == fail_at:
                    raise ValueError(f"no item {i}")
                probe.produced[tag] = i + 1
                yield i
                if pause:
                    await asyncio.sleep(pause)
        finally:
            probe.closing(tag)

    @server.method
    def letters(text: str, tag: str = "") -> Iterator[str]:
        """A sync generator."""
        try:
            yield from text
        finally:
            probe.closing(tag)

    @server.method
    async def refusing(n: int) -> AsyncIterator[int]:
        yield n
        raise fastrpc.RemoteError("enough", {"after": n}, code=-32010)

    @server.method
    async def unsendable() -> AsyncIterator[Any]:
        yield 1
        yield object()

    return server


# -- the frames, byte for byte ------------------------------------------------------------------

def test_frames_on_the_wire(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(stream_server(probe)) as port:
            raw = await RawConnection.open(port)
            await raw.send(frame(b'{"in": "numbers", "params": [3], "id": 7, "credit": 2}'))
            assert await raw.read_frame() == b'{"item": 0, "id": 7}'
            assert await raw.read_frame() == b'{"item": 1, "id": 7}'
            await raw.send(frame(b'{"credit": 5, "id": 7}'))  # never answered
            assert await raw.read_frame() == b'{"item": 2, "id": 7}'
            assert await raw.read_frame() == b'{"end": 3, "id": 7}'
            # An old client's call (no credit), an id-less one, a bad credit: clear errors, no items.
            for request, message in [
                (b'{"in": "numbers", "params": [3], "id": 8}', "'numbers' streams its result: call it as a stream"),
                (b'{"in": "numbers", "params": [3], "credit": 4}', "a stream needs an id"),
                (b'{"in": "numbers", "params": [3], "id": 9, "credit": 0}', "'credit' must be an integer from 1 to 65536"),
                (b'{"in": "numbers", "params": [3], "id": 9, "credit": true}', "'credit' must be an integer from 1 to 65536"),
            ]:
                await raw.send(frame(request))
                reply = orjson.loads(await raw.read_frame())
                assert reply["out"] == "error" and reply["error"]["code"] == -32600, reply
                assert message in reply["error"]["message"]
            # Malformed credit frames and credit for unknown streams are ignored, like cancel frames.
            await raw.send(frame(b'{"credit": "x", "id": 7}') + frame(b'{"credit": 3, "id": 99}') + frame(b'{"credit": 3}'))
            await raw.send(frame(b'{"in": "add", "params": [1, 2], "id": 10}'))
            assert await raw.read_frame() == b'{"out": "add", "result": 3, "id": 10}'
            await raw.close()

    run(main())


def test_the_sans_io_core_frames_a_stream() -> None:
    async def gen() -> AsyncIterator[int]:
        yield 1

    spawned: List[protocol.Call] = []
    method = protocol.Method("gen", gen, contract=fastrpc.contracts.Contract(gen))
    conn = protocol.ServerConnection({"gen": method}, lambda call: spawned.append(call) and False)
    conn.receive_data(frame(b'{"in": "gen", "id": "s", "credit": 1}'))
    (call,) = spawned  # its coroutine is the generator itself here: the server's registration wraps it
    assert call.stream is not None and conn.streams == {"s": call.stream}
    conn.stream_item(call, {"a": [1]})
    assert call.stream.credit == 0 and call.stream.sent == 1
    assert conn.receive_data(frame(b'{"credit": 2, "id": "s"}')) == frame(b'{"item": {"a":[1]}, "id": "s"}')
    assert call.stream.credit == 2
    conn.complete(call, 1)
    assert conn.data_to_send() == frame(b'{"end": 1, "id": "s"}')
    conn.close_stream(call)
    assert conn.streams == {}


# -- both clients ------------------------------------------------------------------------------

def test_async_stream_interleaves_with_calls_and_other_streams(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(stream_server(probe)) as port, fastrpc.connect("127.0.0.1", port) as client:
            stream = client.stream("numbers", [1000], window=16)
            got: List[int] = []
            async for item in stream:
                got.append(item)
                if item % 100 == 0:  # calls and a whole other stream while this one is open
                    assert await client.call("add", [item, 1]) == item + 1
                    assert [x async for x in client.stream("letters", ["ab"])] == ["a", "b"]
            assert got == list(range(1000)) and stream.sent == 1000
            assert [x async for x in client.stream("count", [3, 5])] == [5, 6, 7]  # the demo's stream
            assert [x async for x in client.stream("numbers", [0])] == []

    run(main())


def test_a_thousand_concurrent_streams_on_one_connection(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(stream_server(probe)) as port, fastrpc.connect("127.0.0.1", port) as client:
            async def one(k: int) -> List[int]:
                return [x async for x in client.stream("numbers", [50 + k % 7], window=8)]

            results = await within("1000 streams", asyncio.gather(*(one(k) for k in range(1000))), 60, port)
            assert all(result == list(range(50 + k % 7)) for k, result in enumerate(results))
            assert len(client._link.waiters) == 0  # type: ignore[union-attr]

    run(main())


def test_sync_stream(framing_impl: Any) -> None:
    probe = Probe()
    with serving_in_thread(stream_server(probe)) as port, fastrpc.SyncClient("127.0.0.1", port) as client:
        stream = client.stream("numbers", [500], window=8)
        got = []
        for item in stream:
            got.append(item)
            if item % 100 == 0:
                assert client.call("add", [item, 1]) == item + 1
        assert got == list(range(500))
        assert list(client.stream("letters", ["xyz"])) == ["x", "y", "z"]

        def total() -> Iterator[int]:
            return (yield from client.stream("numbers", [4]))

        gen = total()
        assert list(gen) == [0, 1, 2, 3]
        # Threads share the connection: each its own stream, all complete and in order.
        results: Dict[int, List[int]] = {}

        def consume(k: int) -> None:
            results[k] = list(client.stream("numbers", [200 + k], window=4))

        threads = [threading.Thread(target=consume, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == {k: list(range(200 + k)) for k in range(8)}


# -- flow control --------------------------------------------------------------------------------

def test_a_consumer_that_does_not_take_items_holds_the_generator(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(stream_server(probe)) as port, fastrpc.connect("127.0.0.1", port) as client:
            stream = client.stream("numbers", [10_000, "held"], window=8)
            assert await stream.__anext__() == 0
            await asyncio.sleep(0.2)
            assert probe.produced["held"] == 8  # the window, not a buffered stream
            for expected in range(1, 5):  # half the window taken: 4 more are granted
                assert await stream.__anext__() == expected
            await asyncio.sleep(0.2)
            assert probe.produced["held"] == 12
            await stream.aclose()
            await probe.wait_closed("held")

    run(main())


def test_sync_consumer_holds_the_generator(framing_impl: Any) -> None:
    probe = Probe()
    with serving_in_thread(stream_server(probe)) as port, fastrpc.SyncClient("127.0.0.1", port) as client:
        stream = client.stream("numbers", [10_000, "held"], window=6)
        assert next(stream) == 0
        time.sleep(0.2)
        assert probe.produced["held"] == 6
        stream.close()
        assert probe.closed_sync.setdefault("held", threading.Event()).wait(2.0)


# -- ends: cancellation, deadlines, errors, shutdown -------------------------------------------

def test_leaving_a_stream_early_closes_the_generator(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(stream_server(probe)) as port, fastrpc.connect("127.0.0.1", port) as client:
            async for item in client.stream("numbers", [10**9, "break"]):
                if item == 10:
                    break
            await probe.wait_closed("break")

            with pytest.raises(KeyError):
                async for item in client.stream("numbers", [10**9, "raise"]):
                    if item == 3:
                        raise KeyError(item)
            await probe.wait_closed("raise")

            async with client.stream("numbers", [10**9, "with"]) as stream:
                assert await stream.__anext__() == 0
            await probe.wait_closed("with")

            async def consume() -> None:
                async for _ in client.stream("numbers", [10**9, "task", -1, 0.001]):
                    pass

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await probe.wait_closed("task")

            with pytest.raises(fastrpc.CallTimeout):
                async for _ in client.stream("numbers", [10**9, "deadline", -1, 0.001], timeout=0.2):
                    pass
            await probe.wait_closed("deadline")
            assert await client.call("add", [2, 2]) == 4  # the connection serves on
            assert len(client._link.waiters) == 0  # type: ignore[union-attr]

    run(main())


def test_sync_leaving_early_and_deadline(framing_impl: Any) -> None:
    probe = Probe()
    with serving_in_thread(stream_server(probe)) as port, fastrpc.SyncClient("127.0.0.1", port) as client:
        for item in client.stream("letters", ["x" * 100_000, "break"]):
            break
        assert probe.closed_sync.setdefault("break", threading.Event()).wait(2.0)
        with pytest.raises(fastrpc.CallTimeout):
            for _ in client.stream("numbers", [10**9, "deadline", -1, 0.001], timeout=0.2):
                pass
        assert probe.closed_sync.setdefault("deadline", threading.Event()).wait(2.0)
        assert client.call("add", [2, 2]) == 4


def test_errors_end_a_stream_after_its_items(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(stream_server(probe)) as port, fastrpc.connect("127.0.0.1", port) as client:
            got: List[int] = []
            with pytest.raises(fastrpc.InternalError, match="internal error in 'numbers': ValueError"):
                async for item in client.stream("numbers", [10, "fail", 5]):
                    got.append(item)
            assert got == [0, 1, 2, 3, 4]
            with pytest.raises(fastrpc.RemoteError, match="enough") as refused:
                [x async for x in client.stream("refusing", [7])]
            assert refused.value.code == -32010 and refused.value.data == {"after": 7}
            with pytest.raises(fastrpc.InternalError, match="item 1 of 'unsendable' is not JSON serializable"):
                [x async for x in client.stream("unsendable")]
            with pytest.raises(fastrpc.InvalidParams, match="params.n: expected int, got str"):
                [x async for x in client.stream("numbers", ["ten"])]
            with pytest.raises(fastrpc.MethodNotFound):
                [x async for x in client.stream("nothing")]
            with pytest.raises(fastrpc.ProtocolError, match="'add' is not a streaming method"):
                [x async for x in client.stream("add", [1, 2])]
            with pytest.raises(fastrpc.InvalidRequest, match="'numbers' streams its result"):
                await client.call("numbers", [3])
            with pytest.raises(ValueError, match="window must be from 1 to 65536"):
                client.stream("numbers", [3], window=0)

    run(main())


def test_sync_errors(framing_impl: Any) -> None:
    probe = Probe()
    with serving_in_thread(stream_server(probe)) as port, fastrpc.SyncClient("127.0.0.1", port) as client:
        got: List[int] = []
        with pytest.raises(fastrpc.InternalError):
            for item in client.stream("numbers", [10, "fail", 5]):
                got.append(item)
        assert got == [0, 1, 2, 3, 4]
        with pytest.raises(fastrpc.ProtocolError, match="not a streaming method"):
            list(client.stream("add", [1, 2]))
        with pytest.raises(fastrpc.InvalidParams):
            list(client.stream("numbers", ["ten"]))


def test_ordered_mode_clients_cannot_stream(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(stream_server(probe)) as port, fastrpc.connect("127.0.0.1", port, ids=False) as client:
            with pytest.raises(ValueError, match="streams need ids"):
                [x async for x in client.stream("numbers", [3])]
    run(main())
    with serving_in_thread(stream_server(Probe())) as port, fastrpc.SyncClient("127.0.0.1", port, ids=False) as sync:
        with pytest.raises(ValueError, match="streams need ids"):
            list(sync.stream("numbers", [3]))

    run(main())


def test_shutdown_ends_streams_with_the_shutting_down_error(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        server = stream_server(probe, shutdown_grace=5.0)
        await server.start("127.0.0.1", 0)
        try:
            async with fastrpc.connect("127.0.0.1", server.port) as client:
                got: List[int] = []
                with pytest.raises(fastrpc.ShuttingDown) as ended:
                    async for item in client.stream("numbers", [10**9, "shutdown", -1, 0.001]):
                        got.append(item)
                        if item == 20:
                            server.close()  # the consumer goes on taking items while the server stops
                assert not ended.value.never_ran and got[:21] == list(range(21))
                await probe.wait_closed("shutdown")
        finally:
            server.close()
            await within("the server's stop", server.wait_closed(), 3.0)  # not the 5 s grace: streams end at once

    run(main())


def test_the_connection_lost_mid_stream(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(stream_server(probe)) as port:
            raw = await RawConnection.open(port)
            await raw.send(frame(b'{"in": "numbers", "params": [1000000000, "lost"], "id": 1, "credit": 3}'))
            for _ in range(3):
                await raw.read_frame()
            await raw.close()  # the client vanishes with the generator waiting for credit
            await probe.wait_closed("lost")

    run(main())


def test_streams_have_their_own_limit_and_do_not_hold_calls(run: Any) -> None:
    async def main() -> None:
        probe = Probe()
        async with serving(stream_server(probe, max_streams=4, max_in_flight=2)) as port, \
                fastrpc.connect("127.0.0.1", port) as client:
            streams = [client.stream("numbers", [100, f"s{k}"], window=2) for k in range(4)]
            for stream in streams:
                assert await stream.__anext__() == 0  # four open, all waiting for credit
            with pytest.raises(fastrpc.ServerBusy, match="4 streams are open on this connection"):
                [x async for x in client.stream("numbers", [3])]
            # Async calls (max_in_flight=2) are not held behind streams waiting for credit.
            assert await asyncio.gather(*(client.call("nap", [0.01, k]) for k in range(6))) == list(range(6))
            for stream in streams:
                assert [x async for x in stream] == list(range(1, 100))

    run(main())


# -- what middleware, metrics and client hooks see -----------------------------------------------

def test_middleware_metrics_and_hooks_see_a_stream_as_one_call(run: Any) -> None:
    async def main() -> None:
        log: List[Tuple[Any, ...]] = []

        class Recorder(fastrpc.Middleware):
            def before(self, call: CallInfo) -> None:
                log.append(("before", call.method, call.params))

            def after(self, call: CallInfo, result: Any, elapsed: float) -> None:
                log.append(("after", call.method, result))

            def on_error(self, call: CallInfo, exc: BaseException, elapsed: float) -> None:
                log.append(("error", call.method, type(exc).__name__))

            def on_cancel(self, call: CallInfo, elapsed: float) -> None:
                log.append(("cancel", call.method))

        class Hook(fastrpc.ClientHook):
            def call_started(self, method: str, meta: Dict[str, str]) -> Any:
                log.append(("client started", method))
                return method

            def call_ended(self, method: str, state: Any, error: Any) -> None:
                log.append(("client ended", method, type(error).__name__))

        probe = Probe()
        server = stream_server(probe)
        server.use(Recorder())
        server.enable_metrics()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, hooks=[Hook()]) as client:
            assert [x async for x in client.stream("numbers", [5])] == list(range(5))
            assert log == [("client started", "numbers"), ("before", "numbers", [5]), ("after", "numbers", 5),
                           ("client ended", "numbers", "NoneType")]
            log.clear()
            with pytest.raises(fastrpc.InternalError):
                [x async for x in client.stream("numbers", [5, "", 2])]
            assert log == [("client started", "numbers"), ("before", "numbers", [5, "", 2]),
                           ("error", "numbers", "ValueError"), ("client ended", "numbers", "InternalError")]
            log.clear()
            async for _ in client.stream("numbers", [10**9, "cancelled"]):
                break
            await probe.wait_closed("cancelled")
            await asyncio.sleep(0.05)
            assert ("cancel", "numbers") in log
            handled = {tuple(labels): count for labels, count in
                       server.metrics_snapshot()["families"]["fastrpc_server_handled_total"] if labels[0] == "numbers"}
        assert handled[("numbers", "OK")] == 1 and sum(handled.values()) == 3, handled  # calls, not items

    run(main())


# -- bounded memory: a million items -----------------------------------------------------------

def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


#: What the server's resident memory may grow by while a million items stream to a slow consumer,
#: from when the stream is under way (measured: 0 KiB; 7 MiB and more with the credit not heeded).
RSS_BOUND_KIB = 4 * 1024


def test_a_million_items_to_a_slow_consumer_in_bounded_memory() -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "fastrpc", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(proc, port)

        async def main() -> Tuple[int, int, int]:
            total = 0
            base = peak = 0
            async with fastrpc.connect("127.0.0.1", port) as client:
                stream = client.stream("count", [1_000_000], window=256)
                async for item in stream:
                    assert item == total
                    total += 1
                    if total % 25_000 == 0:
                        assert len(stream._waiter.items) < 256  # type: ignore[union-attr]  # the client's side: the window
                        rss = _rss_kib(proc.pid)
                        if total == 25_000:
                            base = rss
                        peak = max(peak, rss)
                        await asyncio.sleep(0.05)  # the consumer stops now and then; the server must wait
            return total, base, peak

        total, base, peak = asyncio.run(main())
        assert total == 1_000_000
        assert peak - base <= RSS_BOUND_KIB, f"server RSS grew {peak - base} KiB (from {base} KiB)"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_server_killed_mid_stream(tmp_path: Path) -> None:
    """A server that dies (SIGKILL) mid-stream: the consumer gets the items sent, then ConnectionClosed; both clients."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "fastrpc", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(proc, port)
        with fastrpc.SyncClient("127.0.0.1", port, timeout=30) as sync:
            taken = 0
            with pytest.raises(fastrpc.ConnectionClosed):
                for item in sync.stream("count", [10**9]):
                    assert item == taken
                    taken += 1
                    if taken == 1000:
                        proc.kill()
            assert taken >= 1000
    finally:
        proc.kill()
        proc.wait(10)

    proc = subprocess.Popen([sys.executable, "-m", "fastrpc", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(proc, port)

        async def main() -> int:
            taken = 0
            async with fastrpc.connect("127.0.0.1", port, timeout=30) as client:
                with pytest.raises(fastrpc.ConnectionClosed):
                    async for item in client.stream("count", [10**9]):
                        assert item == taken
                        taken += 1
                        if taken == 1000:
                            proc.kill()
            return taken

        assert asyncio.run(main()) >= 1000
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.usefixtures("no_notices")
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_stream_refused_unrun_by_a_draining_server_goes_elsewhere(kind: str, refusals: List[int]) -> None:
    """Of two servers one drains (a long call holds it up) without telling its clients: the streams it
    refuses unrun are sent to the other, and every stream is whole."""
    async def main() -> None:
        a, b = stream_server(Probe(), shutdown_grace=5.0), stream_server(Probe())
        await a.start("127.0.0.1", 0)
        await b.start("127.0.0.1", 0)
        addresses = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        loop = asyncio.get_running_loop()
        try:
            async with fastrpc.connect(addresses, timeout=10) as client, \
                    fastrpc.connect("127.0.0.1", a.port) as holder:
                sync = await loop.run_in_executor(None, lambda: fastrpc.SyncClient(addresses, timeout=10))
                try:
                    for _ in range(20):  # connections to both servers
                        await client.call("ping")
                        await loop.run_in_executor(None, sync.call, "ping")
                    held = asyncio.ensure_future(holder.call("nap", [1.0, "held"]))
                    await asyncio.sleep(0.1)
                    a.close()  # draining: new calls and streams are refused unrun
                    for k in range(20):
                        if kind == "async":
                            got = [x async for x in client.stream("numbers", [k])]
                        else:
                            got = await loop.run_in_executor(None, lambda: list(sync.stream("numbers", [k])))
                        assert got == list(range(k))
                    assert refusals[0] >= 1  # some went to the draining server first
                    assert await held == "held"
                finally:
                    sync.close()
        finally:
            a.close()
            b.close()
            await a.wait_closed()
            await b.wait_closed()

    asyncio.run(main())


def test_large_items_go_out_as_they_are_made(run: Any) -> None:
    """Items of 1 MiB with a large window: the server writes them a few at a time (a burst is bounded in
    bytes as well as items), and the peer's reading paces it; every item arrives whole."""
    async def main() -> None:
        server = demo_server()

        @server.method
        async def blobs(n: int) -> AsyncIterator[str]:
            for i in range(n):
                yield str(i % 10) * (1 << 20)

        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            got = 0
            async for blob in client.stream("blobs", [40], window=1000):
                assert blob == str(got % 10) * (1 << 20)
                got += 1
            assert got == 40

    run(main())


def test_a_drain_in_the_read_that_started_a_stream_still_ends_it(run: Any) -> None:
    """A stream whose task has not taken its first step when the connection drains is still answered
    (-32002 {"started": true}) and forgotten: the drain does not wait for the grace."""
    async def main() -> None:
        server = stream_server(Probe(), shutdown_grace=30.0)
        async with serving(server) as port:
            raw = await RawConnection.open(port)
            await raw.send(frame(b'{"in": "add", "params": [1, 2], "id": 1}'))
            assert await raw.read_frame() == b'{"out": "add", "result": 3, "id": 1}'
            (connection,) = server._connections
            # The stream's request and the drain in one step of the loop: its task is created, not started.
            connection._core.receive_data(frame(b'{"in": "numbers", "params": [1000000000, "early"], "id": 2, "credit": 5}'))
            connection._drain("shutdown")
            for _ in range(6):  # perhaps an item or a few (within its credit of 5), then the end
                reply = orjson.loads(await within("the stream's end", raw.read_frame(), 5.0, port))
                if "item" not in reply:
                    break
            assert reply["id"] == 2 and reply["error"]["code"] == -32002 and reply["error"]["data"] == {"started": True}
            assert await within("the drained connection's close", raw.at_eof(), 5.0, port)
            await raw.close()

    run(main())
