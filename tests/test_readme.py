"""Every ```python block of README.md runs as written (issue 13).

The line just before each block is a marker saying how the block runs:

    <!-- readme-test: server FILE; run: COMMAND; run: ...; clients: OTHER.py ...; logs: TEXT -->
    <!-- readme-test: client of FILE -->

A ``server`` block is saved as FILE, next to every other server block's file (so one may import
another), and started with each ``run`` COMMAND in turn (``python`` is this interpreter, ``fastrpc`` is
``python -m fastrpc``). While it runs it must answer the README's text probe, and every ``client of
FILE`` block (and those of the servers listed in ``clients``) must exit 0 printing what its comments
say; then SIGTERM must stop it with status 0, its output must hold no traceback and no ERROR line, and
it must contain each ``logs`` TEXT. The literal port 8080 in blocks and commands becomes a free one.

A client block states its output: each line that calls ``print`` carries the printed line as its
comment, on it or on the next line alone, optionally followed by ``: explanation``.

A ```python block without a marker fails the test, so a new snippet cannot go untested.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from .conftest import free_port, wait_listening

README = Path(__file__).resolve().parent.parent / "README.md"
PORT = "8080"  # the port every snippet names; replaced by a free one
CLIENT_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0

MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"```(\w*)\s*$")


@dataclass
class Block:
    line: int  # where its code starts in README.md (1-based)
    lang: str
    code: str
    marker: Optional[str]  # the text of the marker on the line before its fence, if any

    def __str__(self) -> str:
        return f"README.md:{self.line}"


@dataclass
class ServerBlock:
    block: Block
    file: str
    runs: List[str] = field(default_factory=list)
    clients_of: List[str] = field(default_factory=list)
    logs: List[str] = field(default_factory=list)


def read_blocks(text: str) -> List[Block]:
    """The fenced blocks of ``text``, each with the marker on the line just before it."""
    blocks: List[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        marker = MARKER.fullmatch(lines[i - 1].strip()) if i > 0 else None
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        assert end < len(lines), f"README.md:{i + 1}: a code block that never closes"
        blocks.append(Block(i + 2, opening.group(1), "\n".join(lines[i + 1:end]) + "\n",
                            marker.group(1) if marker else None))
        i = end + 1
    return blocks


def parse_roles(blocks: List[Block]) -> Tuple[Dict[str, ServerBlock], Dict[str, List[Block]]]:
    """Servers by file name, and the client blocks of each; fails on a Python block of no known role."""
    servers: Dict[str, ServerBlock] = {}
    clients: Dict[str, List[Block]] = {}
    for block in blocks:
        if block.lang != "python":
            assert block.marker is None, f"{block}: a readme-test marker on a {block.lang or 'plain'} block"
            continue
        assert block.marker is not None, (
            f"{block}: a ```python block without a <!-- readme-test: ... --> marker on the line before it")
        role, *options = [part.strip() for part in block.marker.split(";")]
        client = re.fullmatch(r"client of (\S+\.py)", role)
        server = re.fullmatch(r"server (\S+\.py)", role)
        if client:
            assert not options, f"{block}: a client marker takes no options: {block.marker!r}"
            clients.setdefault(client.group(1), []).append(block)
            continue
        assert server, f"{block}: unknown readme-test role {role!r} (server FILE or client of FILE)"
        entry = ServerBlock(block, server.group(1))
        assert entry.file not in servers, f"{block}: a second server block saved as {entry.file}"
        for option in options:
            key, _, value = option.partition(":")
            key, value = key.strip(), value.strip()
            if key == "run":
                entry.runs.append(value)
            elif key == "clients":
                entry.clients_of.extend(value.split())
            elif key == "logs":
                entry.logs.append(value)
            else:
                raise AssertionError(f"{block}: unknown readme-test option {option!r}")
        assert entry.runs, f"{block}: a server marker needs at least one 'run: COMMAND'"
        servers[entry.file] = entry
    for name, blocks_of in clients.items():
        assert name in servers, f"{blocks_of[0]}: a client of {name}, which no server block is saved as"
    for entry in servers.values():
        for name in entry.clients_of:
            assert name in servers, f"{entry.block}: 'clients: {name}' names no server block"
    return servers, clients


def expected_output(block: Block) -> List[str]:
    """The lines a client block says it prints: each print's comment (see the module docstring)."""
    comments: Dict[int, str] = {}
    prints: List[int] = []
    code_lines = set()
    tokens = list(tokenize.generate_tokens(io.StringIO(block.code).readline))
    for i, token in enumerate(tokens):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string[1:].strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                                tokenize.ENDMARKER):
            code_lines.add(token.start[0])
        if (token.type == tokenize.NAME and token.string == "print"
                and i + 1 < len(tokens) and tokens[i + 1].string == "("):
            prints.append(token.start[0])
    expected = []
    for row in prints:
        if row in comments:
            expected.append(comments[row])
        elif row + 1 in comments and row + 1 not in code_lines:
            expected.append(comments[row + 1])
        else:
            raise AssertionError(f"README.md:{block.line + row - 1}: a print without its output as a comment")
    return expected


