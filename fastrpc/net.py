"""Socket set-up and connection-failure wording shared by the server, both clients and the load generator."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from typing import Any, Optional

from .errors import ConnectionClosed

__all__ = ["set_nodelay", "address_text", "connect_failed", "listen_failed"]


def set_nodelay(sock: Optional[socket.socket]) -> None:
    """Turn Nagle's algorithm off on a TCP socket (replies and pipelined requests leave at once).

    ``sock`` may be None or a Unix socket (``transport.get_extra_info("socket")`` of a pipe or a TLS
    transport under test): nothing is done then."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def address_text(address: Any) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of a (host, port, ...) tuple; anything else as str()."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def connect_failed(host: str, port: Any, exc: BaseException, timeout: Optional[float] = None, *,
                   tls: bool = False) -> ConnectionClosed:
    """The ConnectionClosed to raise when a connection to ``host:port`` could not be opened.

    ``exc`` is what the attempt raised: a timeout (worded with ``timeout``), an OSError (the system's
    words for its errno, the same on every loop, without ``[Errno N]``) or anything else (its text).
    A failed TLS handshake (``tls``, or an ``ssl.SSLError``) says so."""
    where = f"could not connect to {address_text((host, port))}: " + ("TLS: " if tls or isinstance(exc, ssl.SSLError) else "")
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError)):
        return ConnectionClosed(where + (f"no connection within {timeout:g} s" if timeout is not None else "timed out"))
    if isinstance(exc, (ssl.SSLError, socket.gaierror)) or not isinstance(exc, OSError) or not exc.errno:
        return ConnectionClosed(where + (getattr(exc, "strerror", None) or str(exc)))
    # asyncio's own strerror differs by loop ("Connect call failed ..."); the errno's words do not.
    return ConnectionClosed(where + os.strerror(exc.errno))


def listen_failed(host: str, port: int, exc: OSError) -> str:
    """The words saying why listening on ``host:port`` failed (``exc`` from the bind: an OSError, a socket.gaierror)."""
    where = address_text((host, port))
    if isinstance(exc, socket.gaierror):
        if exc.errno == socket.EAI_NONAME:
            reason = "not an IP address nor a known host name"
        else:
            reason = f"cannot resolve the host name: {exc.strerror or exc}"
    elif exc.errno:
        # asyncio's strerror repeats the address; the system's text for the errno does not.
        reason = os.strerror(exc.errno)
        reason = reason[:1].lower() + reason[1:]
        if exc.errno == errno.EADDRNOTAVAIL:
            reason += " (not an address of this machine)"
        elif exc.errno == errno.EACCES and 0 < port < 1024:
            reason += " (ports below 1024 need privileges)"
    else:
        reason = str(exc)
    return f"cannot listen on {where}: {reason}"
