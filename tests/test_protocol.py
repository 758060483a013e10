"""The sans-I/O core without sockets: server core and client core over an in-memory link.

Section numbers refer to docs/protocol.md.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, List, Optional, Tuple

import orjson
import pytest

import fastrpc
from fastrpc.protocol import ABSENT, Call, ClientConnection, Method, ServerConnection
from fastrpc.stats import ServerStats

from .conftest import frame


def methods() -> dict:
    server = fastrpc.Server()

    @server.method
    def add(a: int, b: int) -> int:
        return a + b

    @server.method
    def kw(*, x: int) -> int:
        return x

    @server.method
    def none() -> str:
        return "none"

    @server.method
    def one(value: Any) -> Any:
        return value

    @server.method
    def explode() -> None:
        raise ValueError("secret detail")

    @server.method
    def typeerror(a: Any) -> None:
        raise TypeError("inside the handler")

    @server.method
    def unencodable() -> Any:
        return {1, 2}

    @server.method
    def refuse() -> None:
        raise fastrpc.InvalidParams("x must be positive", {"x": -1})

    @server.method
    def grow(n: int) -> str:
        return "y" * n

    @server.method
    async def later(value: Any) -> Any:
        return value

    return server.methods


class Link:
    """A server core wired to a list of spawned calls, run by hand."""

    def __init__(self, **kwargs: Any) -> None:
        self.calls: List[Call] = []
        self.server = ServerConnection(methods(), self.calls.append, **kwargs)
        self._sent = b""  # what the server core returned and nobody has read yet

    def receive(self, data: bytes) -> None:
        self._sent += self.server.receive_data(data)

    def data(self) -> bytes:
        """Everything the server core has to send now."""
        data, self._sent = self._sent + self.server.data_to_send(), b""
        return data

    def send(self, *bodies: bytes) -> List[dict]:
        self.receive(b"".join(frame(b) for b in bodies))
        return self.replies()

    def replies(self) -> List[dict]:
        data = self.data()
        out = []
        while data:
            n = int.from_bytes(data[:4], "big")
            out.append(json.loads(data[4:4 + n]))
            data = data[4 + n:]
        return out

    def finish(self, call: Call) -> None:
        try:
            call.coro.send(None)
        except StopIteration as stop:
            self.server.complete(call, stop.value)


def request(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def error_of(reply: dict) -> Tuple[int, Any]:
    assert reply["out"] == "error"
    return reply["error"]["code"], reply["id"]


@pytest.fixture
def link(framing_impl: Any) -> Link:
    return Link()


# -- section 3/4: requests and responses ----------------------------------------------

def test_seed_request_gets_seed_bytes(link: Link) -> None:
    link.receive(frame(b'{"in": "ping", "params": "sha params"}'))
    assert link.data() == frame(b'{"out": "pong", "result": "sha params"}')


def test_response_carries_the_id(link: Link) -> None:
    assert link.send(request(**{"in": "add", "params": [1, 2], "id": 7})) == [{"out": "add", "result": 3, "id": 7}]
    assert link.send(request(**{"in": "add", "params": [1, 2], "id": "s"})) == [{"out": "add", "result": 3, "id": "s"}]


def test_null_id_is_no_id(link: Link) -> None:
    assert link.send(request(**{"in": "none", "id": None})) == [{"out": "none", "result": "none"}]


# -- section 7: params binding ---------------------------------------------------------

@pytest.mark.parametrize(
    "params, method, result",
    [
        ([1, 2], "add", 3),
        ({"a": 1, "b": 2}, "add", 3),
        ({"x": 5}, "kw", 5),
        (ABSENT, "none", "none"),
        ("text", "one", "text"),
        (None, "one", None),
        (3.5, "one", 3.5),
        ({"value": [1]}, "one", [1]),
    ],
)
def test_params_binding(link: Link, params: Any, method: str, result: Any) -> None:
    fields = {"in": method, "id": 1}
    if params is not ABSENT:
        fields["params"] = params
    assert link.send(request(**fields)) == [{"out": method, "result": result, "id": 1}]


def test_ping_echoes_any_params_unbound(link: Link) -> None:
    replies = link.send(request(**{"in": "ping", "params": [1, 2]}), request(**{"in": "ping"}))
    assert replies == [{"out": "pong", "result": [1, 2]}, {"out": "pong", "result": None}]


# -- section 6: errors, one class at a time; the connection serves on after each -------

def assert_still_serving(link: Link) -> None:
    assert link.send(request(**{"in": "add", "params": [2, 2], "id": 99})) == [{"out": "add", "result": 4, "id": 99}]
    assert not link.server.closing


# Bodies of 1 KiB and more reach the core as memoryviews, not bytes: both kinds are covered.
@pytest.mark.parametrize("body", [b"{not json", b'{"in": "ping"', b"\xff\xfe{}", b'"\xed\xa0\x80"', b"", b"NaN", b"{" + b" " * 2000])
def test_parse_error(link: Link, body: bytes) -> None:
    [reply] = link.send(body)
    assert error_of(reply) == (-32700, None)
    assert_still_serving(link)


@pytest.mark.parametrize("body", [b"[]", b"1", b'"ping"', b"null", b'[{"in": "ping"}]', b"[" + b"1," * 600 + b"1]"])
def test_invalid_request_not_an_object(link: Link, body: bytes) -> None:
    [reply] = link.send(body)
    assert error_of(reply) == (-32600, None)
    assert_still_serving(link)


@pytest.mark.parametrize("name", ["missing", 1, None, ["ping"], {"a": 1}])
def test_invalid_request_bad_in(link: Link, name: Any) -> None:
    fields = {"id": 5} if name == "missing" else {"in": name, "id": 5}
    [reply] = link.send(request(**fields))
    assert error_of(reply) == (-32600, 5)
    assert_still_serving(link)


@pytest.mark.parametrize("rid", [1.5, True, [1], {"a": 1}])
def test_invalid_request_bad_id_type(link: Link, rid: Any) -> None:
    [reply] = link.send(request(**{"in": "ping", "id": rid}))
    assert error_of(reply) == (-32600, None)
    assert_still_serving(link)


def test_method_not_found(link: Link) -> None:
    [reply] = link.send(request(**{"in": "nope", "id": 3}))
    assert error_of(reply) == (-32601, 3)
    assert "nope" in reply["error"]["message"]
    assert_still_serving(link)


@pytest.mark.parametrize(
    "method, params",
    [("add", [1]), ("add", [1, 2, 3]), ("add", {"a": 1, "c": 2}), ("kw", [1]), ("none", "x"), ("add", ABSENT)],
)
def test_invalid_params(link: Link, method: str, params: Any) -> None:
    fields = {"in": method, "id": 4}
    if params is not ABSENT:
        fields["params"] = params
    [reply] = link.send(request(**fields))
    assert error_of(reply) == (-32602, 4)
    assert_still_serving(link)


def test_internal_error_hides_details(link: Link) -> None:
    [reply] = link.send(request(**{"in": "explode", "id": 6}))
    assert error_of(reply) == (-32603, 6)
    assert "secret detail" not in json.dumps(reply)
    assert_still_serving(link)


def test_internal_error_in_debug_mode_has_traceback(framing_impl: Any) -> None:
    link = Link(debug=True)
    [reply] = link.send(request(**{"in": "explode", "id": 6}))
    assert "secret detail" in reply["error"]["data"] and "Traceback" in reply["error"]["data"]


def test_handler_typeerror_is_internal_not_invalid_params(link: Link) -> None:
    [reply] = link.send(request(**{"in": "typeerror", "params": [1], "id": 8}))
    assert error_of(reply) == (-32603, 8)


def test_unencodable_result_is_internal_error(link: Link) -> None:
    [reply] = link.send(request(**{"in": "unencodable", "id": 9}))
    assert error_of(reply) == (-32603, 9)
    assert_still_serving(link)


def test_handler_raising_remote_error_chooses_the_code(link: Link) -> None:
    [reply] = link.send(request(**{"in": "refuse", "id": 2}))
    assert reply["error"] == {"code": -32602, "message": "x must be positive", "data": {"x": -1}}


def test_frame_too_large_errors_then_closes(framing_impl: Any) -> None:
    link = Link(max_frame_size=64)
    link.receive(frame(request(**{"in": "none", "id": 1})) + (65).to_bytes(4, "big") + b"x" * 10)
    replies = link.replies()
    assert replies[0] == {"out": "none", "result": "none", "id": 1}
    assert error_of(replies[1]) == (-32000, None)
    assert replies[1]["error"]["data"] == {"size": 65, "limit": 64}
    assert link.server.closing


def test_response_larger_than_max_frame_becomes_an_error(framing_impl: Any) -> None:
    link = Link(max_frame_size=100)
    [reply] = link.send(request(**{"in": "grow", "params": [200], "id": 1}))
    assert error_of(reply) == (-32000, 1)
    assert_still_serving(link)


# -- section 8: the text probe ----------------------------------------------------------

def test_text_probe(link: Link) -> None:
    link.receive(b"ping")
    assert link.data() == b"ok.......pong!"
    assert link.server.closing


def test_text_probe_only_at_connection_start(link: Link) -> None:
    link.receive(frame(request(**{"in": "none"})) + b"ping")
    data = link.data()
    assert b"ok.......pong!" not in data and b"-32000" in data


# -- section 5: ordering ---------------------------------------------------------------

def test_idless_replies_keep_arrival_order_behind_async(link: Link) -> None:
    replies = link.send(request(**{"in": "later", "params": ["first"]}), request(**{"in": "none"}))
    assert replies == []  # "none" is done but must wait for "later"
    [call] = link.calls
    link.finish(call)
    assert link.replies() == [{"out": "later", "result": "first"}, {"out": "none", "result": "none"}]


def test_replies_with_ids_do_not_wait(link: Link) -> None:
    replies = link.send(request(**{"in": "later", "params": ["a"], "id": 1}), request(**{"in": "none", "id": 2}))
    assert replies == [{"out": "none", "result": "none", "id": 2}]
    link.finish(link.calls[0])
    assert link.replies() == [{"out": "later", "result": "a", "id": 1}]


def test_errors_of_idless_requests_keep_order_too(link: Link) -> None:
    assert link.send(request(**{"in": "later", "params": [1]}), b"garbage") == []
    link.finish(link.calls[0])
    first, second = link.replies()
    assert first == {"out": "later", "result": 1} and error_of(second) == (-32700, None)


# -- client core against server core --------------------------------------------------

class Pair:
    """A client core and a server core joined by an in-memory link."""

    def __init__(self, ids: bool = True) -> None:
        self.outcomes: List[Tuple[Any, Any, Optional[BaseException]]] = []
        self.client = ClientConnection(lambda w, r, e: self.outcomes.append((w, r, e)), ids=ids)
        self.link = Link()

    def pump(self) -> None:
        for _ in range(10):
            self.link.receive(self.client.data_to_send())
            for call in list(self.link.calls):
                self.link.finish(call)
                self.link.calls.remove(call)
            data = self.link.data()
            if not data:
                return
            self.client.receive_data(data)


@pytest.mark.parametrize("ids", [True, False])
def test_client_core_against_server_core(framing_impl: Any, ids: bool) -> None:
    pair = Pair(ids)
    pair.client.request("add", [1, 2], "w1")
    pair.client.request("later", ["x"], "w2")
    pair.client.request("nope", ABSENT, "w3")
    pair.client.request("ping", "sha params", "w4")
    pair.pump()
    by_waiter = {w: (r, e) for w, r, e in pair.outcomes}
    assert by_waiter["w1"] == (3, None)
    assert by_waiter["w2"] == ("x", None)
    assert isinstance(by_waiter["w3"][1], fastrpc.MethodNotFound)
    assert by_waiter["w4"] == ("sha params", None)
    assert pair.client.pending == 0


def test_client_core_drops_forgotten_replies(framing_impl: Any) -> None:
    pair = Pair(ids=False)
    key = pair.client.request("add", [1, 1], "late")
    pair.client.request("add", [2, 2], "kept")
    pair.client.forget(key)
    pair.pump()
    assert pair.outcomes == [("kept", 4, None)]


def test_client_core_refuses_oversized_request(framing_impl: Any) -> None:
    client = ClientConnection(lambda *a: None, max_frame_size=50)
    with pytest.raises(fastrpc.FrameTooLarge):
        client.request("echo", "x" * 100, "w")
    assert client.pending == 0 and client.data_to_send() == b""


def test_client_core_close_fails_pending(framing_impl: Any) -> None:
    outcomes: list = []
    client = ClientConnection(lambda w, r, e: outcomes.append((w, e)))
    client.request("a", ABSENT, 1)
    client.request("b", ABSENT, 2)
    client.close()
    assert [w for w, _ in outcomes] == [1, 2]
    assert all(isinstance(e, fastrpc.ConnectionClosed) for _, e in outcomes)
    assert outcomes[0][1] is not outcomes[1][1]


def test_client_core_unmatched_error_fails_calls_on_close(framing_impl: Any) -> None:
    outcomes: list = []
    client = ClientConnection(lambda w, r, e: outcomes.append(e))
    client.request("a", ABSENT, 1)
    client.receive_data(frame(b'{"out": "error", "error": {"code": -32001, "message": "busy"}, "id": null}'))
    client.close()
    assert isinstance(outcomes[0], fastrpc.ServerBusy)


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"out": "x", "result": 1}'])
def test_client_core_protocol_errors(framing_impl: Any, body: bytes) -> None:
    client = ClientConnection(lambda *a: None)
    with pytest.raises(fastrpc.ProtocolError):
        client.receive_data(frame(body))


def test_remote_error_classes_by_code() -> None:
    for code, cls in [
        (-32700, fastrpc.ParseError),
        (-32600, fastrpc.InvalidRequest),
        (-32601, fastrpc.MethodNotFound),
        (-32602, fastrpc.InvalidParams),
        (-32603, fastrpc.InternalError),
        (-32000, fastrpc.RequestTooLarge),
        (-32001, fastrpc.ServerBusy),
        (-32002, fastrpc.ShuttingDown),
        (-32003, fastrpc.DeadlineExceeded),
    ]:
        exc = fastrpc.errors.remote_error(code, "m", {"d": 1})
        assert type(exc) is cls and exc.code == code and exc.data == {"d": 1}
        assert isinstance(exc, fastrpc.RemoteError) and isinstance(exc, fastrpc.FastRPCError)
    other = fastrpc.errors.remote_error(1234, "custom")
    assert type(other) is fastrpc.RemoteError and other.code == 1234


def test_method_options() -> None:
    method = Method("ping", lambda p=None: p, out="pong", raw_params=True)
    assert method.prefix == b'{"out": "pong", "result": '


# -- section 6: a stopping server ---------------------------------------------------------

def test_refused_calls_get_shutting_down_in_order(link: Link) -> None:
    slow = link.send(request(**{"in": "later", "params": ["done"]}))  # an id-less async call, still owed
    assert slow == [] and len(link.calls) == 1
    link.server.refuse_calls()
    replies = link.send(request(**{"in": "add", "params": [1, 2], "id": 1}), request(**{"in": "ping"}),
                        request(**{"in": "nope", "id": "x"}), request(**{"in": 5, "id": 2}))
    assert [error_of(r) for r in replies] == [(-32002, 1), (-32002, "x"), (-32600, 2)]
    # The id-less refusal waits behind the id-less call that was already running.
    link.finish(link.calls[0])
    [first, second] = link.replies()
    assert first == {"out": "later", "result": "done"}
    assert error_of(second) == (-32002, None) and "shutting down" in second["error"]["message"]
    assert second["error"]["data"] == {"started": False}  # refused before it ran (section 9)


def test_a_stopping_core_keeps_the_methods_it_is_told_to(link: Link) -> None:
    kept = Method("rpc.health", lambda params: "NOT_SERVING", raw_params=True)
    link.server.refuse_calls({"rpc.health": kept})
    replies = link.send(request(**{"in": "rpc.health", "id": 1}), request(**{"in": "add", "params": [1, 2], "id": 2}))
    assert replies[0] == {"out": "rpc.health", "result": "NOT_SERVING", "id": 1}
    assert error_of(replies[1]) == (-32002, 2)


# -- section 3: call metadata, in the core ------------------------------------------------

def meta_link(**kwargs: Any) -> Link:
    """A Link whose registry also has methods that read their call's metadata, and one that must not."""
    link = Link(**kwargs)
    registry = dict(link.server._methods)  # the methods() registry, plus these
    registry["seen"] = Method("seen", lambda: fastrpc.metadata(), context=True)
    registry["seen_raw"] = Method("seen_raw", lambda params: [params, fastrpc.metadata()], raw_params=True, context=True)

    async def seen_later(tag: str) -> Any:
        return [tag, fastrpc.metadata()]

    registry["seen_later"] = Method("seen_later", seen_later, context=True)
    registry["unseen"] = Method("unseen", lambda: fastrpc.metadata())
    link.server.use_methods(registry)
    return link


