"""Server throughput and CPU cost per request: fastrpc against a hand-written floor.

Each server runs alone in a fresh subprocess pinned to one CPU; the load
generator runs in this process, pinned to another. The load is ``ping`` with
params ``"sha params"``: N connections, each keeping ``depth`` requests
outstanding (every batch of replies is answered with as many new requests, in
one write). After a warmup, a measured window counts the replies and reads
the server's CPU time (utime + stime of all its threads, /proc/<pid>/stat)
at both ends.

The headline number is server CPU microseconds per request, and its ratio to
``bench/minimal_server.py``: about the least a Python orjson server on uvloop
can do per request, so the ratio is what fastrpc's own machinery costs. CPU
per request rather than requests/s, because it does not depend on how fast
the load generator is, only (a little) on how replies batch up.

Shared virtual machines change speed by tens of percent from one second to
the next, so every server and scenario is run ``--repeat`` times, in rounds
that run the servers of a scenario back to back; the table shows medians,
the spread of CPU per request over the rounds, and the median of each run's
ratio to the floor's run just before it. Read differences smaller than the
spread as noise.

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
import statistics
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
FLOOR = "floor (minimal orjson, uvloop)"
# Ids start at 10**9 so that every id has 10 digits: every request frame then
# has the same length, and its header and JSON prefix are one constant.
FIRST_ID = 10**9
_BODY_PREFIX = b'{"in":"ping","params":' + orjson.dumps(PARAMS) + b',"id":'
_REQUEST_PREFIX = struct.pack(">I", len(_BODY_PREFIX) + 10 + 1) + _BODY_PREFIX
_unpack_from = struct.Struct(">I").unpack_from
_loads = orjson.loads

DRAIN_TIMEOUT = 5.0  # seconds to wait for replies in flight once the window is over
LISTEN_TIMEOUT = 10.0  # seconds a server gets to start listening
CONNECT_TIMEOUT = 10.0  # seconds one load connection gets to be accepted
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
        ServerSpec(FLOOR, [sys.executable, os.path.join(BENCH_DIR, "minimal_server.py"), "--host", HOST, "--port", "{port}"]),
        ServerSpec("fastrpc uvloop", fastrpc + ["uvloop"]),
    ]
    if args.asyncio:
        specs.append(ServerSpec("fastrpc asyncio", fastrpc + ["asyncio"]))
    if args.no_extensions:
        specs.append(ServerSpec("fastrpc uvloop, pure-Python framing", fastrpc + ["uvloop"], {"FASTRPC_NO_EXTENSIONS": "1"}))
    return specs


def _clean_env() -> Dict[str, str]:
    """This environment less FASTRPC_NO_EXTENSIONS: inherited, it would silently change what a row measures."""
    return {key: value for key, value in os.environ.items() if key != "FASTRPC_NO_EXTENSIONS"}


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
        self.proc = subprocess.Popen(
            spec.command(self.port),
            cwd=REPO_DIR,
            env={**_clean_env(), **spec.env},
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

    def cpu_times(self) -> Tuple[float, float]:
        """User and system CPU seconds of the whole process (all its threads) so far."""
        with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
            stat = f.read()
        # The command name (field 2) may hold spaces and parentheses: count
        # fields from the last ')'. After it come fields 3, 4, ...; utime and
        # stime are fields 14 and 15.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

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

    It must cost well under what the server does per request, so that the
    server stays the bottleneck: it splits frames itself and never builds a
    request at run time. Each connection owns ``depth`` ids with their
    request frames made up front; an id whose reply arrived is free and is
    sent again at once. Ids are unique among requests in flight, which is
    all the protocol asks, and a reply is good only if it parses, is a pong
    with the params sent, and names an id in flight.
    """

    def __init__(self, load: Load, depth: int) -> None:
        self._load = load
        self._frames = {rid: b"%b%d}" % (_REQUEST_PREFIX, rid) for rid in range(FIRST_ID, FIRST_ID + depth)}
        self.pending: Set[int] = set()  # ids sent and not yet answered
        self._rest = b""  # the start of a frame that a read cut in two
        self.lost: Optional[str] = None  # why the connection closed, if not by us

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending.update(self._frames)
        self.transport.write(b"".join(self._frames.values()))

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        end = len(data)
        pos = 0
        replies = errors = 0
        pending = self.pending
        freed = []  # ids answered: sent again, in one write
        while end - pos >= 4:
            stop = pos + 4 + _unpack_from(data, pos)[0]
            if stop > end:
                break
            replies += 1
            try:
                reply = _loads(data[pos + 4 : stop])
                # KeyError: no id, or one not in flight; TypeError: not an
                # object, or an unhashable id; ValueError: not JSON.
                rid = reply["id"]
                pending.remove(rid)
                freed.append(rid)
                if reply["out"] != "pong" or reply["result"] != PARAMS:
                    errors += 1
            except (KeyError, TypeError, ValueError):
                # No id was freed: this connection goes on one request short.
                errors += 1
            pos = stop
        self._rest = data[pos:]
        load = self._load
        load.replies += replies
        load.errors += errors
        if freed and load.running:
            pending.update(freed)
            self.transport.write(b"".join(map(self._frames.__getitem__, freed)))

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._load.running:
            self.lost = f"server closed the connection: {exc}" if exc else "server closed the connection"
            self._load.running = False


