"""The demo service that ``fastrpc serve`` runs when no app is named."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from .errors import InvalidParams
from .server import Server

server = Server()


@server.method(raw_params=True)
def echo(params: Any) -> Any:
    """Return the params as they came."""
    return params


@server.method
def add(a: Any, b: Any) -> Any:
    """Return ``a + b``."""
    return a + b


@server.method
async def sleep(seconds: float) -> float:
    """Sleep ``seconds`` (at most 60) without holding up other calls; return them."""
    if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 60:
        raise InvalidParams("seconds must be a number from 0 to 60")
    await asyncio.sleep(seconds)
    return seconds


@server.method
async def count(n: int, start: int = 0) -> AsyncIterator[int]:
    """Stream the ``n`` integers from ``start`` (a stream: call it with ``client.stream``)."""
    for i in range(start, start + n):
        yield i
