"""The blocking client against a server running in a background thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import fastrpc
from .conftest import demo_server, free_port, serve, serving_in_thread


@pytest.fixture
def port(framing_impl: Any) -> Iterator[int]:
    with serving_in_thread(demo_server()) as port:
        yield port


def test_call_and_remote_errors(port: int) -> None:
    with fastrpc.SyncClient("127.0.0.1", port, timeout=10) as client:
        assert client.call("add", [1, 2]) == 3
        assert client.call("add", {"a": 1, "b": 2}) == 3
        assert client.call("echo", "x") == "x"
        assert client.call("ping") is None
        with pytest.raises(fastrpc.MethodNotFound) as info:
            client.call("nope")
        assert info.value.code == -32601 and "nope" in info.value.message
        with pytest.raises(fastrpc.InvalidParams):
            client.call("add", [1])
        with pytest.raises(fastrpc.InternalError):
            client.call("fail")
        assert client.call("add", [2, 2]) == 4  # the connection goes on


def test_call_many_pipelines_in_order(port: int) -> None:
    with fastrpc.SyncClient("127.0.0.1", port, timeout=10) as client:
        calls = [("add", [i, i]) for i in range(500)] + [("echo", "x"), ("nap", [0.01, "late"])]
        assert client.call_many(calls) == [2 * i for i in range(500)] + ["x", "late"]
        assert client.call_many([]) == []


def test_call_many_errors_raise_or_return(port: int) -> None:
    with fastrpc.SyncClient("127.0.0.1", port, timeout=10) as client:
        calls = [("add", [1, 1]), ("nope",), ("fail",), ("add", [2, 2])]
        with pytest.raises(fastrpc.MethodNotFound):  # the first failure in list order
            client.call_many(calls)
        results = client.call_many(calls, return_exceptions=True)
        assert results[0] == 2 and results[3] == 4
        assert isinstance(results[1], fastrpc.MethodNotFound) and isinstance(results[2], fastrpc.InternalError)
        assert client.call("add", [3, 3]) == 6  # nothing was left pending


def test_threads_share_one_connection(tmp_path: Path) -> None:
    # The server runs in its own process: sharing this one's GIL with 32
    # client threads would make the test slow, not more thorough.
    threads, calls = 32, 2000
    wrong: List[Any] = []
    failures: List[BaseException] = []
    port = free_port()
    for _ in serve(["--port", str(port), "--log-level", "WARNING"], tmp_path):
        with fastrpc.SyncClient("127.0.0.1", port, timeout=30) as client:

            def worker(tag: int) -> None:
                try:
                    for i in range(calls):
                        result = client.call("echo", [f"t{tag}", i])
                        if result != [f"t{tag}", i]:
                            wrong.append(result)
                except BaseException as exc:  # reported below, not lost in the thread
                    failures.append(exc)

            pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join(60)
            assert not any(thread.is_alive() for thread in pool)
    assert failures == [] and wrong == []


def test_timeout_and_late_reply_dropped(port: int) -> None:
    with fastrpc.SyncClient("127.0.0.1", port, timeout=10) as client:
        with pytest.raises(fastrpc.CallTimeout):
            client.call("nap", [0.3, "late"], timeout=0.05)
        time.sleep(0.4)  # the late reply arrives and must reach nobody
        assert client.call("echo", "mine") == "mine"
        with pytest.raises(fastrpc.CallTimeout):
            client.call_many([("nap", [0.3, 1]), ("add", [1, 1])], timeout=0.05)


def test_default_timeout(port: int) -> None:
    with fastrpc.SyncClient("127.0.0.1", port, timeout=0.05) as client:
        with pytest.raises(fastrpc.CallTimeout):
            client.call("nap", [0.3, 1])
        assert client.call("nap", [0.01, 1], timeout=5) == 1


def test_waiting_threads_take_over_reading(port: int) -> None:
    # A thread reading for everyone leaves when its own reply is in (or its
    # timeout passes); the ones still waiting must carry on reading.
    with fastrpc.SyncClient("127.0.0.1", port, timeout=10) as client:
        results: List[Any] = []
        slow = threading.Thread(target=lambda: results.append(client.call("nap", [0.3, "slow"])))
        slow.start()
        time.sleep(0.05)
        with pytest.raises(fastrpc.CallTimeout):
            client.call("nap", [1.0, "x"], timeout=0.1)
        slow.join(10)
        assert results == ["slow"]


def test_oversized_request_refused_locally(port: int) -> None:
    with fastrpc.SyncClient("127.0.0.1", port, timeout=10, max_frame_size=100) as client:
        with pytest.raises(fastrpc.FrameTooLarge):
            client.call_many([("echo", "small"), ("echo", "x" * 200)])
        assert client.call("echo", "small") == "small"  # nothing of the batch was sent


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(fastrpc.ConnectionClosed, match="could not connect"):
            fastrpc.SyncClient("127.0.0.1", port)


def test_connection_loss_fails_pending_calls() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: List[socket.socket] = []

    def accept_then_drop() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        conn.recv(65536)  # the request arrives; the server dies without answering
        conn.close()

    thread = threading.Thread(target=accept_then_drop)
    thread.start()
    try:
        with fastrpc.SyncClient("127.0.0.1", listener.getsockname()[1], timeout=10) as client:
            with pytest.raises(fastrpc.ConnectionClosed):
                client.call("echo", 1)
            assert client.closed
            with pytest.raises(fastrpc.ConnectionClosed):
                client.call("echo", 2)
    finally:
        thread.join(10)
        listener.close()


def test_close_fails_calls_of_other_threads(port: int) -> None:
    client = fastrpc.SyncClient("127.0.0.1", port, timeout=10)
    errors: List[BaseException] = []

    def waiter() -> None:
        try:
            client.call("nap", [5, 1])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.1)
    client.close()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], fastrpc.ConnectionClosed)


def test_ordered_mode_against_an_idless_two_write_server() -> None:
    """Like the seed's server: no ids, in order, prefix and body in two separate writes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
                while len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[:4], "big"):
                    size = int.from_bytes(data[:4], "big")
                    request, data = json.loads(data[4:4 + size]), data[4 + size:]
                    body = json.dumps({"out": "pong", "result": request["params"]}).encode()
                    conn.sendall(len(body).to_bytes(4, "big"))
                    conn.sendall(body)

    thread = threading.Thread(target=serve_one)
    thread.start()
    try:
        with fastrpc.SyncClient("127.0.0.1", listener.getsockname()[1], ids=False, timeout=10) as client:
            assert client.call("ping", "sha params") == "sha params"
            assert client.call_many([("ping", i) for i in range(100)]) == list(range(100))
    finally:
        thread.join(10)
        listener.close()
