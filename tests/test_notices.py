"""Notices (docs/protocol.md section 11): the rpc.notices opt-in, the drain notice a stopping server sends,
and connections retired at their maximum age (section 9)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import Any, List, Optional

import orjson
import pytest

import fastrpc
from fastrpc.auth import TokenGate
from fastrpc.framing import FrameReader
from fastrpc.protocol import ABSENT, ClientConnection, ServerConnection
from fastrpc.server import FLUSH_LIMIT, HANG_UP_LINGER, MAX_AGE_JITTER

from .conftest import RawConnection, demo_server, frame, serving, within

OPT_IN = b'{"in": "rpc.notices", "id": "notices"}'
OPT_IN_REPLY = {"out": "rpc.notices", "result": ["drain"], "id": "notices"}
NOTICE = {"shutdown": frame(b'{"notice":"drain","reason":"shutdown"}'),
          "max_age": frame(b'{"notice":"drain","reason":"max_age"}')}
#: Seconds any one step may take before the test fails (a bound against hangs, not a measure).
STEP = 5.0


def call(method: str, params: Any, rid: Any) -> bytes:
    return frame(orjson.dumps({"in": method, "params": params, "id": rid}))


async def read_json(conn: RawConnection, port: int, step: str) -> Any:
    return json.loads(await within(step, conn.read_frame(), STEP, port))


async def read_to_eof(conn: RawConnection, port: int, step: str, seconds: float = STEP) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await within(step, conn.reader.read(), seconds, port)


async def opted_in(port: int) -> RawConnection:
    conn = await RawConnection.open(port)
    await conn.send(frame(OPT_IN))
    assert await read_json(conn, port, "the rpc.notices reply") == OPT_IN_REPLY
    return conn


async def running(conn: RawConnection, port: int, seconds: float, value: Any) -> None:
    """Start a ``nap`` call with id ``value``; return once the server has read it (a ping behind it is answered)."""
    await conn.send(call("nap", [seconds, value], value) + call("ping", "read", "read"))
    assert await read_json(conn, port, "the ping behind the nap") == {"out": "pong", "result": "read", "id": "read"}


def refused_before_running(reply: Any, rid: Any) -> bool:
    return reply["id"] == rid and reply["error"]["code"] == -32002 and reply["error"]["data"] == {"started": False}


async def late_call_refused_running_one_answered(conn: RawConnection, port: int, running_id: str) -> None:
    """After the notice: a new call is refused as never run, the call running (``nap`` returning its id) is answered."""
    await conn.send(call("ping", "late", "late"))
    replies = [await read_json(conn, port, "the refusal and the reply") for _ in range(2)]
    by_id = {reply["id"]: reply for reply in replies}
    assert refused_before_running(by_id["late"], "late")
    assert by_id[running_id] == {"out": "nap", "result": running_id, "id": running_id}


# -- the core: opting in (no sockets) ---------------------------------------------------------

def frames(data: bytes) -> List[Any]:
    """The frames in ``data``, as JSON."""
    reader = FrameReader()
    reader.feed(data)
    return [json.loads(bytes(body)) for body in iter(reader.next_frame, None)]


def core() -> ServerConnection:
    return ServerConnection(fastrpc.Server().methods, lambda call: None)


def test_opt_in_is_answered_with_the_kinds_and_enables_the_notice(framing_impl: Any) -> None:
    conn = core()
    assert conn.drain_notice("shutdown") is False and conn.data_to_send() == b""  # not asked for: nothing
    assert frames(conn.receive_data(frame(OPT_IN))) == [OPT_IN_REPLY]
    assert conn.notices
    assert conn.drain_notice("max_age") is True
    assert conn.data_to_send() == NOTICE["max_age"]  # no id, no out: nothing a reply could be taken for


def test_opt_in_without_an_id_is_an_invalid_request(framing_impl: Any) -> None:
    conn = core()
    for body in (b'{"in": "rpc.notices"}', b'{"in": "rpc.notices", "id": null}'):
        [reply] = frames(conn.receive_data(frame(body)))
        assert reply["error"]["code"] == -32600 and reply["id"] is None and "needs an id" in reply["error"]["message"]
    assert not conn.notices and conn.drain_notice("shutdown") is False and conn.data_to_send() == b""


def test_opt_in_is_refused_before_authentication(framing_impl: Any) -> None:
    conn = core()
    conn.use_methods(TokenGate(frozenset({b"secret"}), fastrpc.Server().methods, conn.use_methods, lambda: None))
    [reply] = frames(conn.receive_data(frame(OPT_IN)))
    assert reply["error"]["code"] == -32004 and reply["id"] == "notices"
    assert not conn.notices
    [reply] = frames(conn.receive_data(frame(b'{"in": "auth", "params": "secret", "id": 1}')))
    assert reply["result"] is True
    assert frames(conn.receive_data(frame(OPT_IN))) == [OPT_IN_REPLY] and conn.notices  # once authenticated


def test_opt_in_is_refused_while_the_server_drains(framing_impl: Any) -> None:
    server = fastrpc.Server()
    conn = ServerConnection(server.methods, lambda call: None)
    conn.refuse_calls(server._builtins)  # as a stopping server does: the built-ins it keeps do not include it
    [reply] = frames(conn.receive_data(frame(OPT_IN)))
    assert refused_before_running(reply, "notices")
    assert not conn.notices and conn.drain_notice("shutdown") is False


# -- the client core ------------------------------------------------------------------------

class Outcomes:
    def __init__(self) -> None:
        self.delivered: List[Any] = []
        self.drains: List[str] = []

    def deliver(self, waiter: Any, result: Any, error: Optional[BaseException]) -> None:
        self.delivered.append((waiter, result, error))

    def client(self, **kwargs: Any) -> ClientConnection:
        return ClientConnection(self.deliver, on_drain=self.drains.append, **kwargs)


def test_client_asks_for_notices_only_with_ids(framing_impl: Any) -> None:
    outcomes = Outcomes()
    client = outcomes.client()
    client.ask_for_notices()
    [request] = frames(client.data_to_send())
    assert request["in"] == "rpc.notices" and isinstance(request["id"], int) and "params" not in request
    client.receive_data(frame(orjson.dumps({"out": "rpc.notices", "result": ["drain"], "id": request["id"]})))
    assert outcomes.delivered == [] and client.pending == 0  # its reply answers nobody's call
    ordered = outcomes.client(ids=False)
    ordered.ask_for_notices()
    assert ordered.data_to_send() == b""  # an id-less client cannot tell a notice from a reply (section 11)


def test_client_drain_notice_sets_draining_and_calls_on_drain_once(framing_impl: Any) -> None:
    outcomes = Outcomes()
    client = outcomes.client()
    assert client.draining is None
    client.receive_data(NOTICE["max_age"] + NOTICE["shutdown"])
    assert client.draining == "max_age" and outcomes.drains == ["max_age"]
    assert client.connection_error is None and outcomes.delivered == []


def test_client_ignores_a_notice_kind_it_does_not_know(framing_impl: Any) -> None:
    outcomes = Outcomes()
    client = outcomes.client()
    client.receive_data(frame(b'{"notice":"weather","reason":"rain","extra":[1]}'))
    assert client.draining is None and outcomes.drains == [] and client.connection_error is None
    client.receive_data(frame(b'{"notice":"drain","reason":"shutdown","extra":1}'))  # unknown keys: ignored too
    assert client.draining == "shutdown"


def test_client_notice_does_not_disturb_pending_calls(framing_impl: Any) -> None:
    outcomes = Outcomes()
    client = outcomes.client()
    first = client.request("a", ABSENT, "waiter-1")
    second = client.request("b", [1], "waiter-2")
    client.data_to_send()
    client.receive_data(frame(orjson.dumps({"out": "b", "result": 2, "id": second})) + NOTICE["shutdown"]
                        + frame(orjson.dumps({"out": "a", "result": 1, "id": first})))
    assert outcomes.delivered == [("waiter-2", 2, None), ("waiter-1", 1, None)]
    assert client.draining == "shutdown" and client.pending == 0


# -- a stopping server ------------------------------------------------------------------------

def test_a_stop_notifies_only_the_connection_that_asked(run: Any) -> None:
    """The notice comes at once, ahead of the reply of a call still running, which still comes; a call sent
    after it is refused as never run; the connection that did not ask gets exactly what it got before notices."""
    async def main() -> None:
        server = demo_server(shutdown_grace=10)
        async with serving(server) as port:
            asked = await opted_in(port)
            old = await RawConnection.open(port)
            await running(asked, port, 1.0, "asked")
            await running(old, port, 1.0, "old")
            server.close()
            assert await within("the notice", asked.read_frame(), STEP, port) == NOTICE["shutdown"][4:]
            await late_call_refused_running_one_answered(asked, port, "asked")
            assert await read_to_eof(asked, port, "the close") == b""
            # Exactly the bytes of a stop without notices: the running call's reply, then the FIN.
            assert await read_to_eof(old, port, "the old connection's close") == frame(
                b'{"out": "nap", "result": "old", "id": "old"}')
            await asked.close()
            await old.close()

    run(main())


def test_a_stop_notifies_an_idle_connection_before_closing_it(run: Any) -> None:
    async def main() -> None:
        server = demo_server()
        async with serving(server) as port:
            asked = await opted_in(port)
            server.close()
            assert await read_to_eof(asked, port, "the notice and the close") == NOTICE["shutdown"]
            await asked.close()

    run(main())


# -- maximum connection age -------------------------------------------------------------------

def test_a_connection_is_retired_at_its_age(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Notice within [0.9, 1] x age; the running call is answered, a new one refused as never run; then it
    closes. A connection that did not ask for notices is retired the same way, without one."""
    age = 0.6

    async def main() -> None:
        server = demo_server(max_connection_age=age, max_connection_age_grace=10)
        loop = asyncio.get_running_loop()
        async with serving(server) as port:
            opened = loop.time()
            asked = await opted_in(port)
            old = await RawConnection.open(port)
            await asked.send(call("nap", [age + 1.0, "asked"], "asked"))  # still running at the age
            await old.send(call("nap", [age + 1.0, "old"], "old"))
            notice = await within("the max_age notice", asked.read_frame(), age + STEP, port)
            after = loop.time() - opened
            assert notice == NOTICE["max_age"][4:]
            assert (1 - MAX_AGE_JITTER) * age - 0.01 <= after <= age + 2.0, after  # generous: a bound, not a measure
            await late_call_refused_running_one_answered(asked, port, "asked")
            assert await read_to_eof(asked, port, "the close after the reply") == b""
            assert await read_to_eof(old, port, "the old connection's close") == frame(
                b'{"out": "nap", "result": "old", "id": "old"}')
            assert server.aged_out == 2 and not server.closing
            fresh = await RawConnection.open(port)  # the server serves on
            await fresh.send(call("ping", 1, 1))
            assert await read_json(fresh, port, "a new connection's reply") == {"out": "pong", "result": 1, "id": 1}
            for conn in (asked, old, fresh):
                await conn.close()

    with caplog.at_level(logging.DEBUG, logger="fastrpc.server"):
        run(main())
    assert "reached its maximum age" in caplog.text


