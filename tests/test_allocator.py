"""``fastrpc serve`` keeps freed memory for reuse (fastrpc.allocator): large frames stop costing a page
fault per page. Counted in page faults, which do not depend on the machine's load."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from fastrpc.allocator import keep_freed_memory

# Echo 4 MiB requests through a server connection, in a process of its own; print the page faults of 20.
ECHO = """
import resource, sys
from fastrpc.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
import orjson
from fastrpc import demo
from fastrpc.framing import pack_frames
from fastrpc.protocol import ServerConnection
connection = ServerConnection(demo.server.methods, lambda call: False)
request = pack_frames([orjson.dumps({"in": "echo", "params": "x" * (4 << 20), "id": 1})])
for _ in range(3):  # warm up: the heap grows to what a request needs
    connection.receive_data(request)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    assert len(connection.receive_data(request)) > 4 << 20
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def echo_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", ECHO, mode], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kept, count = out.stdout.split()
    assert kept == ("True" if mode == "keep" else "None")
    return int(count)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_large_frames_reuse_freed_memory_without_page_faults() -> None:
    default, kept = echo_faults("default"), echo_faults("keep")
    assert default > 20 * 1024  # glibc's default: at least a 4 MiB block's 1,024 pages afresh per request
    assert kept < default // 20, (default, kept)


def test_elsewhere_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory() is False
