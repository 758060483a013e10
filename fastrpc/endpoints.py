"""Where a client's calls may go: endpoints named, resolved and chosen, with no I/O of its own.

Both clients keep one ``Endpoints``: it parses what the user gave (one host, a
list of ``"host:port"`` strings or ``(host, port)`` pairs), says when names are
due to be resolved again, takes the resolved addresses, sets aside an endpoint
that failed (with backoff), and picks the endpoint for each call: the less
loaded of two drawn at random, so that a slow instance gets fewer calls and
equal ones share them evenly.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from .errors import ConnectionClosed, ShuttingDown

__all__ = [
    "Address",
    "EndpointSpec",
    "Resolver",
    "Endpoint",
    "Endpoints",
    "DEFAULT_RESOLVE_INTERVAL",
    "parse_endpoints",
    "is_ip",
    "resolve_blocking",
]

Address = Tuple[str, int]
#: What a client is given: a host (with ``port``), or a list of ``"host:port"`` / ``(host, port)``.
EndpointSpec = Union[str, Sequence[Union[str, Tuple[str, int]]]]
#: A pluggable resolver: called with no arguments, returns the addresses to use now (the async
#: client also accepts a coroutine function).
Resolver = Callable[[], Any]

#: Seconds between two resolutions of the names a client was given (and of a ``resolver``).
DEFAULT_RESOLVE_INTERVAL = 30.0
#: A failure asks for a resolution at once, but not more often than this (seconds).
RESOLVE_AFTER_FAILURE = 1.0
#: Backoff of an endpoint that refused or dropped connections: first and longest wait, seconds.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
#: Doublings from the first wait past the longest one (0.1 s * 2 ** 6 > 5 s).
BACKOFF_DOUBLINGS = 6


def _split(item: Union[str, Tuple[str, int]], port: int) -> Address:
    if isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError(f"an endpoint pair is (host, port), got {item!r}")
        host, item_port = item
        return str(host), _port(item_port)
    if not isinstance(item, str) or not item:
        raise ValueError(f"an endpoint is a 'host:port' string or a (host, port) pair, got {item!r}")
    if item.startswith("["):  # [IPv6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"cannot read the endpoint {item!r}: expected [IPv6]:port")
        return host, _port(rest[1:]) if rest else port
    if item.count(":") == 1:
        host, _, text = item.partition(":")
        return host, _port(text)
    return item, port  # a name, an IPv4 address or a bare IPv6 address


def _port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"a port is a number from 1 to 65535, got {value!r}") from None
    if not 0 < port <= 65535:
        raise ValueError(f"a port is a number from 1 to 65535, got {value!r}")
    return port


def parse_endpoints(host: EndpointSpec, port: int) -> List[Address]:
    """The (host, port) pairs named by ``host``: one host (with ``port``), or a list of
    ``"host:port"`` strings (``"[::1]:8080"`` for IPv6) or ``(host, port)`` pairs; an entry
    without a port takes ``port``. Raises ValueError for anything unreadable or an empty list."""
    items = [host] if isinstance(host, str) else list(host)
    if not items:
        raise ValueError("no endpoints given")
    if isinstance(host, str):
        return [(host, port)]  # as before: a lone host is never split at a colon (it may be IPv6)
    return list(dict.fromkeys(_split(item, port) for item in items))


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (nothing to resolve)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def addresses_from(infos: Iterable[Tuple[Any, ...]], port: int) -> List[Address]:
    """The distinct (ip, port) of ``getaddrinfo`` results, in their order."""
    return list(dict.fromkeys((info[4][0], port) for info in infos))


def resolve_blocking(targets: Sequence[Address]) -> List[Address]:
    """Every address of ``targets`` (A and AAAA records of names; IP addresses as they are).
    Raises OSError (socket.gaierror) if a name cannot be resolved."""
    found: List[Address] = []
    for host, port in targets:
        if is_ip(host):
            found.append((host, port))
        else:
            found.extend(addresses_from(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), port))
    return list(dict.fromkeys(found))


def check_addresses(result: Any, port: int) -> List[Address]:
    """A resolver's result, checked: an iterable of ``"host:port"`` or ``(host, port)`` (``port``
    for entries without one)."""
    if isinstance(result, (str, bytes)):
        raise TypeError(f"a resolver returns a list of addresses, got {result!r}")
    return list(dict.fromkeys(_split(item, port) for item in result))


class Endpoint:
    """One server address and what the client knows of it.

    ``link`` is the client's connection to it (or None); ``load`` the calls the
    client has made to it and not seen finish; ``failures`` and ``retry_at``
    its backoff after refused or dropped connections."""

    __slots__ = ("address", "link", "load", "failures", "retry_at", "dialing")

    def __init__(self, address: Address) -> None:
        self.address = address
        self.link: Any = None
        self.load = 0
        self.failures = 0
        self.retry_at = 0.0
        self.dialing: Any = None  # the I/O layer's handle on a connection being opened

    def __repr__(self) -> str:
        return f"<Endpoint {self.address[0]}:{self.address[1]} load={self.load} failures={self.failures}>"


class Endpoints:
    """The endpoints a client balances over, and when to resolve them again."""

    def __init__(self, addresses: Sequence[Address], *, dynamic: bool, resolve_interval: Optional[float],
                 now: float, rand: Callable[[], float] = random.random) -> None:
        if resolve_interval is not None and not resolve_interval > 0:
            raise ValueError(f"resolve_interval must be a positive number of seconds or None, got {resolve_interval!r}")
        self._by_address: Dict[Address, Endpoint] = {}
        self.all: List[Endpoint] = []
        self._back_at = 0.0  # no endpoint is set aside from then on: pick need not look
        self._rand = rand
        #: Whether there is anything to resolve again (names or a resolver, not only IP addresses).
        self.dynamic = dynamic
        self.resolve_interval = resolve_interval
        self.resolve_at = now + resolve_interval if dynamic and resolve_interval else float("inf")
        self.update(addresses, now)

    def update(self, addresses: Sequence[Address], now: float) -> List[Endpoint]:
        """Use ``addresses`` from now on; returns the endpoints dropped (their links are the
        caller's to close). An empty list changes nothing: a resolver that found nothing is
        more likely wrong than the whole service gone."""
        self.resolve_at = now + self.resolve_interval if self.dynamic and self.resolve_interval else float("inf")
        if not addresses:
            return []
        kept = {address: self._by_address.get(address) or Endpoint(address) for address in addresses}
        dropped = [endpoint for address, endpoint in self._by_address.items() if address not in kept]
        self._by_address = kept
        self.all = list(kept.values())
        self._back_at = max([self._back_at] + [e.retry_at for e in self.all])
        return dropped

    def direct_link(self) -> Any:
        """The link of the one endpoint while there is exactly one (calls go straight to it), else None."""
        return self.all[0].link if len(self.all) == 1 else None

    def pick(self, now: float) -> Optional[Endpoint]:
        """The endpoint for the next call: of two drawn at random among those not set aside,
        the one with the lower load (ties go to the first drawn, itself random). When every
        endpoint is set aside, the one due back soonest. None only when there are no endpoints."""
        if now >= self._back_at:
            ready = self.all  # the common case: nothing set aside, nothing to filter
        else:
            ready = [e for e in self.all if e.retry_at <= now]
        if not ready:
            if not self.all:
                return None
            return min(self.all, key=lambda e: e.retry_at)
        return self._better_of_two(ready)

    def pick_open(self, avoid: Endpoint) -> Optional[Endpoint]:
        """As ``pick``, among the endpoints other than ``avoid`` whose link is open (None if none is):
        a call does not wait for a connection being opened while another is open."""
        ready = [e for e in self.all if e is not avoid and e.link is not None and e.link.open]
        return self._better_of_two(ready) if ready else None

    def _better_of_two(self, ready: List[Endpoint]) -> Endpoint:
        count = len(ready)
        if count == 1:
            return ready[0]
        first = int(self._rand() * count)
        second = int(self._rand() * (count - 1))
        if second >= first:
            second += 1
        a, b = ready[first], ready[second]
        return b if b.load < a.load else a

    def choose(self, now: float, tried: Set[Endpoint], replace_lost: bool,
               retire: Callable[[Any], None]) -> Optional[Endpoint]:
        """The endpoint for the next call, or None once the one picked was ``tried`` (opening a
        connection to it failed) in this call. Its ``link`` is open, or it is to be (re)opened:
        None, or drained. A link found lost is handed to ``retire`` and its endpoint set aside
        before another pick, unless ``replace_lost`` is false: then ConnectionClosed, as for no
        endpoint at all. Links have ``open`` and ``draining`` (None unless drained)."""
        while True:
            endpoint = self.pick(now)
            if endpoint is None:
                raise ConnectionClosed("no server to call: no addresses were found")
            link = endpoint.link
            if link is not None and not link.open and link.draining is None:  # lost, not drained
                if not replace_lost:
                    raise ConnectionClosed("connection is closed")
                self.failed(endpoint, now)  # it dropped the connection: the others take calls first
                endpoint.link = None
                retire(link)
                continue
            return None if endpoint in tried else endpoint

    def unreachable(self, failure: ConnectionClosed) -> Union[ConnectionClosed, ShuttingDown]:
        """What a call that could open no connection raises: ShuttingDown, never ran, while a server
        it is connected to drains (a moment earlier it would have been refused so: the outcome must
        not depend on whether the drain notice came first); ``failure`` otherwise, a server that is
        gone included. Links have ``connected()``: their connection is still up."""
        for endpoint in self.all:
            link = endpoint.link
            if link is not None and link.draining is not None and link.connected():
                error = ShuttingDown(f"the server is shutting down ({link.draining}) and no other connection "
                                     f"could be opened: {failure}", {"started": False})
                error.__cause__ = failure
                return error
        return failure

    def failed(self, endpoint: Endpoint, now: float) -> None:
        """``endpoint`` refused or dropped a connection: set it aside, longer each time in a row
        (with jitter, so that clients do not come back together), and resolve names soon."""
        endpoint.failures += 1
        # The exponent stops growing once the longest wait is reached: 2.0 ** 1024 would overflow (a
        # client calling a dead server without pause fails a thousand times in a second).
        wait = min(BACKOFF_FIRST * 2.0 ** min(endpoint.failures - 1, BACKOFF_DOUBLINGS), BACKOFF_MAX)
        self.set_aside(endpoint, now + wait * (0.5 + self._rand() / 2))
        if self.dynamic:
            self.resolve_at = min(self.resolve_at, now + RESOLVE_AFTER_FAILURE)

    def set_aside(self, endpoint: Endpoint, until: float) -> None:
        """Pick ``endpoint`` again only from ``until`` on (unless every endpoint is set aside)."""
        endpoint.retry_at = until
        self._back_at = max(self._back_at, until)

    @staticmethod
    def succeeded(endpoint: Endpoint) -> None:
        """A connection to ``endpoint`` opened: it is back in full."""
        endpoint.failures = 0
        endpoint.retry_at = 0.0
