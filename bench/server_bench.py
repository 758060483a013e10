"""Server throughput and CPU cost per request: fastrpc against a hand-written floor.

Each server runs alone in a subprocess pinned to one CPU; the load generator
runs in this process, pinned to another, so the two never compete for a core.
The load is ``ping`` with params ``"sha params"``: N connections, each keeping
``depth`` requests outstanding (every batch of replies is answered with as
many new requests, in one write). After a warmup, a measured window counts
replies and reads the server's CPU time (utime + stime of all its threads,
from /proc/<pid>/stat) at both ends.

The headline number is server CPU microseconds per request, and its ratio to
``bench/minimal_server.py``: the least a Python orjson server on uvloop can do
per request, so the ratio is what fastrpc's own machinery costs.

    python bench/server_bench.py --duration 3
    python bench/server_bench.py --asyncio --no-extensions --json bench/results/run.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import orjson
import uvloop

HOST = "127.0.0.1"
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
CLK_TCK = os.sysconf("SC_CLK_TCK")

PARAMS = "sha params"
# Ids start at 10**9 so every id has 10 digits for the run: every request
# frame then has the same length, and its header and JSON prefix are one
# constant. Making a request is a single bytes %-format.
FIRST_ID = 10**9
_BODY_PREFIX = b'{"in":"ping","params":' + orjson.dumps(PARAMS) + b',"id":'
_REQUEST_PREFIX = struct.pack(">I", len(_BODY_PREFIX) + 10 + 1) + _BODY_PREFIX
_unpack_from = struct.Struct(">I").unpack_from
_loads = orjson.loads

DRAIN_TIMEOUT = 5.0  # seconds to wait for replies in flight once the window is over
LISTEN_TIMEOUT = 10.0  # seconds a server gets to start listening
STOP_TIMEOUT = 5.0  # seconds a server gets to exit after SIGTERM, then after SIGKILL


# -- servers -----------------------------------------------------------------------


@dataclass
class ServerSpec:
    """How to start one server under test on a given port."""

    name: str
    argv: List[str]  # "{port}" is replaced by the port
    env: Dict[str, str] = field(default_factory=dict)

    def command(self, port: int) -> List[str]:
        return [arg.replace("{port}", str(port)) for arg in self.argv]


def server_specs(args: argparse.Namespace) -> List[ServerSpec]:
    fastrpc = [sys.executable, "-m", "fastrpc", "serve", "--host", HOST, "--port", "{port}", "--loop"]
    specs = [
        ServerSpec("floor (minimal orjson, uvloop)", [sys.executable, os.path.join(BENCH_DIR, "minimal_server.py"), "--host", HOST, "--port", "{port}"]),
        ServerSpec("fastrpc uvloop", fastrpc + ["uvloop"]),
    ]
    if args.asyncio:
        specs.append(ServerSpec("fastrpc asyncio", fastrpc + ["asyncio"]))
    if args.no_extensions:
        specs.append(ServerSpec("fastrpc uvloop, pure-Python framing", fastrpc + ["uvloop"], {"FASTRPC_NO_EXTENSIONS": "1"}))
    return specs


def free_port() -> int:
    """A port the OS just handed out (it could in theory be taken again before the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server under test, pinned to one CPU; a context manager that always stops it."""

    def __init__(self, spec: ServerSpec, cpu: int) -> None:
        self.spec = spec
        self.port = free_port()
        # Output goes to a file, not a pipe: nobody reads it during the run and
        # a full pipe would stall the server.
        self._log = tempfile.TemporaryFile()
        # An inherited FASTRPC_NO_EXTENSIONS would silently change what a row measures.
        env = {k: v for k, v in os.environ.items() if k != "FASTRPC_NO_EXTENSIONS"}
        env.update(spec.env)
        self.proc = subprocess.Popen(
            spec.command(self.port),
            cwd=REPO_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Pinned before exec, so no instruction of the server runs elsewhere.
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        )

    def __enter__(self) -> "ServerProcess":
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while True:
            self.check_alive()
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.spec.name} is not listening after {LISTEN_TIMEOUT:g} s:\n{self.output()}") from None
                time.sleep(0.05)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.spec.name} exited with status {self.proc.returncode}:\n{self.output()}")

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all threads), in seconds."""
        with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
            stat = f.read()
        # The command name (field 2) may hold spaces and parentheses: count
        # fields from the last ')'. After it come fields 3, 4, ...; utime and
        # stime are fields 14 and 15.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read()[-4000:].decode("utf-8", "replace")

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(STOP_TIMEOUT)
        finally:
            self._log.close()


# -- load generator ------------------------------------------------------------------


class Load:
    """Counters and the stop switch shared by all connections of one scenario."""

    __slots__ = ("running", "replies", "errors")

    def __init__(self) -> None:
        self.running = True
        self.replies = 0  # every reply frame, good or bad
        self.errors = 0  # replies that do not parse, are no pong, or answer no request sent


class LoadConnection(asyncio.Protocol):
    """One client connection keeping ``depth`` pings outstanding.

    It does its own frame splitting and builds requests from a constant
    prefix, so that per request it costs well under what the server does and
    the server stays the bottleneck.
    """

    def __init__(self, load: Load, depth: int) -> None:
        self._load = load
        self._depth = depth
        self._next_id = FIRST_ID
        self.pending: Set[int] = set()  # ids sent and not yet answered
        self._rest = b""  # the start of a frame that a read cut in two
        self.lost: Optional[str] = None  # why the connection closed, if not by us

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send(self._depth)

    def _send(self, count: int) -> None:
        first = self._next_id
        self._next_id = first + count
        ids = range(first, first + count)
        self.pending.update(ids)
        self.transport.write(b"".join([b"%b%d}" % (_REQUEST_PREFIX, rid) for rid in ids]))

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        end = len(data)
        pos = 0
        replies = errors = 0
        pending = self.pending
        while end - pos >= 4:
            stop = pos + 4 + _unpack_from(data, pos)[0]
            if stop > end:
                break
            replies += 1
            try:
                reply = _loads(data[pos + 4 : stop])
                # KeyError: no id, or one never sent (or answered twice);
                # TypeError: not an object, or an unhashable id;
                # ValueError (orjson.JSONDecodeError): not JSON.
                pending.remove(reply["id"])
                if reply["out"] != "pong" or reply["result"] != PARAMS:
                    errors += 1
            except (KeyError, TypeError, ValueError):
                errors += 1
            pos = stop
        self._rest = data[pos:]
        load = self._load
        load.replies += replies
        load.errors += errors
        if replies and load.running:
            self._send(replies)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._load.running:
            self.lost = f"server closed the connection: {exc}" if exc else "server closed the connection"
            self._load.running = False


@dataclass
class Result:
    server: str
    scenario: str
    connections: int
    depth: int
    seconds: float
    requests: int
    requests_per_s: float
    server_cpu_s: float
    server_cpu_us_per_req: float
    server_cpu_percent: float
    client_cpu_percent: float
    errors: int  # bad replies in the window, plus requests left unanswered at the end
    vs_floor: Optional[float] = None


async def drive(server: ServerProcess, connections: int, depth: int, warmup: float, duration: float) -> Result:
    """Run one scenario against a listening server and measure its window."""
    loop = asyncio.get_running_loop()
    load = Load()
    clients: List[LoadConnection] = []
    try:
        for _ in range(connections):
            _, client = await loop.create_connection(lambda: LoadConnection(load, depth), HOST, server.port)
            clients.append(client)
        await asyncio.sleep(warmup)

        replies0, errors0 = load.replies, load.errors
        cpu0, client0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        await asyncio.sleep(duration)
        replies1, errors1 = load.replies, load.errors
        cpu1, client1, t1 = server.cpu_seconds(), time.process_time(), time.perf_counter()

        # Stop sending and collect the replies still in flight, so that any
        # request that never gets one is seen.
        load.running = False
        deadline = loop.time() + DRAIN_TIMEOUT
        while any(c.pending for c in clients) and not any(c.lost for c in clients) and loop.time() < deadline:
            await asyncio.sleep(0.01)
    finally:
        for client in clients:
            client.transport.close()
    lost = [c.lost for c in clients if c.lost]
    if lost:
        raise RuntimeError(f"{server.spec.name}: {lost[0]}\n{server.output()}")

    requests = replies1 - replies0
    elapsed = t1 - t0
    cpu = cpu1 - cpu0
    return Result(
        server=server.spec.name,
        scenario=f"{connections}x{depth}",
        connections=connections,
        depth=depth,
        seconds=elapsed,
        requests=requests,
        requests_per_s=requests / elapsed,
        server_cpu_s=cpu,
        server_cpu_us_per_req=cpu * 1e6 / requests if requests else float("nan"),
        server_cpu_percent=100 * cpu / elapsed,
        client_cpu_percent=100 * (client1 - client0) / elapsed,
        errors=(errors1 - errors0) + sum(len(c.pending) for c in clients),
    )


# -- reporting ---------------------------------------------------------------------


def machine_info() -> Dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version() + " (" + platform.python_implementation() + ")",
        "uvloop": uvloop.__version__,
        "orjson": orjson.__version__,
    }