def test_a_context_method_reads_its_calls_metadata(framing_impl: Any) -> None:
    link = meta_link()
    replies = link.send(request(**{"in": "seen", "meta": {"trace": "t1", "who": "me"}, "id": 1}),
                        request(**{"in": "seen", "id": 2}),
                        request(**{"in": "seen_raw", "params": [1], "meta": {"k": "v"}, "id": 3}))
    assert [r["result"] for r in replies] == [{"trace": "t1", "who": "me"}, {}, [[1], {"k": "v"}]]
    with pytest.raises(RuntimeError, match="metadata=True"):
        fastrpc.metadata()  # set only while the handler ran


def test_an_async_context_methods_call_carries_the_metadata(framing_impl: Any) -> None:
    link = meta_link()
    link.send(request(**{"in": "seen_later", "params": ["a"], "meta": {"k": "a"}, "id": 1}),
              request(**{"in": "seen_later", "params": ["b"], "id": 2}),
              request(**{"in": "later", "params": [1], "meta": {"k": "c"}, "id": 3}))
    assert [call.meta for call in link.calls] == [{"k": "a"}, {}, None]  # None: 'later' does not read it
    for call in link.calls:
        call.coro.close()


def test_a_method_that_does_not_read_metadata_ignores_it_even_malformed(framing_impl: Any) -> None:
    link = meta_link()
    replies = link.send(request(**{"in": "add", "params": [1, 2], "meta": 7, "id": 1}),
                        request(**{"in": "unseen", "meta": {"k": "v"}, "id": 2}))
    assert replies[0]["result"] == 3
    assert error_of(replies[1]) == (-32603, 2)  # metadata() outside a context method raised


