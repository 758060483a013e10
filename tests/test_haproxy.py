"""The deployment files in deploy/: the shipped HAProxy configuration, run by the real haproxy in front of
three fastrpc servers (tests/fleet.py) that are restarted one at a time under load; and the Kubernetes
manifests, checked without a cluster.

haproxy must be installed (.ci/run installs it): without it these tests fail under CI=true and are skipped
only on a developer's machine.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import pytest

import fastrpc

from .conftest import free_port  # another process may take it before haproxy binds it: start() retries
from .fleet import ROOT, Callers, FleetServer, assert_once, executions, make_fleet, running  # noqa: F401 (make_fleet: a fixture)

CONFIG = ROOT / "deploy" / "haproxy.cfg"
KUBERNETES = ROOT / "deploy" / "kubernetes"
BACKEND = "fastrpc"  # the backend's name in deploy/haproxy.cfg; its servers are s1, s2, s3
WAIT = 10.0  # the bound on every wait for HAProxy


def haproxy_binary() -> str:
    """The haproxy to run (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    if not CONFIG.exists():  # a copy of tests/ alone, as the wheel builds test the installed package with
        pytest.skip(f"{CONFIG} is not in this tree")
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("haproxy is not installed; CI must run the HAProxy tests (.ci/run installs it with apt-get)")
    pytest.skip("haproxy is not installed (apt-get install haproxy); skipped only outside CI: with CI=true this fails")


class HAProxy:
    """haproxy in the foreground (-db) running deploy/haproxy.cfg as shipped, pointed at ``servers``
    through the environment variables the file reads; the listening port is one the OS had free."""

    def __init__(self, servers: Sequence[FleetServer]) -> None:
        self.servers = list(servers)
        self.workdir = tempfile.mkdtemp(prefix="haproxy-")  # short: a unix socket path has ~100 bytes
        self.admin_socket = os.path.join(self.workdir, "admin.sock")
        self.port = 0
        self.output: Deque[str] = collections.deque(maxlen=300)
        self._proc: Optional["subprocess.Popen[str]"] = None

    def start(self, attempts: int = 3) -> "HAProxy":
        binary = haproxy_binary()
        for _ in range(attempts):
            self.port = free_port()
            env = {**os.environ, "FASTRPC_LISTEN": f"127.0.0.1:{self.port}", "FASTRPC_HAPROXY_ADMIN": self.admin_socket}
            env.update({f"FASTRPC_SERVER{i}": s.address for i, s in enumerate(self.servers, 1)})
            self._proc = subprocess.Popen([binary, "-db", "-f", str(CONFIG)], env=env, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
            threading.Thread(target=self._read, args=(self._proc,), name="haproxy-output", daemon=True).start()
            try:
                self.wait_up(range(1, len(self.servers) + 1))
                return self
            except AssertionError:
                exited = self._proc.poll() is not None
                self.stop()
                if not (exited and "cannot bind" in self.tail()):  # only a port taken meanwhile is retried
                    raise
        raise AssertionError(f"haproxy could not bind a free port in {attempts} attempts:\n{self.tail()}")

    def _read(self, proc: "subprocess.Popen[str]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line.rstrip("\n"))
        proc.stdout.close()

    def server_states(self) -> Dict[str, str]:
        """Each backend server's status as HAProxy sees it ("UP", "DOWN", "UP 1/2", ...), from its runtime API."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(self.admin_socket)
            sock.sendall(b"show stat\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        rows = csv.DictReader(b"".join(chunks).decode().lstrip("# ").splitlines())
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == BACKEND and row["svname"] != "BACKEND"}

    def wait_up(self, numbers: Iterable[int], timeout: float = WAIT) -> None:
        """Wait until HAProxy's checks have servers s<number> UP, at most ``timeout`` s."""
        names = [f"s{n}" for n in numbers]
        states: Dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AssertionError(f"haproxy exited with status {self._proc.returncode}:\n{self.tail()}")
            try:
                states = self.server_states()
            except OSError:  # the runtime API is not up yet
                states = {}
            if states and all(states.get(name) == "UP" for name in names):
                return
            time.sleep(0.1)
        raise AssertionError(f"HAProxy did not see {names} UP within {timeout:g} s: {states}\n{self.tail()}")

    def stop(self) -> None:
        """Kill it (its SIGTERM is an immediate stop too: nothing graceful is lost) and remove its files."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(list(self.output)[-lines:])


@pytest.fixture
def balanced(make_fleet: Callable[..., List[FleetServer]]) -> Iterator[Tuple[HAProxy, List[FleetServer]]]:
    """Three fleet servers behind HAProxy, every one UP; all stopped at the end."""
    haproxy_binary()  # skip or fail before starting anything
    servers = make_fleet(3)
    proxy = HAProxy(servers)
    try:
        yield proxy.start(), servers
    finally:
        proxy.stop()


def test_shipped_config_is_valid() -> None:
    result = subprocess.run([haproxy_binary(), "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_calls_go_through_haproxy_to_every_server(balanced: Tuple[HAProxy, List[FleetServer]]) -> None:
    proxy, servers = balanced
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as probe:  # the text probe passes through
        probe.sendall(b"ping")
        assert probe.recv(64) == b"ok.......pong!"

    async def main() -> List[Any]:
        # leastconn spreads connections: six held open at once land two on each server.
        clients = [await fastrpc.connect("127.0.0.1", proxy.port, timeout=10) for _ in range(6)]
        try:
            return [await client.call("work", [f"async-{i}"]) for i, client in enumerate(clients)]
        finally:
            for client in clients:
                await client.close()

    replies = asyncio.run(asyncio.wait_for(main(), 30))
    with fastrpc.SyncClient("127.0.0.1", proxy.port, timeout=10) as client:
        replies.append(client.call("work", ["sync-0"]))
    assert {reply["server"] for reply in replies} == {"a", "b", "c"}, replies
    assert_once(executions(*servers), [*(f"async-{i}" for i in range(6)), "sync-0"])


def test_rolling_restart_behind_haproxy_loses_and_repeats_nothing(
        balanced: Tuple[HAProxy, List[FleetServer]]) -> None:
    """Async and blocking clients, given only HAProxy's address, call ``work`` without a pause while each
    server in turn is stopped (SIGTERM), started again on its port and seen UP by HAProxy. No call may fail,
    and every call must run exactly once: a server that stops finishes what it started and refuses (never
    runs) what comes after, the clients move to a new connection, HAProxy sends it to a server that is up."""
    proxy, servers = balanced
    callers = Callers()
    sync_clients = [fastrpc.SyncClient("127.0.0.1", proxy.port, timeout=10) for _ in range(2)]
    threads = [callers.async_thread(lambda: fastrpc.connect("127.0.0.1", proxy.port, timeout=10), clients=3, per_client=8)]
    for i, client in enumerate(sync_clients):
        threads += callers.sync_threads(client, f"sync{i}", 4)
    statuses = []
    try:
        with running(threads, callers):
            time.sleep(0.5)  # calls flowing through every server
            for number, server in enumerate(servers, 1):
                statuses.append(server.restart())
                proxy.wait_up([number])
                time.sleep(0.3)  # calls on the restarted server too, before the next stops
    finally:
        for client in sync_clients:
            client.close()
    assert statuses == [0, 0, 0], f"exit statuses {statuses}"
    done = executions(*servers)
    twice = sorted(call_id for call_id, n in done.items() if n > 1)
    assert not callers.failed, f"{callers.summary()}; executions: {sum(done.values())}, ids run twice: {twice[:10]}"
    assert_once(done, callers.sent)
    assert sum(callers.answered.values()) > 300, callers.summary()  # a real load, not a few calls


# -- Kubernetes manifests (no cluster here: parsed, and their timings checked) -------------------------

def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"no match for {pattern!r} in deploy/kubernetes/deployment.yaml"
    return float(found.group(1))


def test_termination_grace_covers_prestop_shutdown_grace_and_drain() -> None:
    """Kubernetes SIGKILLs a pod terminationGracePeriodSeconds after it starts terminating, preStop included:
    that must exceed the preStop sleep, the server's shutdown grace and the ~2 s bound on its final flush."""
    text = (KUBERNETES / "deployment.yaml").read_text()
    period = _number(r"terminationGracePeriodSeconds:\s*(\d+)", text)
    pre_stop = _number(r"\"sleep\",\s*\"(\d+)\"", text)
    grace = _number(r"\"--shutdown-grace\",\s*\"(\d+(?:\.\d+)?)\"", text)
    assert period > pre_stop + grace + 2, (period, pre_stop, grace)


def test_manifests_parse() -> None:
    import yaml  # the test extra's pyyaml
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    service = yaml.safe_load((KUBERNETES / "service.yaml").read_text())
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    assert service["spec"]["clusterIP"] == "None"  # headless: the name resolves to every ready pod
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    assert "fastrpc call 127.0.0.1:8080 rpc.health" in container["readinessProbe"]["exec"]["command"][-1]
    assert container["command"][:3] == ["fastrpc", "serve", "myapp:server"]
