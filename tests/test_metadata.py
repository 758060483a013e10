"""Call metadata end to end (issue 15): what both clients send with ``meta=`` is what handlers registered
with ``metadata=True`` (and middleware) read; malformed metadata is refused by the server with -32600
without harming the connection, and by the clients with ValueError before anything is sent; concurrent
calls never see each other's metadata.

Servers run in-process on 127.0.0.1 (port 0): in the test's loop for the async client, in a thread
(``serving_in_thread``) for the SyncClient; every network test runs on both loops and framings."""

from __future__ import annotations

import asyncio
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

import orjson
import pytest

import fastrpc
from fastrpc.limits import META_MAX_BYTES, META_MAX_ENTRIES
from fastrpc.protocol import metadata_problem

from .conftest import RawConnection, demo_server, frame, serving, serving_in_thread

TIMEOUT = 10.0  # every call's own: a call that hangs fails the test instead of hanging it

#: Metadata no server or client may accept, each with why (docs/protocol.md section 3).
BAD_META: Dict[str, Any] = {
    "not-an-object": ["a", "b"],
    "a-string": "traceparent",
    "non-string-value": {"a": 1},
    "null-value": {"a": None},
    "too-many-entries": {f"k{i}": "v" for i in range(META_MAX_ENTRIES + 1)},
    "too-large": {"k": "x" * META_MAX_BYTES},
}
LOOPS = ["asyncio", "uvloop"]


def meta_server(**options: Any) -> "tuple[fastrpc.Server, Dict[str, int]]":
    """The demo server plus methods that read their metadata, one that must not, and ``count``,
    which reads none and tells how many times it ran."""
    server = demo_server(**options)
    ran = {"count": 0}

    @server.method(metadata=True)
    def sync_meta() -> Dict[str, str]:
        return fastrpc.metadata()

    @server.method(metadata=True)
    async def async_meta(pause: float = 0.0) -> Dict[str, Any]:
        first = dict(fastrpc.metadata())
        await asyncio.sleep(pause)
        await asyncio.sleep(0)
        return {"first": first, "after": fastrpc.metadata()}

    @server.method(metadata=True, raw_params=True)
    def raw_meta(params: Any) -> List[Any]:
        return [params, fastrpc.metadata()]

    @server.method
    def no_meta() -> Dict[str, str]:
        return fastrpc.metadata()  # not registered for it: RuntimeError

    @server.method
    def count() -> int:
        ran["count"] += 1
        return ran["count"]

    return server, ran


SENT = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tenant": "é-ü"}


# -- handlers read what was sent ----------------------------------------------------------------

def test_async_client_metadata_reaches_handlers(run: Any) -> None:
    async def main() -> None:
        server, _ = meta_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, timeout=TIMEOUT) as client:
            caller = dict(SENT)
            assert await client.call("sync_meta", meta=caller) == SENT
            assert await client.call("async_meta", [0.01], meta=caller) == {"first": SENT, "after": SENT}
            assert await client.call("raw_meta", "p", meta=caller) == ["p", SENT]
            assert caller == SENT  # the caller's mapping is left as it was
            assert await client.call("sync_meta", meta=types.MappingProxyType({"a": "b"})) == {"a": "b"}  # any Mapping
            assert await client.call("sync_meta") == {}
            assert await client.call("sync_meta", meta={}) == {}
            assert await client.call("async_meta") == {"first": {}, "after": {}}
            with pytest.raises(fastrpc.InternalError, match="RuntimeError"):
                await client.call("no_meta", meta=SENT)
            with pytest.raises(fastrpc.InternalError, match="RuntimeError"):
                await client.call("no_meta")
            assert await client.call("add", [1, 2], meta=SENT) == 3  # a method that does not read it ignores it

    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_sync_client_metadata_reaches_handlers(loop: str, framing_impl: Any) -> None:
    server, _ = meta_server()
    with serving_in_thread(server, loop) as port, fastrpc.SyncClient("127.0.0.1", port, timeout=TIMEOUT) as client:
        caller = dict(SENT)
        assert client.call("sync_meta", meta=caller) == SENT
        assert client.call("async_meta", [0.01], meta=caller) == {"first": SENT, "after": SENT}
        assert client.call("raw_meta", "p", meta=caller) == ["p", SENT]
        assert caller == SENT
        assert client.call("sync_meta") == {}
        with pytest.raises(fastrpc.InternalError, match="RuntimeError"):
            client.call("no_meta", meta=SENT)
        assert client.call("add", [1, 2], meta=SENT) == 3
        # call_many: the one mapping goes with every call of the batch; without it, none.
        assert client.call_many([("sync_meta",), ("async_meta",), ("add", [1, 2])], meta=caller) == [
            SENT, {"first": SENT, "after": SENT}, 3]
        assert client.call_many([("sync_meta",), ("async_meta",)]) == [{}, {"first": {}, "after": {}}]
        assert caller == SENT


