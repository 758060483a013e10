"""Socket set-up and connection-failure wording shared by the server, both clients and the load generator."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, Optional

from .errors import ConnectionClosed

__all__ = ["set_nodelay", "connect_failed"]


def set_nodelay(sock: Optional[socket.socket]) -> None:
    """Turn Nagle's algorithm off on a TCP socket (replies and pipelined requests leave at once).

    ``sock`` may be None or a Unix socket (``transport.get_extra_info("socket")`` of a pipe or a TLS
    transport under test): nothing is done then."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_failed(host: str, port: Any, exc: BaseException, timeout: Optional[float] = None, *,
                   tls: bool = False) -> ConnectionClosed:
    """The ConnectionClosed to raise when a connection to ``host:port`` could not be opened.

    ``exc`` is what the attempt raised: a timeout (worded with ``timeout``), an OSError (its
    ``strerror``, without the ``[Errno N]`` prefix) or anything else (its text). A failed TLS
    handshake (``tls``, or an ``ssl.SSLError``) says so."""
    where = f"could not connect to {host}:{port}: " + ("TLS: " if tls or isinstance(exc, ssl.SSLError) else "")
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)):
        return ConnectionClosed(where + (f"no connection within {timeout:g} s" if timeout is not None else "timed out"))
    if isinstance(exc, OSError) and exc.strerror:
        return ConnectionClosed(where + exc.strerror)
    return ConnectionClosed(where + str(exc))
