"""Fixtures that run every network test under both event loops and both framing implementations."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import pkgutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List, Optional, TypeVar

import pytest

import fastrpc
from fastrpc import _client_core_py, _framing_py, _server_core_py, framing, protocol
from fastrpc.protocol import Method, ServerConnection, _Refusing
from fastrpc.server import BUILTIN_PREFIX, new_event_loop

try:
    from fastrpc import _framing as _framing_c
except ImportError:  # the extension is not built: test_implementation.py fails loudly
    _framing_c = None

IMPLEMENTATIONS = {"python": _framing_py}
if _framing_c is not None:
    IMPLEMENTATIONS["cython"] = _framing_c


def _connections(connection: type, rarer: type, twin: type, compiled: str) -> Dict[str, type]:
    """``connection`` (``protocol.ServerConnection`` or ``ClientConnection``) of each implementation:
    itself over the core it was built on, the same ``rarer`` paths over the other. The compiled core
    (module ``compiled``) is there only where the compiled set was chosen: not under
    FASTRPC_NO_EXTENSIONS=1, whose Methods are the twin's (the compiled server core reads their fields in C)."""
    def on(core: type) -> type:
        if issubclass(connection, core):
            return connection
        return type(connection.__name__, (rarer, core), {"__doc__": connection.__doc__})

    found = {"python": on(twin)}
    if _framing_c is not None and framing.IMPLEMENTATION == "cython":
        found["cython"] = on(getattr(importlib.import_module(f"fastrpc.{compiled}"), twin.__name__))
    return found


#: The server connection of each implementation, its per-request path compiled or not.
SERVER_CONNECTIONS = _connections(protocol.ServerConnection, protocol._RarerPaths, _server_core_py.ServerCore, "_server_core")
#: The client connection of each implementation, its per-call path compiled or not.
CLIENT_CONNECTIONS = _connections(protocol.ClientConnection, protocol._ClientRarerPaths, _client_core_py.ClientCore,
                                  "_client_core")


def server_connection(name: str) -> type:
    """The ServerConnection that implementation ``name`` runs (the twin's where the compiled core is out)."""
    return SERVER_CONNECTIONS.get(name, SERVER_CONNECTIONS["python"])


def client_connection(name: str) -> type:
    """The ClientConnection that implementation ``name`` runs (the twin's where the compiled core is out)."""
    return CLIENT_CONNECTIONS.get(name, CLIENT_CONNECTIONS["python"])


TEST_TIMEOUT = 30.0

T = TypeVar("T")

# -- which framing runs ------------------------------------------------------------------
#
# Every module of the package that uses the framing imported FrameReader and pack_frames
# from fastrpc.framing under its own names (protocol, server, loadgen, ...), and
# ServerConnection and ClientConnection (their per-request and per-call paths compiled or
# not) from fastrpc.protocol, as test modules do. To run a test under one implementation, each of those names is pointed at it,
# wherever it is held: the modules are found by what they hold, not by a list, so a new
# user of the framing is covered without being named here. Every module is imported first (a module imported
# later, during a test, would keep the default); __main__ is left out, as importing it runs
# the command line.

_FRAMING_MODULES = {"fastrpc._framing", "fastrpc._framing_py", "fastrpc._server_core", "fastrpc._server_core_py",
                    "fastrpc._client_core", "fastrpc._client_core_py"}  # the implementations
for _info in pkgutil.walk_packages(fastrpc.__path__, "fastrpc."):
    if _info.name not in _FRAMING_MODULES and _info.name != "fastrpc.__main__":
        importlib.import_module(_info.name)


def framing_users() -> Iterator[ModuleType]:
    """Every loaded fastrpc module but the implementations, and every test module."""
    for name, module in list(sys.modules.items()):
        if (name == "fastrpc" or name.startswith(("fastrpc.", "tests."))) and name not in _FRAMING_MODULES and module is not None:
            yield module


def use_framing(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Make every fastrpc module run implementation ``name`` ("python" or "cython") until monkeypatch undoes it."""
    chosen = IMPLEMENTATIONS[name]
    replacement: Dict[int, Any] = {}  # id of any implementation's object -> the chosen one's
    for module in IMPLEMENTATIONS.values():
        for attr in ("FrameReader", "pack_frames"):
            replacement[id(getattr(module, attr))] = getattr(chosen, attr)
    for connection in SERVER_CONNECTIONS.values():
        replacement[id(connection)] = server_connection(name)
    for connection in CLIENT_CONNECTIONS.values():
        replacement[id(connection)] = client_connection(name)
    for module in framing_users():
        for attr, value in list(vars(module).items()):
            new = replacement.get(id(value))
            if new is not None and new is not value:
                monkeypatch.setattr(module, attr, new)
    monkeypatch.setattr(framing, "IMPLEMENTATION", name)  # what the server's listening line reports
    return chosen


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def framing_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each framing implementation in turn, as the one every fastrpc module uses
    (tests/test_framing_selection.py checks that it is)."""
    return use_framing(request.param, monkeypatch)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest, framing_impl: Any) -> Callable[[Awaitable[Any]], Any]:
    """Run a coroutine to completion on a fresh loop of each kind, bounded in time."""

    def runner(coro: Awaitable[Any], timeout: float = TEST_TIMEOUT) -> Any:
        loop = new_event_loop(request.param)
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, timeout))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return runner


