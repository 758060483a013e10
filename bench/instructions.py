"""User-space instructions per request of a server, counted by callgrind.

Timings on a shared 2-core machine move by 10 to 30 % from run to run;
instruction counts do not. This runs a server under ``valgrind
--tool=callgrind`` twice, once answering ``--base`` pings and once ``--base +
--requests``, on one connection with one request outstanding (every read then
holds exactly one request), and divides the difference of the two totals by
``--requests``: start-up and shutdown cancel out. Kernel time (the system
calls) is not counted; ``compare.py`` measures that.

    python bench/instructions.py                  # fastrpc and the floor
    python bench/instructions.py --servers fastrpc

Needs ``valgrind`` (Debian package). Each server takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
HOST = "127.0.0.1"
SERVERS: Dict[str, List[str]] = {
    "floor": [os.path.join(BENCH_DIR, "minimal_server.py"), "--host", HOST, "--port", "{port}"],
    "fastrpc": ["-m", "fastrpc", "serve", "--host", HOST, "--port", "{port}"],
}
BODY = b'{"in":"ping","params":"sha params","id":1000000001}'
FRAME = struct.pack(">I", len(BODY)) + BODY
START_TIMEOUT = 120.0  # seconds for a server to start listening under valgrind
STOP_TIMEOUT = 60.0  # seconds for it to exit and write its counts after SIGTERM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def connect(port: int, proc: subprocess.Popen) -> socket.socket:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return socket.create_connection((HOST, port), timeout=10)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start listening") from None
            time.sleep(0.2)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the server closed the connection")
        data += chunk
    return data


def instructions(server: str, requests: int, batch: int = 1) -> int:
    """Total instructions of one server process that answered ``requests`` writes of ``batch`` pings
    each (the next write once all their replies are in)."""
    port = free_port()
    argv = [arg.replace("{port}", str(port)) for arg in SERVERS[server]]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, *argv],
            cwd=REPO_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            with connect(port, proc) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for _ in range(requests):
                    sock.sendall(FRAME * batch)
                    for _ in range(batch):
                        (size,) = struct.unpack(">I", recv_exactly(sock, 4))
                        if b'"pong"' not in recv_exactly(sock, size):
                            raise RuntimeError("a reply was not a pong")
            # SIGTERM: both servers exit on it and callgrind writes its counts.
            proc.send_signal(signal.SIGTERM)
            proc.wait(STOP_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with open(out) as f:
            match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if match is None:
            raise RuntimeError(f"no totals in callgrind's output for {server}")
        return int(match.group(1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", choices=sorted(SERVERS), default=["floor", "fastrpc"])
    parser.add_argument("--base", type=int, default=2000, help="requests of the shorter run (default 2000)")
    parser.add_argument("--requests", type=int, default=10000, help="extra requests of the longer run (default 10000)")
    parser.add_argument("--batch", type=int, default=1,
                        help="pings per write, all answered before the next (default 1); --base and --requests count writes")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    per_request = {}
    for server in args.servers:
        low = instructions(server, args.base, args.batch)
        high = instructions(server, args.base + args.requests, args.batch)
        per_request[server] = (high - low) / (args.requests * args.batch)
        print(f"{server:8} {per_request[server]:9,.0f} instructions/request", flush=True)
    if "floor" in per_request and "fastrpc" in per_request:
        print(f"fastrpc / floor: {per_request['fastrpc'] / per_request['floor']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
