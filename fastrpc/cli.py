"""The ``fastrpc`` command (also ``python -m fastrpc``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

from .limits import DEFAULT_MAX_FRAME_SIZE
from .server import Server, run


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


def _serve(args: argparse.Namespace) -> int:
    if args.app:
        server = load_server(args.app)
    else:
        from .demo import server
    if args.max_frame_size is not None:
        server.max_frame_size = args.max_frame_size
    run(server, args.host, args.port, loop=args.loop)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastrpc", description="Fast length-prefixed JSON RPC over TCP.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve an app (default: the demo service)")
    serve.add_argument("app", nargs="?", help="MODULE:ATTR naming a fastrpc.Server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    serve.add_argument("--max-frame-size", type=int, default=None, metavar="BYTES",
                       help=f"largest frame body accepted (default {DEFAULT_MAX_FRAME_SIZE})")
    serve.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.handler(args))