@contextlib.asynccontextmanager
async def serving(server: fastrpc.Server) -> AsyncIterator[int]:
    """Serve ``server`` on 127.0.0.1 at a port the OS picks; yield the port; close it after."""
    await server.start("127.0.0.1", 0)
    try:
        yield server.port
    finally:
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def serving_in_thread(server: fastrpc.Server, loop_kind: str = "uvloop", ssl: Any = None) -> Iterator[int]:
    """Serve ``server`` from an event loop in a background thread, for blocking clients; yield the port."""
    loop = new_event_loop(loop_kind)
    thread = threading.Thread(target=loop.run_forever, name="test-server", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0, ssl=ssl), loop).result(TEST_TIMEOUT)
        yield server.port
    finally:
        async def stop() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(TEST_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(TEST_TIMEOUT)
        loop.close()


def demo_server(**kwargs: Any) -> fastrpc.Server:
    """A fresh server with the demo's methods plus a few test ones.

    Its shutdown grace is short: tests that stop it with calls still running
    (a 30 s ``sleep``) should not wait the production default for them."""
    from fastrpc import demo

    kwargs.setdefault("shutdown_grace", 0.5)
    server = fastrpc.Server(**kwargs)
    for name, method in demo.server.methods.items():
        if not name.startswith(BUILTIN_PREFIX):  # the built-ins answer for the server they belong to
            server.methods[name] = method

    @server.method
    def fail() -> None:
        raise RuntimeError("boom")

    @server.method
    def grow(n: int) -> str:
        return "y" * n

    @server.method
    async def nap(seconds: float, value: Any) -> Any:
        await asyncio.sleep(seconds)
        return value

    return server


def erring_server() -> fastrpc.Server:
    """``demo_server`` plus two handlers that fail on purpose: ``refuse`` with an application code
    (-32010), ``busy`` with ServerBusy."""
    server = demo_server()

    @server.method
    def refuse() -> None:
        raise fastrpc.RemoteError("not for you", code=-32010)

    @server.method
    def busy() -> None:
        raise fastrpc.ServerBusy("come back later")

    return server


_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
               7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def tcp_sockets(port: int) -> List[str]:
    """The machine's IPv4 TCP sockets on ``port`` (either end), from /proc/net/tcp: "local -> remote STATE
    queued tx/rx" (for a LISTEN socket, rx is its accept queue). Of a connect that does not return: client
    end in SYN_SENT, the handshake is not done (a full accept queue drops SYNs); both ends ESTABLISHED,
    it is done and the event loop missed it (the socket's fd is not in its selector as it believes);
    no client end, or the server's in CLOSE_WAIT, the client's fd was closed under it."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return ["(no /proc/net/tcp)"]
    found = []
    for line in lines:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], int(fields[3], 16), fields[4]
        ports = {int(local.split(":")[1], 16), int(remote.split(":")[1], 16)}
        if port in ports:
            tx, rx = (int(q, 16) for q in queues.split(":"))
            ends = [f"{int(a.split(':')[1], 16)}" for a in (local, remote)]
            found.append(f"{ends[0]} -> {ends[1]} {_TCP_STATES.get(state, state)} queued {tx}/{rx}")
    return found


async def within(step: str, awaitable: Awaitable[T], seconds: float, port: Optional[int] = None) -> T:
    """Await ``awaitable`` for at most ``seconds``; past that, fail naming ``step`` and, given the server's
    ``port``, showing what the kernel holds on it: a hang gets a cause, not the test's 30 s limit."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        where = "" if port is None else f"; TCP sockets on port {port}: {tcp_sockets(port) or 'none'}"
        raise AssertionError(f"{step}: not done after {seconds:g} s{where}") from None


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


class RawConnection:
    """A plain asyncio stream speaking the wire format byte by byte, for exact-bytes tests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, timeout: float = 10.0) -> "RawConnection":
        """Connect to 127.0.0.1:``port``; fails, saying what the kernel shows of the port, if that takes ``timeout`` s."""
        reader, writer = await within(f"connecting to 127.0.0.1:{port}", asyncio.open_connection("127.0.0.1", port),
                                      timeout, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self) -> bytes:
        header = await self.reader.readexactly(4)
        return await self.reader.readexactly(int.from_bytes(header, "big"))

    async def at_eof(self) -> bool:
        """True if the server closes the connection (reads nothing more)."""
        return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


# -- servers in subprocesses ------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(proc: "subprocess.Popen[str]", port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start listening")


def serve(args: List[str], cwd: Path) -> Iterator["subprocess.Popen[str]"]:
    port = int(args[args.index("--port") + 1])
    proc = subprocess.Popen([sys.executable, "-m", "fastrpc", "serve", *args], cwd=cwd,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(proc, port)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# -- servers that drain as older ones did ----------------------------------------------------------

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