def test_ordered_mode_carries_metadata(run: Any) -> None:
    """Id-less requests (ids=False) carry metadata too; replies stay in order."""
    async def main() -> None:
        server, _ = meta_server()
        async with serving(server) as port:
            async with fastrpc.connect("127.0.0.1", port, ids=False, timeout=TIMEOUT) as client:
                results = await asyncio.gather(*(client.call("async_meta", [0.01 * (i % 3)], meta={"i": str(i)})
                                                 for i in range(10)))
                assert results == [{"first": {"i": str(i)}, "after": {"i": str(i)}} for i in range(10)]
                assert await client.call("sync_meta", meta=SENT) == SENT

            def blocking() -> List[Any]:
                with fastrpc.SyncClient("127.0.0.1", port, ids=False, timeout=TIMEOUT) as sync:
                    return [sync.call("sync_meta", meta=SENT),
                            sync.call_many([("async_meta",), ("sync_meta",)], meta={"b": "c"})]

            with ThreadPoolExecutor(1) as pool:
                assert await asyncio.get_running_loop().run_in_executor(pool, blocking) == [
                    SENT, [{"first": {"b": "c"}, "after": {"b": "c"}}, {"b": "c"}]]

    run(main())


def test_middleware_sees_the_call_metadata(run: Any) -> None:
    """CallInfo.meta holds what the call carried ({} without); under middleware every handler may read it."""
    class Seen(fastrpc.Middleware):
        def __init__(self) -> None:
            self.meta: List[Dict[str, str]] = []

        def before(self, call: fastrpc.CallInfo) -> None:
            self.meta.append(call.meta)

    async def main() -> None:
        server, _ = meta_server()
        seen = Seen()
        server.use(seen)
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, timeout=TIMEOUT) as client:
            assert await client.call("add", [1, 2], meta=SENT) == 3
            assert await client.call("sleep", [0], meta={"x": "y"}) == 0
            assert await client.call("add", [1, 2]) == 3
            assert await client.call("no_meta", meta={"z": "w"}) == {"z": "w"}  # wrapped by middleware: it may read
            assert seen.meta == [SENT, {"x": "y"}, {}, {"z": "w"}]

    run(main())


# -- malformed metadata -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", sorted(BAD_META))
def test_a_malformed_meta_is_refused_and_the_connection_goes_on(run: Any, bad: str) -> None:
    """A raw request to a metadata method with bad meta gets -32600 naming the problem (with or
    without an id); the connection goes on serving. A method that does not read meta ignores it."""
    meta = BAD_META[bad]
    message = f"invalid request: {metadata_problem(meta)}"

    async def main() -> None:
        server, _ = meta_server()
        async with serving(server) as port:
            conn = await RawConnection.open(port)
            try:
                for method in ("sync_meta", "async_meta", "raw_meta"):
                    await conn.send(frame(orjson.dumps({"in": method, "id": 7, "meta": meta})))
                    reply = orjson.loads(await conn.read_frame())
                    assert reply == {"out": "error", "error": {"code": -32600, "message": message}, "id": 7}
                await conn.send(frame(orjson.dumps({"in": "sync_meta", "meta": meta})))  # id-less
                reply = orjson.loads(await conn.read_frame())
                assert reply["error"] == {"code": -32600, "message": message} and reply.get("id") is None
                await conn.send(frame(orjson.dumps({"in": "add", "params": [1, 2], "id": 8, "meta": meta})))
                assert orjson.loads(await conn.read_frame()) == {"out": "add", "result": 3, "id": 8}
                await conn.send(frame(orjson.dumps({"in": "sync_meta", "id": 9, "meta": {"ok": "yes"}})))
                assert orjson.loads(await conn.read_frame()) == {"out": "sync_meta", "result": {"ok": "yes"}, "id": 9}
            finally:
                await conn.close()

    run(main())