@dataclass
class Run:
    """One measured window of one scenario against one server."""

    round: int
    server: str
    scenario: str
    seconds: float
    requests: int
    errors: int  # bad replies in the window, plus requests left unanswered at the end
    requests_per_s: float
    server_cpu_us_per_req: float
    server_user_us_per_req: float
    server_sys_us_per_req: float
    server_cpu_percent: float  # near 100: the server was the bottleneck
    client_cpu_percent: float
    vs_floor: Optional[float] = None  # server CPU µs/req over the floor's in the same round and scenario


async def drive(server: ServerProcess, connections: int, depth: int, warmup: float, duration: float, round_number: int) -> Run:
    """Run one scenario against a listening server and measure its window."""
    loop = asyncio.get_running_loop()
    load = Load()
    clients: List[LoadConnection] = []
    try:
        for _ in range(connections):
            connect = loop.create_connection(lambda: LoadConnection(load, depth), HOST, server.port)
            _, client = await asyncio.wait_for(connect, CONNECT_TIMEOUT)
            clients.append(client)
        await asyncio.sleep(warmup)

        replies0, errors0 = load.replies, load.errors
        (user0, sys0), client0, t0 = server.cpu_times(), time.process_time(), time.perf_counter()
        await asyncio.sleep(duration)
        replies1, errors1 = load.replies, load.errors
        (user1, sys1), client1, t1 = server.cpu_times(), time.process_time(), time.perf_counter()

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
    if not requests:
        raise RuntimeError(f"{server.spec.name} answered no request in {duration:g} s")
    seconds = t1 - t0
    user, system = user1 - user0, sys1 - sys0
    return Run(
        round=round_number,
        server=server.spec.name,
        scenario=f"{connections}x{depth}",
        seconds=seconds,
        requests=requests,
        errors=(errors1 - errors0) + sum(len(c.pending) for c in clients),
        requests_per_s=requests / seconds,
        server_cpu_us_per_req=(user + system) * 1e6 / requests,
        server_user_us_per_req=user * 1e6 / requests,
        server_sys_us_per_req=system * 1e6 / requests,
        server_cpu_percent=100 * (user + system) / seconds,
        client_cpu_percent=100 * (client1 - client0) / seconds,
    )


# -- reporting ---------------------------------------------------------------------


@dataclass
class Row:
    """The runs of one server and scenario: medians, so one disturbed run does not move them."""

    server: str
    scenario: str
    runs: int
    requests_per_s: float
    server_cpu_us_per_req: float
    server_user_us_per_req: float
    server_sys_us_per_req: float
    spread_percent: float  # (max - min) / median of server CPU µs/req over the runs
    server_cpu_percent: float
    client_cpu_percent: float
    errors: int  # over all runs
    vs_floor: Optional[float]  # median of the runs' ratios to the floor


