"""OpenTelemetry tracing for fastrpc servers and clients (the ``otel`` extra: opentelemetry-api).

    from fastrpc.tracing import ClientTracing, ServerTracing

    server.use(ServerTracing())                                   # one SERVER span per call
    client = await fastrpc.connect(host, port, hooks=[ClientTracing()])   # one CLIENT span per call

The trace context travels in the call's metadata (``meta``) as W3C ``traceparent`` and
``tracestate``, through the global propagator (``OTEL_PROPAGATORS``, tracecontext and baggage by
default). A server span is current while its handler runs, so the calls a handler makes are its
children. Spans follow the RPC semantic conventions of semconv 1.44 (the new names, not the
deprecated ``rpc.system``): ``rpc.system.name`` = "fastrpc", ``rpc.method``, ``server.address`` and
``server.port``, ``network.peer.address`` and ``network.peer.port`` (server spans); a failed call
sets status ERROR, ``error.type`` and ``rpc.response.status_code`` (the ErrorCode name, or the number
of a code it does not name). Without an SDK installed the API does nothing, cheaply, and still
carries an incoming trace context through to the handler's own calls.

Only this module imports OpenTelemetry; the rest of fastrpc never does.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import __version__
from .errors import ErrorCode, RemoteError, code_name
from .hooks import ClientHook
from .middleware import CallInfo, Middleware
from .server import remaining

__all__ = ["ServerTracing", "ClientTracing"]

# The conventions the attribute names follow: lets a backend translate them when they are renamed
# again (rpc.response.status_code is to become rpc.status_code).
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
SYSTEM = "fastrpc"

_EMPTY = Context()  # a server span's parent is what the call carried, never what happens to be current in the server


def _tracer(tracer_provider: Optional[trace.TracerProvider]) -> trace.Tracer:
    return trace.get_tracer("fastrpc", __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL)


def _fail(span: Span, error_type: str, description: str, status_code: Optional[str]) -> None:
    """Mark ``span`` failed (recording-errors.md: status ERROR with the message, error.type; never OK on success)."""
    span.set_status(Status(StatusCode.ERROR, description))
    span.set_attribute("error.type", error_type)
    if status_code is not None:
        span.set_attribute("rpc.response.status_code", status_code)


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, RemoteError) else str(exc)


def _address(attributes: Dict[str, Any], prefix: str, address: Any) -> None:
    if isinstance(address, tuple) and len(address) >= 2:  # (host, port) or IPv6's (host, port, flow, scope)
        attributes[prefix + ".address"] = str(address[0])
        attributes[prefix + ".port"] = int(address[1])


class ServerTracing(Middleware):
    """A SERVER span per call, named after the method, continuing the trace its metadata carries.

    ``tracer_provider``: the SDK's TracerProvider to use; None for the global one (set later works too).
    Add it first (``server.use`` order) so that its span covers the other middleware's refusals."""

    def __init__(self, tracer_provider: Optional[trace.TracerProvider] = None) -> None:
        self._tracer = _tracer(tracer_provider)

    def _start(self, call: CallInfo, start_time: Optional[int] = None) -> Span:
        attributes: Dict[str, Any] = {"rpc.system.name": SYSTEM, "rpc.method": call.method}
        _address(attributes, "server", call.local)
        _address(attributes, "network.peer", call.peer)
        # Set at creation, where samplers see them.
        return self._tracer.start_span(call.method, context=propagate.extract(call.meta, context=_EMPTY),
                                       kind=SpanKind.SERVER, attributes=attributes, start_time=start_time)

    def before(self, call: CallInfo) -> None:
        span = self._start(call)
        call.state[self] = (span, context.attach(trace.set_span_in_context(span)))

    def _finish(self, call: CallInfo) -> Optional[Span]:
        """Our span, made current again no more; None when our ``before`` never ran."""
        began: Optional[Tuple[Span, object]] = call.state.pop(self, None)
        if began is None:
            return None
        span, token = began
        context.detach(token)
        return span

    def after(self, call: CallInfo, result: Any, elapsed: float) -> None:
        span = self._finish(call)
        if span is not None:
            span.end()

    def on_error(self, call: CallInfo, exc: BaseException, elapsed: float) -> None:
        span = self._finish(call)
        if span is None:  # refused by a middleware added before this one: the call still gets its span
            span = self._start(call, time.time_ns() - int(elapsed * 1e9))
        code = call.error_code(exc)
        text = code_name(code)
        _fail(span, text, _message(exc), text)
        if code == ErrorCode.INTERNAL_ERROR and not isinstance(exc, RemoteError):
            span.record_exception(exc)  # a handler's bug: the traceback belongs on the span; chosen errors do not
        span.end()

    def on_cancel(self, call: CallInfo, elapsed: float) -> None:
        span = self._finish(call)
        if span is None:
            return
        if remaining() == 0:  # its deadline passed: the client is answered with the timeout error
            text = code_name(ErrorCode.TIMEOUT)
            _fail(span, text, "the call's deadline passed", text)
        else:
            _fail(span, "CANCELLED", "stopped before it finished: cancelled by the client, connection lost "
                  "or server shut down", None)
        span.end()


class ClientTracing(ClientHook):
    """A CLIENT span per call, a child of the caller's current span, whose context the call carries.

    ``tracer_provider``: the SDK's TracerProvider to use; None for the global one."""

    def __init__(self, tracer_provider: Optional[trace.TracerProvider] = None) -> None:
        self._tracer = _tracer(tracer_provider)

    def call_started(self, method: str, meta: Dict[str, str]) -> Span:
        span = self._tracer.start_span(method, kind=SpanKind.CLIENT,
                                       attributes={"rpc.system.name": SYSTEM, "rpc.method": method})
        propagate.inject(meta, context=trace.set_span_in_context(span))
        return span

    def call_ended(self, method: str, state: Span, error: Optional[BaseException]) -> None:
        if error is not None:
            if isinstance(error, RemoteError):
                text = code_name(error.code)
                _fail(state, text, error.message, text)
            else:  # nothing came back (a timeout, a lost connection): the exception's class says what happened
                kind = type(error)
                name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
                _fail(state, name, str(error), None)
        state.end()
