"""What server metrics cost: server CPU per request with ``--metrics-port`` against without.

Issue 15's budget: with metrics on, server CPU per request within 5 % of metrics off at
50 connections x 1, and within 15 % pipelined (10 connections x 64); off, the hot path unchanged.

Two ``fastrpc serve`` processes (uvloop, compiled framing, ``ping``), one with metrics off and one
with ``--metrics-port 0``, run side by side, both pinned to CPU 0, and are driven in turn, round
after round (the order reversed every other round), with bench/compare.py's machinery (load
generator pinned to CPU 1, server CPU from /proc over exactly the measured requests): short
alternating windows, so that the drift of a shared machine falls on both alike. Reported: medians,
ranges and the per-round ratios on/off.
``--core`` adds the core alone timed in this process (user space only: the wrapper's share, steadier
than the servers' figures); ``--instructions`` adds user-space instructions per request (bench/instructions.py's method:
callgrind, one connection, one request outstanding) for both, deterministic where timings are not.

    python bench/metrics.py                          # 15 rounds of 1 s per scenario, about 2 minutes
    python bench/metrics.py --quick                  # a check: 1 round of 0.5 s
    python bench/metrics.py --rounds 7 --instructions --output bench/results/2026-11-30-metrics-raw.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Dict, List, Optional

import instructions
from compare import HOST, PY, SERVER_CPU, Running, Scenario, ServerSpec, drive, machine

SCENARIOS = [Scenario("50x1", 50, 1), Scenario("10x64", 10, 64)]
BUDGET = {"50x1": 1.05, "10x64": 1.15}
SERVE = [PY, "-m", "fastrpc", "serve", "--host", HOST, "--port", "{port}", "--log-level", "WARNING", "--loop", "uvloop"]
SPECS = {
    "off": ServerSpec("off", SERVE, note="metrics off"),
    "on": ServerSpec("on", SERVE + ["--metrics-port", "0"], note="--metrics-port 0"),
}
instructions.SERVERS["on"] = instructions.SERVERS["fastrpc"] + ["--metrics-port", "0"]
instructions.SERVERS["off"] = instructions.SERVERS["fastrpc"]


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def rounds(count: int, duration: float, warmup: float) -> Dict[str, Dict[str, List[float]]]:
    """CPU µs per request, [setting][scenario] -> one figure per round. Both servers run the whole
    time, pinned to the same CPU, and are driven in turn, so that what drifts falls on both alike."""
    cpu: Dict[str, Dict[str, List[float]]] = {name: {s.name: [] for s in SCENARIOS} for name in SPECS}
    running = {name: Running(spec) for name, spec in SPECS.items()}
    try:
        for scenario in SCENARIOS:
            for number in range(count):
                order = ["off", "on"] if number % 2 == 0 else ["on", "off"]
                for name in order:
                    figures = drive(SPECS[name], running[name], scenario, duration, warmup)
                    cpu[name][scenario.name].append(figures["server_cpu_s"] / figures["requests"] * 1e6)
                log(f"{scenario.name} round {number + 1} of {count}: off {cpu['off'][scenario.name][-1]:.2f}, "
                    f"on {cpu['on'][scenario.name][-1]:.2f} µs/request")
    finally:
        for server in running.values():
            server.stop()
    return cpu


def core_ns(metered: bool, repeat: int = 25) -> float:
    """User-space ns per request of the server's core alone, in this process: a read of 64 pipelined
    pings handed to a ServerConnection (``metered``: over the metered registry, as Server.start makes
    it; the core counts the traffic either way); the best of ``repeat``."""
    import timeit

    from fastrpc.framing import pack_frames
    from fastrpc.metrics import ServerMetrics, meter
    from fastrpc.protocol import Method, ServerConnection

    methods = {"ping": Method("ping", lambda params: params, out="pong", raw_params=True)}
    batch = pack_frames([b'{"in":"ping","params":"sha params"}'] * 64)
    if metered:
        metrics = ServerMetrics()
        methods = {name: meter(method, metrics.method(name)) for name, method in methods.items()}
    core = ServerConnection(methods, lambda call: False)
    return min(timeit.repeat(lambda: core.receive_data(batch), number=1000, repeat=repeat)) / 1000 / 64 * 1e9


def report(cpu: Dict[str, Dict[str, List[float]]], counts: Optional[Dict[int, Dict[str, float]]], core: Optional[Dict[str, float]],
           settings: str, command: str) -> str:
    info = machine()
    lines = [f"Command: `{command}`", "",
             f"Machine: {info['cpu']}, {info['cpus']} CPUs, {info['system']}, Python {info['python']}, "
             f"uvloop {info['uvloop']}, orjson {info['orjson']}; server pinned to CPU 0, load generator to CPU 1; "
             f"{settings}.", "",
             "| scenario | off: CPU µs/req, median (range) | on: median (range) | on/off of medians | "
             "per-round on/off | budget |", "|---|--:|--:|--:|---|--:|"]
    for scenario in SCENARIOS:
        off, on = cpu["off"][scenario.name], cpu["on"][scenario.name]
        ratio = statistics.median(on) / statistics.median(off)
        per_round = ", ".join(f"{b / a:.3f}" for a, b in zip(off, on))
        budget = BUDGET[scenario.name]
        lines.append(f"| {scenario.name} | {statistics.median(off):.2f} ({min(off):.2f}-{max(off):.2f}) | "
                     f"{statistics.median(on):.2f} ({min(on):.2f}-{max(on):.2f}) | {ratio:.3f} | {per_round} | "
                     f"{budget:.2f}: {'met' if ratio <= budget else 'missed'} |")
    if core:
        lines += ["", "The core alone, in-process (64 pipelined pings per read, best of 25; ns per request): "
                  f"off {core['off']:.0f}, on {core['on']:.0f} ({core['on'] / core['off'] - 1:+.1%})."]
    if counts:
        lines += ["", "User-space instructions per request (callgrind, one connection, the next write once every reply is in):", ""]
        for batch, by_setting in counts.items():
            off, on = by_setting["off"], by_setting["on"]
            lines.append(f"- {batch} ping(s) per write: off {off:,.0f}, on {on:,.0f}: {on - off:+,.0f} ({on / off - 1:+.1%})")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 0.5 s: a check, not a figure")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--duration", type=float, default=1.0, help="measured seconds per window (default 1)")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds first (default 0.3)")
    parser.add_argument("--instructions", action="store_true", help="also count instructions per request (valgrind)")
    parser.add_argument("--base", type=int, default=2000, help="callgrind: requests of the shorter run")
    parser.add_argument("--requests", type=int, default=10000, help="callgrind: extra requests of the longer run")
    parser.add_argument("--core", action="store_true", help="also time the core alone, in this process")
    parser.add_argument("--output", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 0.5, 0.2
    cpu = rounds(args.rounds, args.duration, args.warmup)
    counts: Dict[int, Dict[str, float]] = {}  # pings per write -> setting -> instructions per request
    if args.instructions:
        for batch in (1, 64):
            base, extra = max(1, args.base // batch), max(1, args.requests // batch)
            for name in ("off", "on"):
                low = instructions.instructions(name, base, batch)
                high = instructions.instructions(name, base + extra, batch)
                counts.setdefault(batch, {})[name] = (high - low) / (extra * batch)
                log(f"metrics {name}, {batch} per write: {counts[batch][name]:,.0f} instructions/request")
    settings = f"{args.rounds} rounds per scenario, each {args.warmup:g} s warmup and {args.duration:g} s measured per server"
    command = "python bench/metrics.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    core: Dict[str, float] = {}
    if args.core:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {SERVER_CPU})
        for _ in range(3):  # alternately, the best of each
            for name in ("off", "on"):
                figure = core_ns(name == "on")
                core[name] = min(core.get(name, figure), figure)
        log(f"core alone: off {core['off']:.0f}, on {core['on']:.0f} ns/request")
    text = report(cpu, counts, core, settings, command)
    sys.stdout.write(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
