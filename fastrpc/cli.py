"""The ``fastrpc`` command (also ``python -m fastrpc``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import ssl
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import orjson

from . import __version__
from .allocator import keep_freed_memory
from .errors import CallTimeout, ConnectionClosed, RemoteError
from .limits import DEFAULT_MAX_FRAME_SIZE, check_max_frame_size
from .metrics import MetricsBindError
from .net import listen_failed
from .protocol import ABSENT, metadata_problem
from .server import LOG_FORMAT, MAX_AGE_JITTER, Server, run

# Exit statuses of `fastrpc call` (2 is argparse's usage error).
EXIT_REMOTE_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECTION = 3
EXIT_TIMEOUT = 4


def load_server(spec: str) -> Server:
    """Import ``MODULE:ATTR`` (from the current directory too) and return that Server."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"fastrpc: app must look like MODULE:ATTR, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"fastrpc: cannot import {module_name!r}: {exc}") from None
    server = getattr(module, attr, None)
    if not isinstance(server, Server):
        raise SystemExit(f"fastrpc: {spec!r} is not a fastrpc.Server (got {type(server).__name__})")
    return server


def _server_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The Server settings given on the command line (those left out keep the app's own)."""
    names = [*_SERVER_OPTIONS, *_SERVER_FLAGS]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _server_arguments(settings: Dict[str, Any]) -> List[str]:
    """``settings`` as the serve options that give them (for the command line of a worker)."""
    arguments: List[str] = []
    for name, value in settings.items():
        option = "--" + name.replace("_", "-")
        arguments += [option] if name in _SERVER_FLAGS else [option, str(value)]
    return arguments


def _serve(args: argparse.Namespace) -> int:
    if args.workers > 1:
        return _serve_workers(args)
    if not args.release_memory:
        keep_freed_memory()
    if args.app:
        server = load_server(args.app)
    else:
        from .demo import server
    for name, value in _server_settings(args).items():
        setattr(server, name, value)
    if args.token_file is not None:
        server.set_tokens(read_tokens(args.token_file))
    if args.access_log:
        from .accesslog import AccessLog

        server.use(AccessLog())
    if args.metrics_port is not None:
        _need_prometheus_client()
        server.enable_metrics(port=args.metrics_port, host=args.metrics_host or args.host)
    if args.metrics_dir is not None:  # a worker of --workers N: its counts go to the supervisor, which serves them
        server.enable_metrics(snapshot_dir=args.metrics_dir)
        server._metrics_at = None  # a port the app asked for too: every worker would bind it
    try:
        run(server, args.host, args.port, loop=args.loop, reuse_port=args.reuse_port, ssl=_tls(args))
    except MetricsBindError as exc:
        print(f"fastrpc: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # socket.gaierror too
        if server.addresses:  # it was listening: not a failure to bind
            raise
        print(f"fastrpc: {listen_failed(args.host, args.port, exc)}", file=sys.stderr)
        return 1
    return 0


def _need_prometheus_client() -> None:
    if importlib.util.find_spec("prometheus_client") is None:
        raise SystemExit("fastrpc: --metrics-port needs prometheus_client: pip install 'fastrpc[metrics]'")


def read_tokens(path: str) -> List[str]:
    """The tokens in ``path``: one per line, blank lines ignored (a file, so that no token shows in ``ps``)."""
    try:
        with open(path, encoding="utf-8") as f:
            tokens = [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise SystemExit(f"fastrpc: cannot read the token file: {exc}") from None
    if not tokens:
        raise SystemExit(f"fastrpc: the token file {path} holds no token")
    return tokens


def _client_tls(args: argparse.Namespace) -> Optional["ssl.SSLContext"]:
    """The client's TLS context from --tls/--tls-ca/--tls-cert/--tls-key, or None."""
    if not (args.tls or args.tls_ca or args.tls_cert):
        return None
    from .tls import client_context

    try:
        return client_context(args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"fastrpc: cannot load the TLS files: {exc}") from None


def _tls(args: argparse.Namespace) -> Optional["ssl.SSLContext"]:
    """The server's TLS context from --tls-cert/--tls-key/--tls-ca, or None."""
    if args.tls_cert is None:
        if args.tls_key is not None or args.tls_ca is not None:
            raise SystemExit("fastrpc: --tls-key and --tls-ca need --tls-cert")
        return None
    from .tls import server_context

    try:
        return server_context(args.tls_cert, args.tls_key, ca=args.tls_ca)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise SystemExit(f"fastrpc: cannot load the TLS certificate: {exc}") from None


def _serve_workers(args: argparse.Namespace) -> int:
    from .workers import Supervisor, reserve_port

    if args.app:
        server = load_server(args.app)  # fail here, once, rather than in every worker
    else:
        from .demo import server
    settings = _server_settings(args)
    grace = settings.get("shutdown_grace", server.shutdown_grace)
    reserved = reserve_port(args.host, args.port)
    port = reserved.getsockname()[1]
    command = [sys.executable, "-m", "fastrpc", "serve", "--host", args.host, "--port", str(port),
               "--loop", args.loop, "--reuse-port", "--log-level", args.log_level]
    if args.app:
        command.insert(4, args.app)
    command += _server_arguments(settings)
    _tls(args)  # fail here, once, on a bad certificate
    if args.token_file is not None:
        read_tokens(args.token_file)
    for flag in ("tls_cert", "tls_key", "tls_ca", "token_file"):
        if getattr(args, flag) is not None:
            command += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    if args.access_log:
        command.append("--access-log")
    if args.release_memory:
        command.append("--release-memory")
    metrics: Dict[str, Any] = {}
    metrics_at = None
    if args.metrics_port is not None:
        metrics_at = (args.metrics_host or args.host, args.metrics_port)
    elif server._metrics_at is not None:  # the app's own enable_metrics(port=...): the supervisor serves it
        metrics_at = (server._metrics_at[0] or args.host, server._metrics_at[1])
    if metrics_at is not None:
        _need_prometheus_client()
        metrics_dir = tempfile.mkdtemp(prefix="fastrpc-metrics-")  # removed by the supervisor
        command += ["--metrics-dir", metrics_dir]
        metrics = dict(metrics_dir=metrics_dir, metrics_at=metrics_at)
    logging.getLogger("fastrpc.workers").info("fastrpc serving on %s:%s with %d workers", args.host, port, args.workers)
    try:
        return Supervisor(command, args.workers, shutdown_grace=grace, **metrics).run()
    except MetricsBindError as exc:
        print(f"fastrpc: {exc}", file=sys.stderr)
        return 1
    finally:
        reserved.close()


def parse_address(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None


def parse_meta(text: str) -> Tuple[str, str]:
    """A ``--meta KEY=VALUE`` pair."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"metadata is KEY=VALUE, got {text!r}")
    return key, value


def _call(args: argparse.Namespace) -> int:
    from .sync_client import SyncClient

    host, port = args.address
    meta = dict(args.meta) or None
    problem = None if meta is None else metadata_problem(meta)
    if problem is not None:
        print(f"fastrpc: invalid call metadata: {problem}", file=sys.stderr)
        return 2
    try:
        token = read_tokens(args.token_file)[0] if args.token_file is not None else None
        with SyncClient(host, port, timeout=args.timeout, connect_timeout=args.timeout, token=token,
                        ssl=_client_tls(args)) as client:
            if args.stream:  # each item on its own line, as it comes
                for item in client.stream(args.method, args.params, meta=meta):
                    print(orjson.dumps(item).decode(), flush=True)
                return 0
            result = client.call(args.method, args.params, meta=meta)
    except CallTimeout as exc:  # first: DeadlineExceeded (the server's timeout) is one too
        print(f"fastrpc: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except RemoteError as exc:
        print(f"fastrpc: remote error {exc.code}: {exc.message}", file=sys.stderr)
        if exc.data is not None:
            print(orjson.dumps(exc.data).decode(), file=sys.stderr)
        return EXIT_REMOTE_ERROR
    except ConnectionClosed as exc:
        print(f"fastrpc: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    print(orjson.dumps(result).decode())
    return 0


def _discovery_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="HOST:PORT|MODULE:ATTR",
                        help="a running server, or an app's Server to import (its methods are read without serving)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds (default 10)")
    parser.add_argument("--token-file", metavar="PATH", help="authenticate with the first token in PATH")


def _discover(args: argparse.Namespace) -> Any:
    """The OpenRPC document of ``args.target``; an int (the exit status) when it cannot be had."""
    from .discovery import document
    from .sync_client import SyncClient

    if not _looks_like_address(args.target):
        return document(load_server(args.target).methods)
    try:
        host, port = parse_address(args.target)
    except argparse.ArgumentTypeError as exc:
        print(f"fastrpc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        token = read_tokens(args.token_file)[0] if args.token_file is not None else None
        with SyncClient(host, port, timeout=args.timeout, connect_timeout=args.timeout, token=token) as client:
            return client.call("rpc.discover")
    except CallTimeout as exc:
        print(f"fastrpc: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except RemoteError as exc:
        hint = " (the server has discovery turned off)" if exc.code == -32601 else ""
        print(f"fastrpc: remote error {exc.code}: {exc.message}{hint}", file=sys.stderr)
        return EXIT_REMOTE_ERROR
    except ConnectionClosed as exc:
        print(f"fastrpc: {exc}", file=sys.stderr)
        return EXIT_CONNECTION


def _looks_like_address(target: str) -> bool:
    """HOST:PORT (a port number after the last colon) rather than MODULE:ATTR."""
    return target.rpartition(":")[2].isdigit()


def _describe(args: argparse.Namespace) -> int:
    from .discovery import format_document

    doc = _discover(args)
    if isinstance(doc, int):
        return doc
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() if args.json else format_document(doc))
    return 0


def _stubgen(args: argparse.Namespace) -> int:
    from .stubgen import generate, identifier

    doc = _discover(args)
    if isinstance(doc, int):
        return doc
    text = generate(doc, identifier(args.name, capital=True), args.target)
    if args.output is None:
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .loadgen import Progress, format_progress, format_report, run_load
    from .server import new_event_loop

    host, port = args.address
    live = sys.stderr.isatty() and not args.json

    def show(progress: Progress) -> None:
        # Asked each time: the terminal may be resized during the run.
        sys.stderr.write("\r\033[K" + format_progress(progress, terminal_columns(sys.stderr.fileno())))
        sys.stderr.flush()

    load = run_load(host, port, method=args.method, params=args.params, connections=args.connections,
                    depth=args.depth, duration=None if args.requests else args.duration,
                    requests=args.requests, warmup=args.warmup, progress=show if live else None,
                    connect_timeout=args.connect_timeout)
    loop = new_event_loop(args.loop)
    try:
        report = loop.run_until_complete(load)
    except ConnectionError as exc:
        print(f"fastrpc: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    finally:
        loop.close()
        if live:
            sys.stderr.write("\r\033[K")
    print(orjson.dumps(report.to_dict()).decode() if args.json else format_report(report))
    return EXIT_REMOTE_ERROR if report.errors else 0


def terminal_columns(fd: int) -> int:
    """The width of the terminal on ``fd``: $COLUMNS where set, as ``shutil.get_terminal_size``
    takes it (which asks stdout's terminal only), else the terminal's own; 80 if unknown."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(fd).columns
        except OSError:
            columns = 0
    return columns if columns > 0 else 80


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastrpc", description="Fast length-prefixed JSON RPC over TCP.")
    parser.add_argument("--version", action="version", version=f"fastrpc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve an app (default: the demo service)")
    serve.add_argument("app", nargs="?", help="MODULE:ATTR naming a fastrpc.Server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8080, help="(default 8080; 0: any free port)")
    serve.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    serve.add_argument("--release-memory", action="store_true",
                       help="hand freed memory back to the OS at once (glibc's default): less held after large "
                            "frames, a page fault per page of each new one (default: kept for reuse, see "
                            "fastrpc.allocator)")
    for name, (kind, metavar, text) in _SERVER_OPTIONS.items():
        serve.add_argument("--" + name.replace("_", "-"), type=kind, default=None, metavar=metavar, help=text)
    for name, text in _SERVER_FLAGS.items():
        serve.add_argument("--" + name.replace("_", "-"), action="store_true", default=None, help=text)
    serve.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (chain)")
    serve.add_argument("--tls-key", metavar="PEM", help="its private key, unless the --tls-cert file holds it")
    serve.add_argument("--tls-ca", metavar="PEM", help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--token-file", metavar="PATH",
                       help="require clients to authenticate with one of the tokens in PATH (one per line)")
    serve.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    serve.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                       help="processes sharing the port with SO_REUSEPORT (Linux); the parent restarts any that dies")
    serve.add_argument("--reuse-port", action="store_true",
                       help="bind with SO_REUSEPORT, so that other processes may serve the same port")
    serve.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics (needs prometheus_client: "
                            "pip install 'fastrpc[metrics]'); with --workers, the sum over all of them")
    serve.add_argument("--metrics-host", default=None, metavar="HOST", help="address for --metrics-port (default: --host)")
    serve.add_argument("--metrics-dir", default=None, help=argparse.SUPPRESS)  # a worker's: where its snapshots go
    serve.add_argument("--access-log", action="store_true",
                       help="log one line per call on the fastrpc.access logger (peer, method, code, ms)")
    serve.set_defaults(handler=_serve)

    call = commands.add_parser(
        "call", help="call a method and print its result as JSON (--stream: a stream's items, one per line)",
        epilog=f"exit status: 0 success, {EXIT_REMOTE_ERROR} remote error, {EXIT_USAGE} usage error, "
               f"{EXIT_CONNECTION} connection failed or lost, {EXIT_TIMEOUT} timeout",
    )
    call.add_argument("address", type=parse_address, metavar="HOST:PORT")
    call.add_argument("method")
    call.add_argument("params", nargs="?", type=parse_json, default=ABSENT, metavar="PARAMS_JSON",
                      help="the params as JSON: a list for positional arguments, an object for keywords")
    call.add_argument("--timeout", type=float, default=10.0, metavar="S",
                      help="seconds (default 10), for a stream the whole stream's")
    call.add_argument("--stream", action="store_true",
                      help="call a streaming method: print each item as a JSON line as it comes")
    call.add_argument("--meta", type=parse_meta, action="append", default=[], metavar="KEY=VALUE",
                      help="call metadata (repeatable), read by handlers registered with metadata=True")
    call.add_argument("--token-file", metavar="PATH", help="authenticate with the first token in PATH")
    call.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    call.add_argument("--tls-ca", metavar="PEM", help="connect with TLS, trusting this CA")
    call.add_argument("--tls-cert", metavar="PEM", help="client certificate, for servers that require one")
    call.add_argument("--tls-key", metavar="PEM", help="its private key, unless the --tls-cert file holds it")
    call.set_defaults(handler=_call, log_level="WARNING")

    bench = commands.add_parser(
        "bench", help="load a server with one method, wrk-style, and report throughput and latency",
        epilog=f"exit status: 0 every request succeeded, {EXIT_REMOTE_ERROR} some failed (the report says how), "
               f"{EXIT_USAGE} usage error, {EXIT_CONNECTION} a connection could not be opened",
    )
    bench.add_argument("address", type=parse_address, metavar="HOST:PORT")
    bench.add_argument("--method", default="ping", help="method to call (default ping)")
    bench.add_argument("--params", type=parse_json, default=ABSENT, metavar="JSON", help="its params as JSON")
    bench.add_argument("--connections", type=_positive_int, default=50, metavar="N", help="(default 50)")
    bench.add_argument("--depth", type=_positive_int, default=1, metavar="N",
                       help="requests in flight per connection (default 1)")
    length = bench.add_mutually_exclusive_group()
    length.add_argument("--duration", type=_positive_float, default=10.0, metavar="S",
                        help="seconds of measured load (default 10)")
    length.add_argument("--requests", type=_positive_int, default=None, metavar="N",
                        help="measure exactly N requests instead")
    bench.add_argument("--warmup", type=_non_negative_float, default=0.0, metavar="S",
                       help="seconds of unmeasured load first (default 0)")
    bench.add_argument("--connect-timeout", type=_positive_float, default=10.0, metavar="S", help="(default 10)")
    bench.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    bench.add_argument("--json", action="store_true", help="print the report as one JSON object")
    bench.set_defaults(handler=_bench, log_level="WARNING")

    describe = commands.add_parser(
        "describe", help="print a server's methods with their params' and results' types (rpc.discover)",
        epilog=f"exit status: 0 success, {EXIT_REMOTE_ERROR} remote error (discovery off), {EXIT_USAGE} usage error, "
               f"{EXIT_CONNECTION} connection failed or lost, {EXIT_TIMEOUT} timeout",
    )
    _discovery_arguments(describe)
    describe.add_argument("--json", action="store_true", help="print the OpenRPC document itself")
    describe.set_defaults(handler=_describe, log_level="WARNING")

    stubgen = commands.add_parser(
        "stubgen", help="write a Python module of typed clients (async and blocking) for a server's methods",
        epilog="exit status as for describe; TARGET is a running server (HOST:PORT) or an app (MODULE:ATTR)",
    )
    _discovery_arguments(stubgen)
    stubgen.add_argument("--name", default="Service", help="the classes are NAMEClient and NAMESyncClient (default Service)")
    stubgen.add_argument("-o", "--output", metavar="FILE", help="write the module here (default: standard output)")
    stubgen.set_defaults(handler=_stubgen, log_level="WARNING")

    return parser


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def _frame_size(text: str) -> int:
    try:
        return check_max_frame_size(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# Settings of fastrpc.Server that `serve` takes as options: name -> (type, metavar, help).
_SERVER_OPTIONS: Dict[str, Tuple[Callable[[str], Any], str, str]] = {
    "max_frame_size": (_frame_size, "BYTES", f"largest frame body accepted (default {DEFAULT_MAX_FRAME_SIZE})"),
    "max_in_flight": (_positive_int, "N", "calls running per connection before it is read no more (default 1024)"),
    "max_connections": (_positive_int, "N", "connections served at once; more are refused as busy (default: no limit)"),
    "idle_timeout": (_positive_float, "S", "close connections idle this long (default: never)"),
    "frame_timeout": (_positive_float, "S", "cut off a client taking longer than this to send one frame (default 60)"),
    "shutdown_grace": (_non_negative_float, "S", "on SIGTERM/SIGINT, seconds running calls get to finish (default 30)"),
    "max_connection_age": (_positive_float, "S", f"retire each connection after about this long (less up to "
                                                 f"{MAX_AGE_JITTER * 100:g} %%, drawn per connection): it drains as on a "
                                                 f"stop and its client reconnects (default: never)"),
    "max_connection_age_grace": (_positive_float, "S", "seconds the running calls of a connection so retired get to finish "
                                                       "(default: the shutdown grace)"),
}

# Settings of fastrpc.Server that `serve` takes as flags (on when given): name -> help.
_SERVER_FLAGS: Dict[str, str] = {
    "debug": "debug mode: the internal errors (-32603) of handlers that raise carry the handler's traceback "
             "in the error's data; it shows the server's code and data to every client, so not in production",
}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    return int(args.handler(args))