def test_meta_at_the_limits_is_accepted(run: Any) -> None:
    largest = {f"k{i:02}": "v" for i in range(META_MAX_ENTRIES)}  # 64 entries
    fullest = {"k": "x" * (META_MAX_BYTES - 1)}  # 8 KiB of keys and values
    assert metadata_problem(largest) is None and metadata_problem(fullest) is None

    async def main() -> None:
        server, _ = meta_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, timeout=TIMEOUT) as client:
            assert await client.call("sync_meta", meta=largest) == largest
            assert await client.call("sync_meta", meta=fullest) == fullest

    run(main())


@pytest.mark.parametrize("bad", sorted(BAD_META))
def test_async_client_refuses_invalid_meta_before_sending(run: Any, bad: str) -> None:
    """ValueError in the caller; nothing reached the server: ``count`` reads no metadata, so it would
    have run had the call been sent. Through the balancer (two endpoints) no connection is chosen for it."""
    async def main() -> None:
        (server, ran), (other, other_ran) = meta_server(), meta_server()
        async with serving(server) as port, serving(other) as other_port:
            for target in ("127.0.0.1", [f"127.0.0.1:{port}", f"127.0.0.1:{other_port}"]):
                async with fastrpc.connect(target, port, timeout=TIMEOUT) as client:
                    with pytest.raises(ValueError, match="invalid call metadata"):
                        await client.call("count", meta=BAD_META[bad])
                    connections = sum(e.link is not None for e in client._endpoints.all)
                    assert connections == 1  # connect's own: none was opened for the call
            async with fastrpc.connect("127.0.0.1", port, timeout=TIMEOUT) as client:
                assert await client.call("count") == 1
            assert ran["count"] == 1 and other_ran["count"] == 0

    run(main())


@pytest.mark.parametrize("bad", sorted(BAD_META))
def test_sync_client_refuses_invalid_meta_before_sending(bad: str) -> None:
    server, ran = meta_server()
    with serving_in_thread(server) as port, fastrpc.SyncClient("127.0.0.1", port, timeout=TIMEOUT) as client:
        with pytest.raises(ValueError, match="invalid call metadata"):
            client.call("count", meta=BAD_META[bad])
        with pytest.raises(ValueError, match="invalid call metadata"):
            client.call_many([("count",), ("count",)], meta=BAD_META[bad])
        assert client.call("count") == 1
        assert ran["count"] == 1


# -- no leaks between calls ----------------------------------------------------------------------

def test_concurrent_async_calls_each_read_their_own_metadata(run: Any) -> None:
    """Many calls in flight at once, with async handlers that wait in between (so their tasks
    interleave) and sync ones, each with metadata of its own: each reads exactly its own."""
    async def main() -> None:
        server, _ = meta_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, timeout=TIMEOUT) as client:
            calls = []
            for i in range(300):
                meta = {"call": str(i)} if i % 5 else {}
                if i % 2:
                    calls.append(client.call("async_meta", [0.001 * (i % 7)], meta=meta or None))
                else:
                    calls.append(client.call("sync_meta", meta=meta or None))
            results = await asyncio.gather(*calls)
            for i, result in enumerate(results):
                meta = {"call": str(i)} if i % 5 else {}
                assert result == ({"first": meta, "after": meta} if i % 2 else meta), i

    run(main())


def test_concurrent_sync_client_threads_each_read_their_own_metadata() -> None:
    server, _ = meta_server()
    failures: List[Any] = []
    with serving_in_thread(server) as port, fastrpc.SyncClient("127.0.0.1", port, timeout=TIMEOUT) as client:
        def caller(thread: int) -> None:
            for i in range(30):
                meta = {"thread": str(thread), "i": str(i)}
                got = client.call("async_meta", [0.001 * (i % 3)], meta=meta)
                if got != {"first": meta, "after": meta}:
                    failures.append((meta, got))
                many = client.call_many([("sync_meta",), ("add", [1, 2])], meta=meta)
                if many != [meta, 3]:
                    failures.append((meta, many))

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures[:3]
