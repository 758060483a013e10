"""The C allocator's settings for a server process: large frames without a page fault per page.

glibc serves a block of more than 128 KiB with a mapping of its own, and gives it back to the kernel
when it is freed (later, once it has seen such blocks freed, from the heap, but trimming the heap's
free top back to the kernel past twice their size). A server answering 4 MiB frames then faults in
every page of each request's decoded text and reply, fresh: measured, the kernel's share made an echo
of 4 MiB cost 13.8 ms where 4.0 ms were the work (bench/results/2026-11-30-compiled-path.md). Keeping
freed memory for the next frame removes that. It is a process-wide choice, the cost of which is memory
held after a burst of large frames (up to the heap's high-water mark), so the library leaves it to
``fastrpc serve``, which owns its process and makes it unless told ``--release-memory``.
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # mallopt's parameters, from glibc's malloc.h
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap rather than a mapping each (the most glibc's own adaptive
#: threshold reaches on 64-bit): frames up to the default 16 MiB limit among them.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory at the heap's top kept for the next frames rather than handed back to the kernel.
TRIM_THRESHOLD = 256 * 1024 * 1024
#: What the heap grows by beyond each need (and keeps): without it, an echo of 4 MiB still grew the heap,
#: and faulted in a 4 MiB block's pages, on every request; with it, none (tests/test_allocator.py).
TOP_PAD = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Have this process's C allocator keep freed large blocks for reuse (glibc's ``mallopt``); whether
    it could: False under another C library (musl, macOS), where nothing is changed."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])