@pytest.mark.parametrize("settings", [{"shutdown_grace": 30, "max_connection_age_grace": 0.3},
                                      {"shutdown_grace": 0.3}])  # the grace defaults to the shutdown grace
def test_calls_past_the_age_grace_are_cancelled(run: Any, settings: Any) -> None:
    async def main() -> None:
        server = demo_server(max_connection_age=0.3, **settings)
        async with serving(server) as port:
            asked = await opted_in(port)
            await running(asked, port, 30, "long")
            data = await read_to_eof(asked, port, "the notice, the cancelled call's reply, the close",
                                     0.3 + 0.3 + FLUSH_LIMIT + HANG_UP_LINGER + STEP)
            assert data.startswith(NOTICE["max_age"])
            [reply] = frames(data[len(NOTICE["max_age"]):])
            assert reply["id"] == "long" and reply["error"]["code"] == -32002
            assert reply["error"]["data"] == {"started": True}  # it ran: not safe to send again
            await asked.close()

    run(main())


def test_a_handler_that_ignores_the_age_grace_does_not_hold_the_connection(run: Any) -> None:
    async def main() -> None:
        server = demo_server(max_connection_age=0.3, max_connection_age_grace=0.3)
        released = asyncio.Event()

        @server.method
        async def stubborn() -> str:
            while not released.is_set():  # set once the test has its answer, or failed
                with contextlib.suppress(asyncio.CancelledError):  # deaf to the end of the grace
                    await released.wait()
            return "done"

        async with serving(server) as port:
            asked = await opted_in(port)
            await asked.send(call("stubborn", [], "stubborn"))
            try:
                # Ended FLUSH_LIMIT after the grace, without the reply its handler never gave.
                data = await read_to_eof(asked, port, "the close", 0.3 + 0.3 + FLUSH_LIMIT + HANG_UP_LINGER + 3)
            finally:
                released.set()  # leave nothing running
                await asked.close()
            assert data == NOTICE["max_age"]

    run(main())


