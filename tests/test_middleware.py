"""Middleware around calls: what it is told, what it can refuse, and that it is absent when unused."""

from __future__ import annotations

import asyncio
from typing import Any, List, Tuple

import orjson
import pytest

import fastrpc
from fastrpc.middleware import HookedMethods

from .conftest import demo_server, serving


class Recorder(fastrpc.Middleware):
    def __init__(self, name: str, log: List[Tuple[Any, ...]]) -> None:
        self.name = name
        self.log = log

    def before(self, call: fastrpc.CallInfo) -> None:
        self.log.append((self.name, "before", call.method, call.params, call.peer[0]))
        if call.method == "echo" and call.params == ["secret"]:
            raise fastrpc.RemoteError("not for you", code=-32010)

    def after(self, call: fastrpc.CallInfo, result: Any, elapsed: float) -> None:
        assert elapsed >= 0
        self.log.append((self.name, "after", call.method, result))

    def on_error(self, call: fastrpc.CallInfo, exc: BaseException, elapsed: float) -> None:
        self.log.append((self.name, "error", call.method, type(exc).__name__))


def test_hooks_see_every_call_and_can_refuse(run: Any) -> None:
    async def main() -> None:
        log: List[Tuple[Any, ...]] = []
        server = demo_server()
        server.use(Recorder("outer", log))
        server.use(Recorder("inner", log))
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            assert await client.call("add", [1, 2]) == 3
            assert log == [("outer", "before", "add", [1, 2], "127.0.0.1"), ("inner", "before", "add", [1, 2], "127.0.0.1"),
                           ("inner", "after", "add", 3), ("outer", "after", "add", 3)]
            log.clear()
            assert await client.call("sleep", {"seconds": 0.01}) == 0.01  # async handler, keyword params
            assert [entry[:3] for entry in log] == [("outer", "before", "sleep"), ("inner", "before", "sleep"),
                                                   ("inner", "after", "sleep"), ("outer", "after", "sleep")]
            assert log[0][3] == {"seconds": 0.01}
            log.clear()
            with pytest.raises(fastrpc.RemoteError, match="not for you") as refused:
                await client.call("echo", ["secret"])
            assert refused.value.code == -32010
            assert ("outer", "error", "echo", "RemoteError") in log and not any(e[1] == "after" for e in log)
            log.clear()
            with pytest.raises(fastrpc.InvalidParams):  # bad params are still told apart from handler errors
                await client.call("add", [1])
            assert ("outer", "error", "add", "TypeError") in log
            assert await client.call("ping", "raw") == "raw"
            assert log[-2:] == [("inner", "after", "ping", "raw"), ("outer", "after", "ping", "raw")]
            with pytest.raises(fastrpc.MethodNotFound):
                await client.call("nope")

    run(main())


def test_no_middleware_means_the_plain_registry(run: Any) -> None:
    async def main() -> None:
        server = demo_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            assert await client.call("ping") is None
            [connection] = server._connections
            assert connection._core._methods is server.methods  # nothing wrapped, nothing to pay

    run(main())


def test_use_wants_middleware() -> None:
    with pytest.raises(TypeError, match="fastrpc.Middleware"):
        fastrpc.Server().use(object())  # type: ignore[arg-type]


def test_wrapping_happens_once_per_method_and_connection() -> None:
    server = demo_server()
    view = HookedMethods(server.methods, [fastrpc.Middleware()], ("127.0.0.1", 1))
    assert view["add"] is view["add"] and view["add"].func.__wrapped__ is server.methods["add"].func
    assert view["sleep"].is_async and asyncio.iscoroutinefunction(view["sleep"].func)
    with pytest.raises(KeyError):
        view["nope"]


def test_every_middleware_sees_the_call_end_even_when_another_raises(run: Any) -> None:
    class Broken(fastrpc.Middleware):
        def after(self, call: fastrpc.CallInfo, result: Any, elapsed: float) -> None:
            raise ValueError("after failed")

        def on_error(self, call: fastrpc.CallInfo, exc: BaseException, elapsed: float) -> None:
            raise ValueError("on_error failed")

    async def main() -> None:
        log: List[Tuple[Any, ...]] = []
        server = demo_server()
        server.use(Recorder("outer", log))
        server.use(Broken())  # between the two: both must still be told, whichever order they end in
        server.use(Recorder("inner", log))
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            with pytest.raises(fastrpc.InternalError):
                await client.call("add", [1, 2])  # the raising after() fails the call
            assert sorted(entry for entry in log if entry[1] == "after") == [("inner", "after", "add", 3), ("outer", "after", "add", 3)]
            log.clear()
            with pytest.raises(fastrpc.InternalError):
                await client.call("sleep", {"seconds": "x"})
            assert sorted(entry[:3] for entry in log if entry[1] == "error") == [("inner", "error", "sleep"), ("outer", "error", "sleep")]

    run(main())


def test_a_handler_raising_system_exit_is_still_told_to_middleware(run: Any) -> None:
    async def main() -> None:
        log: List[Tuple[Any, ...]] = []
        server = demo_server()

        @server.method
        def leave() -> None:
            raise SystemExit(3)

        server.use(Recorder("outer", log))
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            with pytest.raises(fastrpc.InternalError):
                await client.call("leave")
            assert log[-1] == ("outer", "error", "leave", "SystemExit")  # a span ended, a context detached

    run(main())


def test_a_raising_on_cancel_leaves_a_stopped_call_stopped(run: Any) -> None:
    class BrokenCancel(fastrpc.Middleware):
        def on_cancel(self, call: fastrpc.CallInfo, elapsed: float) -> None:
            raise ValueError("on_cancel failed")

    async def main() -> None:
        server = demo_server()
        server.use(BrokenCancel())
        async with serving(server) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                body = b'{"in": "nap", "params": [5, 1], "deadline": 50, "id": 1}'
                writer.write(len(body).to_bytes(4, "big") + body)
                header = await asyncio.wait_for(reader.readexactly(4), 10)
                reply = orjson.loads(await asyncio.wait_for(reader.readexactly(int.from_bytes(header, "big")), 10))
                assert reply["error"]["code"] == fastrpc.ErrorCode.TIMEOUT  # not the internal error on_cancel raised
            finally:
                writer.close()

    run(main())
