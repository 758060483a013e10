"""Builds the one C extension, fastrpc._framing, from its Cython source.

FASTRPC_DEBUG_BUILD=1 compiles with line tracing and writes Cython's HTML
annotation next to the source; release builds carry neither.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("FASTRPC_DEBUG_BUILD", "") not in ("", "0")

extension = Extension(
    "fastrpc._framing",
    ["fastrpc/_framing.pyx"],
    define_macros=[("CYTHON_TRACE", "1")] if debug else [],
    extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
)

setup(
    ext_modules=cythonize(
        [extension],
        annotate=debug,
        compiler_directives={"linetrace": debug, "language_level": 3},
    ),
)
