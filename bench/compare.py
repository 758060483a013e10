"""fastrpc side by side with its peers, in one run: a markdown report and a chart.

Each server runs in its own process pinned to one CPU; its load generator runs
pinned to another (``bench/drive.py``, the engine of ``fastrpc bench``, for
every server that speaks fastrpc's wire format; the peer's own async client
for gRPC and msgpack-RPC; ``redis-benchmark`` for Redis). For every scenario
and server: requests/s, the server's CPU per request (from /proc, all its
threads, over exactly the measured requests), latency p50 and p99, errors.
Then the client side: CPU per call of fastrpc's clients against grpc.aio's;
and server streaming (``bench/streams.py``): items/s and the server's CPU per
item, fastrpc's ``count`` stream against grpc.aio's unary-stream call.

    python bench/compare.py            # the full set, about 10 minutes
    python bench/compare.py --quick    # a reduced set, under a minute

The report goes to stdout and to ``<date>-<machine>.md`` with a PNG chart
beside it (the chart needs matplotlib: ``pip install -e ".[bench]"``) and the
figures as JSON, in ``--output DIR``; without it, a full run records them in
``bench/results/`` and a quick run, a check rather than a record, in a new
temporary directory (a checkout stays clean), named on stderr. A server that
cannot start (a library not installed, ``redis-server`` absent) is reported
as such in the table, never dropped.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from procstat import cpu_seconds

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
PY = sys.executable
START_TIMEOUT = 20.0  # seconds a server gets to accept connections
SERVER_CPU, LOAD_CPU = 0, 1
REFERENCE = "fastrpc"


@dataclass(frozen=True)
class Scenario:
    name: str
    connections: int
    depth: int
    method: str = "ping"
    payload: Optional[int] = None  # echo params: a string of this many bytes


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server (``{port}`` is filled in) and which driver loads it."""

    name: str
    command: Sequence[str]
    driver: str = "fastrpc"  # "fastrpc" (bench/drive.py), "peer" (the script's own drive), "redis"
    env: Dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class Outcome:
    """One server in one scenario; ``failure`` says why there are no figures."""

    server: str
    scenario: str
    figures: Optional[Dict[str, Any]] = None
    failure: str = ""

    @property
    def cpu_us(self) -> Optional[float]:
        f = self.figures
        if not f or not f.get("requests") or f.get("server_cpu_s") is None:
            return None
        return f["server_cpu_s"] / f["requests"] * 1e6


SCENARIOS = [
    Scenario("1x1", 1, 1),
    Scenario("50x1", 50, 1),
    Scenario("10x64", 10, 64),
    Scenario("echo 64 B 10x1", 10, 1, "echo", 64),
    Scenario("echo 4 KiB 10x1", 10, 1, "echo", 4096),
    Scenario("echo 256 KiB 10x1", 10, 1, "echo", 256 * 1024),
    Scenario("echo 4 MiB 10x1", 10, 1, "echo", 4 * 1024 * 1024),
]
QUICK_SCENARIOS = ["50x1", "10x64", "echo 4 KiB 10x1"]


def servers() -> List[ServerSpec]:
    fastrpc = [PY, "-m", "fastrpc", "serve", "--host", HOST, "--port", "{port}", "--log-level", "WARNING"]
    script = lambda name, *extra: [PY, str(BENCH / name), *extra, "--host", HOST, "--port", "{port}"]  # noqa: E731
    return [
        ServerSpec("fastrpc", fastrpc + ["--loop", "uvloop"], note="uvloop, compiled framing"),
        ServerSpec("fastrpc-asyncio", fastrpc + ["--loop", "asyncio"], note="the stdlib event loop"),
        ServerSpec("fastrpc-pure-python", fastrpc + ["--loop", "uvloop"], env={"FASTRPC_NO_EXTENSIONS": "1"},
                   note="uvloop, pure-Python framing"),
        ServerSpec("floor", script("minimal_server.py"),
                   note="hand-written orjson asyncio.Protocol on uvloop, no registry or validation"),
        ServerSpec("streams+json", script("streams_json_server.py"),
                   note="asyncio streams, stdlib json, a task per connection"),
        ServerSpec("seed-dispatcher", script("dispatcher_server.py"),
                   note="asyncore dispatcher, small reads, two sends per reply"),
        ServerSpec("grpc.aio", script("peer_grpc.py", "serve"), driver="peer",
                   note="unary call carrying the same JSON body; its own async client"),
        ServerSpec("msgpack-rpc", script("peer_msgpack.py", "serve"), driver="peer",
                   note="an asyncio msgpack-RPC library from PyPI; its own client"),
        ServerSpec("redis", ["redis-server", "--bind", HOST, "--port", "{port}", "--save", "", "--appendonly", "no"],
                   driver="redis", note="PING via redis-benchmark: the C reference"),
    ]


