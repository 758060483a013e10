"""Server CPU per call with ServerTracing on and off.

Four servers, each the demo service in its own process (uvloop):

- ``off``: no middleware (the plain registry, the fast path);
- ``middleware``: one do-nothing ``Middleware``: what wrapping every handler costs by itself;
- ``api-only``: ``ServerTracing()`` with no SDK: the OpenTelemetry API's no-op tracer;
- ``sdk``: ``ServerTracing(provider)``, an SDK TracerProvider whose SimpleSpanProcessor hands every
  span to an exporter that drops it: recording a span, without the cost of shipping it.

This process drives each in turn with ``SyncClient.call_many`` (batches of 64 ``add`` calls, each
carrying a ``traceparent`` in its metadata, so that the server continues a trace as it would behind a
traced client) and reads the server's CPU time (user + system, /proc) over a window of seconds after a
warmup. Rounds run every setup, in an order reversed every other round, so that a busy machine weighs
on all alike; the report gives each setup's median microseconds of server CPU per call, its range,
and the median per-round difference from ``off``.

    python bench/tracing.py              # 5 rounds of 3 s per setup, about 1.5 minutes
    python bench/tracing.py --quick      # a check: 1 round of 0.5 s
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence

from procstat import cpu_seconds

import fastrpc
from fastrpc.hooks import ClientHook

SETUPS = ("off", "middleware", "api-only", "sdk")
BATCH = 64
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def serve(setup: str, port: int) -> None:
    """The server of ``setup`` (run in a child process)."""
    from fastrpc import demo

    server = demo.server
    if setup == "middleware":
        server.use(fastrpc.Middleware())
    elif setup == "api-only":
        from fastrpc.tracing import ServerTracing
        server.use(ServerTracing())
    elif setup == "sdk":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

        from fastrpc.tracing import ServerTracing

        class Drop(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(Drop()))
        server.use(ServerTracing(provider))
    fastrpc.run(server, host="127.0.0.1", port=port)


class Traceparent(ClientHook):
    """Every call carries the same trace context: what the server parses is what a traced client sends."""

    def call_started(self, method: str, meta: Dict[str, str]) -> None:
        meta["traceparent"] = TRACEPARENT


def start(setup: str) -> "tuple[subprocess.Popen[bytes], int]":
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, __file__, "--serve", setup, "--port", str(port)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the {setup} server did not start") from None
            time.sleep(0.05)


def measure(client: fastrpc.SyncClient, pid: int, seconds: float) -> float:
    """Server CPU microseconds per call over ``seconds`` of back-to-back batches."""
    batch = [("add", [1, 2])] * BATCH
    for _ in range(50):  # warmup
        client.call_many(batch)
    calls = 0
    cpu = cpu_seconds(pid)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        client.call_many(batch)
        calls += BATCH
    return (cpu_seconds(pid) - cpu) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--serve", choices=SETUPS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.port)
    rounds, seconds = (1, 0.5) if args.quick else (args.rounds, args.seconds)
    servers = {setup: start(setup) for setup in SETUPS}
    results: Dict[str, List[float]] = {setup: [] for setup in SETUPS}
    try:
        clients = {setup: fastrpc.SyncClient("127.0.0.1", port, hooks=[Traceparent()])
                   for setup, (_, port) in servers.items()}
        for number in range(rounds):
            for setup in SETUPS if number % 2 == 0 else reversed(SETUPS):
                results[setup].append(measure(clients[setup], servers[setup][0].pid, seconds))
        for client in clients.values():
            client.close()
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(10)
    print(f"server CPU per call, {rounds} round(s) of {seconds:g} s, batches of {BATCH} 'add' calls with a traceparent "
          f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
    print(f"{'setup':<12}{'median us':>10}{'range':>18}{'vs off (per round)':>22}")
    for setup in SETUPS:
        values = results[setup]
        extra = statistics.median(v - off for v, off in zip(values, results["off"]))
        print(f"{setup:<12}{statistics.median(values):>10.2f}{f'{min(values):.2f}-{max(values):.2f}':>18}{extra:>+22.2f}")


if __name__ == "__main__":
    main()
