"""Middleware: code that runs around every call, for logging, metrics and authorization.

    class Audit(fastrpc.Middleware):
        def before(self, call):
            if call.method == "drop_tables" and call.peer[0] != "127.0.0.1":
                raise fastrpc.RemoteError("not allowed here", code=-32010)

        def after(self, call, result, elapsed):
            metrics.observe(call.method, elapsed)

    server.use(Audit())

A server with no middleware looks its methods up in its plain registry, so
the per-call path is exactly what it is without this module. With some, each
connection looks them up in a ``HookedMethods`` view that wraps a handler,
once per method and connection, in the hooks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from .errors import ErrorCode, RemoteError
from .protocol import Method, failure, metadata

__all__ = ["CallInfo", "Middleware", "HookedMethods"]

log = logging.getLogger("fastrpc.server")


class CallInfo:
    """What middleware is told about a call."""

    __slots__ = ("method", "params", "peer", "meta", "local", "state", "_handler")

    def __init__(self, method: str, params: Any, peer: Optional[Tuple[Any, ...]], meta: Optional[Dict[str, str]] = None,
                 handler: Optional[Method] = None, local: Optional[Tuple[Any, ...]] = None) -> None:
        self.method = method  # the name it was called by
        self.params = params  # a list (positional), a dict (keywords), or the one raw value of a raw_params method
        self.peer = peer  # the client's address, as the socket reports it
        self.meta = {} if meta is None else meta  # the call's metadata (docs/protocol.md section 3)
        self.local = local  # the server's own address on this connection
        self.state: Dict[Any, Any] = {}  # for middleware to keep what it needs from before() to after(), by its own key
        self._handler = handler

    def error_code(self, exc: BaseException) -> int:
        """The error code the client gets for ``exc`` raised by this call (as ``on_error`` is told of it)."""
        if self._handler is None:  # made by hand, not by a server: no signature to check params against
            return exc.code if isinstance(exc, RemoteError) else ErrorCode.INTERNAL_ERROR
        return int(failure(self._handler, self.params, exc)[0])

    def __repr__(self) -> str:
        return f"CallInfo(method={self.method!r}, params={self.params!r}, peer={self.peer!r}, meta={self.meta!r})"


class Middleware:
    """Subclass and override what you need. ``before`` may raise (a ``RemoteError``
    to choose the error the client gets) to refuse the call; exceptions from
    ``after`` and ``on_error`` fail the call as an internal error would.

    Middleware nests in the order added: ``before`` runs first to last, and
    ``after``, ``on_error`` or ``on_cancel`` (exactly one of them per call and
    middleware) last to first, each of them even when another raised."""

    def before(self, call: CallInfo) -> None:
        """Runs before the handler."""

    def after(self, call: CallInfo, result: Any, elapsed: float) -> None:
        """Runs after the handler returned ``result``; ``elapsed`` in seconds."""

    def on_error(self, call: CallInfo, exc: BaseException, elapsed: float) -> None:
        """Runs after the handler (or a ``before``) raised ``exc``."""

    def on_cancel(self, call: CallInfo, elapsed: float) -> None:
        """Runs when an async handler's call is stopped before it finished (its deadline passed, the
        client cancelled it or went away, the server shut down), instead of ``after`` or ``on_error``.
        What it raises is logged, and the call stays stopped (no reply is sent for it)."""


def _tell_all(hooks: Sequence[Callable[..., None]], *args: Any) -> None:
    """Call every hook, even when one raises: each middleware must see its call end (a span to end, a
    context to detach); the first exception is raised after the last hook ran."""
    first: Optional[Exception] = None
    for hook in hooks:
        try:
            hook(*args)
        except Exception as exc:
            if first is None:
                first = exc
    if first is not None:
        raise first


class HookedMethods:
    """A connection's view of the registry in which every handler runs inside the middleware."""

    __slots__ = ("_methods", "_middleware", "_peer", "_local", "_wrapped")

    def __init__(self, methods: Mapping[str, Method], middleware: Sequence[Middleware], peer: Optional[Tuple[Any, ...]],
                 local: Optional[Tuple[Any, ...]] = None) -> None:
        self._methods = methods
        self._middleware = tuple(middleware)
        self._peer = peer
        self._local = local
        self._wrapped: Dict[str, Method] = {}

    def __getitem__(self, name: str) -> Method:
        method = self._wrapped.get(name)
        if method is None:
            method = self._wrapped[name] = self._wrap(self._methods[name])
        return method

    def _wrap(self, method: Method) -> Method:
        func, middleware, peer, local, name, raw = method.func, self._middleware, self._peer, self._local, method.name, method.raw_params

        def info(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> CallInfo:
            params: Any = kwargs if kwargs else (args[0] if raw else list(args))
            return CallInfo(name, params, peer, metadata(), method, local)

        def before(call: CallInfo) -> float:
            for hook in middleware:
                hook.before(call)
            return time.perf_counter()

        innermost_first = middleware[::-1]
        on_errors = [hook.on_error for hook in innermost_first]
        on_cancels = [hook.on_cancel for hook in innermost_first]
        afters = [hook.after for hook in innermost_first]

        def failed(call: CallInfo, exc: BaseException, started: float) -> None:
            _tell_all(on_errors, call, exc, time.perf_counter() - started)

        def cancelled(call: CallInfo, started: float) -> None:
            _tell_all(on_cancels, call, time.perf_counter() - started)

        def succeeded(call: CallInfo, result: Any, started: float) -> None:
            _tell_all(afters, call, result, time.perf_counter() - started)

        if method.is_async:
            @functools.wraps(func)  # keeps the signature: bad params are still reported as such
            async def hooked(*args: Any, **kwargs: Any) -> Any:
                call = info(args, kwargs)
                started = time.perf_counter()
                try:
                    started = before(call)
                    result = await func(*args, **kwargs)
                except asyncio.CancelledError:  # middleware that began something (a span) ends it
                    try:
                        cancelled(call, started)
                    except Exception:  # the call stays stopped: a reply now would answer a call its client gave up
                        log.exception("middleware failed on a cancelled call of %r", name)
                    raise
                except BaseException as exc:  # SystemExit too: the core answers it as an internal error
                    failed(call, exc, started)
                    raise
                succeeded(call, result, started)
                return result
        else:
            @functools.wraps(func)
            def hooked(*args: Any, **kwargs: Any) -> Any:
                call = info(args, kwargs)
                started = time.perf_counter()
                try:
                    started = before(call)
                    result = func(*args, **kwargs)
                except BaseException as exc:  # SystemExit too: the core answers it as an internal error
                    failed(call, exc, started)
                    raise
                succeeded(call, result, started)
                return result

        # run with the call's metadata; the signature read at registration tells bad params apart
        return Method(method.name, hooked, method.out, raw, context=True, contract=method.contract)
