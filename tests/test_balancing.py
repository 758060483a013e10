"""Both clients over several endpoints (issue 14): calls spread by load over a list, over every address
of a name, over what a resolver finds (again as it changes); unreachable endpoints set aside; no call
lost or run twice when servers drain (a stop, max_connection_age) with or without notices.

Servers run in the test's event loop on 127.0.0.1 (port 0); the blocking SyncClient's calls run in
threads of a pool, so that one body of test code drives either client. Servers that misbehave as a
fastrpc.Server never does (hang up at once, answer auth late or never) are bare sockets served by
threads (RawServer). Every wait is bounded; the only timings checked are upper bounds showing that a
call's timeout was honoured."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, List, Optional, Set, Tuple

import pytest

import fastrpc
from fastrpc import client as async_client_module
from fastrpc import endpoints as endpoints_module
from fastrpc import sync_client as sync_client_module
from fastrpc.server import new_event_loop

#: Seconds any one wait may take before the test fails (a bound against hangs, not a measure).
STEP = 5.0
#: The clients' own per-call timeout: a call that hangs fails the test instead of hanging it.
CALL_TIMEOUT = 5.0

BOTH_CLIENTS = ["async", "sync"]  # the async client (asyncio loop) and the SyncClient
ALL_KINDS = ["async", "uvloop", "sync"]  # and the async client on uvloop


# -- servers ------------------------------------------------------------------------------------

class Named:
    """One server that says who it is, and counts what it ran."""

    def __init__(self, name: str, delay: float = 0.0, **options: Any) -> None:
        options.setdefault("shutdown_grace", 2.0)
        self.name = name
        self.delay = delay
        self.server = server = fastrpc.Server(**options)
        self.calls = 0  # calls of who/record that ran here
        self.ran: Counter = Counter()  # record(tag): times each tag ran here
        self.holding = 0  # hold() calls running
        self.peers: Set[Any] = set()  # the client ends of the connections calls came on
        self.port = 0
        named = self

        class Peers(fastrpc.Middleware):
            def before(self, call: fastrpc.CallInfo) -> None:
                named.peers.add(call.peer)

        server.use(Peers())

        @server.method
        async def who() -> str:
            named.calls += 1
            if named.delay:
                await asyncio.sleep(named.delay)
            return name

        @server.method
        def record(tag: Any) -> str:  # not idempotent: the test checks it ran exactly once
            named.calls += 1
            named.ran[tag] += 1
            return name

        @server.method
        async def hold(seconds: float) -> str:
            named.holding += 1
            try:
                await asyncio.sleep(seconds)
            finally:
                named.holding -= 1
            return name

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        """Connections the server still serves or has not finished closing."""
        return len(self.server._connections) + len(self.server._ending)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        await self.server.start(host, port)
        self.port = self.server.port

    async def stop(self) -> None:
        self.server.close()
        await asyncio.wait_for(self.server.wait_closed(), 10)


@contextlib.asynccontextmanager
async def fleet(side: "Side", count: int, delays: Tuple[float, ...] = (), **options: Any) -> AsyncIterator[List[Named]]:
    """``count`` servers named a, b, c...; at the end the clients close first (a server that stops
    with clients connected waits for them to hang up, a second, after draining)."""
    servers = [Named("abcdefgh"[i], delays[i] if i < len(delays) else 0.0, **options) for i in range(count)]
    try:
        for server in servers:
            await server.start()
        yield servers
    finally:
        await asyncio.wait_for(side.close_clients(), STEP)
        for server in servers:
            await server.stop()


def dead_port() -> socket.socket:
    """A socket bound to a port of 127.0.0.1 and not listening: connections to it are refused, and
    no other test takes the port while it is held."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# -- one interface over both clients ------------------------------------------------------------

class Handle:
    def __init__(self, side: "Side", client: Any) -> None:
        self.side = side
        self.client = client

    async def call(self, method: str, *params: Any, **options: Any) -> Any:
        options.setdefault("timeout", CALL_TIMEOUT)
        if self.side.blocking:
            return await self.side.thread(functools.partial(self.client.call, method, list(params), **options))
        return await self.client.call(method, list(params), **options)

    async def close(self) -> None:
        if self.side.blocking:
            await self.side.thread(self.client.close)
        else:
            await self.client.close()

    @property
    def closed(self) -> bool:
        return bool(self.client.closed)

    @property
    def endpoints(self) -> Any:
        return self.client._endpoints

    def addresses(self) -> Set[Tuple[str, int]]:
        return {endpoint.address for endpoint in self.endpoints.all}


class Side:
    """The client under test: ``kind`` "async" / "uvloop" (fastrpc.connect) or "sync" (SyncClient)."""

    def __init__(self, kind: str, loop: asyncio.AbstractEventLoop) -> None:
        self.kind = kind
        self.loop = loop
        self.blocking = kind == "sync"
        self.pool = ThreadPoolExecutor(32, thread_name_prefix="test-client") if self.blocking else None
        self.handles: List[Handle] = []

    async def thread(self, func: Callable[[], Any]) -> Any:
        return await self.loop.run_in_executor(self.pool, func)

    async def connect(self, host: Any, port: int = 8080, **options: Any) -> Handle:
        if self.blocking:
            client = await self.thread(lambda: fastrpc.SyncClient(host, port, **options))
        else:
            client = await fastrpc.connect(host, port, **options)
        handle = Handle(self, client)
        self.handles.append(handle)
        return handle

    async def close_clients(self) -> None:
        for handle in self.handles:
            await handle.close()
        self.handles = []

    async def close(self) -> None:
        await self.close_clients()
        if self.pool is not None:
            self.pool.shutdown(wait=False)


