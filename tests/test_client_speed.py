"""The async client's direct path (issue 16): a call is a future, not a Task; one read resolves its
replies and nothing else; timeouts share timers; ``call_many``. And what must not change: a call is
still a coroutine to whoever asks, cancelling one stops it on the server, a refusal is resent."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, List, Tuple

import pytest

import fastrpc
from fastrpc import client as client_module
from fastrpc.protocol import ABSENT, ClientConnection

from .conftest import frame, serving
from .test_balancing import RawServer
from .test_deadlines import watched_server


async def wait_until(what: str, condition: Any, steps: int = 200) -> None:
    for _ in range(steps):  # bounded: 2 s
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} did not happen")


def test_gathered_calls_create_no_task(run: Any) -> None:
    async def main() -> None:
        server, _ = watched_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, timeout=5) as client:
            before = len(asyncio.all_tasks())
            calls = [client.call("work", [0, i]) for i in range(64)]
            gathered = asyncio.gather(*calls)
            assert len(asyncio.all_tasks()) == before  # gather took the futures as they are
            assert all(asyncio.isfuture(call) for call in calls)
            assert await gathered == list(range(64))

    run(main())


def test_one_read_resolves_exactly_its_replies() -> None:
    """The core hands each reply of a read to ``resolve`` (a future's set_result), nothing else, once."""
    resolved: List[Tuple[Any, Any]] = []
    failed: List[Any] = []
    core = ClientConnection(lambda waiter, result, error: failed.append(waiter),
                            resolve=lambda waiter, result: resolved.append((waiter, result)))
    keys = [core.request("echo", [i], f"waiter-{i}") for i in range(10)]
    core.data_to_send()
    answered = keys[2:8]
    core.receive_data(b"".join(frame(b'{"out": "echo", "result": %d, "id": %d}' % (key * 10, key))
                               for key in reversed(answered)))
    assert resolved == [(f"waiter-{key - keys[0]}", key * 10) for key in reversed(answered)]
    assert failed == [] and core.pending == 4 and sorted(core.waiters) == keys[:2] + keys[8:]


def test_a_read_resolves_its_calls_before_returning(run: Any) -> None:
    """On the loop: when the core's buffer_updated returns, the calls its replies answer are done (no
    callback or Task step in between), and only those."""
    async def main() -> None:
        server, _ = watched_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            link = client._link
            calls = [client.call("work", [0, i]) for i in range(64)]
            seen: List[Tuple[int, int]] = []
            original = link.core.buffer_updated

            def watched(nbytes: int) -> None:
                pending = len(link.waiters)
                original(nbytes)
                seen.append((pending - len(link.waiters), sum(call.done() for call in calls)))

            link.core.buffer_updated = watched  # type: ignore[method-assign]
            assert await asyncio.gather(*calls) == list(range(64))
            answered = 0
            for replies, done in seen:
                answered += replies
                assert done == answered
            assert answered == 64

    run(main())


def test_a_call_is_still_a_coroutine_to_whoever_asks(run: Any) -> None:
    async def main() -> None:
        server, _ = watched_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            assert asyncio.iscoroutinefunction(client.call)
            task = asyncio.get_running_loop().create_task(client.call("work", [0, "task"]))
            assert await task == "task"
            assert await asyncio.wait_for(client.call("work", [0, "wait_for"]), 5) == "wait_for"
            loop = asyncio.get_running_loop()
            # From another thread: the call is made on the client's loop, not in that thread.
            other = await loop.run_in_executor(
                None, lambda: asyncio.run_coroutine_threadsafe(client.call("work", [0, "thread"]), loop).result(5))
            assert other == "thread"

    run(main())


def test_cancelling_a_direct_call_cancels_it_on_the_server(run: Any) -> None:
    async def main() -> None:
        server, seen = watched_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            call = client.call("work", [5, "never"])
            await wait_until("the call running", lambda: seen["started"] == 1)
            assert call.cancel()
            await wait_until("the handler cancelled", lambda: seen["cancelled"] == 1)
            with pytest.raises(asyncio.CancelledError):
                await call
            task = asyncio.get_running_loop().create_task(client.call("work", [5, "never"]))
            await wait_until("the second call running", lambda: seen["started"] == 2)
            task.cancel()  # its Task, cancelled, cancels the call it waits for
            await wait_until("the second handler cancelled", lambda: seen["cancelled"] == 2)
            assert client._link.waiters == {} and seen["finished"] == 0
            assert await client.call("work", [0, "after"]) == "after"

    run(main())


def test_calls_with_other_timeouts_keep_their_own(run: Any) -> None:
    """Calls made together share a timer only with those of their method and timeout: each times out
    at its own, and the timers are gone once every call is answered."""
    async def main() -> None:
        server, seen = watched_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            calls = [client.call("work", [0.3, i], timeout=0.05 if i % 2 else 5.0) for i in range(20)]
            assert len(client._link._timeouts) == 20  # interleaved timeouts: no two calls in a row share one
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            for i, outcome in enumerate(outcomes):
                if i % 2:
                    assert isinstance(outcome, fastrpc.CallTimeout) and "after 0.05 s" in str(outcome)
                else:
                    assert outcome == i
            await wait_until("the short calls cancelled", lambda: seen["cancelled"] == 10)
            together = [client.call("work", [0, i], timeout=5.0) for i in range(64)]
            assert len(client._link._timeouts) <= 2  # the 64 calls joined one group (the earlier may remain)
            assert await asyncio.gather(*together) == list(range(64))
            assert client._link._timeouts == []

    run(main())


def test_call_many(run: Any) -> None:
    async def main() -> None:
        server, seen = watched_server()

        @server.method
        def fail(n: int) -> int:
            if n > 0:
                raise fastrpc.RemoteError(f"failed {n}", code=-32010)
            return n

        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, timeout=5) as client:
            assert await client.call_many([("work", [0, i]) for i in range(100)]) == list(range(100))
            assert await client.call_many([]) == []
            outcomes = await client.call_many([("fail", 0), ("fail", 2), ("fail", 1)], return_exceptions=True)
            assert outcomes[0] == 0 and [str(o) for o in outcomes[1:]] == ["[-32010] failed 2", "[-32010] failed 1"]
            with pytest.raises(fastrpc.RemoteError, match="failed 2"):  # the first in list order
                await client.call_many([("fail", 0), ("fail", 2), ("fail", 1)])
            late = await client.call_many([("work", [0.3, "late"]), ("work", [0, "soon"])], timeout=0.1, return_exceptions=True)
            assert isinstance(late[0], fastrpc.CallTimeout) and late[1] == "soon"
            await wait_until("the late call cancelled", lambda: seen["cancelled"] == 1)
            # Cancelled, it cancels every call still pending, on the server too.
            before = seen["cancelled"]
            many = asyncio.ensure_future(client.call_many([("work", [5, i]) for i in range(3)]))
            await wait_until("the calls running", lambda: seen["started"] >= 105)
            many.cancel()
            await wait_until("the handlers cancelled", lambda: seen["cancelled"] == before + 3)
            assert client._link.waiters == {}

    run(main())


