"""Server and async client over real sockets on 127.0.0.1, under both loops and both framings.

Section numbers refer to docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import subprocess
import sys
import traceback
from typing import Any, List

import orjson
import pytest

import fastrpc
from fastrpc.server import _Connection

from .conftest import RawConnection, demo_server, frame, free_port, serving

SEED_REQUEST = json.dumps({"in": "ping", "params": "sha params"}).encode("utf-8")


# -- wire compatibility with the seed -------------------------------------------------

def test_seed_request_bytes_get_seed_reply(run: Any) -> None:
    async def main() -> bytes:
        async with serving(demo_server()) as port:
            raw = await RawConnection.open(port)
            await raw.send(len(SEED_REQUEST).to_bytes(4, "big") + SEED_REQUEST)
            reply = await raw.reader.readexactly(4 + 39)
            await raw.close()
            return reply

    assert run(main()) == frame(b'{"out": "pong", "result": "sha params"}')


def test_seed_blocking_socket_client(run: Any) -> None:
    """The seed's client: a plain blocking socket, sendall, recv."""

    async def main() -> bytes:
        async with serving(demo_server()) as port:
            def client() -> bytes:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(len(SEED_REQUEST).to_bytes(4, "big") + SEED_REQUEST)
                    data = b""
                    while len(data) < 43:
                        data += sock.recv(100)
                    return data

            return await asyncio.get_running_loop().run_in_executor(None, client)

    assert run(main()) == frame(b'{"out": "pong", "result": "sha params"}')


def test_text_probe(run: Any) -> None:
    async def main() -> bytes:
        async with serving(demo_server()) as port:
            raw = await RawConnection.open(port)
            await raw.send(b"ping")
            reply = await raw.reader.read()  # until the server closes
            await raw.close()
            return reply

    assert run(main()) == b"ok.......pong!"


def test_text_probe_in_two_pieces(run: Any) -> None:
    async def main() -> bytes:
        async with serving(demo_server()) as port:
            raw = await RawConnection.open(port)
            await raw.send(b"pi")
            await asyncio.sleep(0.05)
            await raw.send(b"ng")
            reply = await raw.reader.read()
            await raw.close()
            return reply

    assert run(main()) == b"ok.......pong!"


