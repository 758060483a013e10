"""fastrpc/endpoints.py on its own (no sockets, no clock): what the clients are given, how an endpoint
is picked for a call, the backoff of one that failed, and when names are due to be resolved again."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Callable, Iterable, List, Optional

import pytest

from fastrpc import endpoints as ep
from fastrpc.endpoints import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    RESOLVE_AFTER_FAILURE,
    Endpoint,
    Endpoints,
    check_addresses,
    parse_endpoints,
)

A, B, C, D = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)


def draws(*values: float) -> Callable[[], float]:
    """A ``rand`` that returns ``values`` in turn (and fails the test if asked for more)."""
    it = iter(values)
    return lambda: next(it)


def fixed(addresses: Iterable[Any] = (A, B, C), rand: Callable[[], float] = random.random,
          now: float = 0.0) -> Endpoints:
    return Endpoints(list(addresses), dynamic=False, resolve_interval=30.0, now=now, rand=rand)


def dynamic(addresses: Iterable[Any] = (A, B), interval: Optional[float] = 30.0, now: float = 0.0,
            rand: Callable[[], float] = random.random) -> Endpoints:
    return Endpoints(list(addresses), dynamic=True, resolve_interval=interval, now=now, rand=rand)


# -- parse_endpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "fe80::1%eth0", "example.com", "example.com:99", "[::1]:99"])
def test_a_lone_host_is_taken_whole_with_the_port(host: str) -> None:
    assert parse_endpoints(host, 8080) == [(host, 8080)]  # never split at a colon: it may be IPv6


def test_a_list_of_host_port_strings_and_pairs() -> None:
    assert parse_endpoints(["a:1", "b.example:2", ("c", 3), ("10.0.0.9", "4")], 8080) == [
        ("a", 1), ("b.example", 2), ("c", 3), ("10.0.0.9", 4)]


def test_bracketed_ipv6_with_and_without_a_port() -> None:
    assert parse_endpoints(["[::1]:9000", "[fe80::2]", "[::3]:1"], 8080) == [
        ("::1", 9000), ("fe80::2", 8080), ("::3", 1)]


def test_entries_without_a_port_take_the_port_given() -> None:
    assert parse_endpoints(["a", "b:2", "10.0.0.1", "::1"], 7) == [("a", 7), ("b", 2), ("10.0.0.1", 7), ("::1", 7)]


def test_duplicates_are_dropped_keeping_the_first_order() -> None:
    assert parse_endpoints(["b:2", "a:1", ("b", 2), "b:2", "a", ("a", 7)], 7) == [("b", 2), ("a", 1), ("a", 7)]


def test_a_tuple_or_other_sequence_of_entries_is_a_list() -> None:
    assert parse_endpoints(("a:1", "b:2"), 7) == [("a", 1), ("b", 2)]


@pytest.mark.parametrize("spec", [
    [],                        # nothing at all
    (),
    ["a:x"],                   # not a number
    ["a:"],                    # no number
    ["a:0"],                   # out of range
    ["a:65536"],
    ["a:-1"],
    [("a", 0)],
    [("a", "http")],
    [("a",)],                  # not a pair
    [("a", 1, 2)],
    ["[::1"],                  # unclosed bracket
    ["[::1]x"],                # junk after the bracket
    ["[::1]:"],                # a colon and no port
    ["[::1]:port"],
    [""],                      # an empty entry
    [None],                    # not a string nor a pair
    [8080],
    ["a:1", "b:oops"],         # one bad entry spoils the list
])
def test_unreadable_specs_raise_value_error(spec: Any) -> None:
    with pytest.raises(ValueError):
        parse_endpoints(spec, 8080)


def test_resolver_results_are_checked() -> None:
    assert check_addresses(["a:1", ("b", 2), "a:1", "[::1]:3"], 9) == [("a", 1), ("b", 2), ("::1", 3)]
    assert check_addresses(iter([("a", 1)]), 9) == [("a", 1)]
    assert check_addresses(["c", "[::2]"], 9) == [("c", 9), ("::2", 9)]  # no port: the client's
    assert check_addresses([], 9) == []
    with pytest.raises(TypeError):
        check_addresses("a:1", 9)  # a string is not a list of addresses
    with pytest.raises(TypeError):
        check_addresses(b"a:1", 9)
    for bad in (["a:x"], [("a",)], [None], ["[::1"]):
        with pytest.raises(ValueError):
            check_addresses(bad, 9)


# -- pick: two random choices by load -----------------------------------------------------------

def test_of_the_two_drawn_the_less_loaded_wins() -> None:
    # rand 0.0 then 0.0 draws index 0 then (0 among the 2 others, shifted past the first) index 1.
    endpoints = fixed(rand=draws(0.0, 0.0, 0.0, 0.0))
    a, b, c = endpoints.all
    a.load, b.load, c.load = 5, 1, 0
    assert endpoints.pick(0.0) is b  # c is the least loaded of all, but was not drawn
    a.load, b.load = 1, 5
    assert endpoints.pick(0.0) is a  # the first drawn, less loaded


def test_which_two_are_drawn_follows_rand() -> None:
    # first = int(r1 * 3); second = int(r2 * 2), moved past first: never the same endpoint twice.
    endpoints = fixed(rand=draws(0.99, 0.99, 0.5, 0.0, 0.0, 0.5))
    a, b, c = endpoints.all
    a.load, b.load, c.load = 3, 2, 1
    assert endpoints.pick(0.0) is c  # c then b
    assert endpoints.pick(0.0) is b  # b then a
    assert endpoints.pick(0.0) is c  # a then c


def test_a_tie_goes_to_the_first_drawn() -> None:
    endpoints = fixed(rand=draws(0.0, 0.0, 0.5, 0.0, 0.99, 0.0))
    a, b, c = endpoints.all
    assert endpoints.pick(0.0) is a  # a, b
    assert endpoints.pick(0.0) is b  # b, a
    assert endpoints.pick(0.0) is c  # c, a


def test_with_equal_loads_every_endpoint_gets_its_share() -> None:
    endpoints = fixed([A, B, C, D], rand=random.Random(1234).random)
    counts = Counter(endpoints.pick(0.0).address for _ in range(4000))  # type: ignore[union-attr]
    assert set(counts) == {A, B, C, D}
    assert all(700 < n < 1300 for n in counts.values()), counts  # 1000 each, expected


def test_picks_that_add_load_keep_the_loads_level() -> None:
    """Calls that stay outstanding: each pick adds one to its endpoint's load; two choices keep the
    loads within a few of each other (random choice alone drifts apart by tens over 3000 picks)."""
    endpoints = fixed([A, B, C], rand=random.Random(99).random)
    for _ in range(3000):
        endpoints.pick(0.0).load += 1  # type: ignore[union-attr]
    loads = [e.load for e in endpoints.all]
    assert sum(loads) == 3000 and max(loads) - min(loads) <= 6, loads


def test_a_loaded_endpoint_gets_fewer_picks() -> None:
    endpoints = fixed([A, B, C], rand=random.Random(7).random)
    endpoints.all[0].load = 10  # a slow server: its calls pile up
    counts = Counter(endpoints.pick(0.0).address for _ in range(3000))  # type: ignore[union-attr]
    assert counts[A] == 0  # drawn with either other, it always loses
    assert 1200 < counts[B] < 1800 and 1200 < counts[C] < 1800, counts


def test_one_endpoint_is_picked_without_drawing() -> None:
    endpoints = fixed([A], rand=draws())  # any draw would fail
    assert endpoints.pick(0.0) is endpoints.all[0]


def test_no_endpoints_picks_none() -> None:
    endpoints = fixed([])
    assert endpoints.all == [] and endpoints.pick(0.0) is None


def test_endpoints_set_aside_are_skipped_while_another_is_ready() -> None:
    endpoints = fixed([A, B, C], rand=random.Random(5).random)
    a, b, c = endpoints.all
    endpoints.set_aside(a, 10.0)
    a.load = -5  # would win every draw it is in, were it ready
    counts = Counter(endpoints.pick(5.0).address for _ in range(300))  # type: ignore[union-attr]
    assert counts[A] == 0 and counts[B] > 0 and counts[C] > 0
    assert endpoints.pick(10.0) in endpoints.all
    assert A in {endpoints.pick(10.0).address for _ in range(100)}  # type: ignore[union-attr]  # due back


def test_when_every_endpoint_is_set_aside_the_one_due_soonest() -> None:
    endpoints = fixed([A, B, C], rand=draws())  # no draw: it is not a random choice
    a, b, c = endpoints.all
    for endpoint, until in ((a, 9.0), (b, 7.0), (c, 8.0)):
        endpoints.set_aside(endpoint, until)
    assert endpoints.pick(1.0) is b


def test_backoff_doubles_from_the_first_wait_and_stops_at_the_longest() -> None:
    endpoints = fixed([A, B], rand=lambda: 1.0)  # the top of the jitter: the full wait
    a = endpoints.all[0]
    waits = []
    for _ in range(10):
        endpoints.failed(a, 100.0)
        waits.append(round(a.retry_at - 100.0, 9))
    assert waits[0] == BACKOFF_FIRST
    expected = [min(BACKOFF_FIRST * 2 ** n, BACKOFF_MAX) for n in range(10)]
    assert waits == pytest.approx(expected)
    assert waits[-1] == BACKOFF_MAX and waits[-2] == BACKOFF_MAX  # capped, not growing
    assert a.failures == 10
    for _ in range(2000):  # a client calling a dead server without pause (2.0 ** 1024 overflowed)
        endpoints.failed(a, 100.0)
    assert a.retry_at - 100.0 == pytest.approx(BACKOFF_MAX) and a.failures == 2010


def test_backoff_jitter_is_half_to_all_of_the_wait() -> None:
    endpoints = fixed([A], rand=lambda: 0.0)
    a = endpoints.all[0]
    endpoints.failed(a, 0.0)
    assert a.retry_at == pytest.approx(BACKOFF_FIRST / 2)  # the bottom of the jitter
    rng = random.Random(11)
    seen = []
    for _ in range(200):
        endpoints = fixed([A], rand=rng.random)
        a = endpoints.all[0]
        for _ in range(3):
            endpoints.failed(a, 50.0)
        wait = a.retry_at - 50.0
        assert 0.5 * 4 * BACKOFF_FIRST <= wait <= 4 * BACKOFF_FIRST
        seen.append(wait)
    assert max(seen) - min(seen) > BACKOFF_FIRST  # it varies: clients do not come back together


def test_a_success_ends_the_backoff() -> None:
    endpoints = fixed([A, B])
    a = endpoints.all[0]
    for _ in range(4):
        endpoints.failed(a, 0.0)
    assert a.failures == 4 and a.retry_at > 0
    Endpoints.succeeded(a)
    assert a.failures == 0 and a.retry_at == 0.0
    endpoints.failed(a, 10.0)
    assert a.failures == 1 and a.retry_at <= 10.0 + BACKOFF_FIRST  # starts over from the first wait


def test_backoff_constants_are_sane() -> None:
    assert 0 < BACKOFF_FIRST < BACKOFF_MAX
    assert RESOLVE_AFTER_FAILURE > 0


# -- update: resolved again -----------------------------------------------------------------------

def test_update_adds_new_and_returns_the_vanished() -> None:
    endpoints = dynamic([A, B, C])
    a, b, c = endpoints.all
    dropped = endpoints.update([B, D, A], 1.0)
    assert dropped == [c]
    assert [e.address for e in endpoints.all] == [B, D, A]  # the order given
    assert endpoints.all[0] is b and endpoints.all[2] is a
    assert endpoints.pick(1.0) is not c


def test_kept_endpoints_keep_their_state() -> None:
    endpoints = dynamic([A, B])
    a, b = endpoints.all
    link = object()
    a.load, a.link, a.failures, a.retry_at = 3, link, 2, 9.0
    endpoints.update([A, C], 1.0)
    assert endpoints.all[0] is a
    assert (a.load, a.link, a.failures, a.retry_at) == (3, link, 2, 9.0)
    new = endpoints.all[1]
    assert isinstance(new, Endpoint) and new.address == C
    assert (new.load, new.link, new.failures, new.retry_at, new.dialing) == (0, None, 0, 0.0, None)


def test_update_with_nothing_changes_nothing() -> None:
    endpoints = dynamic([A, B])
    before = list(endpoints.all)
    assert endpoints.update([], 1.0) == []
    assert endpoints.all == before


def test_update_with_the_same_addresses_drops_nothing() -> None:
    endpoints = dynamic([A, B])
    before = list(endpoints.all)
    assert endpoints.update([B, A], 1.0) == []
    assert sorted(map(id, endpoints.all)) == sorted(map(id, before))


def test_an_endpoint_dropped_and_back_starts_fresh() -> None:
    endpoints = dynamic([A, B])
    a = endpoints.all[0]
    a.load = 4
    endpoints.update([B], 1.0)
    endpoints.update([A, B], 2.0)
    assert endpoints.all[0] is not a and endpoints.all[0].load == 0


# -- resolve_at -------------------------------------------------------------------

def test_names_are_due_every_interval_from_the_last_resolution() -> None:
    endpoints = dynamic(interval=30.0, now=100.0)
    assert endpoints.resolve_at == 130.0
    assert 129.9 < endpoints.resolve_at and 130.0 >= endpoints.resolve_at
    endpoints.update([A], 131.0)
    assert endpoints.resolve_at == 161.0 and 160.0 < endpoints.resolve_at
    endpoints.update([], 165.0)  # found nothing (or failed): tried again an interval later
    assert endpoints.resolve_at == 195.0


def test_a_failure_asks_for_a_resolution_soon() -> None:
    endpoints = dynamic(interval=30.0, now=0.0)
    endpoints.failed(endpoints.all[0], 10.0)
    assert endpoints.resolve_at == 10.0 + RESOLVE_AFTER_FAILURE
    assert 10.0 < endpoints.resolve_at and 10.0 + RESOLVE_AFTER_FAILURE >= endpoints.resolve_at
    endpoints.failed(endpoints.all[1], 10.5)  # not pushed back by a later failure
    assert endpoints.resolve_at == 10.0 + RESOLVE_AFTER_FAILURE
    endpoints.update([A, B], 12.0)
    assert endpoints.resolve_at == 42.0
    endpoints.failed(endpoints.all[0], 41.9)  # the interval comes sooner: kept
    assert endpoints.resolve_at == 42.0


def test_fixed_addresses_are_never_due() -> None:
    endpoints = fixed([A, B])
    assert endpoints.resolve_at == float("inf")
    endpoints.failed(endpoints.all[0], 1.0)
    assert 1e12 < endpoints.resolve_at
    endpoints.update([A], 2.0)
    assert 1e12 < endpoints.resolve_at


def test_no_interval_means_no_periodic_resolution() -> None:
    endpoints = dynamic(interval=None, now=0.0)
    assert 1e12 < endpoints.resolve_at
    endpoints.update([A, B], 5.0)
    assert 1e12 < endpoints.resolve_at


def test_no_interval_a_failure_asks_for_one_resolution_not_one_per_call() -> None:
    """resolve_interval=None: a failure asks for a resolution soon; once it is done (update), nothing
    is due any more. Were it still due, the clients would resolve again on every call: the async client
    starts a resolution task per call, the SyncClient runs getaddrinfo (or the resolver) in each call."""
    endpoints = dynamic(interval=None, now=0.0)
    endpoints.failed(endpoints.all[0], 10.0)
    assert 10.0 + RESOLVE_AFTER_FAILURE >= endpoints.resolve_at
    endpoints.update([A, B], 11.5)  # the resolution the failure asked for
    assert 12.0 < endpoints.resolve_at
    assert 1e12 < endpoints.resolve_at


@pytest.mark.parametrize("interval", [0, 0.0, -1, -0.5, float("nan")])
def test_resolve_interval_must_be_positive_or_none(interval: float) -> None:
    with pytest.raises(ValueError, match="resolve_interval"):
        Endpoints([A], dynamic=True, resolve_interval=interval, now=0.0)


def test_resolve_interval_accepted() -> None:
    for interval in (0.01, 1, 30.0, None):
        Endpoints([A], dynamic=True, resolve_interval=interval, now=0.0)


# -- resolve_blocking (its only I/O is socket.getaddrinfo, replaced here) -------------------------

def test_resolve_blocking_gives_every_address_of_each_name(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: List[Any] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> List[Any]:
        asked.append(host)
        if host == "svc.test":
            return [(2, 1, 6, "", ("10.1.0.1", port)), (2, 1, 6, "", ("10.1.0.2", port)),
                    (10, 1, 6, "", ("fd00::3", port, 0, 0)), (2, 1, 6, "", ("10.1.0.1", port))]
        raise ep.socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(ep.socket, "getaddrinfo", getaddrinfo)
    assert ep.resolve_blocking([("svc.test", 81), ("10.9.9.9", 82), ("::1", 83)]) == [
        ("10.1.0.1", 81), ("10.1.0.2", 81), ("fd00::3", 81), ("10.9.9.9", 82), ("::1", 83)]
    assert asked == ["svc.test"]  # IP addresses are not looked up
    with pytest.raises(OSError):
        ep.resolve_blocking([("nowhere.test", 1)])


def test_is_ip() -> None:
    assert ep.is_ip("10.0.0.1") and ep.is_ip("::1") and ep.is_ip("fe80::1%eth0")
    assert not ep.is_ip("example.com") and not ep.is_ip("localhost") and not ep.is_ip("")