def summarize(runs: Sequence[Run]) -> List[Row]:
    # Each run is compared with the floor's run of the same round and
    # scenario, which ran just before it: the machine's speed drifts by tens
    # of percent over seconds on shared hosts, and it drifts less between
    # neighbours than over the whole benchmark.
    floor = {(run.round, run.scenario): run.server_cpu_us_per_req for run in runs if run.server == FLOOR}
    groups: Dict[Tuple[str, str], List[Run]] = {}
    for run in runs:
        if (run.round, run.scenario) in floor:
            run.vs_floor = run.server_cpu_us_per_req / floor[run.round, run.scenario]
        groups.setdefault((run.server, run.scenario), []).append(run)
    rows = []
    for (server, scenario), group in groups.items():
        median = {name: statistics.median(getattr(run, name) for run in group) for name in (
            "requests_per_s", "server_cpu_us_per_req", "server_user_us_per_req", "server_sys_us_per_req",
            "server_cpu_percent", "client_cpu_percent")}
        per_request = [run.server_cpu_us_per_req for run in group]
        spread = 100 * (max(per_request) - min(per_request)) / median["server_cpu_us_per_req"]
        ratios = [run.vs_floor for run in group if run.vs_floor is not None]
        rows.append(Row(server, scenario, len(group), spread_percent=spread, errors=sum(run.errors for run in group),
                        vs_floor=statistics.median(ratios) if ratios else None, **median))
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| server | scenario | req/s | server CPU µs/req | user | sys | spread | vs floor | server CPU | client CPU | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        ratio = "" if r.vs_floor is None else f"{r.vs_floor:.2f}x"
        lines.append(
            f"| {r.server} | {r.scenario} | {r.requests_per_s:,.0f} | {r.server_cpu_us_per_req:.2f} "
            f"| {r.server_user_us_per_req:.2f} | {r.server_sys_us_per_req:.2f} | {r.spread_percent:.0f}% | {ratio} "
            f"| {r.server_cpu_percent:.0f}% | {r.client_cpu_percent:.0f}% | {r.errors} |"
        )
    return "\n".join(lines)


def machine_info() -> Dict[str, str]:
    """What a pasted result needs to be read: the machine, the versions, the code measured."""
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
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "uvloop": uvloop.__version__,
        "orjson": orjson.__version__,
        "commit": _command_output(["git", "describe", "--always", "--dirty"]),
        # Without the extension built, "fastrpc uvloop" would measure the
        # pure-Python framing without saying so.
        "fastrpc framing": _command_output([sys.executable, "-c", "from fastrpc.framing import IMPLEMENTATION; print(IMPLEMENTATION)"]),
    }


def _command_output(argv: List[str]) -> str:
    try:
        done = subprocess.run(argv, cwd=REPO_DIR, env=_clean_env(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


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
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run (default 1)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds over all servers and scenarios; the table shows medians (default 3)")
    parser.add_argument("--scenarios", type=parse_scenario, nargs="+", default=[(50, 1), (10, 64)], metavar="CxD",
                        help="connections x outstanding requests each (default: 50x1 10x64)")
    parser.add_argument("--asyncio", action="store_true", help="also run fastrpc on the asyncio loop")
    parser.add_argument("--no-extensions", action="store_true", help="also run fastrpc with FASTRPC_NO_EXTENSIONS=1")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the servers are pinned to (default 0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU the load generator is pinned to (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write every run and the table's rows as JSON to PATH")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.repeat < 1:
        parser.error("--duration must be positive, --warmup not negative, --repeat at least 1")
    allowed = os.sched_getaffinity(0)
    if args.server_cpu == args.client_cpu or not {args.server_cpu, args.client_cpu} <= allowed:
        parser.error(f"--server-cpu and --client-cpu must be two different CPUs of {sorted(allowed)}")
    os.sched_setaffinity(0, {args.client_cpu})

    command = shlex.join([sys.executable, *sys.argv])
    machine = machine_info()
    print(f"command: `{command}`")
    print("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    print(f"servers on CPU {args.server_cpu}, load generator on CPU {args.client_cpu}; warmup {args.warmup:g} s, "
          f"window {args.duration:g} s, {args.repeat} round(s), medians shown; params {PARAMS!r}\n", flush=True)

    # The servers of one scenario run back to back, each in a fresh process,
    # and the rounds repeat that: a slow spell of the machine then lands on
    # all servers alike rather than on whichever ran during it.
    runs: List[Run] = []
    for round_number in range(1, args.repeat + 1):
        for connections, depth in args.scenarios:
            for spec in server_specs(args):
                with ServerProcess(spec, args.server_cpu) as server:
                    run = uvloop.run(drive(server, connections, depth, args.warmup, args.duration, round_number))
                    server.check_alive()
                runs.append(run)
                print(f"  round {round_number}: {run.server:<36} {run.scenario:>6} {run.requests_per_s:>10,.0f} req/s "
                      f"{run.server_cpu_us_per_req:6.2f} µs/req", file=sys.stderr, flush=True)

    rows = summarize(runs)
    print(markdown_table(rows))
    if args.json:
        report = {
            "command": command,
            "machine": machine,
            "config": {key: getattr(args, key) for key in ("duration", "warmup", "repeat", "server_cpu", "client_cpu")},
            "params": PARAMS,
            "rows": [asdict(row) for row in rows],
            "runs": [asdict(run) for run in runs],
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 1 if any(row.errors for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
