"""Which framing implementation is loaded, and the package's public surface."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import fastrpc
from fastrpc import framing

ENV_NO_EXT = os.environ.get("FASTRPC_NO_EXTENSIONS", "").lower() not in ("", "0", "false", "no")


def test_extension_is_built_and_loaded() -> None:
    # An installed fastrpc must run the compiled splitter unless told not to.
    expected = "python" if ENV_NO_EXT else "cython"
    assert framing.IMPLEMENTATION == expected
    if expected == "cython":
        assert framing.FrameReader.__module__ == "fastrpc._framing"
        assert framing.ServerCore.__module__ == "fastrpc._server_core"
        assert framing.ClientCore.__module__ == "fastrpc._client_core"
    assert issubclass(fastrpc.protocol.ServerConnection, framing.ServerCore)
    assert issubclass(fastrpc.protocol.ClientConnection, framing.ClientCore)


def check_env(value: str) -> str:
    env = dict(os.environ, FASTRPC_NO_EXTENSIONS=value)
    out = subprocess.run(
        [sys.executable, "-c", "import fastrpc.framing as f; print(f.IMPLEMENTATION, f.FrameReader.__module__, f.ServerCore.__module__, f.ClientCore.__module__)"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.strip()


def test_no_extensions_env_selects_python() -> None:
    assert check_env("1") == "python fastrpc._framing_py fastrpc._server_core_py fastrpc._client_core_py"


def test_no_extensions_env_off_values() -> None:
    if not ENV_NO_EXT:
        assert check_env("0") == "cython fastrpc._framing fastrpc._server_core fastrpc._client_core"


def test_exports() -> None:
    for name in fastrpc.__all__:
        assert hasattr(fastrpc, name), name
    assert isinstance(fastrpc.__version__, str)
    # Submodules show up as attributes once imported; they are not part of __all__, whichever they are.
    public = {name for name, value in vars(fastrpc).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public - {"annotations"} <= set(fastrpc.__all__)


def test_typing_files_are_shipped() -> None:
    package = os.path.dirname(fastrpc.__file__)
    assert os.path.exists(os.path.join(package, "py.typed"))
    assert os.path.exists(os.path.join(package, "_framing.pyi"))
    assert os.path.exists(os.path.join(package, "_server_core.pyi"))
    assert os.path.exists(os.path.join(package, "_client_core.pyi"))
    assert os.path.exists(os.path.join(package, "_timing.pyi"))
