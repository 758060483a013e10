"""What people write by hand today: an asyncio streams server with stdlib json, on the default loop.

It speaks fastrpc's wire format (a 4-byte big-endian length, then a UTF-8 JSON
body) the way a tutorial would: ``asyncio.start_server``, one task per
connection reading each frame with ``readexactly``, ``json.loads`` and
``json.dumps``, a dict of methods (``ping`` and ``echo``), and one
``write`` + ``await drain()`` per reply. Replies go out in the order the
requests came, as the protocol asks of id-less requests. No uvloop, no
validation of the request beyond looking its method up.

    python bench/streams_json_server.py --host 127.0.0.1 --port 9000

It serves until SIGTERM or SIGINT, then exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import sys
from typing import Any, Callable, Dict, Tuple

HEADER = struct.Struct(">I")


def ping(params: Any) -> Any:
    return params


def echo(params: Any) -> Any:
    return params


# name -> (the reply's "out", handler)
METHODS: Dict[str, Tuple[str, Callable[[Any], Any]]] = {
    "ping": ("pong", ping),
    "echo": ("echo", echo),
}


def handle_request(request: Dict[str, Any]) -> Dict[str, Any]:
    method = METHODS.get(request["in"])
    if method is None:
        reply: Dict[str, Any] = {"out": "error", "error": {"code": -32601, "message": "method not found"}}
    else:
        out, handler = method
        reply = {"out": out, "result": handler(request.get("params"))}
    if request.get("id") is not None:
        reply["id"] = request["id"]
    return reply


async def handle_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
            request = json.loads(await reader.readexactly(length))
            body = json.dumps(handle_request(request)).encode("utf-8")
            writer.write(HEADER.pack(len(body)) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the client went away
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await asyncio.start_server(handle_connection, host, port, backlog=1024)
    print(f"streams json server listening on {host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    # Not wait_closed(): on Python 3.12+ it waits for every client to hang
    # up. asyncio.run cancels the connection tasks, which close their writers.
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