@pytest.mark.parametrize("meta, reason", [
    ([], "must be an object of string values"),
    ({"k": 1}, "must be an object of string values"),
    ({str(i): "" for i in range(65)}, "65 entries"),
    ({"k": "v" * 8192}, "8193 bytes"),
])
def test_malformed_metadata_of_a_context_call_is_an_invalid_request(framing_impl: Any, meta: Any, reason: str) -> None:
    link = meta_link()
    reply, = link.send(request(**{"in": "seen", "meta": meta, "id": 1}))
    assert error_of(reply) == (-32600, 1)
    assert reason in reply["error"]["message"]
    assert_still_serving(link)


def test_the_client_core_refuses_to_send_malformed_metadata(framing_impl: Any) -> None:
    core = ClientConnection(lambda *args: None)
    with pytest.raises(ValueError, match="invalid call metadata"):
        core.request("seen", ABSENT, object(), meta={"k": 1})
    assert core.data_to_send() == b"" and core.pending == 0
    core.request("seen", ABSENT, object(), meta={"k": "v"})
    assert b'"meta":{"k":"v"}' in core.data_to_send()


def test_every_error_frame_is_counted_by_method_and_code(framing_impl: Any) -> None:
    stats = ServerStats()
    link = Link(stats=stats, max_frame_size=200)
    link.send(b"{not json", request(**{"in": "nope", "id": 1}), request(**{"in": 5, "id": 2}), b"[]",
              request(**{"in": "refuse", "id": 3}), request(**{"in": "add", "params": [1], "id": 4}),
              request(**{"in": "explode", "id": 5}), request(**{"in": "unencodable", "id": 6}),
              request(**{"in": "grow", "params": [300], "id": 7}), request(**{"in": "later", "params": [1], "deadline": -1, "id": 8}),
              request(**{"in": "add", "params": [1, 2], "id": 9}), request(**{"in": "nope", "id": 10}))
    assert stats.errors == Counter({(None, -32700): 1, (None, -32601): 2, (None, -32600): 2, ("refuse", -32602): 1,
                                    ("add", -32602): 1, ("explode", -32603): 1, ("unencodable", -32603): 1,
                                    ("grow", -32000): 1, ("later", -32600): 1})
    assert stats.failed_after_return == Counter({"unencodable": 1, "grow": 1})  # the handler had returned
    link.receive(b"\x00\x00\x10\x00")  # a header over the maximum
    assert stats.errors[None, -32000] == 1 and sum(stats.errors.values()) == 12
    assert stats.failed_after_return == Counter({"unencodable": 1, "grow": 1})


def test_failure_decides_code_message_and_data() -> None:
    method = Method("add", lambda a, b: a + b)
    assert fastrpc.protocol.failure(method, [1, 2], fastrpc.InvalidParams("no", {"x": 1})) == (-32602, "no", {"x": 1})
    assert fastrpc.protocol.failure(method, [1], TypeError("missing"))[0] == -32602
    assert fastrpc.protocol.failure(method, [1, 2], TypeError("inside"))[0] == -32603
    code, message, data = fastrpc.protocol.failure(method, [1, 2], ValueError("secret"), debug=True)
    assert (code, message) == (-32603, "internal error in 'add': ValueError") and "secret" in data
