"""The framing_impl fixture runs what it says: under "python" every user of the framing (the server, the
protocol cores, the load generator) runs the pure-Python twin, under "cython" none of them does.

What ran is seen, not inferred from attributes: a profile hook records each call into
fastrpc/_framing_py.py and the function that made it. The compiled framing is not profiled, so under
"cython" the record must stay empty, and under "python" it must name each user.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Iterator, Optional, Set, Tuple

import orjson

import fastrpc
from fastrpc import _framing_py, framing
from fastrpc.loadgen import run_load

from .conftest import (CLIENT_CONNECTIONS, IMPLEMENTATIONS, SERVER_CONNECTIONS, RawConnection, client_connection, demo_server,
                       framing_users, server_connection, serving, within)

STEP = 10.0

Call = Tuple[str, str]  # (the _framing_py function, "caller_file.py:Class.method" that called it)


@contextlib.contextmanager
def calls_into_the_python_framing() -> Iterator[Set[Call]]:
    """Record, for this thread, every call into fastrpc/_framing_py.py made from outside it."""
    target = _framing_py.pack_frames.__code__.co_filename
    seen: Set[Call] = set()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or frame.f_code.co_filename != target:
            return
        caller: Optional[FrameType] = frame.f_back
        if caller is None or caller.f_code.co_filename == target:
            return
        owner = caller.f_locals.get("self")
        name = caller.f_code.co_name if owner is None else f"{type(owner).__name__}.{caller.f_code.co_name}"
        seen.add((frame.f_code.co_name, f"{Path(caller.f_code.co_filename).name}:{name}"))

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield seen
    finally:
        sys.setprofile(previous)


def clients_calls(seen: Set[Call]) -> Set[Call]:
    """``seen``, less the cores' own where the compiled cores are out (FASTRPC_NO_EXTENSIONS=1: their
    twins split with the twin reader, called from the twins, the event loop and the clients' I/O)."""
    if "cython" in SERVER_CONNECTIONS:
        return seen
    return {call for call in seen if call[1].startswith(("protocol.py:", "loadgen.py:"))}


def selected(framing_impl: Any) -> str:
    return next(name for name, module in IMPLEMENTATIONS.items() if module is framing_impl)


def test_no_module_keeps_the_other_framing(framing_impl: Any) -> None:
    name = selected(framing_impl)
    others = {id(getattr(module, attr)) for module in IMPLEMENTATIONS.values() if module is not framing_impl
              for attr in ("FrameReader", "pack_frames")}
    others |= {id(connection) for connection in SERVER_CONNECTIONS.values() if connection is not server_connection(name)}
    others |= {id(connection) for connection in CLIENT_CONNECTIONS.values() if connection is not client_connection(name)}
    kept = [f"{module.__name__}.{attr}" for module in framing_users()
            for attr, value in vars(module).items() if id(value) in others]
    assert not kept, f"still on the other framing under {selected(framing_impl)!r}: {kept}"
    assert framing.IMPLEMENTATION == selected(framing_impl)


def test_server_and_client_run_the_selected_framing(run: Any, framing_impl: Any) -> None:
    async def main() -> Set[Call]:
        with calls_into_the_python_framing() as seen:
            async with serving(demo_server(max_connections=1)) as port:
                client = await within("connect", fastrpc.connect("127.0.0.1", port), STEP, port)
                assert await client.call("add", [1, 2], timeout=STEP) == 3
                # Over the limit: the server's own hang-up frame (server.py packs it, not the core).
                refused = await RawConnection.open(port, timeout=STEP)
                reply = orjson.loads(await within("the busy reply", refused.read_frame(), STEP, port))
                assert reply["error"]["code"] == -32001
                await refused.close()
                await client.close()
        return seen

    seen = run(main())
    if selected(framing_impl) == "cython":
        seen = clients_calls(seen)
        assert not seen, f"the pure-Python framing ran under 'cython': {sorted(seen)}"
        return
    callers = {caller for _, caller in seen}
    for expected in ("_server_core_py.py:ServerConnection.__init__",  # the server's reader is made...
                     "_server_core_py.py:ServerConnection.buffer_updated",  # ...and splits the requests
                     "_server_core_py.py:ServerConnection.data_to_send",  # replies are packed
                     "_client_core_py.py:ClientConnection.__init__",  # the client's side too
                     "_client_core_py.py:ClientConnection.buffer_updated",
                     "_client_core_py.py:ClientConnection.data_to_send"):
        assert expected in callers, f"{expected} did not run the pure-Python framing: {sorted(seen)}"
    assert any(func == "pack_frames" and caller.startswith("server.py:") for func, caller in seen), (
        f"the server's hang-up frame was not packed by the pure-Python framing: {sorted(seen)}")


def test_load_generator_runs_the_selected_framing(run: Any, framing_impl: Any) -> None:
    async def main() -> Tuple[Any, Set[Call]]:
        async with serving(demo_server()) as port:
            with calls_into_the_python_framing() as seen:
                report = await within("the load run", run_load("127.0.0.1", port, connections=2, depth=4,
                                                              duration=None, requests=200), STEP, port)
        return report, seen

    report, seen = run(main())
    assert report.successes == 200 and report.errors == 0
    if selected(framing_impl) == "cython":
        seen = clients_calls(seen)
        assert not seen, f"the pure-Python framing ran under 'cython': {sorted(seen)}"
        return
    functions = {func for func, caller in seen if caller.startswith("loadgen.py:")}  # the server's are there too
    assert {"__init__", "next_frame", "pack_frames"} <= functions, (
        f"the load generator did not run the pure-Python framing: {sorted(seen)}")