# -- processes -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int) -> Optional[Callable[[], None]]:
    """A preexec_fn pinning the child to ``cpu``, where this machine has it."""
    if not hasattr(os, "sched_setaffinity") or cpu not in os.sched_getaffinity(0):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class Running:
    """A started server: its process and port; ``stop()`` ends it."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.port = free_port()
        command = [part.replace("{port}", str(self.port)) for part in spec.command]
        if shutil.which(command[0]) is None:
            raise RuntimeError(f"{command[0]} is not installed")
        self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on it
        self.process = subprocess.Popen(
            command, env={**os.environ, **spec.env}, cwd=BENCH, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=self.log, preexec_fn=pinned(SERVER_CPU),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                self.log.seek(0)
                lines = self.log.read().strip().splitlines()
                self.log.close()
                raise RuntimeError(lines[-1] if lines else f"exited with status {self.process.returncode}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"not listening after {START_TIMEOUT:g} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def run_driver(command: List[str], timeout: float) -> Dict[str, Any]:
    out = subprocess.run(command, cwd=BENCH, capture_output=True, text=True, timeout=timeout,
                         preexec_fn=pinned(LOAD_CPU))
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"driver exited with status {out.returncode}")
    return dict(json.loads(out.stdout))


def load_args(scenario: Scenario, duration: float, warmup: float, pid: int) -> List[str]:
    args = ["--host", HOST, "--connections", str(scenario.connections), "--depth", str(scenario.depth),
            "--duration", str(duration), "--warmup", str(warmup), "--method", scenario.method,
            "--server-pid", str(pid)]
    if scenario.payload is not None:
        args += ["--payload", str(scenario.payload)]
    return args


def redis_load(server: Running, scenario: Scenario, duration: float) -> Dict[str, Any]:
    """``redis-benchmark`` PING: a short run sizes the measured one to last about ``duration``."""

    def bench(count: int) -> Dict[str, Any]:
        command = ["redis-benchmark", "-h", HOST, "-p", str(server.port), "-c", str(scenario.connections),
                   "-P", str(scenario.depth), "-n", str(count), "-t", "ping_mbulk", "--csv"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=duration * 10 + 60,
                             preexec_fn=pinned(LOAD_CPU))
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip() or "redis-benchmark failed")
        row = list(csv.DictReader(io.StringIO(out.stdout)))[-1]
        return {key: float(value) for key, value in row.items() if key != "test"}

    probe = bench(max(10_000, scenario.connections * scenario.depth * 20))
    count = max(1000, int(probe["rps"] * duration))
    before, started = cpu_seconds(server.process.pid), time.monotonic()
    row = bench(count)
    return {"requests": count, "successes": count, "errors": None, "seconds": time.monotonic() - started,
            "requests_per_s": row["rps"], "p50": row["p50_latency_ms"], "p99": row["p99_latency_ms"],
            "max": row["max_latency_ms"], "server_cpu_s": cpu_seconds(server.process.pid) - before}


def measure(spec: ServerSpec, scenarios: List[Scenario], duration: float, warmup: float,
            log: Callable[[str], None]) -> List[Outcome]:
    """Start ``spec`` once and run every scenario against it."""
    try:
        server = Running(spec)
    except (RuntimeError, OSError) as exc:
        log(f"{spec.name}: did not start: {exc}")
        return [Outcome(spec.name, s.name, failure=f"did not start: {exc}") for s in scenarios]
    outcomes = []
    try:
        for scenario in scenarios:
            outcome = Outcome(spec.name, scenario.name)
            if spec.driver == "redis" and scenario.method != "ping":
                outcome.failure = "not measured: PING only"
            else:
                try:
                    outcome.figures = drive(spec, server, scenario, duration, warmup)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    outcome.failure = f"failed: {exc}"
            outcomes.append(outcome)
            log(describe(outcome))
            if server.process.poll() is not None:
                for rest in scenarios[len(outcomes):]:
                    outcomes.append(Outcome(spec.name, rest.name, failure="server died"))
                break
    finally:
        server.stop()
    return outcomes


def drive(spec: ServerSpec, server: Running, scenario: Scenario, duration: float, warmup: float) -> Dict[str, Any]:
    if spec.driver == "redis":
        return redis_load(server, scenario, duration)
    args = load_args(scenario, duration, warmup, server.process.pid) + ["--port", str(server.port)]
    script = "drive.py" if spec.driver == "fastrpc" else spec.command[1]
    return run_driver([PY, script, "drive", *args], timeout=duration + warmup + 120)


def describe(outcome: Outcome) -> str:
    head = f"  {outcome.scenario:>18}  {outcome.server:<20}"
    f = outcome.figures
    if f is None:
        return f"{head} {outcome.failure}"
    return (f"{head} {f['requests_per_s']:>12,.0f} req/s  {_fmt(outcome.cpu_us, '.2f'):>8} us/req CPU  "
            f"p50 {f['p50']:.3f} ms  p99 {f['p99']:.3f} ms  errors {_fmt(f.get('errors'), ',')}")


# -- the client side -------------------------------------------------------------------

CLIENTS = [
    ("fastrpc async client, gather", "fastrpc", ["drive.py", "client", "--kind", "async"]),
    ("fastrpc SyncClient.call_many", "fastrpc", ["drive.py", "client", "--kind", "sync"]),
    ("grpc.aio client, gather", "grpc.aio", ["peer_grpc.py", "client"]),
]


def on_server(spec: ServerSpec, row: Dict[str, Any], command: Callable[[Running], List[str]], timeout: float) -> None:
    """Start ``spec``, run a driver (``command`` of the running server) against it, stop it: the driver's
    figures go into ``row``, or ``row["failure"]`` says why there are none."""
    try:
        server = Running(spec)
    except (RuntimeError, OSError) as exc:
        row["failure"] = f"server did not start: {exc}"
        return
    try:
        row.update(run_driver(command(server), timeout=timeout))
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        row["failure"] = f"failed: {exc}"
    finally:
        server.stop()


def measure_clients(specs: Dict[str, ServerSpec], batch: int, duration: float,
                    log: Callable[[str], None]) -> List[Dict[str, Any]]:
    rows = []
    for name, server_name, command in CLIENTS:
        row: Dict[str, Any] = {"client": name, "server": server_name, "batch": batch}
        on_server(specs[server_name], row, lambda server: [PY, *command, "--host", HOST, "--port", str(server.port),
                                                           "--batch", str(batch), "--duration", str(duration)],
                  duration + 120)
        if "failure" not in row:
            row["us_per_call"] = row["client_cpu_s"] / row["calls"] * 1e6 if row["calls"] else None
        log(f"  {name:<32} " + (row.get("failure") or f"{row['calls'] / row['seconds']:>10,.0f} calls/s  "
                                 f"{_fmt(row['us_per_call'], '.2f')} us CPU/call"))
        rows.append(row)
    return rows


#: Server streaming: (server, bench/streams.py --kind).
STREAMERS = [("fastrpc", "fastrpc"), ("grpc.aio", "grpc")]
STREAMS = 4  # concurrent streams on one connection


def measure_streams(specs: Dict[str, ServerSpec], items: int, log: Callable[[str], None]) -> List[Dict[str, Any]]:
    rows = []
    for server_name, kind in STREAMERS:
        row: Dict[str, Any] = {"server": server_name, "streams": STREAMS}
        on_server(specs[server_name], row, lambda server: [
            PY, "streams.py", "--kind", kind, "--host", HOST, "--port", str(server.port), "--server-pid",
            str(server.process.pid), "--streams", str(STREAMS), "--items", str(items)], 600)
        log(f"  streams {server_name:<24} " + (row.get("failure") or f"{row['items_per_s']:>10,.0f} items/s  "
                                                 f"{row['server_us_per_item']:.2f} us server CPU/item"))
        rows.append(row)
    return rows


# -- the report ------------------------------------------------------------------------

def _fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ratio(value: Optional[float], reference: Optional[float]) -> str:
    return "n/a" if value is None or not reference else f"{value / reference:.2f}x"


def machine() -> Dict[str, str]:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("uvloop", "orjson", "grpcio"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # not installed
            versions[package] = "not installed"
    return {"cpu": model, "cpus": str(os.cpu_count()), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", **versions}


def machine_slug(info: Dict[str, str]) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", info["cpu"].lower()).strip("-")
    return f"{words}-{info['cpus']}cpu"


def render(outcomes: List[Outcome], clients: List[Dict[str, Any]], specs: List[ServerSpec],
           scenarios: List[Scenario], info: Dict[str, str], command: str, settings: str,
           streams: Sequence[Dict[str, Any]] = ()) -> str:
    by_key = {(o.server, o.scenario): o for o in outcomes}
    lines = [
        f"# fastrpc and its peers, {datetime.date.today().isoformat()}",
        "",
        f"Machine: {info['cpu']}, {info['cpus']} CPUs, {info['system']}, Python {info['python']}, "
        f"uvloop {info['uvloop']}, orjson {info['orjson']}, grpcio {info['grpcio']}. "
        f"Servers pinned to CPU {SERVER_CPU}, load generators to CPU {LOAD_CPU}; {settings}.",
        "",
        f"Reproduce: `{command}`",
        "",
        "Ratios are against fastrpc (uvloop) in the same scenario: above 1.00x means more requests/s, or",
        "more server CPU per request. CPU per request is user + system time of the server process (all its",
        "threads, from /proc) over the measured requests. Latencies in milliseconds.",
        "",
        "## Servers",
        "",
    ]
    for spec in specs:
        failures = {o.failure for o in outcomes if o.server == spec.name and o.failure.startswith("did not start")}
        status = failures.pop() if failures else "ran"
        lines.append(f"- **{spec.name}**: {spec.note}. {status}")
    lines += ["", "## Server side", "",
              "| scenario | server | req/s | req/s vs fastrpc | CPU µs/req | CPU vs fastrpc | p50 ms | p99 ms | errors |",
              "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for scenario in scenarios:
        reference = by_key.get((REFERENCE, scenario.name))
        ref_rps = reference.figures["requests_per_s"] if reference and reference.figures else None
        ref_cpu = reference.cpu_us if reference else None
        for spec in specs:
            o = by_key[(spec.name, scenario.name)]
            if o.figures is None:
                lines.append(f"| {scenario.name} | {spec.name} | {o.failure} | | | | | | |")
                continue
            f = o.figures
            lines.append(
                f"| {scenario.name} | {spec.name} | {f['requests_per_s']:,.0f} | {_ratio(f['requests_per_s'], ref_rps)} "
                f"| {_fmt(o.cpu_us, '.2f')} | {_ratio(o.cpu_us, ref_cpu)} | {f['p50']:.3f} | {f['p99']:.3f} "
                f"| {_fmt(f.get('errors'), ',')} |")
    if clients:
        lines += ["", "## Client side", "",
                  f"One connection; each round issues a batch of {clients[0]['batch']} `ping` calls at once and "
                  "waits for all of them. CPU is the client process's own (all threads).", "",
                  "| client | server | calls/s | client CPU µs/call | vs fastrpc async |", "|---|---|--:|--:|--:|"]
        ref = clients[0].get("us_per_call")
        for row in clients:
            if "failure" in row:
                lines.append(f"| {row['client']} | {row['server']} | {row['failure']} | | |")
            else:
                lines.append(f"| {row['client']} | {row['server']} | {row['calls'] / row['seconds']:,.0f} "
                             f"| {_fmt(row['us_per_call'], '.2f')} | {_ratio(row['us_per_call'], ref)} |")
    if streams:
        lines += ["", "## Server streaming", "",
                  f"One connection, {streams[0]['streams']} concurrent streams of the integers 0..N-1 (fastrpc: the demo's "
                  "`count`, window 256; gRPC: a unary-stream call, each message one item's JSON), every item checked "
                  "in order. CPU is the server process's over exactly those items.", "",
                  "| server | items | items/s | server CPU µs/item | vs fastrpc | client CPU µs/item |",
                  "|---|--:|--:|--:|--:|--:|"]
        ref = streams[0].get("server_us_per_item")
        for row in streams:
            if "failure" in row:
                lines.append(f"| {row['server']} | {row['failure']} | | | | |")
            else:
                lines.append(f"| {row['server']} | {row['items']:,} | {row['items_per_s']:,.0f} "
                             f"| {row['server_us_per_item']:.2f} | {_ratio(row['server_us_per_item'], ref)} "
                             f"| {row['client_us_per_item']:.2f} |")
    lines += ["", "## Targets", ""] + targets(by_key, scenarios)
    return "\n".join(lines) + "\n"


def targets(by_key: Dict[Any, Outcome], scenarios: List[Scenario]) -> List[str]:
    """The issue's targets, each said met or missed, and by how much."""
    names = {s.name for s in scenarios}
    lines = []

    def figure(server: str, scenario: str, what: str) -> Optional[float]:
        o = by_key.get((server, scenario))
        if o is None or o.figures is None:
            return None
        return o.cpu_us if what == "cpu" else o.figures["requests_per_s"]

    for scenario in scenarios:
        mine, floor = figure(REFERENCE, scenario.name, "cpu"), figure("floor", scenario.name, "cpu")
        if mine is not None and floor:
            ratio = mine / floor
            lines.append(f"- CPU per request at most 1.1x the floor's, {scenario.name}: {ratio:.2f}x, "
                         f"{'met' if ratio <= 1.1 else 'missed'}")
    for peer, scenario, wanted in (("streams+json", "50x1", 2), ("streams+json", "10x64", 6), ("grpc.aio", "50x1", 20)):
        if scenario not in names:
            continue
        mine, theirs = figure(REFERENCE, scenario, "rps"), figure(peer, scenario, "rps")
        if mine is None or not theirs:
            lines.append(f"- at least {wanted}x the requests/s of {peer} at {scenario}: not measured")
            continue
        ratio = mine / theirs
        lines.append(f"- at least {wanted}x the requests/s of {peer} at {scenario}: {ratio:.2f}x, "
                     f"{'met' if ratio >= wanted else 'missed'}")
    return lines