def test_each_connection_draws_its_own_age(run: Any) -> None:
    """The drawing, not the timing: every connection's retirement is set between 0.9 and 1 times the age
    from its opening, no two alike; the timers go when the connections close."""
    age = 1000.0

    async def main() -> None:
        server = demo_server(max_connection_age=age)
        loop = asyncio.get_running_loop()
        async with serving(server) as port:
            before = loop.time()
            conns = [await RawConnection.open(port) for _ in range(8)]
            for conn in conns:  # each one answered: each one opened on the server's side
                await conn.send(call("ping", 0, 0))
                await read_json(conn, port, "a ping")
            after = loop.time()
            timers = [c._age_timer for c in server._connections]
            assert len(timers) == 8 and all(t is not None for t in timers)
            whens = sorted(t.when() for t in timers)
            assert before + (1 - MAX_AGE_JITTER) * age <= whens[0] and whens[-1] <= after + age
            assert len(set(whens)) == 8
            for conn in conns:
                await conn.close()
            for _ in range(500):  # bounded: 5 s
                if not server._connections and not server._ending:
                    break
                await asyncio.sleep(0.01)
            assert not server._connections and not server._ending
            assert all(t.cancelled() for t in timers), [(t, t.cancelled()) for t in timers]

    run(main())


def test_draws_spread_over_the_whole_jitter() -> None:
    server = fastrpc.Server(max_connection_age=10)
    draws = [server._connection_age() for _ in range(2000)]
    assert all((1 - MAX_AGE_JITTER) * 10 <= d <= 10 for d in draws)
    assert min(draws) < (1 - 0.9 * MAX_AGE_JITTER) * 10 and max(draws) > (1 - 0.1 * MAX_AGE_JITTER) * 10
    assert fastrpc.Server()._connection_age() is None  # off by default


