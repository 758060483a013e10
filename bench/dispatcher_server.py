"""The earlier design: an asyncore RPC server, one ``dispatcher_with_send`` per client, stdlib json.

This is the kind of server fastrpc's wire format comes from (docs/protocol.md,
section 10), written anew for the benchmarks: a listening ``dispatcher``
accepts and makes a handler per client; the handler appends each small
``recv`` to a ``BytesIO`` read buffer, answers every complete frame in it
(a 4-byte big-endian length, then a UTF-8 JSON body) in order, and sends each
reply with two ``send`` calls, the length prefix and then the body, into
asyncore's write buffer. It answers ``ping`` (``out: "pong"``) and ``echo``;
any other method gets the method-not-found error. ``asyncore.loop`` polls
with ``select``. One departure from the original: TCP_NODELAY is set (see
``RPCServer.handle_accepted``).

    python bench/dispatcher_server.py --host 127.0.0.1 --port 9000

It serves until SIGTERM or SIGINT, then exits with status 0. asyncore left
the standard library in Python 3.12: there it comes from the ``pyasyncore``
package (``pip install pyasyncore``), which installs the same module.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import warnings
from io import BytesIO
from typing import Any, Callable, Dict, Optional

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asyncore  # the standard library's before 3.12, pyasyncore's after

READ_SIZE = 1024  # bytes asked of each recv: one read per readiness event
POLL_TIMEOUT = 0.5  # seconds select waits, so the loop wakes even when idle


class RPCHandler(asyncore.dispatcher_with_send):
    """One client: reads frames into a buffer and answers each as soon as it is complete."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.rbuf = BytesIO()  # ours to keep; asyncore keeps the write buffer
        self.need = 4  # buffered bytes that make the next frame complete (its header, or all of it)
        self.handlers: Dict[str, Callable[[Any], Dict[str, Any]]] = {"ping": self.ping, "echo": self.echo}

    def handle_read(self) -> None:
        data = self.recv(READ_SIZE)
        if not data:
            return  # the client hung up: recv has already closed us
        self.rbuf.write(data)
        if self.rbuf.tell() >= self.need:  # not before: a big frame would be rescanned at every read
            self.handle_frames()

    def handle_frames(self) -> None:
        """Answer every complete frame in the buffer: one read may bring many, or part of one."""
        buffered = self.rbuf.getvalue()
        pos = 0
        while True:
            if len(buffered) - pos < 4:
                self.need = 4
                break
            end = pos + 4 + int.from_bytes(buffered[pos : pos + 4], "big")
            if end > len(buffered):
                self.need = end - pos  # the rest of this frame has not come yet
                break
            self.handle_rpc(json.loads(buffered[pos + 4 : end]))
            pos = end
        if pos:  # keep only the start of the next frame
            self.rbuf = BytesIO()
            self.rbuf.write(buffered[pos:])

    def handle_rpc(self, request: Dict[str, Any]) -> None:
        handler = self.handlers.get(request["in"], self.not_found)
        reply = handler(request.get("params"))
        if request.get("id") is not None:
            reply["id"] = request["id"]
        body = json.dumps(reply).encode("utf-8")
        self.send(len(body).to_bytes(4, "big"))  # both go through asyncore's write buffer
        self.send(body)

    def ping(self, params: Any) -> Dict[str, Any]:
        return {"out": "pong", "result": params}

    def echo(self, params: Any) -> Dict[str, Any]:
        return {"out": "echo", "result": params}

    def not_found(self, params: Any) -> Dict[str, Any]:
        return {"out": "error", "error": {"code": -32601, "message": "method not found"}}

    def handle_close(self) -> None:
        self.close()


class RPCServer(asyncore.dispatcher):
    """The listening socket: a handler for every connection it accepts."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind((host, port))
        self.listen(1024)

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        # Unlike the original, Nagle's algorithm off, as asyncio and uvloop
        # (hence every other server benchmarked) have it. Left on, the body
        # sent after each prefix waits for the client's delayed ACK, about
        # 40 ms on Linux: the rate would be that timer's, not this design's.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        RPCHandler(sock)


def stop(signum: int, frame: Optional[Any]) -> None:
    raise SystemExit(0)  # asyncore lets SystemExit out of its handlers and loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    RPCServer(args.host, args.port)
    print(f"dispatcher server listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        asyncore.loop(timeout=POLL_TIMEOUT)
    finally:
        asyncore.close_all()


if __name__ == "__main__":
    main()
