"""The benchmark peers in bench/: each speaks fastrpc's wire format, keeps order, and stops on a signal."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from .conftest import free_port, wait_listening

BENCH = Path(__file__).resolve().parent.parent / "bench"
SERVERS = ["minimal_server.py", "streams_json_server.py", "dispatcher_server.py"]
TIMEOUT = 10.0  # seconds any one step may take

NOT_FOUND = {"code": -32601, "message": "method not found"}


def start(script: str) -> "tuple[subprocess.Popen[str], int]":
    port = free_port()
    # stdout is inherited, so pytest shows what a server printed (asyncore prints its tracebacks there).
    proc = subprocess.Popen([sys.executable, str(BENCH / script), "--host", "127.0.0.1", "--port", str(port)],
                            cwd=BENCH.parent, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(proc, port)
    except BaseException:
        stop(proc)
        raise
    return proc, port


def stop(proc: "subprocess.Popen[str]") -> None:
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(TIMEOUT)
    finally:
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module", params=SERVERS)
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    """One server process for all the protocol tests of a script."""
    proc, port = start(request.param)
    try:
        yield port
    finally:
        stop(proc)


def frame(request: Any) -> bytes:
    body = json.dumps(request).encode("utf-8")
    return len(body).to_bytes(4, "big") + body


class Client:
    """A blocking socket that reads whole frames, every read bounded in time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def _fill(self, size: int, deadline: float) -> None:
        while len(self.buffer) < size:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.buffer += data

    def reply(self) -> Any:
        deadline = time.monotonic() + TIMEOUT
        self._fill(4, deadline)
        end = 4 + int.from_bytes(self.buffer[:4], "big")
        self._fill(end, deadline)
        body, self.buffer = self.buffer[4:end], self.buffer[end:]
        return json.loads(body)

    def call(self, request: Any) -> Any:
        self.sock.sendall(frame(request))
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(port: int) -> Iterator[Client]:
    client = Client(port)
    try:
        yield client
    finally:
        client.close()


def test_ping_without_params(client: Client) -> None:
    assert client.call({"in": "ping"}) == {"out": "pong", "result": None}


def test_ping_with_params_and_id(client: Client) -> None:
    assert client.call({"in": "ping", "params": "sha params", "id": 7}) == {"out": "pong", "result": "sha params", "id": 7}
    assert client.call({"in": "ping", "params": [1, "b"], "id": "x"}) == {"out": "pong", "result": [1, "b"], "id": "x"}


def test_echo(client: Client) -> None:
    params = {"a": [1, 2.5, None, True], "é": "ü", "nested": {"k": {}}}
    assert client.call({"in": "echo", "params": params}) == {"out": "echo", "result": params}
    assert client.call({"in": "echo", "id": 3}) == {"out": "echo", "result": None, "id": 3}


def test_unknown_method(client: Client) -> None:
    assert client.call({"in": "nope"}) == {"out": "error", "error": NOT_FOUND}
    assert client.call({"in": "nope", "params": 1, "id": 9}) == {"out": "error", "error": NOT_FOUND, "id": 9}
    # The connection serves on.
    assert client.call({"in": "ping", "params": 1}) == {"out": "pong", "result": 1}


def test_pipelined_replies_keep_order(client: Client) -> None:
    client.sock.sendall(b"".join(frame({"in": "echo", "params": {"n": n}}) for n in range(100)))
    assert [client.reply() for _ in range(100)] == [{"out": "echo", "result": {"n": n}} for n in range(100)]


def test_large_echo(client: Client) -> None:
    params = "x" * (1 << 20)  # many reads to the frame
    assert client.call({"in": "echo", "params": params, "id": 2}) == {"out": "echo", "result": params, "id": 2}
    assert client.call({"in": "ping"}) == {"out": "pong", "result": None}


@pytest.mark.parametrize("cut", [2, 10], ids=["in the header", "in the body"])
def test_frame_split_across_sends(client: Client, cut: int) -> None:
    data = frame({"in": "echo", "params": "split", "id": 1})
    client.sock.sendall(data[:cut])
    time.sleep(0.1)
    client.sock.sendall(data[cut:])
    assert client.reply() == {"out": "echo", "result": "split", "id": 1}


def test_load_generator(port: int) -> None:
    done = subprocess.run([sys.executable, "-m", "fastrpc", "bench", f"127.0.0.1:{port}", "--requests", "2000",
                           "--connections", "4", "--depth", "8", "--json"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["requests"], report["successes"], report["errors"]) == (2000, 2000, 0), report


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("script", SERVERS)
def test_signal_stops_server(script: str, signum: int) -> None:
    proc, port = start(script)
    clients: List[Client] = []
    try:
        clients.append(Client(port))  # an open connection must not hold the exit up
        assert clients[0].call({"in": "ping"}) == {"out": "pong", "result": None}
        clients.append(Client(port))  # nor one that never sent anything
        proc.send_signal(signum)
        assert proc.wait(TIMEOUT) == 0
        assert proc.stderr is not None
        assert f" listening on 127.0.0.1:{port}\n" in proc.stderr.read()
    finally:
        for client in clients:
            client.close()
        stop(proc)
