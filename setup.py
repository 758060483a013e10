"""Builds fastrpc and its C extensions, fastrpc._framing, fastrpc._server_core, fastrpc._client_core and fastrpc._timing, from Cython source.

Build switches, read from the environment:

- ``FASTRPC_PURE_PYTHON=1``: leave the extension out. The result is a ``py3-none-any`` wheel that runs
  the pure-Python frame splitter (``fastrpc.framing.IMPLEMENTATION == "python"``), for platforms with
  no C compiler. Without the switch a build that cannot compile fails, naming the switch: a source
  install never falls back to the slow splitter in silence.
- ``FASTRPC_DEBUG_BUILD=1``: ``-O0 -g``, Cython line tracing, and Cython's HTML annotation written
  next to the source.

Release builds carry no debug information: ``-g0`` overrides the ``-g`` that CPython's own CFLAGS
bring, and the linker drops the symbol tables (the extension needs only its dynamic symbols).
"""

from __future__ import annotations

import os
import sys
from typing import List, Tuple

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

PURE_SWITCH = "FASTRPC_PURE_PYTHON"
DEBUG_SWITCH = "FASTRPC_DEBUG_BUILD"


def switched_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


PURE = switched_on(PURE_SWITCH)
DEBUG = switched_on(DEBUG_SWITCH)

COULD_NOT_BUILD = f"""
************************************************************************
fastrpc: could not build its C extensions (fastrpc._framing, fastrpc._server_core, fastrpc._client_core, fastrpc._timing):
    {{reason}}
Building fastrpc from source needs a C compiler and the Python headers
(pip fetches Cython itself). Install them and try again, or install the
pure-Python build, which runs the same code with a slower frame splitter:
    {PURE_SWITCH}=1 pip install --no-cache-dir --no-binary fastrpc fastrpc
************************************************************************
"""


def flags(compiler_type: str) -> Tuple[List[str], List[str]]:
    """Compile and link arguments for this compiler: release (stripped) or debug."""
    if compiler_type == "msvc":
        # MSVC's release defaults (/O2, no /Zi, no /DEBUG) write no debug information at all.
        return (["/Od", "/Zi"], ["/DEBUG"]) if DEBUG else ([], [])
    if DEBUG:
        return ["-O0", "-g"], []
    # -g0 comes after CPython's CFLAGS on the command line, so it wins over their -g.
    # Apple's linker spells "strip" -S; GNU ld and lld take -s.
    strip = ["-Wl,-S"] if sys.platform == "darwin" else ["-s"]
    return ["-O2", "-g0"], strip


class BuildExt(build_ext):
    """Cythonizes at build time (so that only a build needs Cython) and fails loudly when it cannot compile."""

    def run(self) -> None:
        try:
            from Cython.Build import cythonize
        except ImportError as exc:
            raise SystemExit(COULD_NOT_BUILD.format(reason=f"Cython is not installed ({exc})")) from None
        generated = cythonize(
            self.extensions,
            annotate=DEBUG,
            compiler_directives={"language_level": 3, "linetrace": DEBUG},
        )
        # Keep setuptools' own Extension objects (finalize_options prepared them); take the C sources.
        c_sources = {extension.name: extension.sources for extension in generated}
        for extension in self.extensions:
            extension.sources = c_sources[extension.name]
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError) as exc:
            # Compiler missing or failing: stop here; never carry on without the extension.
            raise SystemExit(COULD_NOT_BUILD.format(reason=exc)) from None

    def build_extensions(self) -> None:
        compile_args, link_args = flags(self.compiler.compiler_type)
        for extension in self.extensions:
            extension.extra_compile_args = compile_args + extension.extra_compile_args
            extension.extra_link_args = link_args + extension.extra_link_args
        super().build_extensions()


def extensions() -> List[Extension]:
    if PURE:
        return []
    return [
        Extension(
            f"fastrpc.{name}",
            [f"fastrpc/{name}.pyx"],
            define_macros=[("CYTHON_TRACE", "1")] if DEBUG else [],
        )
        for name in ("_framing", "_server_core", "_client_core", "_timing")
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