async def seed_style_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers like the seed's server: no ids, in order, prefix and body in two writes."""
    try:
        while True:
            header = await reader.readexactly(4)
            request = json.loads(await reader.readexactly(int.from_bytes(header, "big")))
            body = json.dumps({"out": "pong", "result": request["params"]}).encode("utf-8")
            writer.write(len(body).to_bytes(4, "big"))
            await writer.drain()
            writer.write(body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def test_ordered_mode_against_seed_style_server(run: Any) -> None:
    async def main() -> List[Any]:
        server = await asyncio.start_server(seed_style_server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with fastrpc.connect("127.0.0.1", port, ids=False) as client:
                first = await client.call("ping", "sha params")
                many = await asyncio.gather(*[client.call("ping", i) for i in range(500)])
                return [first, many]
        finally:
            server.close()
            await server.wait_closed()

    first, many = run(main())
    assert first == "sha params"
    assert many == list(range(500))


# -- the async client ------------------------------------------------------------------

def test_add_and_errors(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server()) as port, fastrpc.connect("127.0.0.1", port) as client:
            assert await client.call("add", [1, 2]) == 3
            assert await client.call("add", {"a": "x", "b": "y"}) == "xy"
            assert await client.call("echo", {"k": [1, None]}) == {"k": [1, None]}
            assert await client.call("ping") is None
            with pytest.raises(fastrpc.MethodNotFound) as info:
                await client.call("missing")
            assert info.value.code == -32601 and "missing" in info.value.message
            with pytest.raises(fastrpc.InvalidParams):
                await client.call("add", [1])
            with pytest.raises(fastrpc.InternalError):
                await client.call("fail")
            assert await client.call("add", [2, 3]) == 5

    run(main())


def test_100k_concurrent_calls_on_one_connection(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server()) as port, fastrpc.connect("127.0.0.1", port) as client:
            results = await asyncio.gather(*[client.call("add", [i, 1]) for i in range(100_000)])
            assert results == [i + 1 for i in range(100_000)]

    run(main(), timeout=120)


def test_async_handlers_finish_out_of_order(run: Any) -> None:
    async def main() -> None:
        order: List[int] = []
        server = demo_server()

        @server.method
        async def jitter(i: int) -> int:
            await asyncio.sleep(random.random() * 0.2)
            order.append(i)
            return i * 10

        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            results = await asyncio.gather(*[client.call("jitter", [i]) for i in range(300)])
        assert results == [i * 10 for i in range(300)]
        assert order != sorted(order)  # they really did finish out of order

    run(main())


def test_slow_call_does_not_hold_up_others(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server()) as port, fastrpc.connect("127.0.0.1", port) as client:
            slow = asyncio.ensure_future(client.call("sleep", 5))
            assert await asyncio.wait_for(client.call("add", [1, 1]), 2) == 2
            assert not slow.done()
            slow.cancel()

    run(main())


def test_idless_requests_answered_in_order_behind_a_slow_one(run: Any) -> None:
    async def main() -> List[Any]:
        async with serving(demo_server()) as port, fastrpc.connect("127.0.0.1", port, ids=False) as client:
            return await asyncio.gather(client.call("nap", [0.2, "slow"]), client.call("echo", "fast"))

    assert run(main()) == ["slow", "fast"]


def test_call_timeout_and_late_reply_dropped(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server()) as port:
            for ids in (True, False):
                async with fastrpc.connect("127.0.0.1", port, ids=ids) as client:
                    with pytest.raises(fastrpc.CallTimeout):
                        await client.call("nap", [0.3, "late"], timeout=0.05)
                    await asyncio.sleep(0.4)  # the late reply arrives meanwhile
                    assert await client.call("echo", "next") == "next"

    run(main())


def test_default_timeout(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server()) as port, fastrpc.connect("127.0.0.1", port, timeout=0.05) as client:
            with pytest.raises(fastrpc.CallTimeout):
                await client.call("sleep", 1)
            assert await client.call("sleep", 0.01, timeout=None) == 0.01

    run(main())


def test_connection_loss_fails_every_pending_call(run: Any) -> None:
    async def main() -> None:
        server = demo_server()
        async with serving(server) as port:
            client = await fastrpc.connect("127.0.0.1", port)
            calls = [asyncio.ensure_future(client.call("sleep", 10)) for _ in range(20)]
            await asyncio.sleep(0.1)
            [connection] = server._connections
            connection._transport.abort()  # the connection breaks: no graceful anything
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(o, fastrpc.ConnectionClosed) for o in outcomes)
            assert client.closed
            with pytest.raises(fastrpc.ConnectionClosed):
                await client.call("ping")

    run(main())


def test_connect_refused(run: Any) -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        with pytest.raises(fastrpc.ConnectionClosed, match="could not connect"):
            await fastrpc.connect("127.0.0.1", port)

    run(main())


def test_oversized_request_refused_locally(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server()) as port, fastrpc.connect("127.0.0.1", port, max_frame_size=1000) as client:
            with pytest.raises(fastrpc.FrameTooLarge):
                await client.call("echo", "x" * 2000)
            assert await client.call("echo", "small") == "small"

    run(main())


def test_oversized_reply_refused_by_client(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server()) as port, fastrpc.connect("127.0.0.1", port, max_frame_size=1000) as client:
            with pytest.raises(fastrpc.ConnectionClosed, match="exceeds the maximum frame size"):
                await client.call("grow", [2000])

    run(main())


def test_half_closed_client_still_gets_replies(run: Any) -> None:
    async def main() -> List[Any]:
        async with serving(demo_server()) as port:
            raw = await RawConnection.open(port)
            await raw.send(
                frame(orjson.dumps({"in": "nap", "params": [0.1, "a"], "id": 1}))
                + frame(orjson.dumps({"in": "echo", "params": "b", "id": 2}))
            )
            raw.writer.write_eof()
            replies = [json.loads(await raw.read_frame()) for _ in range(2)]
            assert await raw.at_eof()
            await raw.close()
            return replies

    assert run(main()) == [{"out": "echo", "result": "b", "id": 2}, {"out": "nap", "result": "a", "id": 1}]


# -- malformed input over a socket: one test per class (section 6) ----------------------

def exchange(run: Any, *bodies: bytes, max_frame_size: int = fastrpc.DEFAULT_MAX_FRAME_SIZE) -> List[dict]:
    """Send ``bodies`` as frames then one good request; return every reply."""

    async def main() -> List[dict]:
        async with serving(demo_server(max_frame_size=max_frame_size)) as port:
            raw = await RawConnection.open(port)
            await raw.send(b"".join(frame(b) for b in bodies))
            replies = [json.loads(await raw.read_frame()) for _ in bodies]
            await raw.send(frame(b'{"in": "add", "params": [1, 2], "id": "next"}'))
            replies.append(json.loads(await raw.read_frame()))
            await raw.close()
            return replies

    replies = run(main())
    assert replies[-1] == {"out": "add", "result": 3, "id": "next"}, "the connection must keep serving"
    return replies[:-1]


def test_wire_parse_error(run: Any) -> None:
    [reply] = exchange(run, b'{"in": "ping", "params": ')
    assert reply["error"]["code"] == -32700 and reply["id"] is None


def test_wire_invalid_utf8(run: Any) -> None:
    [reply] = exchange(run, b'{"in": "\xff"}')
    assert reply["error"]["code"] == -32700


def test_wire_invalid_request(run: Any) -> None:
    replies = exchange(run, b"[1, 2]", b'{"params": 1, "id": 3}', b'{"in": 5, "id": 4}', b'{"in": "ping", "id": 1.5}')
    assert [(r["error"]["code"], r["id"]) for r in replies] == [(-32600, None), (-32600, 3), (-32600, 4), (-32600, None)]


def test_wire_method_not_found(run: Any) -> None:
    [reply] = exchange(run, b'{"in": "nope", "id": 9}')
    assert (reply["error"]["code"], reply["id"]) == (-32601, 9)


def test_wire_invalid_params(run: Any) -> None:
    [reply] = exchange(run, b'{"in": "add", "params": [1], "id": 9}')
    assert (reply["error"]["code"], reply["id"]) == (-32602, 9)


def test_wire_internal_error(run: Any) -> None:
    [reply] = exchange(run, b'{"in": "fail", "id": 9}')
    assert (reply["error"]["code"], reply["id"]) == (-32603, 9)
    assert "boom" not in reply["error"]["message"]


def test_wire_frame_too_large_errors_then_closes(run: Any) -> None:
    async def main() -> Any:
        async with serving(demo_server(max_frame_size=1024)) as port:
            raw = await RawConnection.open(port)
            await raw.send((1025).to_bytes(4, "big"))
            reply = json.loads(await raw.read_frame())
            closed = await raw.at_eof()
            await raw.close()
            return reply, closed

    reply, closed = run(main())
    assert reply["error"]["code"] == -32000 and reply["error"]["data"] == {"size": 1025, "limit": 1024}
    assert closed


# -- the I/O layer's writes (section 9) ----------------------------------------------

class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: List[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def test_replies_to_one_read_leave_in_one_write(run: Any) -> None:
    async def main() -> None:
        transport = RecordingTransport()
        connection = _Connection(demo_server())
        connection.connection_made(transport)
        data = b"".join(frame(orjson.dumps({"in": "add", "params": [i, i], "id": i})) for i in range(50))
        buf = connection.get_buffer(-1)
        buf[: len(data)] = data
        connection.buffer_updated(len(data))
        assert len(transport.writes) == 1
        assert transport.writes[0].count(b'"out": "add"') == 50

        # Async replies finished in the same loop iteration are coalesced too.
        data = b"".join(frame(orjson.dumps({"in": "sleep", "params": 0, "id": i})) for i in range(20))
        buf = connection.get_buffer(-1)
        buf[: len(data)] = data
        connection.buffer_updated(len(data))
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(transport.writes) == 2
        assert transport.writes[1].count(b'"out": "sleep"') == 20
        connection.connection_lost(None)

    run(main())


def test_connections_are_logged(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(demo_server()) as port, fastrpc.connect("127.0.0.1", port) as client:
            await client.call("ping")
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.DEBUG, logger="fastrpc.server"):
        run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any("opened" in m for m in messages) and any("closed" in m for m in messages)


def test_handler_failures_are_logged_with_their_traceback(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = demo_server()

    @server.method
    def boom() -> Any:
        return undefined_name  # type: ignore[name-defined]  # noqa: F821

    @server.method
    async def aboom() -> Any:
        raise ValueError("bad state")

    @server.method
    def refuse() -> Any:
        raise fastrpc.InvalidParams("on purpose")

    async def main() -> int:
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            for method in ("boom", "aboom"):
                with pytest.raises(fastrpc.InternalError):
                    await client.call(method)
            with pytest.raises(fastrpc.InvalidParams):  # a RemoteError raised on purpose: not logged
                await client.call("refuse")
            local_port = client._link.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        return int(local_port)

    with caplog.at_level(logging.ERROR, logger="fastrpc.server"):
        local_port = run(main())
    failures = [r for r in caplog.records if r.name == "fastrpc.server" and r.levelno == logging.ERROR]
    assert len(failures) == 2, [r.getMessage() for r in failures]
    boom, aboom = failures
    assert "'boom'" in boom.getMessage() and f"127.0.0.1:{local_port}" in boom.getMessage()
    assert "NameError" in boom.getMessage()
    assert boom.exc_info is not None and "undefined_name" in "".join(traceback.format_exception(*boom.exc_info))
    assert "'aboom'" in aboom.getMessage() and "bad state" in aboom.getMessage()
    assert aboom.exc_info is not None and aboom.exc_info[0] is ValueError


def test_handler_failures_in_a_loop_are_rate_limited(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    from fastrpc.server import FAILURES_LOGGED_PER_SECOND

    async def main() -> None:
        async with serving(demo_server()) as port, fastrpc.connect("127.0.0.1", port) as client:
            outcomes = await asyncio.gather(*[client.call("fail") for _ in range(200)], return_exceptions=True)
            assert all(isinstance(o, fastrpc.InternalError) for o in outcomes)
            await asyncio.sleep(1.2)  # the second is over: the count of those held back is logged

    with caplog.at_level(logging.ERROR, logger="fastrpc.server"):
        run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "fastrpc.server"]
    one_by_one = [m for m in messages if m.startswith("handler 'fail' failed for")]
    held_back = [int(m.split()[3]) for m in messages if m.endswith("more times in that second (not logged one by one)")]
    # The 200 take well under a second; should they straddle a second's end, two seconds' worth is logged.
    windows = 1 + (len(one_by_one) > FAILURES_LOGGED_PER_SECOND)
    assert FAILURES_LOGGED_PER_SECOND <= len(one_by_one) <= windows * FAILURES_LOGGED_PER_SECOND, messages
    assert 1 <= len(held_back) <= windows and len(one_by_one) + sum(held_back) == 200, messages


def test_listening_line_names_framing_and_loop(run: Any, framing_impl: Any, caplog: pytest.LogCaptureFixture,
                                               request: pytest.FixtureRequest) -> None:
    from fastrpc import framing

    async def main() -> None:
        async with serving(demo_server()):
            pass

    with caplog.at_level(logging.INFO, logger="fastrpc.server"):
        run(main())
    [line] = [r.getMessage() for r in caplog.records if "listening on" in r.getMessage()]
    loop = request.node.callspec.params["run"]
    assert line.endswith(f"(framing {framing.IMPLEMENTATION}, loop {loop})"), line


# -- what a server says about itself -------------------------------------------------------

_SERVE_BRIEFLY = """
import os, signal, socket, sys, threading, time
{prelude}
import fastrpc
from fastrpc.cli import main

def stop_once_listening():
    for _ in range(400):  # 20 s at most
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=stop_once_listening, daemon=True).start()
{serve}
"""


def _serve_briefly(prelude: str, serve: str, env: Any = None) -> str:
    """Run a server in a subprocess until it is listening, then SIGTERM it; its stderr."""
    port = free_port()
    code = _SERVE_BRIEFLY.format(prelude=prelude, serve=serve.format(port=port), port=port)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_missing_compiled_framing_is_warned_of_once() -> None:
    blocked = "sys.modules['fastrpc._framing'] = None  # import fails, as in an unbuilt source checkout"
    stderr = _serve_briefly(blocked, "main(['serve', '--port', '{port}'])", {"FASTRPC_NO_EXTENSIONS": ""})
    assert "(framing python, loop uvloop)" in stderr
    assert stderr.count("WARNING") == 1 and "pure-Python framing" in stderr and "FASTRPC_NO_EXTENSIONS=1" in stderr
    chosen = _serve_briefly("", "main(['serve', '--port', '{port}'])", {"FASTRPC_NO_EXTENSIONS": "1"})
    assert "(framing python, loop uvloop)" in chosen and "WARNING" not in chosen  # asked for: no warning


def test_run_logs_the_listening_line() -> None:
    stderr = _serve_briefly("", "fastrpc.run(fastrpc.Server(), '127.0.0.1', {port})")  # the framing this run has
    assert "INFO [" in stderr and "fastrpc.server: fastrpc listening on 127.0.0.1:" in stderr
    from fastrpc import framing

    assert f"(framing {framing.IMPLEMENTATION}, loop uvloop)" in stderr and "shutting down" in stderr


def test_the_rpc_prefix_is_reserved_for_built_ins() -> None:
    server = fastrpc.Server()
    for name in ("rpc.health", "rpc.mine"):
        with pytest.raises(ValueError, match="reserved for fastrpc's built-ins"):
            server.method(name)(lambda: None)
    assert "rpc.health" in server.methods and "rpc.mine" not in server.methods
