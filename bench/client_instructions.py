"""User-space instructions per call of fastrpc's own clients, counted by callgrind.

The client-side twin of ``instructions.py``: a fastrpc server runs normally,
and a client process runs under ``valgrind --tool=callgrind`` twice, making
``--base`` and then ``--base + --batches`` batches of ``--batch`` pings (the
async client: ``asyncio.gather`` of ``client.call``, or ``client.call_many``
with ``--kind async-many``; the blocking one: ``SyncClient.call_many``). The
difference of the two totals divided by the extra calls is what one call
costs the client: start-up and shutdown cancel out. Timings on the shared
2-CPU VM move by 30 %; these counts move by well under 1 %.

    python bench/client_instructions.py --kind async
    python bench/client_instructions.py --kind sync --batch 64

Needs ``valgrind`` (Debian package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
HOST = "127.0.0.1"
KINDS = ("async", "async-many", "sync")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def calls(kind: str, port: int, batches: int, batch: int) -> None:
    """Make ``batches`` batches of ``batch`` pings with the client ``kind`` (the measured process)."""
    import uvloop

    from fastrpc import SyncClient, connect

    if kind == "sync":
        with SyncClient(HOST, port, timeout=30) as sync:
            pings = [("ping",)] * batch
            for _ in range(batches):
                assert len(sync.call_many(pings)) == batch
        return

    async def main() -> None:
        client = await connect(HOST, port, timeout=30)
        for _ in range(batches):
            if kind == "async-many":
                results = await client.call_many([("ping",)] * batch)
            else:
                results = await asyncio.gather(*[client.call("ping") for _ in range(batch)])
            assert len(results) == batch
        await client.close()

    uvloop.run(main())


def instructions(kind: str, port: int, batches: int, batch: int) -> int:
    """Total instructions of one client process making ``batches`` batches."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
             "--worker", "--kind", kind, "--port", str(port), "--base", str(batches), "--batch", str(batch)],
            cwd=BENCH_DIR, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        with open(out) as f:
            match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if match is None:
            raise RuntimeError("no totals in callgrind's output")
        return int(match.group(1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, default="async")
    parser.add_argument("--batch", type=int, default=64, help="calls per batch (default 64)")
    parser.add_argument("--base", type=int, default=50, help="batches of the shorter run (default 50)")
    parser.add_argument("--batches", type=int, default=200, help="extra batches of the longer run (default 200)")
    parser.add_argument("--port", type=int, help="a running server's port (default: start one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        calls(args.kind, args.port, args.base, args.batch)
        return 0
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    server = None
    port = args.port
    if port is None:
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "fastrpc", "serve", "--host", HOST, "--port", str(port)],
                                  cwd=REPO_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, port), timeout=5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start listening") from None
                time.sleep(0.1)
    try:
        low = instructions(args.kind, port, args.base, args.batch)
        high = instructions(args.kind, port, args.base + args.batches, args.batch)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    print(f"{args.kind:10} {(high - low) / (args.batches * args.batch):9,.0f} instructions/call "
          f"(batches of {args.batch})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
