"""Packaging, for real: the sdist holds what a build needs and nothing else; the wheel built from it runs
the compiled framing in a fresh virtualenv (scripts/smoke_test.py, a real call against
``python -m fastrpc serve``); a build with no compiler fails loudly, or with FASTRPC_PURE_PYTHON=1 gives
a working pure-Python install; FASTRPC_DEBUG_BUILD=1 keeps what release builds strip.

pip and build fetch setuptools, Cython, orjson and uvloop from the package index (or pip's cache).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "scripts" / "smoke_test.py"
BUILD_TIMEOUT = 300
PURE_SWITCH = "FASTRPC_PURE_PYTHON"

# What the sdist holds besides fastrpc/*.py and the metadata setuptools writes (PKG-INFO, setup.cfg,
# fastrpc.egg-info/): the build inputs, the smoke test, README and LICENSE. Tests, benchmarks, fuzzers and
# docs need the repository around them and stay there; generated files (.c, .so, .html) never travel.
SDIST_FILES = {
    "setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "scripts/smoke_test.py",
    "fastrpc/_framing.pyx", "fastrpc/_framing.pxd", "fastrpc/_framing.pyi", "fastrpc/_server_core.pyx", "fastrpc/_server_core.pyi",
    "fastrpc/_client_core.pyx", "fastrpc/_client_core.pyi", "fastrpc/_scan.pxd", "fastrpc/_timing.pyx", "fastrpc/_timing.pyi",
    "fastrpc/py.typed",
}
SDIST_METADATA = {"PKG-INFO", "setup.cfg"}


def run(command: List[str], cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)


def smoke_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smoke_test", SMOKE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_venv(path: Path) -> Path:
    """A new virtualenv of this interpreter's Python; returns its python."""
    result = run([sys.executable, "-m", "venv", str(path)])
    assert result.returncode == 0, result.stderr
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def smoke(python: Path, cwd: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    """The smoke test under ``python``, from a directory with no fastrpc sources in it (and the build's own
    framing: not FASTRPC_NO_EXTENSIONS, should this run have it)."""
    env = {name: value for name, value in os.environ.items() if name != "FASTRPC_NO_EXTENSIONS"}
    return run([str(python), str(SMOKE), *args], cwd=cwd, env=env)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """The sdist, and the wheel `python -m build` makes from that sdist (so the sdist must suffice)."""
    out = tmp_path_factory.mktemp("dist")
    result = run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("fastrpc-*.tar.gz")
    (wheel,) = out.glob("fastrpc-*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture()
def source(dists: Dict[str, Path], tmp_path: Path) -> Path:
    """The sdist unpacked: pip builds a local directory without caching the wheel it makes."""
    with tarfile.open(dists["sdist"]) as archive:
        if hasattr(tarfile, "data_filter"):  # Python 3.9.17+: refuse paths that escape the target
            archive.extractall(tmp_path / "src", filter="data")
        else:
            archive.extractall(tmp_path / "src")
    (tree,) = (tmp_path / "src").iterdir()
    return tree


def test_sdist_holds_what_a_build_needs_and_nothing_else(dists: Dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as archive:
        names = {member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()}
    package = {f"fastrpc/{path.name}" for path in (ROOT / "fastrpc").glob("*.py")}
    egg_info = {name for name in names if name.startswith("fastrpc.egg-info/")}
    assert SDIST_FILES | package <= names
    assert names - SDIST_FILES - package - SDIST_METADATA - egg_info == set()


def test_wheel_holds_the_extension_and_typing_files_not_sources(dists: Dict[str, Path]) -> None:
    wheel = dists["wheel"]
    assert not wheel.name.endswith("-none-any.whl"), "a platform wheel is expected, with the extension"
    with zipfile.ZipFile(wheel) as archive:
        names: Set[str] = set(archive.namelist())
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    assert {f"fastrpc/_framing{suffix}", f"fastrpc/_client_core{suffix}", f"fastrpc/_timing{suffix}"} <= names
    assert {"fastrpc/py.typed", "fastrpc/_framing.pyi", "fastrpc/_client_core.pyi", "fastrpc/_timing.pyi"} <= names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert [name for name in names if name.endswith((".pyx", ".c", ".html"))] == []


def test_wheel_in_a_fresh_venv_passes_the_smoke_test(dists: Dict[str, Path], tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    installed = run([str(python), "-m", "pip", "install", str(dists["wheel"])])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    result = smoke(python, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "framing: cython" in result.stdout
    assert "no debug sections" in result.stdout
    assert "add(1, 2) = 3" in result.stdout
    # The smoke test does fail a build that does not run the framing it must.
    wrong = smoke(python, tmp_path, "--implementation", "python")
    assert wrong.returncode == 1
    assert "framing implementation is 'cython', expected 'python'" in wrong.stderr


@pytest.mark.skipif(os.name != "posix", reason="CC=/bin/false stands in for a missing compiler")
def test_without_a_compiler_the_build_fails_loudly_or_goes_pure_when_asked(source: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    no_compiler = dict(os.environ, CC="/bin/false")
    no_compiler.pop(PURE_SWITCH, None)
    failed = run([str(python), "-m", "pip", "install", str(source)], env=no_compiler)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "could not build its C extensions (fastrpc._framing, fastrpc._server_core, fastrpc._client_core, fastrpc._timing)" in output
    assert f"{PURE_SWITCH}=1 pip install" in output
    assert run([str(python), "-c", "import fastrpc"]).returncode != 0, "a failed build installed something"

    pure = run([str(python), "-m", "pip", "install", str(source)], env=dict(no_compiler, **{PURE_SWITCH: "1"}))
    assert pure.returncode == 0, pure.stdout + pure.stderr
    result = smoke(python, tmp_path, "--implementation", "python")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "framing: python" in result.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads ELF sections")
def test_debug_build_keeps_debug_information_and_writes_the_annotation(source: Path, tmp_path: Path) -> None:
    env = dict(os.environ, FASTRPC_DEBUG_BUILD="1")
    env.pop(PURE_SWITCH, None)
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "wheel"), str(source)], env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "wheel").glob("fastrpc-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        extension = f"fastrpc/_framing{importlib.machinery.EXTENSION_SUFFIXES[0]}"
        archive.extract(extension, tmp_path)
        assert [name for name in archive.namelist() if name.endswith(".html")] == []
    sections = smoke_module().elf_section_names(tmp_path / extension)
    assert ".debug_info" in sections
    assert (source / "fastrpc" / "_framing.html").is_file()
