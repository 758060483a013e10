"""Deadlines and cancellation on the wire: the server stops the handler, and no late reply reaches anyone."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List, Optional

import orjson
import pytest

import fastrpc

from .conftest import RawConnection, frame, serving, serving_in_thread


def watched_server() -> "tuple[fastrpc.Server, Dict[str, Any]]":
    server = fastrpc.Server(shutdown_grace=0.5)
    seen: Dict[str, Any] = {"started": 0, "finished": 0, "cancelled": 0, "remaining": []}

    @server.method
    async def work(seconds: float, tag: Any = None) -> Any:
        seen["started"] += 1
        seen["remaining"].append(fastrpc.remaining())
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            seen["cancelled"] += 1
            raise
        seen["finished"] += 1
        return tag

    return server, seen


def test_deadline_cancels_the_handler(run: Any) -> None:
    async def main() -> None:
        server, seen = watched_server()
        async with serving(server) as port:
            raw = await RawConnection.open(port)
            await raw.send(frame(b'{"in": "work", "params": [5], "id": 1, "deadline": 100}'))
            reply = orjson.loads(await asyncio.wait_for(raw.read_frame(), 5))
            assert reply["error"]["code"] == -32003 and "100 ms" in reply["error"]["message"] and reply["id"] == 1
            await asyncio.sleep(0.05)
            assert seen["cancelled"] == 1 and seen["finished"] == 0  # really stopped, not just answered
            assert 0 < seen["remaining"][0] <= 0.1 + 1e-6  # the handler can see what it has left
            await raw.send(frame(b'{"in": "work", "params": [0], "id": 2, "deadline": "soon"}'))
            assert orjson.loads(await raw.read_frame())["error"]["code"] == -32600
            await raw.send(frame(b'{"in": "work", "params": [0, "t"], "id": 3}'))
            assert orjson.loads(await raw.read_frame())["result"] == "t"
            assert seen["remaining"][-1] is None  # no deadline given
            await raw.close()

    run(main())


def test_client_timeout_cancels_on_the_server(run: Any) -> None:
    async def main() -> None:
        server, seen = watched_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            with pytest.raises(fastrpc.CallTimeout):
                await client.call("work", [5, "late"], timeout=0.1)
            # Cancelled by the client, with no deadline: the cancel frame stops it.
            task = asyncio.ensure_future(client.call("work", [5, "never"]))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.1)
            assert seen["cancelled"] == 2 and seen["finished"] == 0
            assert await client.call("work", [0, "next"]) == "next"  # nothing late arrived in its place
            [connection] = server._connections
            assert not connection._tasks and not connection._stopped

    run(main())


def test_sync_client_timeout_cancels_on_the_server() -> None:
    server, seen = watched_server()
    with serving_in_thread(server) as port, fastrpc.SyncClient("127.0.0.1", port, timeout=0.2) as client:
        with pytest.raises(fastrpc.CallTimeout):
            client.call_many([("work", [5, "a"]), ("work", [5, "b"])])
        assert client.call("work", [0, "next"], timeout=5) == "next"
        for _ in range(50):
            if seen["cancelled"] == 2:
                break
            time.sleep(0.02)
        assert seen["cancelled"] == 2 and seen["finished"] == 1


def test_client_core_cancel_frames() -> None:
    from fastrpc.protocol import ClientConnection

    delivered: List[Optional[BaseException]] = []
    core = ClientConnection(lambda waiter, result, error: delivered.append(error))
    key = core.request("work", [1], "waiter", deadline=0.25)
    assert b'"deadline":250' in core.data_to_send()
    core.forget(key)
    assert core.data_to_send().endswith(b'{"cancel":%d}' % key)
    core.forget(key)  # already forgotten: nothing more
    assert core.data_to_send() == b""
    ordered = ClientConnection(lambda *a: None, ids=False)
    ordered.forget(ordered.request("work", [1], "w"))
    assert ordered.data_to_send().count(b"cancel") == 0  # an id-less call cannot be named


def test_a_server_timeout_is_a_call_timeout() -> None:
    # Client and server race to notice a timeout; either way `except CallTimeout` catches it.
    assert issubclass(fastrpc.DeadlineExceeded, fastrpc.CallTimeout)
    assert issubclass(fastrpc.DeadlineExceeded, fastrpc.RemoteError)


def test_a_cancel_read_with_its_call_is_forgotten(run: Any) -> None:
    """A call and its cancel frame in one read: the call is stopped without a reply, and the server
    forgets it (it once stayed in the connection's table, unstarted, and held a stop for the whole grace)."""
    async def main() -> None:
        server, seen = watched_server()
        server.shutdown_grace = 10
        async with serving(server) as port:
            raw = await RawConnection.open(port)
            await raw.send(frame(b'{"in": "work", "params": [5], "id": 1}') + frame(b'{"cancel": 1}')
                           + frame(b'{"in": "ping", "params": "after", "id": 2}'))
            assert orjson.loads(await raw.read_frame()) == {"out": "pong", "result": "after", "id": 2}  # none for 1
            [connection] = server._connections
            for _ in range(100):  # bounded: 1 s
                if not connection._tasks:
                    break
                await asyncio.sleep(0.01)
            assert not connection._tasks and seen["finished"] == 0
            started = time.monotonic()
            server.close()
            await asyncio.wait_for(server.wait_closed(), 5)
            assert time.monotonic() - started < 5  # not the 10 s grace
            await raw.close()

    run(main())
