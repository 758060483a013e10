"""The access log: one line per call that reached a handler, with the code its client was answered with."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, List

import orjson
import pytest

import fastrpc
from fastrpc.accesslog import AccessLog

from .conftest import RawConnection, demo_server, erring_server, frame, serving

LINE = re.compile(r"peer=127\.0\.0\.1:\d+ method=(\S+) code=(\S+) ms=\d+\.\d{3}")


def logged_server() -> fastrpc.Server:
    server = erring_server()
    server.use(AccessLog())
    return server


def lines(caplog: pytest.LogCaptureFixture) -> List[Any]:
    """(method, code) of each access line so far; fails on any other shape."""
    found = []
    for record in caplog.records:
        if record.name != "fastrpc.access":
            continue  # the server's own lines (the internal error's traceback)
        assert record.levelno == logging.INFO
        match = LINE.fullmatch(record.getMessage())
        assert match, record.getMessage()
        found.append(match.groups())
    return found


def test_one_line_per_call_with_its_code(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastrpc.access")

    async def main() -> None:
        async with serving(logged_server()) as port, fastrpc.connect("127.0.0.1", port) as client:
            assert await client.call("add", [1, 2]) == 3
            assert await client.call("sleep", [0]) == 0  # an async handler
            with pytest.raises(fastrpc.RemoteError) as refused:
                await client.call("refuse")
            assert refused.value.code == -32010
            with pytest.raises(fastrpc.ServerBusy):
                await client.call("busy")
            with pytest.raises(fastrpc.InvalidParams):
                await client.call("add", [1])
            with pytest.raises(fastrpc.InvalidParams):  # raised by the async handler itself
                await client.call("sleep", [-1])
            with pytest.raises(fastrpc.InternalError):
                await client.call("fail")
            with pytest.raises(fastrpc.MethodNotFound):  # never reaches a handler: not logged
                await client.call("nope")
            assert await client.call("echo", "x") == "x"

    run(main())
    assert lines(caplog) == [("add", "OK"), ("sleep", "OK"), ("refuse", "-32010"), ("busy", "SERVER_BUSY"),
                             ("add", "INVALID_PARAMS"), ("sleep", "INVALID_PARAMS"), ("fail", "INTERNAL_ERROR"),
                             ("echo", "OK")]


def test_stopped_calls_are_logged(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastrpc.access")

    async def main() -> None:
        async with serving(logged_server()) as port:
            raw = await RawConnection.open(port)
            await raw.send(frame(b'{"in": "sleep", "params": [5], "id": 1, "deadline": 50}'))
            assert orjson.loads(await asyncio.wait_for(raw.read_frame(), 5))["error"]["code"] == fastrpc.ErrorCode.TIMEOUT
            await raw.send(frame(b'{"in": "sleep", "params": [5], "id": 2}') + frame(b'{"cancel": 2}'))
            for _ in range(1000):  # a cancelled call is not answered: wait for its line (up to 10 s, on a loaded machine)
                if len(lines(caplog)) == 2:
                    break
                await asyncio.sleep(0.01)
            await raw.close()

    run(main())
    assert lines(caplog) == [("sleep", "TIMEOUT"), ("sleep", "CANCELLED")]


def test_a_logger_of_ones_own(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="myapp.calls")

    async def main() -> None:
        server = demo_server()
        server.use(AccessLog(logging.getLogger("myapp.calls")))
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            assert await client.call("add", [1, 2]) == 3

    run(main())
    [record] = caplog.records
    assert record.name == "myapp.calls" and LINE.fullmatch(record.getMessage()).groups() == ("add", "OK")


def test_every_call_past_its_deadline_is_logged_as_a_timeout(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The deadline's timer may fire a little before the loop's clock reaches the deadline (uvloop
    counts milliseconds): remaining() said time was left, and such a call was logged CANCELLED."""
    caplog.set_level(logging.INFO, logger="fastrpc.access")
    calls = 40

    async def main() -> None:
        async with serving(logged_server()) as port:
            raw = await RawConnection.open(port)
            for i in range(calls):
                await raw.send(frame(b'{"in": "sleep", "params": [5], "id": %d, "deadline": %d}' % (i, 1 + i % 4)))
            for _ in range(calls):
                reply = orjson.loads(await asyncio.wait_for(raw.read_frame(), 10))
                assert reply["error"]["code"] == fastrpc.ErrorCode.TIMEOUT
            for _ in range(1000):  # the last lines may follow the replies
                if len(lines(caplog)) == calls:
                    break
                await asyncio.sleep(0.01)
            await raw.close()

    run(main())
    assert lines(caplog) == [("sleep", "TIMEOUT")] * calls
