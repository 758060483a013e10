"""What the fuzz targets share: starting atheris, and reading a server's output as frames."""

from __future__ import annotations

import inspect
import sys
from types import ModuleType
from typing import Callable, List

import atheris


def instrument(module: ModuleType) -> None:
    """Add coverage counters to the functions and methods ``module`` defines, so that the fuzzer
    is also guided by the harness's own branches (which kind of frame, which error, which order)."""
    for value in list(vars(module).values()):
        members = vars(value).values() if inspect.isclass(value) else [value]
        for member in members:
            func = member.fget if isinstance(member, property) else member
            if inspect.isfunction(func) and func.__module__ == module.__name__:
                atheris.instrument_func(func)


def fuzz(module_name: str, test_one_input: Callable[[bytes], None], argv: List[str]) -> None:
    """Instrument the target's module and hand control to libFuzzer (which reads its flags from ``argv``)."""
    instrument(sys.modules[module_name])
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def split_frames(data: bytes, what: str) -> List[bytes]:
    """The bodies of ``data``, which must be whole frames and nothing else."""
    bodies = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise AssertionError(f"{what}: {len(data) - offset} bytes after the last whole frame, not a header")
        size = int.from_bytes(data[offset:offset + 4], "big")
        if len(data) - offset - 4 < size:
            raise AssertionError(f"{what}: a frame of {size} bytes is cut after {len(data) - offset - 4}")
        bodies.append(data[offset + 4:offset + 4 + size])
        offset += 4 + size
    return bodies

