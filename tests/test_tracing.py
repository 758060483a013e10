"""OpenTelemetry tracing: server and client spans, their parents across servers, and failed calls' errors.

Spans are recorded by the SDK's in-memory exporter under a TracerProvider of the test's own (the
global one can be set once per process)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Tuple

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import fastrpc
from fastrpc.tracing import ClientTracing, ServerTracing

from .conftest import RawConnection, demo_server, erring_server, frame, serving, serving_in_thread

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


class Spans:
    """A TracerProvider of its own whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def finished(self) -> List[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def one(self, name: str, kind: SpanKind) -> ReadableSpan:
        [span] = [s for s in self.finished() if s.name == name and s.kind is kind]
        return span


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorded = Spans()
    yield recorded
    recorded.provider.shutdown()


def traced_server(spans: Spans) -> fastrpc.Server:
    server = erring_server()

    @server.method
    def current() -> List[str]:
        """The span current in a sync handler, and the parent of a span it starts."""
        return seen_from_handler(spans)

    @server.method
    async def current_async() -> List[str]:
        await asyncio.sleep(0)
        return seen_from_handler(spans)

    server.use(ServerTracing(spans.provider))
    return server


def seen_from_handler(spans: Spans) -> List[str]:
    current = trace.get_current_span().get_span_context()
    with spans.provider.get_tracer("app").start_as_current_span("inner") as inner:
        parent = inner.parent  # type: ignore[attr-defined]
    return [f"{current.span_id:016x}", f"{parent.span_id:016x}"]


async def raw_call(raw: RawConnection, name: str, params: Any = None, meta: Optional[Dict[str, str]] = None,
                   **fields: Any) -> Dict[str, Any]:
    request: Dict[str, Any] = {"in": name, "id": 1, **fields}
    if params is not None:
        request["params"] = params
    if meta is not None:
        request["meta"] = meta
    await raw.send(frame(orjson.dumps(request)))
    return orjson.loads(await asyncio.wait_for(raw.read_frame(), 5))  # type: ignore[no-any-return]


def attributes(span: ReadableSpan) -> Dict[str, Any]:
    return dict(span.attributes or {})


def error_of(span: ReadableSpan) -> Tuple[Any, ...]:
    """(status, description, error.type, rpc.response.status_code, exception types recorded)."""
    attrs = attributes(span)
    exceptions = tuple(e.attributes["exception.type"] for e in span.events if e.name == "exception")  # type: ignore[index]
    return (span.status.status_code, span.status.description, attrs.get("error.type"),
            attrs.get("rpc.response.status_code"), exceptions)


# -- the server span ---------------------------------------------------------------------

def test_server_span_continues_the_trace_a_call_carries(run: Any, spans: Spans) -> None:
    async def main() -> Tuple[int, int]:
        async with serving(traced_server(spans)) as port:
            raw = await RawConnection.open(port)
            reply = await raw_call(raw, "add", [1, 2], {"traceparent": TRACEPARENT, "tracestate": "vendor=x"})
            assert reply["result"] == 3
            assert (await raw_call(raw, "add", [3, 4]))["result"] == 7  # no trace context: a trace of its own
            client_port = raw.writer.get_extra_info("sockname")[1]
            await raw.close()
        return port, client_port

    port, client_port = run(main())
    continued, fresh = spans.finished()
    assert continued.name == "add" and continued.kind is SpanKind.SERVER
    assert continued.context.trace_id == TRACE_ID and continued.parent is not None
    assert continued.parent.span_id == PARENT_ID and continued.parent.is_remote
    assert continued.context.trace_state.get("vendor") == "x"
    assert attributes(continued) == {"rpc.system.name": "fastrpc", "rpc.method": "add",
                                     "server.address": "127.0.0.1", "server.port": port,
                                     "network.peer.address": "127.0.0.1", "network.peer.port": client_port}
    assert continued.status.status_code is StatusCode.UNSET  # success is left unset, never OK
    assert fresh.parent is None and fresh.context.trace_id != TRACE_ID


@pytest.mark.parametrize("method", ["current", "current_async"])
def test_server_span_is_current_in_the_handler(run: Any, spans: Spans, method: str) -> None:
    async def main() -> List[str]:
        async with serving(traced_server(spans)) as port:
            raw = await RawConnection.open(port)
            reply = await raw_call(raw, method, meta={"traceparent": TRACEPARENT})
            await raw.close()
            return reply["result"]  # type: ignore[no-any-return]

    current, parent_of_inner = run(main())
    server_span = spans.one(method, SpanKind.SERVER)
    inner = spans.one("inner", SpanKind.INTERNAL)
    assert current == parent_of_inner == f"{server_span.context.span_id:016x}"
    assert inner.context.trace_id == server_span.context.trace_id == TRACE_ID


def test_failed_calls_record_their_error(run: Any, spans: Spans) -> None:
    async def main() -> None:
        async with serving(traced_server(spans)) as port:
            raw = await RawConnection.open(port)
            for name, params, code in [("refuse", None, -32010), ("busy", None, -32001), ("add", [1], -32602),
                                       ("sleep", [-1], -32602), ("fail", None, -32603),
                                       ("sleep", [5], -32003)]:
                deadline = {"deadline": 50} if params == [5] else {}
                reply = await raw_call(raw, name, params, {"traceparent": TRACEPARENT}, **deadline)
                assert reply["error"]["code"] == code, reply
            await raw.send(frame(b'{"in": "sleep", "params": [5], "id": 2}') + frame(b'{"cancel": 2}'))
            for _ in range(200):  # a cancelled call is not answered: wait for its span
                if len(spans.finished()) == 7:
                    break
                await asyncio.sleep(0.01)
            await raw.close()

    run(main())
    finished = spans.finished()
    assert [span.name for span in finished] == ["refuse", "busy", "add", "sleep", "fail", "sleep", "sleep"]
    assert all(span.context.trace_id == TRACE_ID for span in finished[:-1])
    assert [error_of(span) for span in finished] == [
        (StatusCode.ERROR, "not for you", "-32010", "-32010", ()),  # a code ErrorCode does not name
        (StatusCode.ERROR, "come back later", "SERVER_BUSY", "SERVER_BUSY", ()),
        (StatusCode.ERROR, "add() missing 1 required positional argument: 'b'", "INVALID_PARAMS", "INVALID_PARAMS", ()),
        (StatusCode.ERROR, "seconds must be a number from 0 to 60", "INVALID_PARAMS", "INVALID_PARAMS", ()),
        (StatusCode.ERROR, "boom", "INTERNAL_ERROR", "INTERNAL_ERROR", ("RuntimeError",)),  # a bug: its traceback kept
        (StatusCode.ERROR, "the call's deadline passed", "TIMEOUT", "TIMEOUT", ()),
        (StatusCode.ERROR, "stopped before it finished: cancelled by the client, connection lost or server shut down",
         "CANCELLED", None, ()),
    ]


def test_a_call_refused_by_earlier_middleware_still_gets_its_span(run: Any, spans: Spans) -> None:
    class Gate(fastrpc.Middleware):
        def before(self, call: fastrpc.CallInfo) -> None:
            raise fastrpc.RemoteError("closed", code=-32010)

    async def main() -> None:
        server = demo_server()
        server.use(Gate())
        server.use(ServerTracing(spans.provider))
        async with serving(server) as port:
            raw = await RawConnection.open(port)
            assert (await raw_call(raw, "add", [1, 2], {"traceparent": TRACEPARENT}))["error"]["code"] == -32010
            await raw.close()

    run(main())
    [span] = spans.finished()
    assert span.context.trace_id == TRACE_ID and span.kind is SpanKind.SERVER
    assert error_of(span) == (StatusCode.ERROR, "closed", "-32010", "-32010", ())
    assert span.end_time >= span.start_time  # type: ignore[operator]


# -- the client span ---------------------------------------------------------------------

def test_client_hook_starts_a_child_span_and_injects_it(spans: Spans) -> None:
    hook = ClientTracing(spans.provider)
    with spans.provider.get_tracer("app").start_as_current_span("caller") as caller:
        meta: Dict[str, str] = {}
        state = hook.call_started("add", meta)
    hook.call_ended("add", state, None)
    failed = hook.call_started("add", {})
    hook.call_ended("add", failed, fastrpc.InvalidParams("invalid params for 'add'"))
    lost = hook.call_started("add", {})
    hook.call_ended("add", lost, fastrpc.ConnectionClosed("connection lost"))
    ok, bad, closed = [span for span in spans.finished() if span.kind is SpanKind.CLIENT]
    assert ok.parent is not None and ok.parent.span_id == caller.get_span_context().span_id
    assert meta == {"traceparent": f"00-{ok.context.trace_id:032x}-{ok.context.span_id:016x}-{int(ok.context.trace_flags):02x}"}
    assert attributes(ok) == {"rpc.system.name": "fastrpc", "rpc.method": "add"} and error_of(ok)[0] is StatusCode.UNSET
    assert bad.parent is None  # no span current: a trace of its own
    assert error_of(bad) == (StatusCode.ERROR, "invalid params for 'add'", "INVALID_PARAMS", "INVALID_PARAMS", ())
    assert error_of(closed) == (StatusCode.ERROR, "connection lost", "fastrpc.errors.ConnectionClosed", None, ())


def test_only_the_tracing_module_imports_opentelemetry() -> None:
    script = ("import pkgutil, importlib, sys, fastrpc\n"
              "for info in pkgutil.walk_packages(fastrpc.__path__, 'fastrpc.'):\n"
              "    if info.name not in ('fastrpc.tracing', 'fastrpc.__main__'):\n"
              "        importlib.import_module(info.name)\n"
              "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))\n")
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert found.stdout.strip() == "[]"


# -- across servers ----------------------------------------------------------------------

def relay_server(spans: Spans, call_b: Any) -> fastrpc.Server:
    """Server A: ``relay`` passes its call on to server B through ``call_b(method, params)`` and returns
    B's answer (B's errors raised on as they came)."""
    server = fastrpc.Server(shutdown_grace=0.5)
    if asyncio.iscoroutinefunction(call_b):
        @server.method
        async def relay(method: str, params: Any) -> Any:
            return await call_b(method, params)
    else:
        @server.method
        def relay(method: str, params: Any) -> Any:
            return call_b(method, params)
    server.use(ServerTracing(spans.provider))
    return server


def check_chain(spans: Spans, ports: Tuple[int, int], method: str = "add") -> List[ReadableSpan]:
    """The five spans of app -> client -> A -> A's client -> B: one trace, each the parent of the next;
    returns them in that order."""
    app = spans.one("app", SpanKind.INTERNAL)
    client = spans.one("relay", SpanKind.CLIENT)
    server_a = spans.one("relay", SpanKind.SERVER)
    client_a = spans.one(method, SpanKind.CLIENT)
    server_b = spans.one(method, SpanKind.SERVER)
    chain = [app, client, server_a, client_a, server_b]
    assert {span.context.trace_id for span in chain} == {app.context.trace_id}
    for parent, child in zip(chain, chain[1:]):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id, (parent.name, child.name)
    assert [span.parent.is_remote for span in chain[1:]] == [False, True, False, True]  # type: ignore[union-attr]
    assert attributes(client).items() >= {"rpc.system.name": "fastrpc", "rpc.method": "relay"}.items()
    assert attributes(client_a).items() >= {"rpc.system.name": "fastrpc", "rpc.method": method}.items()
    for span, port in zip((server_a, server_b), ports):
        assert attributes(span)["server.port"] == port and attributes(span)["rpc.method"] == span.name
    assert len(spans.finished()) == 5
    return chain


def test_a_trace_through_two_servers_async(run: Any, spans: Spans) -> None:
    async def main() -> Tuple[int, int]:
        async with serving(traced_server(spans)) as port_b, \
                fastrpc.connect("127.0.0.1", port_b, hooks=[ClientTracing(spans.provider)]) as to_b:
            async with serving(relay_server(spans, to_b.call)) as port_a, \
                    fastrpc.connect("127.0.0.1", port_a, hooks=[ClientTracing(spans.provider)]) as client:
                with spans.provider.get_tracer("app").start_as_current_span("app"):
                    assert await client.call("relay", ["add", [1, 2]]) == 3
                ok = spans.finished()
                spans.exporter.clear()
                with spans.provider.get_tracer("app").start_as_current_span("app"):
                    with pytest.raises(fastrpc.RemoteError) as refused:
                        await client.call("relay", ["refuse", []])
                    assert refused.value.code == -32010
                failed = spans.finished()
                spans.exporter.clear()
        spans.exporter.export(ok)
        check_chain(spans, (port_a, port_b))
        spans.exporter.clear()
        spans.exporter.export(failed)
        return port_a, port_b

    ports = run(main())
    chain = check_chain(spans, ports, "refuse")
    refused = (StatusCode.ERROR, "not for you", "-32010", "-32010", ())
    assert [error_of(span) for span in chain[1:]] == [refused] * 4  # A raised B's error on: its caller got it too


def test_failed_calls_on_the_client_span(run: Any, spans: Spans) -> None:
    async def main() -> None:
        async with serving(traced_server(spans)) as port, \
                fastrpc.connect("127.0.0.1", port, hooks=[ClientTracing(spans.provider)]) as client:
            with pytest.raises(fastrpc.InvalidParams):
                await client.call("add", [1])
            with pytest.raises(fastrpc.InternalError):
                await client.call("fail")
            with pytest.raises(fastrpc.CallTimeout):
                await client.call("sleep", [5], timeout=0.05)

    run(main())
    clients = [span for span in spans.finished() if span.kind is SpanKind.CLIENT]
    assert [error_of(span)[:4] for span in clients[:2]] == [
        (StatusCode.ERROR, "invalid params for 'add': missing a required argument: 'b'", "INVALID_PARAMS", "INVALID_PARAMS"),
        (StatusCode.ERROR, "internal error in 'fail': RuntimeError", "INTERNAL_ERROR", "INTERNAL_ERROR")]
    # Given up by the client (no status code came back), unless the server's timeout error came first.
    status, description, error_type, status_code, _ = error_of(clients[2])
    assert status is StatusCode.ERROR and "timed out" in description
    assert (error_type, status_code) in [("fastrpc.errors.CallTimeout", None), ("TIMEOUT", "TIMEOUT")]
    for client in clients:  # each server span is its client span's child, and failed alike
        [server] = [s for s in spans.finished() if s.kind is SpanKind.SERVER and s.parent.span_id == client.context.span_id]
        assert server.context.trace_id == client.context.trace_id


def test_a_trace_through_two_servers_sync(spans: Spans) -> None:
    """Blocking clients, and a sync handler on A calling B (served by another thread's loop)."""
    with serving_in_thread(traced_server(spans)) as port_b, \
            fastrpc.SyncClient("127.0.0.1", port_b, timeout=5.0, hooks=[ClientTracing(spans.provider)]) as to_b, \
            serving_in_thread(relay_server(spans, to_b.call)) as port_a, \
            fastrpc.SyncClient("127.0.0.1", port_a, timeout=5.0, hooks=[ClientTracing(spans.provider)]) as client:
        with spans.provider.get_tracer("app").start_as_current_span("app"):
            assert client.call("relay", ["add", [1, 2]]) == 3
        check_chain(spans, (port_a, port_b))
        spans.exporter.clear()
        with spans.provider.get_tracer("app").start_as_current_span("app"):
            with pytest.raises(fastrpc.InternalError):
                client.call("relay", ["fail", []])
    chain = check_chain(spans, (port_a, port_b), "fail")
    server_b = chain[-1]
    assert error_of(server_b) == (StatusCode.ERROR, "boom", "INTERNAL_ERROR", "INTERNAL_ERROR", ("RuntimeError",))
    internal = (StatusCode.ERROR, "internal error in 'fail': RuntimeError", "INTERNAL_ERROR", "INTERNAL_ERROR", ())
    assert [error_of(span) for span in chain[1:4]] == [internal] * 3  # B's error, raised on by A to its caller


def test_a_stream_is_one_span_each_side_with_its_context_in_the_generator(run: Any, spans: Spans) -> None:
    """A stream (docs/protocol.md section 12): one client span and one server span, its child, for the whole
    stream; the server span is current in the generator, between its items too."""
    async def main() -> List[List[str]]:
        server = traced_server(spans)

        @server.method
        async def traced_items(n: int) -> AsyncIterator[List[str]]:
            for _ in range(n):
                yield seen_from_handler(spans)
                await asyncio.sleep(0)

        async with serving(server) as port, \
                fastrpc.connect("127.0.0.1", port, hooks=[ClientTracing(spans.provider)]) as client:
            return [item async for item in client.stream("traced_items", [3])]

    items = run(main())
    server_span = spans.one("traced_items", SpanKind.SERVER)
    client_span = spans.one("traced_items", SpanKind.CLIENT)
    assert server_span.parent is not None and server_span.parent.span_id == client_span.context.span_id
    assert {item[0] for item in items} == {f"{server_span.context.span_id:016x}"}  # current in each step
    assert server_span.status.status_code is StatusCode.UNSET
