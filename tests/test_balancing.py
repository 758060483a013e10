"""Both clients over several endpoints (issue 14): calls spread by load over a list, over every address
of a name, over what a resolver finds (again as it changes); unreachable endpoints set aside; no call
lost or run twice when servers drain (a stop, max_connection_age) with or without notices.

Servers run in the test's event loop on 127.0.0.1 (port 0); the blocking SyncClient's calls run in
threads of a pool, so that one body of test code drives either client. Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable, List, Optional, Set, Tuple

import pytest

import fastrpc
from fastrpc import client as async_client_module
from fastrpc import endpoints as endpoints_module
from fastrpc import sync_client as sync_client_module
from fastrpc.protocol import Method, ServerConnection, _Refusing
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

    def __init__(self, handle: Handle, workers: int) -> None:
        self.handle = handle
        self.workers = workers
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
                self.answers[await self.handle.call("record", tag)] += 1
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


@pytest.fixture
def no_notices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers that send no drain notice, as one written before notices: clients learn of a drain from
    the -32002 {"started": false} refusals and the connection's close."""
    monkeypatch.setattr(ServerConnection, "drain_notice", lambda self, reason: False)


@pytest.fixture
def refusals(monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Counts the calls draining servers refused unrun (-32002 {"started": false})."""
    count = [0]
    refuse = _Refusing._method.func

    def counted(params: Any) -> Any:
        count[0] += 1
        return refuse(params)

    monkeypatch.setattr(_Refusing, "_method", Method("refused", counted, raw_params=True))
    return count


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
            slow, fast = servers[0], servers[1:]
            client = await side.connect([s.address for s in servers])

            async def worker() -> None:
                for _ in range(15):
                    await client.call("who")

            await asyncio.gather(*(worker() for _ in range(8)))
            mean = sum(s.calls for s in fast) / len(fast)
            assert slow.calls + sum(s.calls for s in fast) == 120
            assert slow.calls < mean / 3, [s.calls for s in servers]

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

@pytest.mark.parametrize("kind", BOTH_CLIENTS)
def test_an_endpoint_that_refuses_connections_is_set_aside(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
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
