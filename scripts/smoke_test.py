#!/usr/bin/env python3
"""Smoke test of an installed fastrpc: run it with the interpreter of the environment under test.

    python scripts/smoke_test.py [--implementation cython|python]

Checks that the package imports from that environment (not from a source tree), that the framing
implementation is the expected one (``cython`` unless told otherwise: a wheel that fell back to the
pure-Python splitter is a defect), that the installed package holds its typing files and none of the
extension's sources, that an ELF extension carries no debug sections, and that a real call
works against ``python -m fastrpc serve``. Exit status 0 when all pass, 1 with the reason on stderr.

One script for every place that checks a build: scripts/build_wheels.sh, cibuildwheel's
test-command (pyproject.toml) and tests/test_packaging.py. Standard library and fastrpc only.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, Optional

START_TIMEOUT = 60.0  # seconds for the server to report its port (a cold start under emulation is slow)
CALL_TIMEOUT = 10.0
STOP_TIMEOUT = 30.0
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


class SmokeFailure(Exception):
    """A check failed; the message says which and why."""


def elf_section_names(path: Path) -> Optional[List[str]]:
    """The section names of an ELF file, or None when ``path`` is not ELF (macOS, Windows)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return None
    is_64 = data[4] == 2
    order = "<" if data[5] == 1 else ">"
    if is_64:
        (section_table,) = struct.unpack_from(order + "Q", data, 0x28)
        entry_size, count, names_index = struct.unpack_from(order + "HHH", data, 0x3A)
    else:
        (section_table,) = struct.unpack_from(order + "I", data, 0x20)
        entry_size, count, names_index = struct.unpack_from(order + "HHH", data, 0x2E)

    def header(index: int) -> "tuple[int, int]":
        """(offset of the name in the names section, offset of the section's contents)."""
        base = section_table + index * entry_size
        (name,) = struct.unpack_from(order + "I", data, base)
        (offset,) = struct.unpack_from(order + ("Q" if is_64 else "I"), data, base + (0x18 if is_64 else 0x10))
        return name, offset

    names = header(names_index)[1]
    result = []
    for index in range(count):
        start = names + header(index)[0]
        result.append(data[start:data.index(b"\0", start)].decode("ascii", "replace"))
    return result


def check_install(expected: str) -> None:
    """Where fastrpc was imported from, which framing it runs, and what its package directory holds."""
    import fastrpc
    from fastrpc import framing

    package = Path(fastrpc.__file__).resolve().parent
    print(f"fastrpc {fastrpc.__version__} from {package}")
    print(f"Python {sys.version.split()[0]} on {sys.platform}; framing: {framing.IMPLEMENTATION}")
    if (package.parent / "setup.py").exists():
        raise SmokeFailure(f"fastrpc was imported from a source tree ({package}), not from an installed build")
    if framing.IMPLEMENTATION != expected:
        raise SmokeFailure(f"framing implementation is {framing.IMPLEMENTATION!r}, expected {expected!r}")
    for name in ("py.typed", "_framing.pyi", "_server_core.pyi", "_client_core.pyi", "_timing.pyi"):
        if not (package / name).is_file():
            raise SmokeFailure(f"{name} is missing from the installed package")
    sources = sorted(p.name for p in package.iterdir() if p.suffix in (".pyx", ".pxd", ".c", ".html"))
    if sources:
        raise SmokeFailure(f"the installed package carries build sources: {sources}")
    if expected == "cython":
        from fastrpc import _client_core, _framing, _server_core, _timing, metrics, protocol

        if metrics.Timed is not _timing.Timed:
            raise SmokeFailure("the metrics do not time handlers with the compiled timer")
        if not issubclass(protocol.ServerConnection, _server_core.ServerCore):
            raise SmokeFailure("the server does not run the compiled request path")
        if not issubclass(protocol.ClientConnection, _client_core.ClientCore):
            raise SmokeFailure("the clients do not run the compiled call path")
        for extension in (Path(_framing.__file__), Path(_server_core.__file__), Path(_client_core.__file__),
                          Path(_timing.__file__)):
            sections = elf_section_names(extension)
            debug = [name for name in sections or [] if name.startswith((".debug", ".zdebug"))]
            if debug:
                raise SmokeFailure(f"{extension.name} carries debug sections: {debug}")
            print(f"extension {extension.name}: {extension.stat().st_size} bytes, "
                  + ("no debug sections" if sections is not None else "not ELF, sections not checked"))


def read_lines(stream: "object", lines: "queue.Queue[Optional[str]]") -> None:
    """Hand the server's log lines to the main thread (pipes cannot be polled with a timeout on Windows)."""
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)
    lines.put(None)


def check_call() -> None:
    """Start ``python -m fastrpc serve`` on a port the OS picks, call it, stop it with SIGTERM."""
    import fastrpc

    # Run from an empty directory, so that nothing but the installed package can be imported.
    with tempfile.TemporaryDirectory() as cwd:
        server = subprocess.Popen(
            [sys.executable, "-m", "fastrpc", "serve", "--host", "127.0.0.1", "--port", "0"],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        log: List[str] = []
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        reader = threading.Thread(target=read_lines, args=(server.stderr, lines), daemon=True)
        reader.start()
        try:
            port = None
            while port is None:
                try:
                    line = lines.get(timeout=START_TIMEOUT)
                except queue.Empty:
                    raise SmokeFailure(f"the server did not report listening within {START_TIMEOUT:.0f} s") from None
                if line is None:
                    raise SmokeFailure(f"the server exited with status {server.wait(STOP_TIMEOUT)}: {''.join(log)}")
                log.append(line)
                found = LISTENING.search(line)
                port = int(found.group(1)) if found else None
            with fastrpc.SyncClient("127.0.0.1", port, timeout=CALL_TIMEOUT) as client:
                added = client.call("add", [1, 2])
                echoed = client.call("echo", {"smoke": [1, "two", None]})
            if added != 3 or echoed != {"smoke": [1, "two", None]}:
                raise SmokeFailure(f"wrong results: add -> {added!r}, echo -> {echoed!r}")
            print(f"served on 127.0.0.1:{port}: add(1, 2) = {added}, echo round-tripped")
            # SIGTERM is the graceful stop; on Windows, Popen turns it into TerminateProcess.
            server.send_signal(signal.SIGTERM)
            status = server.wait(STOP_TIMEOUT)
            if os.name == "posix" and status != 0:
                raise SmokeFailure(f"the server exited with status {status} on SIGTERM")
        finally:
            if server.poll() is None:
                server.kill()
                server.wait(STOP_TIMEOUT)
            reader.join(STOP_TIMEOUT)  # the pipe is at its end once the server is gone


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--implementation", choices=("cython", "python"), default="cython",
                        help="the framing the build must run (python: a FASTRPC_PURE_PYTHON=1 build)")
    args = parser.parse_args(argv)
    try:
        check_install(args.implementation)
        check_call()
    except SmokeFailure as exc:
        print(f"smoke test FAILED: {exc}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