def run_side(kind: str, body: Callable[[Side], Awaitable[None]], timeout: float = 30.0) -> None:
    """Run ``body(side)`` on a fresh loop (uvloop for "uvloop", else asyncio), bounded in time."""
    loop = new_event_loop("uvloop" if kind == "uvloop" else "asyncio")

    async def main() -> None:
        side = Side(kind, loop)
        try:
            await body(side)
        finally:
            await asyncio.wait_for(side.close(), STEP)

    try:
        loop.run_until_complete(asyncio.wait_for(main(), timeout))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def until(step: str, condition: Callable[[], bool], seconds: float = STEP,
                action: Optional[Callable[[], Awaitable[Any]]] = None) -> None:
    """Wait (doing ``action`` meanwhile, e.g. a call) until ``condition()``; fail naming ``step`` past ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"{step}: not so after {seconds:g} s")
        if action is not None:
            await action()
        else:
            await asyncio.sleep(0.01)


class Load:
    """``workers`` concurrent callers of ``record`` with unique tags: what was sent, what failed."""

    def __init__(self, handle: Handle, workers: int, **options: Any) -> None:
        self.handle = handle
        self.workers = workers
        self.options = options  # for each call: e.g. its timeout
        self.sent: List[Any] = []
        self.failures: List[BaseException] = []
        self.answers: Counter = Counter()  # the server names that answered
        self._tags = itertools.count()

    async def _worker(self, index: int, calls: Optional[int], end: Optional[float]) -> None:
        loop = asyncio.get_running_loop()
        done = 0
        while (calls is None or done < calls) and (end is None or loop.time() < end):
            tag = f"{index}-{next(self._tags)}"
            self.sent.append(tag)
            try:
                self.answers[await self.handle.call("record", tag, **self.options)] += 1
            except fastrpc.FastRPCError as exc:
                self.failures.append(exc)
            done += 1

    async def run(self, calls: Optional[int] = None, seconds: Optional[float] = None) -> None:
        end = None if seconds is None else asyncio.get_running_loop().time() + seconds
        await asyncio.gather(*(self._worker(i, calls, end) for i in range(self.workers)))


def ran_once(load: Load, servers: List[Named]) -> None:
    """Every call sent ran exactly once, on some server, and none failed."""
    assert not load.failures, load.failures[:3]
    ran: Counter = Counter()
    for server in servers:
        ran.update(server.ran)
    assert sorted(ran) == sorted(load.sent)
    twice = [tag for tag, times in ran.items() if times != 1]
    assert not twice, f"ran more than once: {twice[:5]}"


# -- 1, 2: spreading calls ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_calls_spread_over_every_server_of_a_list(kind: str) -> None:
    async def body(side: Side) -> None:
        async with fleet(side, 3) as servers:
            client = await side.connect([s.address for s in servers])
            answers = Counter([await client.call("who") for _ in range(150)])
            assert set(answers) == {"a", "b", "c"}
            assert all(answers[s.name] == s.calls for s in servers)
            assert all(n >= 20 for n in answers.values()), answers  # 50 each expected
            assert all(len(s.peers) == 1 for s in servers)  # one connection each, kept

    run_side(kind, body)


@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_a_slow_server_gets_fewer_calls(kind: str) -> None:
    async def body(side: Side) -> None:
        async with fleet(side, 3, delays=(0.1, 0.002, 0.002)) as servers:
            client = await side.connect([s.address for s in servers])
            # A connection to each first: while one is being opened, calls go to those open (the slow
            # server's, it may be), which is not what is measured here.
            await until("a connection to each server",
                        lambda: all(e.link is not None and e.link.open for e in client.endpoints.all),
                        action=lambda: client.call("who"))
            before = [s.calls for s in servers]

            async def worker() -> None:
                for _ in range(15):
                    await client.call("who")

            await asyncio.gather(*(worker() for _ in range(8)))
            slow, *fast = [s.calls - b for s, b in zip(servers, before)]
            assert slow + sum(fast) == 120
            assert slow < sum(fast) / len(fast) / 3, (slow, fast)

    run_side(kind, body)


# -- 3: a name with several addresses -------------------------------------------------------------

NAME = "fleet.balancing.test"


def fake_getaddrinfo(real: Callable[..., Any], addresses: List[str], asked: List[str]) -> Callable[..., Any]:
    """socket.getaddrinfo that resolves NAME to ``addresses``, and anything else as ``real`` does."""

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == NAME:
            asked.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port))) for address in addresses]
        return real(host, port, *args, **kwargs)

    return getaddrinfo


def fake_loop_getaddrinfo(real: Callable[..., Any], addresses: List[str], asked: List[str]) -> Callable[..., Any]:
    """The same, as an event loop's getaddrinfo (a coroutine function)."""
    blocking = fake_getaddrinfo(lambda *args, **kwargs: None, addresses, asked)

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == NAME:
            return blocking(host, port)
        return await real(host, port, *args, **kwargs)

    return getaddrinfo


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_name_resolving_to_several_addresses_uses_them_all(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two servers on the same port of 127.0.0.1 and 127.0.0.2 (both loopback on Linux), behind one name,
    as a headless Service gives one address per pod."""
    async def body(side: Side) -> None:
        one, two = Named("one"), Named("two")
        await one.start("127.0.0.1", 0)
        try:
            await two.start("127.0.0.2", one.port)
        except OSError as exc:
            await one.stop()
            pytest.skip(f"cannot listen on 127.0.0.2:{one.port}: {exc}")
        try:
            asked: List[str] = []
            if side.blocking:
                monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(socket.getaddrinfo, ["127.0.0.1", "127.0.0.2"], asked))
            else:
                loop = asyncio.get_running_loop()
                monkeypatch.setattr(loop, "getaddrinfo", fake_loop_getaddrinfo(loop.getaddrinfo, ["127.0.0.1", "127.0.0.2"], asked),
                                    raising=False)
            client = await side.connect(NAME, one.port)
            assert asked  # the name was looked up
            assert client.addresses() == {("127.0.0.1", one.port), ("127.0.0.2", one.port)}
            answers = Counter([await client.call("who") for _ in range(80)])
            assert answers["one"] >= 10 and answers["two"] >= 10, answers
        finally:
            await side.close_clients()
            await one.stop()
            await two.stop()

    run_side(kind, body)


# -- 4: a resolver, resolved again ----------------------------------------------------------------

RESOLVERS = [("async", "function"), ("async", "coroutine"), ("uvloop", "coroutine"), ("sync", "function")]


def make_resolver(flavour: str, answer: Callable[[], List[str]], asked: List[int]) -> Callable[[], Any]:
    def function() -> List[str]:
        asked.append(1)
        return answer()

    async def coroutine() -> List[str]:
        asked.append(1)
        await asyncio.sleep(0)
        return answer()

    return function if flavour == "function" else coroutine


@pytest.mark.parametrize("kind,flavour", RESOLVERS)
def test_a_resolver_adds_and_drops_servers(kind: str, flavour: str) -> None:
    async def body(side: Side) -> None:
        async with fleet(side, 3) as servers:
            a, b, c = servers
            now = [a.address, b.address]
            asked: List[int] = []
            client = await side.connect("ignored", 1, resolver=make_resolver(flavour, lambda: list(now), asked),
                                        resolve_interval=0.1)
            assert len(asked) == 1
            for _ in range(30):
                await client.call("who")
            assert c.calls == 0 and a.calls and b.calls

            now.append(c.address)
            await until("the third server gets calls", lambda: c.calls > 0, action=lambda: client.call("who"))
            before = c.calls
            for _ in range(60):
                await client.call("who")
            assert c.calls - before >= 8, (a.calls, b.calls, c.calls)  # a third of the calls, expected

            del now[2]
            mark = len(asked)
            # Two resolutions begun since: the first of them has been taken in.
            await until("the resolver asked again", lambda: len(asked) >= mark + 2, action=lambda: client.call("who"))
            assert client.addresses() == {("127.0.0.1", a.port), ("127.0.0.1", b.port)}
            dropped_at = c.calls
            for _ in range(60):
                await client.call("who")
            assert c.calls == dropped_at
            # Its connection, idle, is closed (a SyncClient closes it at its next call).
            await until("the dropped server's connection is closed", lambda: c.connections == 0,
                        action=lambda: client.call("who"))
            assert a.connections == 1 and b.connections == 1

    run_side(kind, body)


@pytest.mark.parametrize("kind,flavour", RESOLVERS)
def test_a_failing_or_empty_resolver_keeps_the_servers(kind: str, flavour: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async def body(side: Side) -> None:
        async with fleet(side, 2) as servers:
            a, b = servers
            mode = ["ok"]

            def answer() -> List[str]:
                if mode[0] == "raise":
                    raise RuntimeError("discovery is down")
                return [] if mode[0] == "empty" else [a.address, b.address]

            asked: List[int] = []
            client = await side.connect("ignored", 1, resolver=make_resolver(flavour, answer, asked),
                                        resolve_interval=0.1)
            kept = {("127.0.0.1", a.port), ("127.0.0.1", b.port)}
            for failure in ("raise", "empty"):
                mode[0] = failure
                mark = len(asked)
                await until(f"the resolver ({failure}) asked again", lambda: len(asked) >= mark + 2,
                            action=lambda: client.call("who"))
                assert client.addresses() == kept
                a_before, b_before = a.calls, b.calls
                for _ in range(40):
                    await client.call("who")
                assert a.calls > a_before and b.calls > b_before
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "discovery is down" in r.getMessage()]
            assert warnings and warnings[0].name == "fastrpc.client"

    with caplog.at_level(logging.WARNING, logger="fastrpc.client"):
        run_side(kind, body)


@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_without_resolve_interval_a_failure_resolves_once_not_per_call(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve_interval=None: no periodic resolution; a failed connection asks for one soon. Once that
    is done, nothing is due: the resolver is not asked again at every call."""
    monkeypatch.setattr(endpoints_module, "RESOLVE_AFTER_FAILURE", 0.05)

    async def body(side: Side) -> None:
        async with fleet(side, 1) as servers:
            with dead_port() as dead:
                asked: List[int] = []
                addresses = [servers[0].address, f"127.0.0.1:{dead.getsockname()[1]}"]
                client = await side.connect("ignored", 1, resolver=make_resolver("function", lambda: addresses, asked),
                                            resolve_interval=None)
                # Until the dead one has been tried (and failed), then past RESOLVE_AFTER_FAILURE.
                await until("the dead endpoint tried", lambda: any(e.failures for e in client.endpoints.all),
                            action=lambda: client.call("who"))
                await asyncio.sleep(0.1)
                for _ in range(40):
                    await client.call("who")
                    await asyncio.sleep(0.005)
                assert len(asked) <= 4, f"the resolver was asked {len(asked)} times for 40 calls"

    run_side(kind, body)


# -- 5, 6: unreachable endpoints ----------------------------------------------------------------

def count_dials(monkeypatch: pytest.MonkeyPatch, kind: str) -> Counter:
    """Counts, per address, the connections the ``kind`` of client tries to open (by wrapping how it dials)."""
    attempts: Counter = Counter()
    if kind == "sync":
        real_link = sync_client_module._Link

        def link(address: Any, *args: Any, **kwargs: Any) -> Any:
            attempts[tuple(address)] += 1
            return real_link(address, *args, **kwargs)

        monkeypatch.setattr(sync_client_module, "_Link", link)
    else:
        real_dial = async_client_module._dial

        async def dial(address: Any, **kwargs: Any) -> Any:
            attempts[tuple(address)] += 1
            return await real_dial(address, **kwargs)

        monkeypatch.setattr(async_client_module, "_dial", dial)
    return attempts


@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_an_endpoint_that_refuses_connections_is_set_aside(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = count_dials(monkeypatch, kind)

    async def body(side: Side) -> None:
        async with fleet(side, 1) as servers:
            live = servers[0]
            with dead_port() as sock:
                dead = ("127.0.0.1", sock.getsockname()[1])
                client = await side.connect([f"127.0.0.1:{dead[1]}", live.address])
                for _ in range(300):
                    assert await client.call("who") == "a"  # every call succeeds
                assert live.calls == 300
                [endpoint] = [e for e in client.endpoints.all if e.address == dead]
                assert endpoint.failures >= 1 and attempts[dead] == endpoint.failures
                # 300 calls (half would try it, were it not set aside): a few tries, backing off.
                assert attempts[dead] <= 12, attempts
                assert attempts[("127.0.0.1", live.port)] == 1

    run_side(kind, body)


@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_connect_fails_when_no_endpoint_answers(kind: str) -> None:
    async def body(side: Side) -> None:
        with dead_port() as one, dead_port() as two:
            ports = [one.getsockname()[1], two.getsockname()[1]]
            with pytest.raises(fastrpc.ConnectionClosed) as failure:
                await side.connect([f"127.0.0.1:{port}" for port in ports], connect_timeout=STEP)
            assert "could not connect to 127.0.0.1:" in str(failure.value)
            assert any(f"127.0.0.1:{port}" in str(failure.value) for port in ports), failure.value
            with pytest.raises(fastrpc.ConnectionClosed, match=f"127.0.0.1:{ports[0]}"):
                await side.connect("127.0.0.1", ports[0])  # one address: its own words

    run_side(kind, body)


@pytest.mark.parametrize("spec", [[], ["127.0.0.1:x"], ["127.0.0.1:0"], [("127.0.0.1",)], ["[::1"], [None]])
def test_bad_endpoint_specs_raise_value_error(spec: Any) -> None:
    with pytest.raises(ValueError):
        fastrpc.connect(spec, 8080)  # at once: before anything is resolved or dialled
    with pytest.raises(ValueError):
        fastrpc.SyncClient(spec, 8080)


def test_bad_resolve_interval_raises_value_error() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="resolve_interval"):
            await fastrpc.connect("127.0.0.1", 1, resolver=lambda: ["127.0.0.1:1"], resolve_interval=0)

    asyncio.run(main())
    with pytest.raises(ValueError, match="resolve_interval"):
        fastrpc.SyncClient("127.0.0.1", 1, resolver=lambda: ["127.0.0.1:1"], resolve_interval=-1)


# -- 7, 8: draining servers lose no call and run none twice --------------------------------------

@pytest.mark.parametrize("notices", [True, False], ids=["notices", "no-notices"])
@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_max_connection_age_loses_no_call(kind: str, notices: bool, request: pytest.FixtureRequest) -> None:
    """One fixed address, connections retired every ~0.3 s while calls go on: none fails, each runs once.
    Without notices (a server from before them), the -32002 {"started": false} refusals tell the client."""
    if not notices:
        request.getfixturevalue("no_notices")
    refused = request.getfixturevalue("refusals")

    async def body(side: Side) -> None:
        async with fleet(side, 1, max_connection_age=0.3, max_connection_age_grace=1.0) as servers:
            server = servers[0]
            client = await side.connect("127.0.0.1", server.port)
            load = Load(client, 4)
            await load.run(seconds=1.5)
            ran_once(load, servers)
            assert len(load.sent) > 50
            assert server.server.aged_out >= 3 and len(server.peers) >= 3, (server.server.aged_out, server.peers)
            assert not client.closed
            if not notices:
                assert refused[0] >= 1  # the client learnt of drains from refusals

    run_side(kind, body)


@pytest.mark.parametrize("notices", [True, False], ids=["notices", "no-notices"])
@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_calls_refused_by_a_draining_server_are_resent(kind: str, notices: bool, request: pytest.FixtureRequest) -> None:
    """Of two servers, one stops gracefully while a long call keeps it draining: the calls the client
    keeps making all succeed, each run once; those it refuses unrun go to the other."""
    if not notices:
        request.getfixturevalue("no_notices")
    refused = request.getfixturevalue("refusals")

    async def body(side: Side) -> None:
        async with fleet(side, 2) as servers:
            a, b = servers
            client = await side.connect([a.address, b.address])
            await until("both servers called", lambda: a.calls > 0 and b.calls > 0, action=lambda: client.call("who"))
            holder = await fastrpc.connect("127.0.0.1", a.port)
            try:
                held = asyncio.ensure_future(holder.call("hold", [0.6]))
                await until("the long call running", lambda: a.holding == 1)
                a.server.close()  # draining: the long call holds it up
                load = Load(client, 4)
                await load.run(calls=25)
                assert a.holding == 1  # it was still draining throughout
                ran_once(load, servers)
                assert sum(a.ran.values()) == 0 and sum(b.ran.values()) == 100
                assert await asyncio.wait_for(held, STEP) == "a"  # the running call was answered
                if not notices:
                    assert refused[0] >= 1
            finally:
                await holder.close()

    run_side(kind, body)


@pytest.mark.parametrize("notices", [True, False], ids=["notices", "no-notices"])
@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_a_call_with_only_a_draining_server_to_go_to_is_refused_unrun(
        kind: str, notices: bool, request: pytest.FixtureRequest) -> None:
    """One server, draining while a long call holds it up, its port no longer listening: a new call
    raises ShuttingDown (never ran) whether the drain notice came before it (the client cannot connect
    again) or not (the server refuses it, and then the client cannot). Once the server is gone,
    ConnectionClosed. (With the notice first it was ConnectionClosed("could not connect"): a SIGTERM
    test in CI got either, by a race.)"""
    if not notices:
        request.getfixturevalue("no_notices")

    async def body(side: Side) -> None:
        async with fleet(side, 1) as servers:
            a = servers[0]
            client = await side.connect("127.0.0.1", a.port)
            assert await client.call("who") == "a"
            holder = await fastrpc.connect("127.0.0.1", a.port)
            try:
                held = asyncio.ensure_future(holder.call("hold", [1.0]))
                await until("the long call running", lambda: a.holding == 1)
                a.server.close()  # draining: the long call holds it up
                if notices and not side.blocking:  # the SyncClient takes the notice in when it calls
                    await until("the notice came", lambda: client.endpoints.all[0].link.draining is not None)
                for tag in ("late", "later"):  # the first may be sent (and refused) before the notice comes
                    with pytest.raises(fastrpc.ShuttingDown) as refused:
                        await client.call("record", tag)
                    assert refused.value.never_ran
                assert "could not connect" in str(refused.value)  # the second knew: no connection was opened
                assert isinstance(refused.value.__cause__, fastrpc.ConnectionClosed)
                assert sum(a.ran.values()) == 0 and a.holding == 1  # refused unrun, while it drained
                assert await asyncio.wait_for(held, STEP) == "a"
            finally:
                await holder.close()
            await asyncio.wait_for(a.server.wait_closed(), STEP)
            with pytest.raises(fastrpc.ConnectionClosed, match="could not connect"):
                await client.call("record", "gone")

    run_side(kind, body)


def test_sync_call_many_resends_only_the_calls_refused_unrun() -> None:
    """One fixed address (the SyncClient's fast path): a batch whose first calls ran and whose last one
    crossed the server's drain is refused in part; only that part may be sent again."""
    async def body(side: Side) -> None:
        async with fleet(side, 1) as servers:
            server = servers[0]
            retired: List[int] = []

            @server.server.method
            def retire() -> int:
                """Drain this server's connections now, as max_connection_age does (once): the calls
                read after this one in the same batch are refused unrun."""
                if not retired:
                    for connection in list(server.server._connections):
                        connection._reach_age(0.0)
                retired.append(1)
                return len(retired)

            client = await side.connect("127.0.0.1", server.port)
            results = await side.thread(lambda: client.client.call_many(
                [("record", ["first"]), ("retire",), ("record", ["last"])], timeout=CALL_TIMEOUT))
            assert results[0] == "a" and results[2] == "a"
            assert server.ran["last"] == 1  # refused unrun, then sent again: ran once
            assert server.ran["first"] == 1 and len(retired) == 1, (server.ran, retired)  # ran: not sent again

    run_side("sync", body)


@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_a_connection_opened_to_an_endpoint_dropped_meanwhile_closes_with_the_client(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection to a new endpoint is being opened when the resolver drops that endpoint: once open,
    the client still owns it, and close() closes it."""
    gated: List[Tuple[str, int]] = []
    started, release = threading.Event(), threading.Event()
    if kind == "sync":
        real_link = sync_client_module._Link

        def link(address: Any, *args: Any, **kwargs: Any) -> Any:
            if tuple(address) in gated:
                started.set()
                release.wait(STEP)
            return real_link(address, *args, **kwargs)

        monkeypatch.setattr(sync_client_module, "_Link", link)
    else:
        real_dial = async_client_module._dial

        async def dial(address: Any, **kwargs: Any) -> Any:
            if tuple(address) in gated:
                started.set()
                for _ in range(int(STEP / 0.01)):
                    if release.is_set():
                        break
                    await asyncio.sleep(0.01)
            return await real_dial(address, **kwargs)

        monkeypatch.setattr(async_client_module, "_dial", dial)

    async def body(side: Side) -> None:
        async with fleet(side, 2) as servers:
            a, new = servers
            gated.append(("127.0.0.1", new.port))
            now = [a.address]
            asked: List[int] = []
            client = await side.connect("ignored", 1, resolver=make_resolver("function", lambda: list(now), asked),
                                        resolve_interval=0.1)
            calls: List["asyncio.Future[Any]"] = []

            async def call_on() -> None:  # calls that may wait on the gated connection: not awaited here
                calls.append(asyncio.ensure_future(client.call("who")))
                await asyncio.sleep(0.03)

            now.append(new.address)
            await until("a connection to the new server being opened", started.is_set, action=call_on)
            now.remove(new.address)
            mark = len(asked)
            await until("the resolver asked again", lambda: len(asked) >= mark + 2, action=call_on)
            assert client.addresses() == {("127.0.0.1", a.port)}
            release.set()
            assert set(await asyncio.wait_for(asyncio.gather(*calls), STEP)) <= {"a", "b"}
            await client.close()
            await until("no connection left to the dropped server", lambda: new.connections == 0)

    run_side(kind, body)


# -- 9: closed ------------------------------------------------------------------------------------

async def cut(server: Named) -> None:
    """The server goes away at once: every connection reset, nothing listening, no notice."""
    server.server._server.close()  # type: ignore[union-attr]
    for connection in list(server.server._connections):
        connection._transport.abort()
    await until("connections gone", lambda: server.connections == 0)


@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_closed_one_address_without_retries(kind: str) -> None:
    async def body(side: Side) -> None:
        async with fleet(side, 1) as servers:
            client = await side.connect("127.0.0.1", servers[0].port)
            assert await client.call("who") == "a" and not client.closed
            await cut(servers[0])
            with pytest.raises(fastrpc.ConnectionClosed):
                await client.call("who")
            assert client.closed
            with pytest.raises(fastrpc.ConnectionClosed):
                await client.call("who")
            await client.close()
            assert client.closed

    run_side(kind, body)


@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_closed_with_a_list_only_after_close(kind: str) -> None:
    async def body(side: Side) -> None:
        async with fleet(side, 2) as servers:
            client = await side.connect([s.address for s in servers])
            await until("both servers called", lambda: all(s.calls for s in servers), action=lambda: client.call("who"))
            await cut(servers[0])
            for _ in range(10):
                assert await client.call("who") == "b"
            assert not client.closed
            await cut(servers[1])
            with pytest.raises(fastrpc.ConnectionClosed):
                await client.call("who")
            assert not client.closed  # it will try again: a server may come back
            await client.close()
            assert client.closed
            with pytest.raises(fastrpc.ConnectionClosed):
                await client.call("who")

    run_side(kind, body)


@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_closed_with_retries_only_after_close(kind: str) -> None:
    async def body(side: Side) -> None:
        async with fleet(side, 1) as servers:
            client = await side.connect("127.0.0.1", servers[0].port, retries=2)
            assert await client.call("who") == "a"
            await cut(servers[0])
            with pytest.raises(fastrpc.ConnectionClosed):
                await client.call("who")
            assert not client.closed
            await client.close()
            assert client.closed

    run_side(kind, body)


# -- 10: from a review: calls sent nowhere, close() during a dial, one deadline per call, endpoints
#        that never complete a connection, retired connections ---------------------------------------

ASYNC_KINDS = ["async", "uvloop"]
#: Seconds past a call's timeout that it may take to fail (an upper bound showing the timeout was
#: honoured, not a measure).
MARGIN = 0.5
TOKEN = "t"


class RawServer:
    """A bare TCP server on 127.0.0.1 (port 0), for what a fastrpc.Server never does (hang up at once,
    answer auth late or never): ``handler(server, conn, n)`` serves the n-th connection (from 1) in a
    thread of its own, with fastrpc's frames (a 4-byte big-endian length, then JSON); the connection
    closes when it returns. Without a handler, each connection is closed as soon as accepted. Every
    wait of the threads wakes up at ``close()``, which joins them."""

    def __init__(self, handler: Optional[Callable[["RawServer", socket.socket, int], Any]]) -> None:
        self.handler = handler
        self.stopping = threading.Event()
        self.accepted = 0
        self._threads: List[threading.Thread] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)  # accept() wakes up to see ``stopping``
        self.port = self._sock.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="raw-accept", daemon=True)
        self._acceptor.start()

    def __enter__(self) -> "RawServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stopping.set()
        self._acceptor.join(STEP)
        for thread in self._threads:
            thread.join(STEP)
        self._sock.close()
        assert not self._acceptor.is_alive() and not any(t.is_alive() for t in self._threads)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.handler is None:
                conn.close()
                continue
            conn.settimeout(0.05)  # reads wake up to see ``stopping``
            thread = threading.Thread(target=self._serve, args=(conn, self.accepted), name="raw-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        try:
            self.handler(self, conn, n)  # type: ignore[misc]
        except OSError:  # the client went away
            pass
        finally:
            conn.close()

    def wait(self, event: threading.Event, seconds: float = STEP) -> bool:
        """Wait for ``event`` (True), at most ``seconds`` and not past ``close()`` (False)."""
        end = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < end:
            if event.wait(0.05):
                return True
        return False

    def pause(self, seconds: float) -> None:
        self.stopping.wait(seconds)

    def recv(self, conn: socket.socket, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at the end of the stream, or once the server stops."""
        while not self.stopping.is_set():
            try:
                return conn.recv(size)
            except socket.timeout:
                continue
        return b""

    def _exactly(self, conn: socket.socket, size: int) -> Optional[bytes]:
        data = b""
        while len(data) < size:
            chunk = self.recv(conn, size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def read_frame(self, conn: socket.socket) -> Optional[Any]:
        """The next message, None at the end."""
        header = self._exactly(conn, 4)
        body = None if header is None else self._exactly(conn, int.from_bytes(header, "big"))
        return None if body is None else json.loads(body)

    @staticmethod
    def send_frame(conn: socket.socket, message: Any) -> None:
        data = json.dumps(message).encode()
        conn.sendall(len(data).to_bytes(4, "big") + data)

    def answer_auth(self, conn: socket.socket, request: Any) -> None:
        self.send_frame(conn, {"out": request["in"], "result": True, "id": request["id"]})

    def until_closed(self, conn: socket.socket) -> bool:
        """Read (and drop) until the client hangs up (True) or the server stops (False)."""
        while True:
            try:
                data = self.recv(conn, 65536)
            except OSError:  # reset by the client: hung up too
                return True
            if not data:
                return not self.stopping.is_set()


class Redial:
    """A RawServer's handler: the first connection is authenticated, then hung up (as by a server
    restarting), so that a client's next call opens a new one; the next connections, once their auth
    request is read, go to ``then(server, conn, auth_request)``."""

    def __init__(self, then: Callable[[RawServer, socket.socket, Any], Any]) -> None:
        self.then = then
        self.first_gone = threading.Event()
        self.auth_seen = threading.Event()  # a second connection asked for auth

    def __call__(self, server: RawServer, conn: socket.socket, n: int) -> None:
        request = server.read_frame(conn)
        if request is None:
            return
        if n == 1:
            server.answer_auth(conn, request)
            server.read_frame(conn)  # the client asks for notices: its connection is ready
            conn.close()
            self.first_gone.set()
            return
        self.auth_seen.set()
        self.then(server, conn, request)

    async def first_lost(self, client: Handle) -> None:
        """Until the first connection was hung up, and an async client has seen it (a SyncClient sees it
        at its next call)."""
        await until("the first connection hung up", self.first_gone.is_set)
        if not client.side.blocking:
            await until("the client saw it", lambda: all(e.link is None or e.link.lost.done() for e in client.endpoints.all))


# A SyncClient call that can be sent nowhere raises ConnectionClosed (it returned None, unsent).

def test_sync_a_call_that_finds_no_connection_to_send_it_on_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection the call is tried on takes no new calls (NotSent: drained or lost as it is
    sent): after its attempts the call fails with ConnectionClosed; it ran nowhere."""
    async def body(side: Side) -> None:
        async with fleet(side, 1) as servers:
            client = await side.connect("127.0.0.1", servers[0].port)
            real_send = sync_client_module._Link._send

            def send(link: Any, calls: Any, batch: Any, deadline: Any) -> Any:
                if calls:
                    raise sync_client_module.NotSent("connection is draining (test)")
                return real_send(link, calls, batch, deadline)

            monkeypatch.setattr(sync_client_module._Link, "_send", send)
            with pytest.raises(fastrpc.ConnectionClosed, match="no connection"):
                await client.call("record", "x")
            monkeypatch.undo()
            assert not servers[0].ran
            assert await client.call("record", "y") == "a"

    run_side("sync", body)


def test_sync_calls_to_servers_that_hang_up_at_once_raise() -> None:
    """Two servers that accept connections and hang up at once (at max_connections, crashing...):
    each call raises ConnectionClosed, however its attempts end (sent and lost, or found hung up at
    each attempt and sent nowhere); none returns. (Those sent nowhere returned None: most of them.)"""
    calls = 0
    with RawServer(None) as one, RawServer(None) as two:
        for _ in range(20):
            try:
                client = fastrpc.SyncClient([one.address, two.address], timeout=STEP, connect_timeout=STEP)
            except fastrpc.ConnectionClosed:
                continue  # hung up on before the connections were ready: fine too
            try:
                time.sleep(0.01)  # the hang-ups arrive
                calls += 1
                with pytest.raises(fastrpc.ConnectionClosed):
                    client.call("record", "x")
            finally:
                client.close()
    assert calls >= 5, f"only {calls} clients of 20 could connect"


# close() while a call waits for a connection being opened.

def test_sync_close_while_another_thread_opens_a_connection_leaves_none_open() -> None:
    """A call opens a new connection, whose auth the server answers late; close() meanwhile. Once that
    connection opens, it is closed: the server sees the client hang up (it was kept, unowned)."""
    release, hung_up = threading.Event(), threading.Event()

    def late_auth(server: RawServer, conn: socket.socket, request: Any) -> None:
        server.wait(release)
        server.answer_auth(conn, request)
        if server.until_closed(conn):
            hung_up.set()

    redial = Redial(late_auth)
    with RawServer(redial) as server:
        # retries: the lost connection is replaced; connect_timeout: the slow auth is waited for.
        client = fastrpc.SyncClient("127.0.0.1", server.port, token=TOKEN, retries=1, connect_timeout=STEP)
        outcome: List[Any] = []

        def call() -> None:
            try:
                outcome.append(client.call("x", timeout=STEP, idempotent=True))
            except Exception as exc:  # noqa: BLE001 - checked below
                outcome.append(exc)

        caller = threading.Thread(target=call)
        try:
            assert redial.first_gone.wait(STEP)
            caller.start()
            assert redial.auth_seen.wait(STEP), "the call did not open a new connection"
            client.close()
        finally:
            release.set()
            client.close()
            if caller.ident is not None:
                caller.join(STEP)
        assert not caller.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], fastrpc.ConnectionClosed), outcome
        assert hung_up.wait(STEP), "the connection opened while the client closed was left open"


@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_async_close_while_calls_wait_for_a_connection_fails_them_with_connection_closed(kind: str) -> None:
    """A call waits for a new connection, whose auth the server answers late; close() meanwhile: the call
    fails with ConnectionClosed, as any call close() ends (it was cancelled: CancelledError, which a
    caller takes for its own task being cancelled)."""
    release, hung_up = threading.Event(), threading.Event()

    def late_auth(server: RawServer, conn: socket.socket, request: Any) -> None:
        server.wait(release)
        with contextlib.suppress(OSError):
            server.answer_auth(conn, request)
        if server.until_closed(conn):
            hung_up.set()

    redial = Redial(late_auth)

    async def body(side: Side) -> None:
        with RawServer(redial) as server:
            try:
                client = await side.connect("127.0.0.1", server.port, token=TOKEN, retries=1, connect_timeout=STEP)
                await redial.first_lost(client)
                waiting = asyncio.ensure_future(client.call("x", timeout=STEP, idempotent=True))
                await until("the call opening a new connection", redial.auth_seen.is_set)
                await client.close()
                try:
                    outcome: BaseException = AssertionError("the call returned")
                    await asyncio.wait_for(waiting, STEP)
                except BaseException as exc:  # CancelledError too
                    outcome = exc
                assert isinstance(outcome, fastrpc.ConnectionClosed), repr(outcome)
                assert not waiting.cancelled()
            finally:
                release.set()
            await until("the server sees the client hang up", hung_up.is_set)

    run_side(kind, body)


# One deadline per call, across refusals, reconnections and resolutions.

@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_async_a_call_that_waits_for_a_slow_reconnection_times_out_in_time(kind: str) -> None:
    """A call must open a new connection first, whose auth takes 0.8 s of the call's 1.0 s; the server
    then takes 0.8 s to answer: CallTimeout at 1.0 s. (The time spent connecting was not counted: the
    call was sent with its whole timeout, and answered after 1.6 s.)"""
    def slow(server: RawServer, conn: socket.socket, request: Any) -> None:
        server.pause(0.8)
        server.answer_auth(conn, request)
        while True:
            message = server.read_frame(conn)
            if message is None:
                return
            if message.get("in") == "work":
                server.pause(0.8)
                server.send_frame(conn, {"out": "work", "result": "done", "id": message["id"]})

    redial = Redial(slow)

    async def body(side: Side) -> None:
        with RawServer(redial) as server:
            client = await side.connect("127.0.0.1", server.port, token=TOKEN, retries=1, connect_timeout=STEP)
            await redial.first_lost(client)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(fastrpc.CallTimeout):
                await client.call("work", timeout=1.0, idempotent=True)
            assert loop.time() - start < 1.0 + MARGIN
            assert redial.auth_seen.is_set()
            await side.close_clients()

    run_side(kind, body)


@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_async_a_call_let_go_on_the_direct_path_keeps_its_deadline(kind: str) -> None:
    """One address (the direct path), max_pending=1: a call waits for room behind a long one until the
    connection reaches max_connection_age (0.45-0.5 s) and lets it go unsent; it goes on a new
    connection with what is left of its 1.0 s, and times out at 1.0 s naming it. (Its timeout started
    again: it was answered after 1.4 s.)"""
    async def body(side: Side) -> None:
        async with fleet(side, 1, max_connection_age=0.5, max_connection_age_grace=STEP) as servers:
            server = servers[0]
            client = await side.connect("127.0.0.1", server.port, max_pending=1)
            first = asyncio.ensure_future(client.call("hold", 1.2))  # takes the one place
            await until("the first call running", lambda: server.holding == 1)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(fastrpc.CallTimeout, match=r"after 1\.0 s"):
                await client.call("hold", 0.9, timeout=1.0)
            assert loop.time() - start < 1.0 + MARGIN
            assert server.server.aged_out >= 1  # it was let go by the drain, not timed out waiting
            assert await asyncio.wait_for(first, STEP) == "a"

    run_side(kind, body)


def test_sync_a_batch_refused_in_part_on_the_direct_path_keeps_its_deadline() -> None:
    """One address (the SyncClient's direct path), a server running one call at a time
    (max_in_flight=1): the second call of a batch waits there when the connection reaches
    max_connection_age (0.45-0.5 s), and is refused unrun; it is sent again with what is left of the
    batch's 1.0 s: CallTimeout at 1.0 s. (Its timeout started again: the batch returned after 1.8 s.)"""
    async def body(side: Side) -> None:
        async with fleet(side, 1, max_connection_age=0.5, max_connection_age_grace=STEP, max_in_flight=1) as servers:
            server = servers[0]
            client = await side.connect("127.0.0.1", server.port)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(fastrpc.CallTimeout):
                await side.thread(lambda: client.client.call_many([("hold", [0.9]), ("hold", [0.9])], timeout=1.0))
            assert loop.time() - start < 1.0 + MARGIN
            assert server.server.aged_out >= 1

    run_side("sync", body)


@pytest.mark.parametrize("aged", [False, True], ids=["plain", "max_connection_age"])
def test_sync_a_slow_resolver_holds_no_call(aged: bool) -> None:
    """A resolver that takes 2 s once it is due again does not hold a call with timeout=0.3: the
    resolution runs in a thread of its own. (It ran in the calling thread: the call failed after 2 s,
    with CallTimeout; or, its connection aged out meanwhile, with ConnectionClosed("could not connect
    ...") from a dial given no time.)"""
    async def body(side: Side) -> None:
        options = dict(max_connection_age=0.5, max_connection_age_grace=STEP) if aged else {}
        async with fleet(side, 1, **options) as servers:
            server = servers[0]
            prompt = threading.Event()  # set: the resolver answers at once again
            asked: List[int] = []

            def resolver() -> List[str]:
                asked.append(1)
                if len(asked) > 1:
                    prompt.wait(2.0)
                return [server.address]

            try:
                client = await side.connect("ignored", 1, resolver=resolver, resolve_interval=0.1)
                await until("a resolution due", lambda: time.monotonic() >= client.endpoints.resolve_at)
                if aged:
                    await until("the connection aged out", lambda: server.server.aged_out >= 1)
                loop = asyncio.get_running_loop()
                start = loop.time()
                assert await client.call("record", "z", timeout=0.3) == "a"
                assert loop.time() - start < 0.3 + MARGIN
                await until("the resolver asked again", lambda: len(asked) >= 2)
            finally:
                prompt.set()

    run_side("sync", body)


def test_sync_a_call_with_no_time_left_to_connect_times_out() -> None:
    """A call whose connection must be opened again and whose time is spent (timeout=0) raises
    CallTimeout: the server is not to blame. (It dialled with a timeout of 0 s: ConnectionClosed("could
    not connect ...: Operation now in progress"), and the endpoint was set aside as unreachable.)"""
    async def body(side: Side) -> None:
        async with fleet(side, 1) as servers:
            server = servers[0]
            client = await side.connect("127.0.0.1", server.port, retries=1)  # a lost connection is replaced
            assert await client.call("who") == "a"
            for connection in list(server.server._connections):
                connection._transport.abort()  # the connection is reset; the server listens still
            await until("the connection reset", lambda: server.connections == 0)
            with pytest.raises(fastrpc.CallTimeout):
                await client.call("who", timeout=0.0)
            assert await client.call("who") == "a"

    run_side("sync", body)


# An endpoint that takes connections and never completes them.

@contextlib.contextmanager
def blackhole(variant: str) -> Iterator[int]:
    """The port of an endpoint that never completes a connection: "silent" accepts TCP and never answers
    auth (a hung process); "backlog" listens with a full accept queue and accepts nothing, so that new
    SYNs are dropped (as by a host that is down, or a firewall)."""
    if variant == "silent":
        with RawServer(lambda server, conn, n: server.until_closed(conn)) as server:
            yield server.port
        return
    listener = socket.socket()
    held = [listener]
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(8):  # fill the accept queue
            filler = socket.socket()
            held.append(filler)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        probe = socket.socket()
        held.append(probe)
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
        except socket.timeout:
            pass
        except OSError as exc:
            pytest.skip(f"a full accept queue refuses connections here: {exc}")
        else:
            pytest.skip("a full accept queue does not hold connections back here")
        yield port
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("variant", ["silent", "backlog"])
@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_async_calls_do_not_wait_on_an_endpoint_that_never_completes_connections(
        kind: str, variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Next to a healthy endpoint, one that never completes a connection (added by the resolver after
    connect, so that connect opens the healthy one). Calls with a timeout (0.3 s) shorter than
    connect_timeout (1 s) keep going to the healthy endpoint while a connection to the other is being
    opened, and again once it failed and the endpoint is tried anew: none fails. (Calls that picked it
    waited for that connection and timed out: about half of them.) Zero is what the design gives: a
    call waits for a connection being opened only when no other endpoint has one open."""
    attempts = count_dials(monkeypatch, "async")

    async def body(side: Side) -> None:
        with blackhole(variant) as port:
            async with fleet(side, 1, tokens=[TOKEN]) as servers:
                black = ("127.0.0.1", port)
                now = [servers[0].address]
                client = await side.connect("ignored", 1, resolver=lambda: list(now), resolve_interval=0.1,
                                            token=TOKEN, connect_timeout=1.0)
                now.append(f"127.0.0.1:{port}")
                await until("the resolver's new endpoint taken in", lambda: black in client.addresses(),
                            action=lambda: client.call("who", timeout=0.3))  # calls start resolutions
                load = Load(client, 4, timeout=0.3)
                await load.run(seconds=2.5)
                ran_once(load, servers)
                assert attempts[black] >= 2, attempts  # it was dialled, and again after the first failed

    run_side(kind, body)


@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_an_endpoint_that_never_answers_auth_is_set_aside(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a connection includes its auth, within connect_timeout: an endpoint that accepts TCP and
    never answers auth is as unreachable as one that refuses connections. It is set aside, and the
    client goes on to the next endpoint: connect() succeeds, and so do calls with time to spare."""
    # The random draws always 0: of endpoints equally loaded, the first listed is picked first.
    monkeypatch.setitem(endpoints_module.Endpoints.__init__.__kwdefaults__, "rand", lambda: 0.0)

    async def body(side: Side) -> None:
        with blackhole("silent") as port:
            async with fleet(side, 1, tokens=[TOKEN]) as servers:
                client = await side.connect([f"127.0.0.1:{port}", servers[0].address], token=TOKEN,
                                            connect_timeout=0.3)
                [silent] = [e for e in client.endpoints.all if e.address == ("127.0.0.1", port)]
                assert silent.failures >= 1
                for _ in range(10):
                    assert await client.call("who", timeout=CALL_TIMEOUT) == "a"

    run_side(kind, body)


# A retired connection lets the calls waiting for room on it go elsewhere.

def test_async_a_retired_connection_lets_calls_waiting_for_room_go_elsewhere() -> None:
    """max_pending=1: a call waits for room behind a long call on server a's connection when the
    resolver drops a. The connection is retired: the waiting call goes to b at once and succeeds. (It
    waited for room there until its timeout.)"""
    async def body(side: Side) -> None:
        async with fleet(side, 2) as servers:
            a, b = servers
            gate = asyncio.Event()
            blocked: List[int] = []

            @a.server.method
            async def block() -> str:
                blocked.append(1)
                await gate.wait()
                return "a"

            now = [a.address]
            asked: List[int] = []
            client = await side.connect("ignored", 1, resolver=make_resolver("function", lambda: list(now), asked),
                                        resolve_interval=0.2, max_pending=1)
            try:
                held = asyncio.ensure_future(client.call("block"))  # takes a's one place until the end
                await until("the long call running", lambda: bool(blocked))
                now[:] = [b.address]  # a leaves the service
                waiting = asyncio.ensure_future(client.call("record", "w", timeout=2.0))
                link = client.endpoints.all[0].link
                await until("the call waiting for room", lambda: bool(link.room))

                async def nudge() -> None:  # a call, so that the resolution due begins
                    with contextlib.suppress(fastrpc.CallTimeout):
                        await client.call("record", f"nudge-{len(asked)}", timeout=0.5)

                await until("a dropped", lambda: client.addresses() == {("127.0.0.1", b.port)}, action=nudge)
                assert await asyncio.wait_for(waiting, STEP) == "b"
                assert b.ran["w"] == 1 and a.ran["w"] == 0
            finally:
                gate.set()
            assert await asyncio.wait_for(held, STEP) == "a"

    run_side("async", body)