def test_call_many_off_the_direct_path(run: Any) -> None:
    """With hooks (or retries, or several endpoints) the calls are coroutines: they still run at once."""
    async def main() -> None:
        server, seen = watched_server()
        hook = fastrpc.ClientHook()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, hooks=[hook], retries=1) as client:
            assert await client.call_many([("work", [0.2, i]) for i in range(10)]) == list(range(10))
            assert seen["started"] == 10

    run(main())


def test_a_direct_call_refused_unrun_is_sent_again() -> None:
    """A plain one-address client: its call's future, refused unrun (-32002, started false) by a
    stopping server, sends the call again on a new connection and takes that reply."""
    def handler(server: RawServer, conn: Any, n: int) -> None:
        server.read_frame(conn)  # rpc.notices
        request = server.read_frame(conn)
        if request is None:
            return
        if n == 1:
            server.send_frame(conn, {"out": "error", "id": request["id"], "error": {
                "code": -32002, "message": "shutting down", "data": {"started": False}}})
        else:
            server.send_frame(conn, {"out": request["in"], "result": [n, request["params"]], "id": request["id"]})
        server.until_closed(conn)

    async def main(port: int) -> None:
        async with fastrpc.connect("127.0.0.1", port, timeout=5) as client:
            call = client.call("echo", "x")
            assert isinstance(call, client_module._Call)
            assert await call == [2, "x"]

    with RawServer(handler) as server:
        asyncio.run(main(server.port))


def test_direct_path_leaves_nothing_behind(run: Any) -> None:
    """After many batches all answered: no timer group is kept, no call is pending."""
    async def main() -> None:
        server, _ = watched_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port, timeout=5) as client:
            for _ in range(20):
                await asyncio.gather(*[client.call("work", [0, i]) for i in range(16)])
            link = client._link
            assert link._timeouts == [] and link.waiters == {} and not link.room and link.waking == 0

    run(main())


def test_invalid_metadata_raises_when_awaited(run: Any) -> None:
    async def main() -> None:
        server, seen = watched_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            call = client.call("work", [0, 1], meta={"k": 1})  # type: ignore[dict-item]
            with pytest.raises(ValueError, match="metadata"):
                await call
            assert seen["started"] == 0

    run(main())


def test_core_resolve_defaults_to_deliver() -> None:
    delivered: List[Tuple[Any, Any, Any]] = []
    core = ClientConnection(lambda waiter, result, error: delivered.append((waiter, result, error)))
    key = core.request("ping", ABSENT, "w")
    core.receive_data(frame(b'{"out": "pong", "result": 1, "id": %d}' % key))
    assert delivered == [("w", 1, None)]


def test_forget_range_forgets_only_pending_calls() -> None:
    core = ClientConnection(lambda *a: None)
    keys = [core.request("work", [i], f"w{i}") for i in range(5)]
    core.data_to_send()
    core.forget(keys[1])
    core.data_to_send()
    assert core.forget_range(keys[0], keys[2]) == ["w0", "w2"]
    assert core.data_to_send().count(b"cancel") == 2
    assert core.any_pending(keys[0], keys[4]) and not core.any_pending(keys[0], keys[2])
    assert core.forget_range(keys[0], keys[2]) == []


def test_thread_safety_of_the_check() -> None:
    """``call`` from a thread that is not running the client's loop does nothing there: it returns a
    coroutine, for run_coroutine_threadsafe."""
    async def main() -> None:
        server, _ = watched_server()
        async with serving(server) as port, fastrpc.connect("127.0.0.1", port) as client:
            made: List[Any] = []
            thread = threading.Thread(target=lambda: made.append(client.call("work", [0, 1])))
            thread.start()
            thread.join()
            assert asyncio.iscoroutine(made[0]) and not asyncio.isfuture(made[0])
            assert client._link.waiters == {}
            assert await made[0] == 1

    asyncio.run(main())
