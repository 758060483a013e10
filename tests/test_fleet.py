"""Clients balancing over a fleet of real ``fastrpc serve`` processes (tests/fleet.py) while servers are
restarted, added and killed: what a rolling deploy, a scale-up and a crash do to calls in flight.

Both clients take part at once in every test: an async client in a thread of its own and a SyncClient
shared by several threads, each given every server's address.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Sequence

import fastrpc

from .fleet import Callers, FleetServer, assert_once, executions, make_fleet, running  # noqa: F401 (a fixture)


def _threads(callers: Callers, endpoints: Callable[[], Any], sync_clients: List[fastrpc.SyncClient],
             idempotent: bool = False, **options: Any) -> List[Any]:
    """An async client with 8 concurrent callers, and a SyncClient shared by 4 threads, all calling
    ``work`` on ``endpoints()`` (a list, or a resolver when ``options`` has one)."""
    client = fastrpc.SyncClient(endpoints(), timeout=10, **options)
    sync_clients.append(client)
    return [callers.async_thread(lambda: fastrpc.connect(endpoints(), timeout=10, **options), 1, 8, idempotent),
            *callers.sync_threads(client, f"sync{'i' if idempotent else ''}", 4, idempotent)]


def _addresses(servers: Sequence[FleetServer]) -> List[str]:
    return [server.address for server in servers]


def test_rolling_restart_loses_and_repeats_nothing(make_fleet: Any) -> None:
    """Each of three servers is stopped (SIGTERM), exits and starts again on its port, in turn, under
    non-idempotent load from clients given all three: no call fails and none runs twice. The stopping
    server's drain notice moves new calls to the others at once, calls it refused unrun go elsewhere,
    and the restarted server is used again once its backoff ends."""
    servers = make_fleet(3)
    callers = Callers()
    sync_clients: List[fastrpc.SyncClient] = []
    threads = _threads(callers, lambda: _addresses(servers), sync_clients)
    statuses = []
    try:
        with running(threads, callers):
            time.sleep(0.5)
            for server in servers:
                before = callers.answered[server.name]
                statuses.append(server.restart())
                for _ in range(100):  # bounded: 10 s
                    if callers.answered[server.name] > before + 20:
                        break
                    time.sleep(0.1)
                else:
                    raise AssertionError(f"{server.name} got no calls after its restart: {callers.summary()}")
    finally:
        for client in sync_clients:
            client.close()
    assert statuses == [0, 0, 0], statuses
    assert not callers.failed, callers.summary()
    assert_once(executions(*servers), callers.sent)
    assert min(callers.answered.values()) > 50, callers.summary()


def test_a_new_server_gets_its_share(make_fleet: Any) -> None:
    """Scale-up: clients whose resolver finds a fourth server mid-run send it at least 15 % of their calls
    within a resolve interval and max_connection_age (the servers set one, as a fleet would) and a few
    seconds: a new instance is not starved by long-lived connections."""
    age = 2.0
    servers = make_fleet(3, extra_args=["--max-connection-age", str(age)])
    fleet = list(servers)
    callers = Callers()
    sync_clients: List[fastrpc.SyncClient] = []
    options = dict(resolver=lambda: _addresses(fleet), resolve_interval=0.5)
    threads = _threads(callers, lambda: "127.0.0.1", sync_clients, **options)
    extra = FleetServer("d", servers[0].log.parent, ["--max-connection-age", str(age)])
    try:
        with running(threads, callers):
            time.sleep(1.0)
            fleet.append(extra.start())
            time.sleep(0.5 + age + 1.0)
            since = time.monotonic()
            time.sleep(2.0)
    finally:
        extra.kill()
        for client in sync_clients:
            client.close()
    assert not callers.failed, callers.summary()
    window = [server for at, server in callers.answers if at >= since]
    share = window.count("d")
    assert len(window) > 200, callers.summary()
    assert share / len(window) >= 0.15, f"the new server got {share} of {len(window)} calls; {callers.summary()}"
    assert_once(executions(*fleet), callers.sent)


def test_a_killed_server_fails_only_calls_that_may_have_run(make_fleet: Any) -> None:
    """One of three servers is SIGKILLed under load. Idempotent calls (with retries) all succeed on the
    others; non-idempotent calls in flight on it fail with ConnectionClosed, and no non-idempotent call
    runs twice; calls after the crash go to the live servers."""
    servers = make_fleet(3)
    callers = Callers(keep_going=True)
    sync_clients: List[fastrpc.SyncClient] = []
    threads = (_threads(callers, lambda: _addresses(servers), sync_clients, retries=2)
               + _threads(callers, lambda: _addresses(servers), sync_clients, idempotent=True, retries=2))
    try:
        with running(threads, callers):
            time.sleep(0.8)
            servers[1].kill()
            killed_at = time.monotonic()
            time.sleep(1.5)
    finally:
        for client in sync_clients:
            client.close()
    done = executions(*servers)
    failed_ids = {call_id for call_id, _ in callers.failed}
    assert not failed_ids & callers.idempotent, callers.summary()
    assert all(isinstance(error, fastrpc.ConnectionClosed) for _, error in callers.failed), callers.summary()
    assert callers.failed, f"no call was in flight on the killed server: {callers.summary()}"
    twice = [call_id for call_id, n in done.items() if n > 1 and call_id not in callers.idempotent]
    assert not twice, f"non-idempotent calls run twice: {twice[:10]}"
    answered = set(callers.sent) - failed_ids
    assert all(done[call_id] >= 1 for call_id in answered), "an answered call left no trace"
    assert all(done[call_id] == 1 for call_id in answered - callers.idempotent)
    late = [server for at, server in callers.answers if at > killed_at + 0.5]
    assert late and servers[1].name not in late, callers.summary()
