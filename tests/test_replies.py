"""One encoding of requests and one reading of replies, shared by the client core and the load generator.

Every reply below is tried on both: the client core (``ClientConnection``) and
``fastrpc bench``'s load generator must call the same replies successes.
"""

from __future__ import annotations

import asyncio
from typing import Any, List

import orjson
import pytest

import fastrpc
from fastrpc import loadgen
from fastrpc.protocol import ABSENT, ClientConnection, encode_request, read_reply
from fastrpc.server import new_event_loop

from .conftest import frame
from .test_loadgen import _scripted, _Scripted

# (reply body, the result of a success, or the class of the error its call gets)
REPLIES = [
    (b'{"out": "pong", "result": "x"}', "x"),
    (b'{"out": "pong", "result": null}', None),
    (b'{"result": [1, 2]}', [1, 2]),  # no out: still a result
    (b'{"out": "error", "error": {"code": -32601, "message": "method not found"}}', fastrpc.MethodNotFound),
    (b'{"out": "error", "error": {"code": 7, "message": "custom", "data": [1]}}', fastrpc.RemoteError),
    # Neither a result nor an error: an error for that call (the connection goes on).
    (b'{"out": "pong"}', fastrpc.ProtocolError),  # no result: not a success with a null one
    (b'{"out": "error", "error": "boom"}', fastrpc.ProtocolError),  # the error is not an object
    (b'{"out": "error", "result": 1}', fastrpc.ProtocolError),  # says error, carries a result
    (b"{}", fastrpc.ProtocolError),
]


def is_error(expected: Any) -> bool:
    return isinstance(expected, type) and issubclass(expected, Exception)


def test_encode_request() -> None:
    assert encode_request("ping") == b'{"in":"ping"}'
    assert encode_request("ping", None) == b'{"in":"ping","params":null}'
    assert encode_request("add", [1, 2], 7, 0.25) == b'{"in":"add","params":[1,2],"id":7,"deadline":250}'
    assert encode_request("add", ABSENT, "a", 0.0001) == b'{"in":"add","id":"a","deadline":1}'  # rounded up
    assert encode_request("x", {"k": "v"}, deadline=-1) == b'{"in":"x","params":{"k":"v"},"deadline":0}'


@pytest.mark.parametrize("ids", [True, False])
def test_client_core_sends_what_encode_request_makes(ids: bool) -> None:
    core = ClientConnection(lambda *a: None, ids=ids)
    key = core.request("add", [1, 2], "w", deadline=0.5)
    assert core.data_to_send() == frame(encode_request("add", [1, 2], key if ids else None, 0.5))


class _Recording(_Scripted):
    received: List[bytes] = []

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        super().data_received(data)


def test_load_generator_sends_what_encode_request_makes() -> None:
    _Recording.received.clear()  # a rerun in the same process starts afresh

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: _Recording(frame(b'{"out": "echo", "result": 1}'), 3), "127.0.0.1", 0)
        async with server:
            report = await loadgen.run_load("127.0.0.1", server.sockets[0].getsockname()[1], method="echo",
                                            params={"x": 1}, connections=1, duration=None, requests=3)
        assert report.successes == 3

    asyncio.run(asyncio.wait_for(main(), 10))
    assert b"".join(_Recording.received) == frame(encode_request("echo", {"x": 1})) * 3


@pytest.mark.parametrize("body, expected", REPLIES)
def test_read_reply(body: bytes, expected: Any) -> None:
    reply, result, error = read_reply(body)
    assert reply == orjson.loads(body)
    if is_error(expected):
        assert result is None and type(error) is expected
    else:
        assert (result, error) == (expected, None)


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'"x"'])
def test_read_reply_refuses_what_is_no_object(body: bytes) -> None:
    with pytest.raises(fastrpc.ProtocolError):
        read_reply(body)


@pytest.mark.parametrize("ids", [True, False])
@pytest.mark.parametrize("body, expected", REPLIES)
def test_client_core_outcomes(body: bytes, expected: Any, ids: bool) -> None:
    outcomes: list = []
    core = ClientConnection(lambda waiter, result, error: outcomes.append((waiter, result, error)), ids=ids)
    first = core.request("m", ABSENT, "first")
    second = core.request("m", ABSENT, "second")
    if ids:
        body = body[:-1] + b', "id": %d}' % first if body != b"{}" else b'{"id": %d}' % first
    core.receive_data(frame(body))
    [(waiter, result, error)] = outcomes
    assert waiter == "first"
    if is_error(expected):
        assert result is None and type(error) is expected
    else:
        assert (result, error) == (expected, None)
    # The connection goes on: the next reply answers the next call.
    core.receive_data(frame(b'{"out": "m", "result": 2%s}' % (b', "id": %d' % second if ids else b"")))
    assert outcomes[1] == ("second", 2, None) and core.pending == 0


@pytest.mark.parametrize("body, expected", REPLIES)
def test_load_generator_outcomes(body: bytes, expected: Any) -> None:
    # One connection, one request at a time, answered five times with this body, then closed.
    report = asyncio.run(asyncio.wait_for(_scripted(frame(body), answers=5, connections=1, depth=1), 10))
    assert report.requests == report.successes + report.errors
    if not is_error(expected):
        assert report.successes == 5 and report.errors == 1  # the sixth request is lost with the connection
        return
    assert report.successes == 0 and report.errors == 6
    sample = report.error_samples[0]
    if issubclass(expected, fastrpc.RemoteError):
        error = orjson.loads(body)["error"]
        assert sample == f"error {error['code']}: {error['message']}"
    else:
        assert "neither a result nor an error" in sample


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_connection_refused_is_worded_like_the_clients(unused_port: int, loop: str) -> None:
    event_loop = new_event_loop(loop)
    try:
        with pytest.raises(fastrpc.ConnectionClosed) as caught:  # a ConnectionError, as `fastrpc bench` expects
            event_loop.run_until_complete(loadgen.run_load("127.0.0.1", unused_port, connections=2, duration=1))
    finally:
        event_loop.close()
    text = str(caught.value)
    assert text.startswith(f"could not connect to 127.0.0.1:{unused_port}: ") and "[Errno" not in text


@pytest.fixture
def unused_port() -> Any:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        yield sock.getsockname()[1]