def chart(outcomes: List[Outcome], specs: List[ServerSpec], scenarios: List[Scenario], path: Path) -> str:
    """Requests/s and CPU per request per scenario, as grouped bars; returns what was done."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install -e \".[bench]\")"
    by_key = {(o.server, o.scenario): o for o in outcomes}
    shown = [s for s in specs if any(by_key[(s.name, sc.name)].figures for sc in scenarios)]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 1.6 * len(scenarios)), 9))
    width = 0.8 / max(1, len(shown))
    for index, spec in enumerate(shown):
        xs = [i + index * width for i in range(len(scenarios))]
        rps = [(by_key[(spec.name, s.name)].figures or {}).get("requests_per_s", 0) for s in scenarios]
        cpu = [by_key[(spec.name, s.name)].cpu_us or 0 for s in scenarios]
        top.bar(xs, rps, width, label=spec.name)
        bottom.bar(xs, cpu, width, label=spec.name)
    for axes, title in ((top, "requests/s (higher is better)"), (bottom, "server CPU µs per request (lower is better)")):
        axes.set_yscale("log")
        axes.set_title(title)
        axes.set_xticks([i + 0.4 - width / 2 for i in range(len(scenarios))])
        axes.set_xticklabels([s.name for s in scenarios], fontsize=8)
    top.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"chart: {path}"


def median_outcomes(rounds: List[List[Outcome]]) -> List[Outcome]:
    """Per server and scenario, the round with the median requests/s (failures only if every round failed)."""
    merged = []
    for group in zip(*rounds):
        good = sorted((o for o in group if o.figures), key=lambda o: o.figures["requests_per_s"])  # type: ignore[index]
        merged.append(good[(len(good) - 1) // 2] if good else group[0])
    return merged


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced set, under a minute")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 5, quick 0.5)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (default 1, quick 0.2)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the table shows each run's median round")
    parser.add_argument("--servers", help="comma-separated names to run (default: all)")
    parser.add_argument("--scenarios", help="comma-separated scenario names to run (default: all, or the quick set)")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="directory for the report, chart and figures (default: bench/results; "
                             "with --quick a new temporary directory)")
    args = parser.parse_args(argv)

    quick = args.quick
    duration = args.duration or (0.5 if quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.2 if quick else 1.0)
    scenarios = [s for s in SCENARIOS if not quick or s.name in QUICK_SCENARIOS]
    specs = servers()

    def select(items: List[Any], names: Optional[str], what: str) -> List[Any]:
        if not names:
            return items
        wanted = names.split(",")
        unknown = set(wanted) - {item.name for item in items}
        if unknown:
            parser.error(f"unknown {what}: {', '.join(sorted(unknown))} (known: {', '.join(i.name for i in items)})")
        return [item for item in items if item.name in wanted]

    scenarios = select(scenarios, args.scenarios, "scenarios")
    specs = select(specs, args.servers, "servers")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rounds = []
    for number in range(1, args.repeat + 1):
        log(f"round {number} of {args.repeat}")
        outcomes: List[Outcome] = []
        for spec in specs:
            outcomes += measure(spec, scenarios, duration, warmup, log)
        rounds.append(outcomes)
    outcomes = median_outcomes(rounds)
    by_name = {s.name: s for s in specs}
    clients: List[Dict[str, Any]] = []
    streams: List[Dict[str, Any]] = []
    if REFERENCE in by_name:
        log("client side")
        clients = measure_clients({s.name: s for s in servers()}, 64, duration, log)
        log("server streaming")
        streams = measure_streams({s.name: s for s in servers()}, 5_000 if quick else 100_000, log)

    info = machine()
    if args.output is not None:
        output = args.output
    elif quick:
        output = Path(tempfile.mkdtemp(prefix="fastrpc-compare-"))
    else:
        output = BENCH / "results"
    output.mkdir(parents=True, exist_ok=True)
    stem = output / f"{datetime.date.today().isoformat()}-{machine_slug(info)}{'-quick' if quick else ''}"
    command = "python bench/compare.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    settings = f"{warmup:g} s warmup, {duration:g} s measured per run, {args.repeat} round(s)"
    report = render(outcomes, clients, specs, scenarios, info, command, settings, streams)
    chart_note = chart(outcomes, specs, scenarios, stem.with_suffix(".png"))
    if chart_note.startswith("chart:"):
        report += f"\n![requests/s and CPU per request]({stem.with_suffix('.png').name})\n"
    stem.with_suffix(".md").write_text(report)
    stem.with_suffix(".json").write_text(json.dumps(
        {"machine": info, "settings": settings, "outcomes": [o.__dict__ for o in outcomes], "clients": clients,
         "streams": streams}, indent=1))
    sys.stdout.write(report)
    log(f"report: {stem.with_suffix('.md')}")
    if args.output is None and quick:
        log("(a temporary directory: --output DIR keeps the report there, bench/results to record it)")
    log(chart_note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