def markdown_table(results: Sequence[Result]) -> str:
    lines = [
        "| server | scenario | req/s | server CPU µs/req | vs floor | server CPU % | client CPU % | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        ratio = "" if r.vs_floor is None else f"{r.vs_floor:.2f}x"
        lines.append(
            f"| {r.server} | {r.scenario} | {r.requests_per_s:,.0f} | {r.server_cpu_us_per_req:.2f} | {ratio} "
            f"| {r.server_cpu_percent:.0f} | {r.client_cpu_percent:.0f} | {r.errors} |"
        )
    return "\n".join(lines)


def parse_scenario(text: str) -> Tuple[int, int]:
    try:
        connections, depth = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a scenario is CONNECTIONSxDEPTH, e.g. 50x1, got {text!r}") from None
    if connections < 1 or depth < 1:
        raise argparse.ArgumentTypeError(f"connections and depth must be at least 1, got {text!r}")
    return connections, depth


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per server and scenario (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each window (default 1)")
    parser.add_argument("--scenarios", type=parse_scenario, nargs="+", default=[(50, 1), (10, 64)], metavar="CxD",
                        help="connections x outstanding requests each (default: 50x1 10x64)")
    parser.add_argument("--asyncio", action="store_true", help="also run fastrpc on the asyncio loop")
    parser.add_argument("--no-extensions", action="store_true", help="also run fastrpc with FASTRPC_NO_EXTENSIONS=1")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the servers are pinned to (default 0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU the load generator is pinned to (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)

    allowed = os.sched_getaffinity(0)
    if args.server_cpu == args.client_cpu or not {args.server_cpu, args.client_cpu} <= allowed:
        parser.error(f"--server-cpu and --client-cpu must be two different CPUs of {sorted(allowed)}")
    os.sched_setaffinity(0, {args.client_cpu})

    command = shlex.join([sys.executable, *sys.argv])
    machine = machine_info()
    print(f"command: `{command}`")
    print("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    print(f"servers on CPU {args.server_cpu}, load generator on CPU {args.client_cpu}; "
          f"warmup {args.warmup:g} s, window {args.duration:g} s; params {PARAMS!r}\n", flush=True)

    results: List[Result] = []
    for spec in server_specs(args):
        with ServerProcess(spec, args.server_cpu) as server:
            for connections, depth in args.scenarios:
                result = uvloop.run(drive(server, connections, depth, args.warmup, args.duration))
                server.check_alive()
                results.append(result)
                print(f"  {result.server:<36} {result.scenario:>6}  {result.requests_per_s:>10,.0f} req/s  "
                      f"{result.server_cpu_us_per_req:6.2f} µs/req", file=sys.stderr, flush=True)

    floor = {r.scenario: r.server_cpu_us_per_req for r in results if r.server.startswith("floor")}
    for r in results:
        if floor.get(r.scenario):
            r.vs_floor = r.server_cpu_us_per_req / floor[r.scenario]
    print(markdown_table(results))

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "machine": machine, "config": {"warmup": args.warmup, "duration": args.duration,
                       "server_cpu": args.server_cpu, "client_cpu": args.client_cpu, "params": PARAMS},
                       "results": [asdict(r) for r in results]}, f, indent=2)
            f.write("\n")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
