"""Client CPU per call through the balancer: one plain connection, a pool of one, three endpoints.

Issue 14 put both clients in front of several endpoints. ``connect(host,
port)`` with one fixed IP address keeps a direct path; a resolver, a host name
or a list of addresses sends every call through the balancer (two random
choices by load). This measures what that costs the client, per call, in four
setups:

- ``plain``: ``connect("127.0.0.1", port)``, the direct path;
- ``pool-of-one``: the balancer with one endpoint, ``connect("127.0.0.1",
  resolver=lambda: ["127.0.0.1:port"])``;
- ``three``: ``connect([a, b, c])`` over three servers;
- ``pre-change``: ``plain`` with the client of commit 51d096d (before the
  issue-14 client work), extracted from git with the compiled framing of this
  checkout beside it; the servers are this checkout's.

for three kinds of client: the async client (a batch of 64 ``ping`` calls
gathered), ``SyncClient.call_many`` (batches of 64) and ``SyncClient.call``
(one call at a time, one thread). Every client runs in its own process pinned
to CPU 0, the servers (``python -m fastrpc serve``, uvloop) to CPU 1.

Two methods, both reported:

- CPU time (user + system, ``getrusage``) over a window of seconds after a
  warmup, in rounds that run every setup in turn (order reversed every other
  round), so that drift on a shared machine falls on all of them alike:
  medians, ranges, and per-round ratios to ``plain``;
- user-space instructions per call, counted by callgrind: the client process
  runs under ``valgrind --tool=callgrind`` once for W + N calls and once for
  W + 2N, and the difference of the totals is divided by N (start-up, warmup
  and shutdown cancel out; kernel time is not counted). Far steadier than
  the timings: the async client's counts repeat within about 0.3 %, the
  blocking client's (its reads depend on when the replies arrive) within
  about 2 %.

    python bench/balancing.py                  # the full set, about 12 minutes
    python bench/balancing.py --quick          # a check, seconds: timings only
    python bench/balancing.py --quick --callgrind --kinds async --setups plain,pool-of-one

The report goes to stdout and to ``--output FILE``; without it a full run
records it in ``bench/results/<date>-client-balancing.md`` and a quick run in
a new temporary directory, named on stderr. ``--keep-callgrind DIR`` keeps the
callgrind files (for ``callgrind_annotate --inclusive=yes``). Needs
``valgrind`` for the instruction counts (skipped, and said so, without it);
each callgrind run spends about 10 s starting Python.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence

from compare import SERVER_CPU, Running, ServerSpec, pinned
from compare import machine as compare_machine

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
HOST = "127.0.0.1"
PY = sys.executable
CLIENT_CPU = 1  # bench/compare.py pins the servers to CPU 0 (its SERVER_CPU)
START_TIMEOUT = 20.0  # seconds a server gets to listen
PRE_CHANGE = "51d096d"  # the commit before the issue-14 client work
BATCH = 64


@dataclass(frozen=True)
class Setup:
    name: str
    what: str
    client_setup: str  # how the worker connects: plain, pool-of-one, three
    servers: int
    old: bool = False  # run with the pre-change tree's fastrpc


SETUPS = [
    Setup("plain", '`connect("127.0.0.1", port)`: the direct path', "plain", 1),
    Setup("pool-of-one", '`connect("127.0.0.1", resolver=lambda: ["127.0.0.1:port"])`: the balancer, one endpoint',
          "pool-of-one", 1),
    Setup("three", "`connect([a, b, c])`: the balancer over three servers", "three", 3),
    Setup("pre-change", f"`connect(\"127.0.0.1\", port)` with the client of {PRE_CHANGE}", "plain", 1, old=True),
]
KINDS = {
    "async": "async client, 64 calls gathered",
    "sync-many": "SyncClient.call_many, batches of 64",
    "sync-single": "SyncClient.call, one at a time",
}


# -- the client process ----------------------------------------------------------------

def _own_cpu() -> "tuple[float, float]":
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _endpoints(args: argparse.Namespace) -> Dict[str, Any]:
    """Positional and keyword arguments of connect / SyncClient for the setup."""
    ports = [int(p) for p in args.ports.split(",")]
    if args.setup == "plain":
        return dict(args=(HOST, ports[0]), kwargs={})
    if args.setup == "pool-of-one":
        address = f"{HOST}:{ports[0]}"
        return dict(args=(HOST,), kwargs=dict(resolver=lambda: [address]))
    return dict(args=([f"{HOST}:{port}" for port in ports],), kwargs={})


def _loop_calls(batch: Callable[[], int], args: argparse.Namespace) -> Dict[str, Any]:
    """Warm up, then measure: a fixed count of calls (``--calls``) or a window of seconds."""
    done = 0
    if args.calls is not None:
        while done < args.warmup_calls:
            done += batch()
    else:
        end = time.monotonic() + args.warmup
        while time.monotonic() < end:
            batch()
    calls = 0
    user, system = _own_cpu()
    start = time.monotonic()
    if args.calls is not None:
        while calls < args.calls:
            calls += batch()
    else:
        end = start + args.duration
        while time.monotonic() < end:
            calls += batch()
    user_after, system_after = _own_cpu()
    return {"calls": calls, "seconds": time.monotonic() - start,
            "user_s": user_after - user, "cpu_s": user_after + system_after - user - system}


async def _loop_calls_async(batch: Callable[[], Awaitable[int]], args: argparse.Namespace) -> Dict[str, Any]:
    """``_loop_calls`` for a coroutine: one coroutine drives every batch, so the figure is the calls'
    cost, not that of starting and stopping the event loop."""
    done = 0
    if args.calls is not None:
        while done < args.warmup_calls:
            done += await batch()
    else:
        end = time.monotonic() + args.warmup
        while time.monotonic() < end:
            await batch()
    calls = 0
    user, system = _own_cpu()
    start = time.monotonic()
    if args.calls is not None:
        while calls < args.calls:
            calls += await batch()
    else:
        end = start + args.duration
        while time.monotonic() < end:
            calls += await batch()
    user_after, system_after = _own_cpu()
    return {"calls": calls, "seconds": time.monotonic() - start,
            "user_s": user_after - user, "cpu_s": user_after + system_after - user - system}


def client_main(args: argparse.Namespace) -> Dict[str, Any]:
    import fastrpc

    if args.expect_tree and not Path(fastrpc.__file__).resolve().is_relative_to(Path(args.expect_tree).resolve()):
        raise SystemExit(f"imported {fastrpc.__file__}, not the fastrpc of {args.expect_tree}")
    target = _endpoints(args)
    result: Dict[str, Any]
    if args.kind.startswith("sync"):
        from fastrpc import SyncClient

        with SyncClient(*target["args"], **target["kwargs"]) as sync:
            if args.kind == "sync-many":
                calls = [("ping",)] * args.batch
                result = _loop_calls(lambda: len(sync.call_many(calls)), args)
            else:
                def one() -> int:
                    sync.call("ping")
                    return 1
                result = _loop_calls(one, args)
            result["connections"] = _open_links(sync)
    else:
        import uvloop

        from fastrpc import connect

        async def run() -> Dict[str, Any]:
            client = await connect(*target["args"], **target["kwargs"])
            call, size, gather = client.call, args.batch, asyncio.gather

            async def one_batch() -> int:
                return len(await gather(*[call("ping") for _ in range(size)]))

            try:
                measured = await _loop_calls_async(one_batch, args)
                measured["connections"] = _open_links(client)
            finally:
                await client.close()
            return measured

        result = uvloop.run(run())
    result["fastrpc"] = str(Path(fastrpc.__file__).resolve().parent)
    return result


def _open_links(client: Any) -> Optional[int]:
    """Connections open at the end (the balanced clients' endpoints); None for the pre-change client."""
    endpoints = getattr(client, "_endpoints", None)
    if endpoints is None:
        return None
    return sum(1 for endpoint in endpoints.all if endpoint.link is not None)


# -- servers and runs ------------------------------------------------------------------

#: The servers the clients call: each started by bench/compare.py's ``Running``, pinned to its SERVER_CPU.
SERVER = ServerSpec("fastrpc", [PY, "-m", "fastrpc", "serve", "--host", HOST, "--port", "{port}", "--loop", "uvloop",
                                "--log-level", "WARNING"])


def pre_change_tree(into: Path) -> Path:
    """The fastrpc package of PRE_CHANGE under ``into``, with this checkout's compiled framing copied in
    (``_framing.pyx`` is the same); raises RuntimeError where git or the commit is missing."""
    if shutil.which("git") is None:
        raise RuntimeError("git is not installed")
    archive = into / "tree.tar"
    done = subprocess.run(["git", "-C", str(REPO), "archive", "-o", str(archive), PRE_CHANGE, "fastrpc"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git archive {PRE_CHANGE} failed: {done.stderr.strip()[-300:]}")
    same = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", PRE_CHANGE, "--", "fastrpc/_framing.pyx"])
    if same.returncode != 0:
        raise RuntimeError(f"fastrpc/_framing.pyx changed since {PRE_CHANGE}: its compiled framing cannot be reused")
    tree = into / f"fastrpc-{PRE_CHANGE}"
    with tarfile.open(archive) as tar:
        tar.extractall(tree)
    built = sorted((REPO / "fastrpc").glob("_framing*.so"))
    if not built:
        raise RuntimeError("no compiled fastrpc/_framing*.so in this checkout (pip install -e . builds it)")
    for library in built:
        shutil.copy2(library, tree / "fastrpc" / library.name)
    return tree


@dataclass
class Runner:
    servers: List[Running]
    old_tree: Optional[Path]
    batch: int
    log: Callable[[str], None]

    def command(self, setup: Setup, kind: str, extra: List[str]) -> "tuple[List[str], Dict[str, str]]":
        ports = ",".join(str(server.port) for server in self.servers[:setup.servers])
        argv = [PY, str(BENCH / "balancing.py"), "client", "--setup", setup.client_setup, "--kind", kind,
                "--ports", ports, "--batch", str(self.batch if kind != "sync-single" else 1), *extra]
        env = {k: v for k, v in os.environ.items() if k not in ("FASTRPC_NO_EXTENSIONS", "PYTHONPATH")}
        env["PYTHONHASHSEED"] = "0"
        if setup.old:
            assert self.old_tree is not None
            env["PYTHONPATH"] = str(self.old_tree)
            argv += ["--expect-tree", str(self.old_tree)]
        else:
            argv += ["--expect-tree", str(REPO)]
        return argv, env

    def timed(self, setup: Setup, kind: str, duration: float, warmup: float) -> Dict[str, Any]:
        argv, env = self.command(setup, kind, ["--duration", str(duration), "--warmup", str(warmup)])
        done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=duration + warmup + 60, preexec_fn=pinned(CLIENT_CPU))
        if done.returncode != 0:
            raise RuntimeError(_last_line(done.stderr) or f"the client exited with status {done.returncode}")
        return dict(json.loads(done.stdout))

    def instructions(self, setup: Setup, kind: str, calls: int, warmup_calls: int, keep: Optional[Path]) -> int:
        """Instructions of one client process making ``warmup_calls`` then ``calls`` calls."""
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            argv, env = self.command(setup, kind, ["--calls", str(calls), "--warmup-calls", str(warmup_calls)])
            done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv], env=env,
                                  cwd=REPO, capture_output=True, text=True, timeout=1800,
                                  preexec_fn=pinned(CLIENT_CPU))
            if done.returncode != 0:
                raise RuntimeError(_last_line(done.stderr) or f"the client exited with status {done.returncode}")
            text = out.read_text()
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy2(out, keep / f"callgrind.{kind}.{setup.name}.{calls}")
        match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if match is None:
            raise RuntimeError("no totals in callgrind's output")
        return int(match.group(1))


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


