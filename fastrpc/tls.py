"""TLS contexts for the server and the clients, from certificate files.

Anything ``ssl.SSLContext`` can express works with ``Server.start(ssl=...)``
and ``connect(ssl=...)``; these two build the usual ones, as the command line does.
"""

from __future__ import annotations

import ssl
from typing import Optional

__all__ = ["client_context", "server_context"]


def server_context(cert: str, key: Optional[str] = None, *, ca: Optional[str] = None) -> ssl.SSLContext:
    """A server context with ``cert`` (PEM, with ``key`` unless the cert file holds it).

    With ``ca``, clients must present a certificate that CA signed (mutual
    TLS); without it, any client may connect.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Optional[str] = None, *, cert: Optional[str] = None, key: Optional[str] = None) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca`` (default: the system's CAs), and
    presents ``cert`` (with ``key``) to servers that require a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context