def test_no_age_no_timer(run: Any) -> None:
    async def main() -> None:
        server = demo_server()
        async with serving(server) as port:
            conn = await RawConnection.open(port)
            await conn.send(call("ping", 0, 0))
            await read_json(conn, port, "a ping")
            [connection] = server._connections
            assert connection._age_timer is None
            await conn.close()

    run(main())


def test_a_stop_before_the_age_takes_over_from_it(run: Any) -> None:
    async def main() -> None:
        server = demo_server(max_connection_age=1000)
        async with serving(server) as port:
            asked = await opted_in(port)
            [connection] = server._connections
            timer = connection._age_timer
            server.close()
            assert await read_to_eof(asked, port, "the stop's notice and close") == NOTICE["shutdown"]
            assert timer.cancelled() and server.aged_out == 0
            await asked.close()

    run(main())


@pytest.mark.parametrize("name", ["max_connection_age", "max_connection_age_grace"])
@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, "5", True])
def test_bad_age_settings(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a positive"):
        fastrpc.Server(**{name: value})


def test_good_age_settings() -> None:
    server = fastrpc.Server(max_connection_age=60, max_connection_age_grace=2.5)
    assert (server.max_connection_age, server.max_connection_age_grace) == (60, 2.5)
    server = fastrpc.Server()
    assert (server.max_connection_age, server.max_connection_age_grace) == (None, None)