# -- the report ------------------------------------------------------------------------

@dataclass
class Figures:
    """One setup and kind: per-round CPU µs/call, instructions/call, or why there are none."""

    rounds: List[float] = field(default_factory=list)  # user + system µs per call
    user: List[float] = field(default_factory=list)  # user µs per call
    instructions: Optional[float] = None
    calls: List[int] = field(default_factory=list)
    connections: Optional[int] = None
    fastrpc: str = ""
    failure: str = ""

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.rounds) if self.rounds else None


def _fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    return None if value is None or not reference else value / reference


def _pct(ratio: Optional[float]) -> str:
    return "n/a" if ratio is None else f"{ratio:.3f} ({(ratio - 1) * 100:+.1f} %)"


def paired_ratios(a: Figures, b: Figures) -> List[float]:
    """Per round, ``a``'s CPU per call over ``b``'s (the two ran next to each other)."""
    return [x / y for x, y in zip(a.rounds, b.rounds) if y]


def checkout() -> str:
    """This checkout's commit, and whether fastrpc/ has changes not committed."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "fastrpc"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {head}" + (", with changes to fastrpc/ not committed" if dirty else "")


def machine() -> str:
    """bench/compare.py's description of this machine, as one line."""
    info = compare_machine()
    return (f"{info['cpu']}, {info['cpus']} CPUs, {info['system']}, Python {info['python']}, "
            f"uvloop {info['uvloop']}, orjson {info['orjson']}")


