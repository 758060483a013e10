"""Hostile clients: each kind of bad input gets its documented answer, and a well-behaved client on the
same server is served before, during and after every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List

import orjson
import pytest

import fastrpc
from fastrpc.limits import PROBE_REPLY

from fastrpc.server import new_event_loop

from .conftest import RawConnection, demo_server, frame, free_port, serve, serving
from .test_limits import rss_bytes


def request(**fields: Any) -> bytes:
    return frame(orjson.dumps(fields))


async def replies(raw: RawConnection, count: int) -> List[Dict[str, Any]]:
    return [orjson.loads(await asyncio.wait_for(raw.read_frame(), 5)) for _ in range(count)]


async def code_of(raw: RawConnection) -> int:
    [reply] = await replies(raw, 1)
    return int(reply["error"]["code"])


async def still_serving(raw: RawConnection) -> None:
    await raw.send(request(**{"in": "ping", "params": "still", "id": "check"}))
    [reply] = await replies(raw, 1)
    assert reply == {"out": "pong", "result": "still", "id": "check"}


async def closed(raw: RawConnection) -> bool:
    """True once the server has closed the connection, with a FIN or, where bytes it never read were left, a reset."""
    try:
        return await asyncio.wait_for(raw.at_eof(), 5)
    except ConnectionResetError:
        return True


#: Connections the server takes at once (the flood case goes past it).
LIMIT = 20

Case = Callable[[RawConnection, int], Awaitable[None]]
CASES: Dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(func: Case) -> Case:
        CASES[name] = func
        return func
    return register


@case("garbage that happens to be a frame of non-JSON")
async def _garbage(raw: RawConnection, port: int) -> None:
    await raw.send(frame(b"\x8a\x01 not json at all"))
    assert await code_of(raw) == -32700
    await still_serving(raw)


@case("a header announcing 4 GiB")
async def _huge_header(raw: RawConnection, port: int) -> None:
    await raw.send(b"\xff\xff\xff\xff" + b"x" * 100)
    assert await code_of(raw) == -32000 and await closed(raw)


@case("a header, then silence")
async def _silence(raw: RawConnection, port: int) -> None:
    await raw.send(struct.pack(">I", 100) + b"{")
    assert await code_of(raw) == -32003 and await closed(raw)


@case("a body cut off by a disconnect")
async def _cut(raw: RawConnection, port: int) -> None:
    await raw.send(struct.pack(">I", 1000) + b'{"in": "echo", "params": "')
    await raw.close()


@case("invalid UTF-8")
async def _utf8(raw: RawConnection, port: int) -> None:
    await raw.send(frame(b'{"in": "echo", "params": "\xff\xfe", "id": 1}'))
    assert await code_of(raw) == -32700
    await still_serving(raw)


@case("an empty frame")
async def _empty(raw: RawConnection, port: int) -> None:
    await raw.send(frame(b""))
    assert await code_of(raw) == -32700
    await still_serving(raw)


@case("JSON that is not an object")
async def _not_object(raw: RawConnection, port: int) -> None:
    for body in (b"[1, 2]", b'"ping"', b"null", b"42"):
        await raw.send(frame(body))
        assert await code_of(raw) == -32600
    await still_serving(raw)


@case("'in' of the wrong type, or missing")
async def _bad_in(raw: RawConnection, port: int) -> None:
    for body in (b'{"in": 5}', b'{"in": ["echo"]}', b'{"in": null}', b'{"params": 1}', b'{"in": {"a": 1}}'):
        await raw.send(frame(body))
        assert await code_of(raw) == -32600
    await still_serving(raw)


@case("an unknown method, odd names")
async def _unknown(raw: RawConnection, port: int) -> None:
    for name in ("nope", "", "\u0000", "x" * 10_000, "__init__", "ping "):
        await raw.send(request(**{"in": name, "id": 1}))
        assert await code_of(raw) == -32601
    await still_serving(raw)


@case("deeply nested JSON")
async def _nested(raw: RawConnection, port: int) -> None:
    await raw.send(frame(b'{"in": "echo", "params": ' + b"[" * 5000 + b"]" * 5000 + b', "id": 1}'))
    assert await code_of(raw) == -32700  # past the decoder's depth limit: a parse error, not a crash
    await still_serving(raw)


@case("huge numbers")
async def _huge_numbers(raw: RawConnection, port: int) -> None:
    for number in (b"1" * 400, b"1e400", b"-1e400"):  # past a double: a parse error
        await raw.send(frame(b'{"in": "echo", "params": [' + number + b'], "id": 1}'))
        assert await code_of(raw) == -32700
    await raw.send(frame(b'{"in": "echo", "params": [' + b"9" * 30 + b'], "id": 1}'))  # past 64 bits: a float
    assert (await replies(raw, 1))[0]["result"] == [1e30]
    await still_serving(raw)


@case("an id of the wrong type")
async def _bad_id(raw: RawConnection, port: int) -> None:
    for rid in (b"1.5", b"true", b"[1]", b'{"a": 1}'):
        await raw.send(frame(b'{"in": "ping", "id": ' + rid + b"}"))
        assert await code_of(raw) == -32600
    await still_serving(raw)


@case("duplicate ids in flight")
async def _duplicate_ids(raw: RawConnection, port: int) -> None:
    await raw.send(request(**{"in": "sleep", "params": [0.05], "id": 7}) * 2)
    got = await replies(raw, 2)
    assert got == [{"out": "sleep", "result": 0.05, "id": 7}] * 2  # each request answered once


@case("bad params")
async def _bad_params(raw: RawConnection, port: int) -> None:
    for params in ([1], [1, 2, 3], {"a": 1, "c": 2}, "x"):
        await raw.send(request(**{"in": "add", "params": params, "id": 1}))
        assert await code_of(raw) == -32602
    await still_serving(raw)


@case("a handler that raises")
async def _raises(raw: RawConnection, port: int) -> None:
    await raw.send(request(**{"in": "fail", "id": 1}))
    assert await code_of(raw) == -32603
    await still_serving(raw)


@case("a handler that raises SystemExit or KeyboardInterrupt")
async def _raises_base(raw: RawConnection, port: int) -> None:
    for method in ("exit", "interrupt"):
        await raw.send(request(**{"in": method, "id": method}))
        [reply] = await replies(raw, 1)
        assert reply["id"] == method and reply["error"]["code"] == -32603
    await still_serving(raw)


@case("a bad deadline")
async def _bad_deadline(raw: RawConnection, port: int) -> None:
    for deadline in (-1, "soon", [5]):
        await raw.send(request(**{"in": "sleep", "params": [0], "id": 1, "deadline": deadline}))
        assert await code_of(raw) == -32600
    await still_serving(raw)


@case("a cancel for an unknown id, and odd cancels")
async def _cancel_unknown(raw: RawConnection, port: int) -> None:
    for body in (b'{"cancel": 12345}', b'{"cancel": "x"}', b'{"cancel": [1]}', b'{"cancel": null}'):
        await raw.send(frame(body))  # never answered
    await still_serving(raw)  # the next frame it reads is the answer to this


@case("unknown extra keys")
async def _extra_keys(raw: RawConnection, port: int) -> None:
    await raw.send(request(**{"in": "add", "params": [1, 2], "id": 1, "x": {"y": [1]}, "out": "z"}))
    assert (await replies(raw, 1))[0]["result"] == 3


@case("thousands of tiny frames in one packet")
async def _tiny_frames(raw: RawConnection, port: int) -> None:
    await raw.send(frame(b'{"in":"ping"}') * 5000)
    got = await replies(raw, 5000)
    assert got == [{"out": "pong", "result": None}] * 5000


@case("one byte at a time")
async def _one_byte(raw: RawConnection, port: int) -> None:
    data = request(**{"in": "echo", "params": ["slow"], "id": 2})
    for i in range(len(data)):
        await raw.send(data[i:i + 1])
    assert await replies(raw, 1) == [{"out": "echo", "result": ["slow"], "id": 2}]


@case("the text probe")
async def _probe(raw: RawConnection, port: int) -> None:
    await raw.send(b"ping")
    assert await asyncio.wait_for(raw.reader.read(100), 5) == PROBE_REPLY and await closed(raw)


@case("a half-closed socket with requests in flight")
async def _half_closed(raw: RawConnection, port: int) -> None:
    await raw.send(request(**{"in": "sleep", "params": [0.1], "id": 1}) + request(**{"in": "add", "params": [1, 1], "id": 2}))
    raw.writer.write_eof()
    got = await replies(raw, 2)
    assert sorted(r["id"] for r in got) == [1, 2] and await closed(raw)  # every reply, then the close


@case("a response larger than the maximum frame size")
async def _response_too_large(raw: RawConnection, port: int) -> None:
    await raw.send(request(**{"in": "grow", "params": [2 << 20], "id": 1}))
    assert await code_of(raw) == -32000
    await still_serving(raw)


@case("a client that never reads, flooding")
async def _never_reads(raw: RawConnection, port: int) -> None:
    raw.writer.transport.set_write_buffer_limits(high=1 << 30)
    raw.writer.write(request(**{"in": "echo", "params": "f" * 10_000}) * 3000)  # 30 MB, none read back
    await asyncio.sleep(0.5)
    raw.writer.transport.abort()  # what it wrote was never all taken: do not wait for it


@case("a connection flood past the limit")
async def _connection_flood(raw: RawConnection, port: int) -> None:
    extra = [await RawConnection.open(port) for _ in range(LIMIT)]
    for other in extra:
        other.writer.write(request(**{"in": "ping", "params": 1}))
    firsts = [(await replies(other, 1))[0] for other in extra]  # a pong, or the busy error sent at once
    busy = [reply for reply in firsts if reply.get("out") == "error"]
    assert {reply["error"]["code"] for reply in busy} == {-32001}
    assert len(busy) == 2  # the well-behaved client and `raw` hold two of the LIMIT places
    for other in extra:
        other.writer.transport.abort()


@case("a request over the size limit, body and all")
async def _over_limit(raw: RawConnection, port: int) -> None:
    raw.writer.write(struct.pack(">I", 2 << 20) + b"x" * (2 << 20))  # not drained: the server stops reading at the header
    assert await code_of(raw) == -32000 and await closed(raw)


@case("a reset in the middle of a large reply")
async def _reset_mid_reply(raw: RawConnection, port: int) -> None:
    await raw.send(request(**{"in": "grow", "params": [900_000], "id": 1}))
    await asyncio.wait_for(raw.reader.readexactly(1000), 5)  # the reply has started
    sock = raw.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.writer.transport.abort()  # a reset, with most of the reply unread


@case("a TLS ClientHello at the plain port")
async def _tls_at_plain(raw: RawConnection, port: int) -> None:
    await raw.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32))  # its first bytes read as a 369 MB header
    assert await code_of(raw) == -32000 and await closed(raw)


@case("an HTTP request at the plain port")
async def _http(raw: RawConnection, port: int) -> None:
    await raw.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # "GET " reads as a 1.2 GB header
    assert await code_of(raw) == -32000 and await closed(raw)


@case("strings and numbers JSON does not allow")
async def _not_json(raw: RawConnection, port: int) -> None:
    for value in (b'"\\ud800"', b"NaN", b"Infinity", b"'single'", b"0x10", b"[1,]"):
        await raw.send(frame(b'{"in": "echo", "params": [' + value + b'], "id": 1}'))
        assert await code_of(raw) == -32700
    await still_serving(raw)


@case("duplicate keys: the last one counts")
async def _duplicate_keys(raw: RawConnection, port: int) -> None:
    await raw.send(frame(b'{"in": "nope", "params": [1], "in": "echo", "id": 1, "id": 2}'))
    assert await replies(raw, 1) == [{"out": "echo", "result": [1], "id": 2}]


@case("cancels aimed at other connections' ids")
async def _cancel_others(raw: RawConnection, port: int) -> None:
    await raw.send(b"".join(frame(b'{"cancel": %d}' % n) for n in range(5000)))
    await still_serving(raw)  # the well-behaved client's calls, with ids in that range, are untouched


@case("thousands of slow calls pipelined, past the in-flight limit")
async def _past_in_flight(raw: RawConnection, port: int) -> None:
    await raw.send(b"".join(request(**{"in": "nap", "params": [0.01, n], "id": n}) for n in range(3000)))
    got = await replies(raw, 3000)
    assert sorted(reply["result"] for reply in got) == list(range(3000))


@case("a sender that trickles a frame slower than the frame timeout")
async def _trickle(raw: RawConnection, port: int) -> None:
    data = request(**{"in": "echo", "params": ["t" * 50], "id": 1})
    answer = asyncio.ensure_future(code_of(raw))  # read while sending: a reset must not hide the answer
    for i in range(40):  # a byte every 50 ms: never a whole frame, always some progress
        if answer.done():
            break
        with contextlib.suppress(ConnectionError):
            await raw.send(data[i:i + 1])
        await asyncio.sleep(0.05)
    assert await answer == -32003 and await closed(raw)


@case("a handler that hangs past its deadline")
async def _hangs(raw: RawConnection, port: int) -> None:
    await raw.send(request(**{"in": "nap", "params": [30, "late"], "id": 1, "deadline": 100}))
    assert await code_of(raw) == -32003
    await still_serving(raw)


@case("a handler that blocks the event loop")
async def _blocks(raw: RawConnection, port: int) -> None:
    await raw.send(request(**{"in": "block", "params": [0.3], "id": 1}))
    assert await replies(raw, 1) == [{"out": "block", "result": 0.3, "id": 1}]
    await still_serving(raw)


@case("a handler whose result JSON cannot encode")
async def _unencodable(raw: RawConnection, port: int) -> None:
    for kind in ("object", "set", "bigint", "intkeys"):
        await raw.send(request(**{"in": "unencodable", "params": [kind], "id": kind}))
        [reply] = await replies(raw, 1)
        assert reply["id"] == kind and reply["error"]["code"] == -32603
        assert "not JSON serializable" in reply["error"]["message"]
    await still_serving(raw)



def hostile_server() -> fastrpc.Server:
    """The demo server with tight limits and a few misbehaving handlers, as every case expects."""
    server = demo_server(max_frame_size=1 << 20, frame_timeout=0.3, max_connections=LIMIT)

    @server.method
    def block(seconds: float) -> float:
        time.sleep(seconds)  # holds the whole event loop up
        return seconds

    @server.method
    def exit() -> None:
        raise SystemExit(3)

    @server.method
    async def interrupt() -> None:
        raise KeyboardInterrupt

    @server.method
    def unencodable(kind: str) -> Any:
        return {"object": object(), "set": {1}, "bigint": 1 << 70, "intkeys": {1: 2}}[kind]

    return server


#: What ``fastrpc serve tests.test_hostile:app`` serves, for the memory test in a process of its own.
app = hostile_server()


async def _play(port: int, name: str) -> None:
    """Play case ``name`` against the server on ``port`` while a well-behaved client calls throughout."""
    async with fastrpc.connect("127.0.0.1", port, timeout=10) as good:
        assert await good.call("add", [1, 2]) == 3
        raw = await RawConnection.open(port)
        try:
            count = [0]
            behaving = asyncio.ensure_future(_keep_calling(good, count))
            await CASES[name](raw, port)
            await _stop(behaving)
            assert count[0] > 0  # the well-behaved client was served while it happened
        finally:
            await raw.close()
        assert await good.call("echo", ["after"]) == ["after"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_client(run: Any, name: str) -> None:
    async def main() -> None:
        async with serving(hostile_server()) as port:
            await _play(port, name)

    run(main(), timeout=15)


def test_server_memory_stays_bounded_under_the_whole_catalogue() -> None:
    """Every case, round after round, against one server process: its RSS stops growing after warm-up.

    ``FASTRPC_HOSTILE_ROUNDS`` makes it a longer run (docs/reliability.md has the figures of one)."""
    rounds = max(3, int(os.environ.get("FASTRPC_HOSTILE_ROUNDS", "3")))
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    for proc in serve(["tests.test_hostile:app", "--port", str(port), "--loop", "uvloop"], root):
        async def play_all() -> None:
            for name in sorted(CASES):
                await _play(port, name)
                await asyncio.sleep(0.05)  # the server closes the case's connections

        samples = []
        for _ in range(rounds):
            new_event_loop("uvloop").run_until_complete(asyncio.wait_for(play_all(), 120))
            samples.append(rss_bytes(proc.pid))
        print(f"server RSS after each of {rounds} rounds (MiB):", [round(x / 2**20, 1) for x in samples])
        # Two rounds warm the allocator up (its pools reach their high-water marks over the
        # catalogue's 2 MiB frames and floods); from then on a leak per case would show as growth.
        assert samples[-1] - samples[1] < 8 << 20, samples


async def _keep_calling(client: fastrpc.Client, count: List[int]) -> None:
    """Call and check, again and again, until cancelled; ``count[0]`` says how many succeeded."""
    while True:
        n = count[0]
        assert await client.call("add", [n, 1]) == n + 1
        count[0] = n + 1
        await asyncio.sleep(0.005)


async def _stop(task: "asyncio.Future[None]") -> None:
    await asyncio.sleep(0.02)
    if task.done():
        task.result()  # it failed: raise that
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
