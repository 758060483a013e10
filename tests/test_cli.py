"""``python -m fastrpc serve`` as a subprocess: the demo service and an app from a module."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call(port: int, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(len(body).to_bytes(4, "big") + body)
        data = b""
        while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
            chunk = sock.recv(65536)
            assert chunk, "server closed the connection"
            data += chunk
        return data[4:]


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


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_serve_demo(tmp_path: Path, loop: str) -> None:
    port = free_port()
    for proc in serve(["--port", str(port), "--loop", loop], tmp_path):
        assert json.loads(call(port, b'{"in": "add", "params": [1, 2], "id": 1}')) == {"out": "add", "result": 3, "id": 1}
        assert call(port, b'{"in": "ping", "params": "sha params"}') == b'{"out": "pong", "result": "sha params"}'
        assert json.loads(call(port, b'{"in": "sleep", "params": 0.01, "id": 2}'))["result"] == 0.01
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert f"listening on 127.0.0.1:{port}" in proc.stderr.read()


def test_serve_app_from_module(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(
        "import fastrpc\n"
        "app = fastrpc.Server()\n"
        "@app.method\n"
        "def hello(name):\n"
        "    return 'hello ' + name\n"
    )
    port = free_port()
    for proc in serve(["myapp:app", "--port", str(port)], tmp_path):
        assert json.loads(call(port, b'{"in": "hello", "params": "you", "id": 1}'))["result"] == "hello you"
        assert json.loads(call(port, b'{"in": "add", "params": [1, 2], "id": 1}'))["error"]["code"] == -32601


@pytest.mark.parametrize("app, message", [("nomodule:app", "cannot import"), ("os:path", "is not a fastrpc.Server"),
                                          ("justmodule", "MODULE:ATTR")])
def test_serve_bad_app(tmp_path: Path, app: str, message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "fastrpc", "serve", app, "--port", str(free_port())],
                         cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and message in out.stderr