def render(results: Dict[str, Dict[str, Figures]], kinds: List[str], setups: List[Setup], command: str,
           settings: str, callgrind_note: str) -> str:
    lines = [
        f"# Client CPU per call through the balancer, {datetime.date.today().isoformat()}",
        "",
        f"Machine: {machine()}. Each client in its own process pinned to CPU {CLIENT_CPU}; servers "
        f"(`python -m fastrpc serve`, uvloop, this checkout) pinned to CPU {SERVER_CPU}. fastrpc: {checkout()}.",
        "",
        f"Command: `{command}`. {settings}. {callgrind_note}",
        "",
        "Setups:",
        "",
    ]
    lines += [f"- **{s.name}**: {s.what}" for s in setups]
    lines += ["", "CPU is user + system time of the client process (getrusage) per call: the median of the rounds, "
              "their range, and the median of the per-round ratios to plain (each round runs every setup in turn). "
              "Instructions are user-space only (callgrind), per call.", ""]
    for kind in kinds:
        rows = results[kind]
        plain = rows["plain"]
        lines += [f"## {KINDS[kind]}", "",
                  "| setup | CPU µs/call (median) | range | user µs/call | vs plain (per-round median) "
                  "| instructions/call | vs plain |",
                  "|---|--:|--:|--:|--:|--:|--:|"]
        for setup in setups:
            f = rows[setup.name]
            if f.failure and not f.rounds and f.instructions is None:
                lines.append(f"| {setup.name} | {f.failure} | | | | | |")
                continue
            paired = paired_ratios(f, plain)
            spread = f"{min(f.rounds):.2f} – {max(f.rounds):.2f}" if f.rounds else "n/a"
            user = statistics.median(f.user) if f.user else None
            lines.append(
                f"| {setup.name} | {_fmt(f.median, '.2f')} | {spread} | {_fmt(user, '.2f')} "
                f"| {_fmt(statistics.median(paired) if paired else None, '.3f')} "
                f"| {_fmt(f.instructions, ',.0f')} | {_fmt(_ratio(f.instructions, plain.instructions), '.3f')} |")
        lines.append("")
    lines += ["## Summary", "", "Ratios: CPU as the median of per-round ratios; instructions from the counts.", ""]
    for kind in kinds:
        rows = results[kind]
        plain = rows["plain"]
        for name, label, reference, goal in (("pool-of-one", "pool of one / plain", False, True),
                                             ("three", "three / plain", False, False),
                                             ("pre-change", f"plain now / pre-change ({PRE_CHANGE})", True, False)):
            if name not in rows:
                continue
            a, b = (plain, rows[name]) if reference else (rows[name], plain)
            paired = paired_ratios(a, b)
            parts = []
            for what, ratio in (("CPU", statistics.median(paired) if paired else None),
                                ("instructions", _ratio(a.instructions, b.instructions))):
                verdict = f": {'within' if ratio <= 1.05 else 'not within'} 5 %" if goal and ratio is not None else ""
                parts.append(f"{what} {_pct(ratio)}{verdict}")
            lines.append(f"- {KINDS[kind]}: {label}: " + "; ".join(parts))
    lines += ["", "## Rounds", "",
              "CPU µs/call of each round, in the order run (rounds alternate the setups' order).", ""]
    for kind in kinds:
        for setup in setups:
            f = results[kind][setup.name]
            detail = ", ".join(f"{value:.2f}" for value in f.rounds) or f.failure or "none"
            extra = f"; connections open at the end: {f.connections}" if f.connections is not None else ""
            lines.append(f"- {kind} / {setup.name}: {detail}{extra}")
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------