def check_output(block: Block, stdout: str) -> None:
    expected = expected_output(block)
    printed = stdout.splitlines()
    assert len(printed) == len(expected), f"{block}: printed {printed}, its comments say {expected}"
    for out, comment in zip(printed, expected):
        assert comment == out or comment.startswith(out + ": "), (
            f"{block}: printed {out!r} where its comment says {comment!r}")


def with_port(text: str, port: int) -> str:
    return re.sub(rf"\b{PORT}\b", str(port), text)


def command(run: str, port: int) -> List[str]:
    """A marker's run COMMAND as argv, on this interpreter and the chosen port."""
    argv = shlex.split(with_port(run, port))
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    if argv[0] == "fastrpc":
        return [sys.executable, "-m", "fastrpc", *argv[1:]]
    raise AssertionError(f"run: {run!r} starts with neither python nor fastrpc")


def text_probe() -> Tuple[str, str]:
    """The README's shell probe and the answer it shows: ``$ printf ping | nc HOST PORT`` and the next line."""
    lines = README.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("$ printf ping | nc "):
            return line, lines[i + 1]
    raise AssertionError("README.md shows no text probe ($ printf ping | nc ...)")


def probe(port: int) -> bytes:
    """What the server answers to ``printf ping | nc``: send ``ping``, read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"ping")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return answer
            answer += chunk


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


def _servers() -> List[Tuple[str, str]]:
    """(file, run command) for each way each server block is run; empty when the markers do not parse
    (test_every_python_block_has_a_role says why)."""
    try:
        servers, _ = parse_roles(BLOCKS)
    except AssertionError:
        return []
    return [(entry.file, run) for entry in servers.values() for run in entry.runs]


def test_every_python_block_has_a_role() -> None:
    servers, clients = parse_roles(BLOCKS)
    python = [block for block in BLOCKS if block.lang == "python"]
    assert python and servers and clients
    for block in python:
        if block.marker is not None and block.marker.startswith("client of"):
            assert re.search(rf"\b{PORT}\b", block.code), f"{block}: a client that does not name port {PORT}"
            expected_output(block)  # every print states its output
    for entry in servers.values():
        for run in entry.runs:
            assert re.search(rf"\b{PORT}\b", run + "\n" + entry.block.code), (
                f"{entry.block}: neither the block nor run: {run!r} names port {PORT}")
        runs_each_client = [name for name in clients if name == entry.file or name in entry.clients_of]
        assert runs_each_client or entry.logs, f"{entry.block}: a server nothing checks but its probe"


def test_text_probe_is_what_the_readme_shows() -> None:
    command_line, answer = text_probe()
    assert command_line == f"$ printf ping | nc 127.0.0.1 {PORT}"
    assert answer == "ok.......pong!"


@pytest.mark.parametrize("file,run", _servers(), ids=[f"{f}: {r}" for f, r in _servers()])
def test_snippets_run_against_their_server(tmp_path: Path, file: str, run: str) -> None:
    servers, clients = parse_roles(BLOCKS)
    entry = servers[file]
    port = free_port()
    for other in servers.values():
        (tmp_path / other.file).write_text(with_port(other.block.code, port), encoding="utf-8")
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w", encoding="utf-8") as log:
        server = subprocess.Popen(command(run, port), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                  text=True, env=env)
    try:
        try:
            wait_listening(server, port)
        except AssertionError:
            raise AssertionError(f"{entry.block} ({run}) did not start listening:\n{log_path.read_text()}")
        _, answer = text_probe()
        assert probe(port) == answer.encode(), f"{entry.block}: the text probe is not answered {answer!r}"
        to_run = [block for name in [file, *entry.clients_of] for block in clients.get(name, [])]
        for block in to_run:
            done = subprocess.run([sys.executable, "-c", with_port(block.code, port)], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=env)
            assert done.returncode == 0, (
                f"{block} against {entry.block} ({run}) exited {done.returncode}:\n{done.stderr}")
            check_output(block, done.stdout)
        server.send_signal(signal.SIGTERM)
        status = server.wait(STOP_TIMEOUT)
        output = log_path.read_text(encoding="utf-8")
        assert status == 0, f"{entry.block} ({run}) exited {status} on SIGTERM:\n{output}"
        assert "Traceback" not in output and "ERROR" not in output, f"{entry.block} ({run}) logged:\n{output}"
        for text in entry.logs:
            assert text in output, f"{entry.block} ({run}) did not log {text!r}:\n{output}"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(STOP_TIMEOUT)