def bench_main(argv: Optional[Sequence[str]]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short check (seconds), not a record")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="the report (default: bench/results/<date>-client-balancing.md; "
                             "with --quick a new temporary directory)")
    parser.add_argument("--rounds", type=int, help="rounds of timed runs per setup (default 7, quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per timed run (default 2, quick 0.2)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds first (default 0.5, quick 0.1)")
    parser.add_argument("--calls", type=int, help="N, the measured calls of the shorter callgrind run "
                        "(the longer makes 2N; default 5120, quick 256; a quarter of it for single calls; "
                        "rounded up to whole batches)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--setups", default=",".join(s.name for s in SETUPS),
                        help=f"comma-separated, of {', '.join(s.name for s in SETUPS)} (plain is always run)")
    counting = parser.add_mutually_exclusive_group()
    counting.add_argument("--no-callgrind", action="store_true", help="timings only (the default with --quick)")
    counting.add_argument("--callgrind", action="store_true", help="count instructions with --quick too")
    parser.add_argument("--keep-callgrind", type=Path, metavar="DIR", help="keep callgrind's files in DIR")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    names = set(args.setups.split(",")) | {"plain"}
    unknown = names - {s.name for s in SETUPS}
    if unknown:
        parser.error(f"unknown setups: {', '.join(sorted(unknown))}")
    quick = args.quick
    rounds = args.rounds or (1 if quick else 7)
    duration = args.duration or (0.2 if quick else 2.0)
    warmup = args.warmup if args.warmup is not None else (0.1 if quick else 0.5)
    calls = -(-(args.calls or (256 if quick else 5120)) // BATCH) * BATCH
    warmup_calls = min(calls, 1024)
    single_calls = max(BATCH, calls // 4)  # a round trip each: slower under callgrind
    wanted_callgrind = args.callgrind or not (quick or args.no_callgrind)
    use_callgrind = wanted_callgrind and shutil.which("valgrind") is not None

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    chosen = [s for s in SETUPS if s.name in names]
    results: Dict[str, Dict[str, Figures]] = {kind: {s.name: Figures() for s in chosen} for kind in kinds}
    servers: List[Running] = []
    with tempfile.TemporaryDirectory(prefix="fastrpc-balancing-") as tmp:
        old_tree: Optional[Path] = None
        if "pre-change" in names:
            try:
                old_tree = pre_change_tree(Path(tmp))
            except (RuntimeError, OSError) as exc:
                for kind in kinds:
                    results[kind]["pre-change"].failure = f"not measured: {exc}"
                log(f"pre-change: not measured: {exc}")
        try:
            servers = [Running(SERVER) for _ in range(max(s.servers for s in chosen))]
            runner = Runner(servers, old_tree, BATCH, log)
            setups = [s for s in chosen if not (s.old and old_tree is None)]
            for number in range(rounds):
                order = setups if number % 2 == 0 else setups[::-1]
                for kind in kinds:
                    for setup in order:
                        f = results[kind][setup.name]
                        try:
                            out = runner.timed(setup, kind, duration, warmup)
                        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                            f.failure = f"failed: {exc}"
                            log(f"round {number + 1} {kind:<11} {setup.name:<12} failed: {exc}")
                            continue
                        per_call = out["cpu_s"] / out["calls"] * 1e6
                        f.rounds.append(per_call)
                        f.user.append(out["user_s"] / out["calls"] * 1e6)
                        f.calls.append(out["calls"])
                        f.connections, f.fastrpc = out.get("connections"), out["fastrpc"]
                        log(f"round {number + 1} {kind:<11} {setup.name:<12} {per_call:7.2f} us/call CPU  "
                            f"{out['calls'] / out['seconds']:>9,.0f} calls/s  ({out['fastrpc']})")
            if use_callgrind:
                for kind in kinds:
                    n = single_calls if kind == "sync-single" else calls
                    w = min(warmup_calls, n)
                    for setup in setups:
                        f = results[kind][setup.name]
                        try:
                            low = runner.instructions(setup, kind, n, w, args.keep_callgrind)
                            high = runner.instructions(setup, kind, 2 * n, w, args.keep_callgrind)
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            log(f"callgrind {kind:<11} {setup.name:<12} failed: {exc}")
                            f.failure = f.failure or f"callgrind failed: {exc}"
                            continue
                        f.instructions = (high - low) / n
                        log(f"callgrind {kind:<11} {setup.name:<12} {f.instructions:9,.0f} instructions/call")
        finally:
            for server in servers:
                server.stop()

    command = "python bench/balancing.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    settings = (f"{rounds} round(s) of {duration:g} s measured after {warmup:g} s warmup per setup, "
                f"async and call_many in batches of {BATCH}")
    if use_callgrind:
        callgrind_note = (f"Instructions: callgrind runs of W + N and W + 2N calls, difference / N, with "
                          f"N = {calls:,}, W = {warmup_calls:,} (single calls: N = {single_calls:,}, "
                          f"W = {min(warmup_calls, single_calls):,}).")
    elif wanted_callgrind:
        callgrind_note = "Instructions not counted: valgrind is not installed."
    else:
        callgrind_note = "Instructions not counted (" + ("--no-callgrind" if args.no_callgrind else
                                                         "--quick without --callgrind") + ")."
    report = render(results, kinds, chosen, command, settings, callgrind_note)
    if args.output is not None:
        output = args.output
    elif quick:
        output = Path(tempfile.mkdtemp(prefix="fastrpc-balancing-")) / "client-balancing-quick.md"
    else:
        output = BENCH / "results" / f"{datetime.date.today().isoformat()}-client-balancing.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report)
    sys.stdout.write(report)
    log(f"report: {output}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        parser = argparse.ArgumentParser(prog="balancing.py client", description="one measured client (internal)")
        parser.add_argument("--setup", choices=["plain", "pool-of-one", "three"], required=True)
        parser.add_argument("--kind", choices=list(KINDS), required=True)
        parser.add_argument("--ports", required=True)
        parser.add_argument("--batch", type=int, default=BATCH)
        parser.add_argument("--duration", type=float, default=2.0)
        parser.add_argument("--warmup", type=float, default=0.5)
        parser.add_argument("--calls", type=int, help="a fixed count of calls instead of --duration")
        parser.add_argument("--warmup-calls", type=int, default=0)
        parser.add_argument("--expect-tree", help="fail unless fastrpc is imported from this directory")
        print(json.dumps(client_main(parser.parse_args(argv[1:]))))
        return 0
    return bench_main(argv)


if __name__ == "__main__":
    sys.exit(main())
