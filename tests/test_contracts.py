"""Typed contracts (fastrpc.contracts, issue 17): params checked and converted from type hints, the exact
``data`` of each mismatch, decode, the schema of each hint family, and results of library models.

In-process calls go through each server core (compiled and twin, as conftest.SERVER_CONNECTIONS has them);
a few run end to end over a real server under both loops and both framings. The annotations here are
strings (``from __future__ import annotations``): resolving them is part of what is tested.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import sys
import warnings
from typing import Any, Dict, FrozenSet, List, Literal, Optional, Set, Tuple, TypedDict, Union

import msgspec
import orjson
import pydantic
import pytest

import fastrpc
import fastrpc.metrics
import fastrpc.protocol
from fastrpc import contracts
from fastrpc.absent import ABSENT
from fastrpc.contracts import DecodeError, MAX_ERRORS, decode, method_schema, type_schema
from fastrpc.framing import pack_frames
from fastrpc.middleware import HookedMethods

from .conftest import SERVER_CONNECTIONS, serving, serving_in_thread

if sys.version_info >= (3, 11):
    from typing import NotRequired, Required
else:  # pragma: no cover
    from typing_extensions import NotRequired, Required


# -- the types the handlers use ----------------------------------------------------------------------------

class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Item:
    name: str
    qty: int
    price: float = 0.0


@dataclasses.dataclass
class Order:
    items: List[Item]
    color: Color = Color.RED
    tags: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("n must be positive")


@dataclasses.dataclass
class Tree:
    value: int
    children: List[Tree] = dataclasses.field(default_factory=list)


class Movie(TypedDict):
    title: str
    year: int


class Patch(TypedDict, total=False):
    title: str
    year: int


class Mixed(TypedDict):
    title: Required[str]
    year: NotRequired[int]


class User(pydantic.BaseModel):
    name: str
    age: int


class Pet(msgspec.Struct):
    name: str
    legs: int


# -- helpers ------------------------------------------------------------------------------------------------

@pytest.fixture(params=sorted(SERVER_CONNECTIONS))
def core(request: pytest.FixtureRequest) -> type:
    """A server connection class: each core the tests can run."""
    return SERVER_CONNECTIONS[request.param]  # type: ignore[no-any-return]


def call(core: type, server: fastrpc.Server, name: str, params: Any = ABSENT) -> Dict[str, Any]:
    """The reply to one call of ``name``, through ``core`` in-process (an async handler run to its end)."""
    calls: List[Any] = []
    connection = core(server.methods, calls.append)
    request: Dict[str, Any] = {"in": name, "id": 1}
    if params is not ABSENT:
        request["params"] = params
    body = orjson.dumps(request)
    data = connection.receive_data(len(body).to_bytes(4, "big") + body)
    for pending in calls:
        while True:
            try:
                pending.coro.send(None)
            except StopIteration as stop:
                connection.complete(pending, stop.value)
            except BaseException as exc:
                connection.fail(pending, exc)
            else:
                continue
            break
        data += connection.data_to_send()
    assert data, "no reply"
    return orjson.loads(data[4:])  # type: ignore[no-any-return]


def result(reply: Dict[str, Any]) -> Any:
    assert "error" not in reply, reply
    return reply["result"]


def error(reply: Dict[str, Any]) -> Tuple[int, str, Any]:
    e = reply["error"]
    return e["code"], e["message"], e.get("data")


def one(server: fastrpc.Server, handler: Any) -> fastrpc.Server:
    server.method(handler)
    return server


seen: List[Any] = []  # what the handlers were called with, to test conversions


def scalars(i: int, f: float, s: str, b: bool, n: None) -> str:
    seen.append((i, f, s, b, n))
    return "ok"


def containers(li: List[int], d: Dict[str, float], t: Tuple[int, str], tv: Tuple[int, ...], st: Set[str],
               fs: FrozenSet[int], di: Dict[int, str]) -> str:
    seen.append((li, d, t, tv, st, fs, di))
    return "ok"


def choices(o: Optional[int], u: Union[int, str], lit: Literal["a", 1], c: Color, lv: Level, a: Any) -> str:
    seen.append((o, u, lit, c, lv, a))
    return "ok"


def objects(order: Order, p: Point, t: Tree, m: Movie, patch: Patch, mixed: Mixed) -> str:
    seen.append((order, p, t, m, patch, mixed))
    return "ok"


def models(user: User, pet: Pet) -> str:
    seen.append((user, pet))
    return "ok"


def add(a: int, b: int) -> int:
    """Add two integers.

    The rest of the docstring is not the summary."""
    return a + b


def shaped(a: int, /, b: str, *, k: float = 1.0) -> str:
    seen.append((a, b, k))
    return "ok"


def variadic(*args: int, **kwargs: str) -> str:
    seen.append((args, kwargs))
    return "ok"


def defaults(a: int, b: Optional[str] = None, c: List[int] = []) -> str:  # noqa: B006  (never mutated)
    seen.append((a, b, c))
    return "ok"


def many(xs: List[int]) -> int:
    return len(xs)


def positive(p: Positive) -> int:
    return p.n


def raises_type_error(a: int) -> None:
    raise TypeError("inside the handler")


async def slow_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def untyped(a, b):  # type: ignore[no-untyped-def]
    return [a, b]


def any_only(a: Any, b: Any) -> Any:
    return [a, b]


def all_families(server: Optional[fastrpc.Server] = None) -> fastrpc.Server:
    server = fastrpc.Server() if server is None else server
    for handler in (scalars, containers, choices, objects, models, add, shaped, variadic, defaults, many, positive,
                    raises_type_error, slow_add, untyped, any_only):
        server.method(handler)
    return server


SERVER = all_families()


@pytest.fixture(autouse=True)
def forget_seen() -> None:
    seen.clear()


# -- untyped handlers stay as they were ------------------------------------------------------------------------

def test_untyped_and_any_handlers_are_called_as_they_are() -> None:
    assert SERVER.methods["untyped"].func is untyped
    assert SERVER.methods["any_only"].func is any_only
    assert not SERVER.methods["untyped"].contract.typed
    assert SERVER.methods["add"].func is not add and inspect.unwrap(SERVER.methods["add"].func) is add


def test_raw_params_handlers_are_not_checked(core: type) -> None:
    server = fastrpc.Server()

    @server.method(raw_params=True)
    def raw(params: int) -> Any:
        return params

    assert server.methods["raw"].func is raw
    assert result(call(core, server, "raw", ["not", "an", "int"])) == ["not", "an", "int"]


def test_untyped_bad_params_keep_their_message(core: type) -> None:
    assert error(call(core, SERVER, "untyped", [1])) == (-32602, "invalid params for 'untyped': missing a required argument: 'b'", None)
    assert error(call(core, SERVER, "untyped", {"a": 1, "b": 2, "c": 3})) == (
        -32602, "invalid params for 'untyped': got an unexpected keyword argument 'c'", None)


def _f1(a, b): ...  # type: ignore[no-untyped-def]
def _f2(a, b=1, *args, c, d=2, **kw): ...  # type: ignore[no-untyped-def]
def _f3(a, /, b, *, c): ...  # type: ignore[no-untyped-def]
def _f4(*args): ...  # type: ignore[no-untyped-def]
def _f5(a=1, /): ...  # type: ignore[no-untyped-def]
def _f6(): ...  # type: ignore[no-untyped-def]
def _f7(a, *, b=3): ...  # type: ignore[no-untyped-def]


@pytest.mark.parametrize("func", [_f1, _f2, _f3, _f4, _f5, _f6, _f7])
def test_bind_error_says_what_signature_bind_says(func: Any) -> None:
    """The shape read at registration answers as inspect.Signature.bind did when it was called per failure."""
    signature = inspect.signature(func)
    contract = contracts.Contract(func)
    for params in [ABSENT, None, 1, [], [1], [1, 2], [1, 2, 3], {}, {"a": 1}, {"a": 1, "b": 2}, {"b": 2},
                   {"a": 1, "b": 2, "c": 3}, {"x": 1}, {"a": 1, "x": 1}, {"c": 1}]:
        try:
            if type(params) is list:
                signature.bind(*params)
            elif type(params) is dict:
                signature.bind(**params)
            elif params is ABSENT:
                signature.bind()
            else:
                signature.bind(params)
            expected = None
        except TypeError as exc:
            expected = str(exc)
        assert contract.bind_error(params) == expected, params


@pytest.mark.parametrize("func", [_f1, _f2, _f3, _f4, _f5, _f6, _f7])
def test_the_refusal_of_each_count_of_params_is_bind_errors(func: Any) -> None:
    """The core refuses positional params by their count alone, from the table made at registration."""
    contract = contracts.Contract(func, "f")
    for n in range(6):
        params = [1] * n
        reason = contract.bind_error(params)
        refusal = contract.refusals[min(n, len(contract.refusals) - 1)] if contract.refusals else None
        if reason is None:
            assert refusal is None, n
        else:
            head = fastrpc.protocol.encode_error(-32602, f"invalid params for 'f': {reason}")[:-5]
            assert refusal == ("f", -32602, head, ("f", -32602)), n
    assert (contract.refusals == ()) == all(contract.bind_error([1] * n) is None for n in range(6))


def _t1(a: int, b: int) -> None: ...
def _t2(a: int, b: str = "x", *, c: Optional[bool] = None) -> None: ...
def _t3(a: float, b: List[int]) -> None: ...
def _t4(a: Any, b: None, /) -> None: ...


@pytest.mark.parametrize("func", [_t1, _t2, _t3, _t4])
def test_the_cores_checker_refuses_as_the_checker_raises(func: Any) -> None:
    """``call`` returns the Refusal whose bytes are those of ``func``'s InvalidParams, kept or not."""
    contract = contracts.Contract(func, "t")
    cases = [[], [1], ["1"], [1, 2], [1, "2"], ["1", 2], [None, None], [True, 1.5], [1.5, [1, "x"]], [2, [3]], ["a", "b"]]
    for params in cases * 2 + cases[::-1]:  # the second time and after others: what the checker kept
        try:
            expected: Any = contract.func(*params)
        except fastrpc.InvalidParams as exc:
            expected = ("t", -32602, fastrpc.protocol.encode_error(exc.code, exc.message, exc.data)[:-5], ("t", -32602))
        except TypeError:  # too many params: the checker does not bind, and neither does call
            with pytest.raises(TypeError):
                contract.call(*params)
            continue
        assert contract.call(*params) == expected, params


def test_a_refusal_is_of_the_checkers_code_never_of_the_handlers() -> None:
    """Should the checker's precise walk find the params fit after all, it calls the handler: an InvalidParams
    of a code of its own raised there is the handler's error, raised (answered and counted as any handler's,
    its code bounded), not made a Refusal, whose code the server cores count unbounded. Its own -32602 may be."""
    class Mine(fastrpc.InvalidParams):
        code = -32099

    def half(x: float) -> float:
        raise Mine("not that one") if x > 0 else fastrpc.InvalidParams("not that one either")

    contract = contracts.Contract(half, "half")
    with pytest.raises(Mine):
        contract._refused((1.5,), (), {})  # what the checker calls when its fast test fails
    refused = contract._refused((-1.5,), (), {})
    assert refused.key == ("half", -32602) and b'"code":-32602' in refused.head


def test_a_wrapped_handler_is_called_with_bad_params_too() -> None:
    """Metered and middleware copies call their wrapper, which sees the failure; only the core's own refuses."""
    server = fastrpc.Server()

    @server.method
    def add(a: int, b: int) -> int:
        return a + b

    @server.method
    def untyped(a, b):  # type: ignore[no-untyped-def]
        return a + b

    hooked = HookedMethods(server.methods, [fastrpc.middleware.Middleware()], None)
    for name in ("add", "untyped"):
        own = server.methods[name]
        assert own.call is own.contract.call and own.refusals is own.contract.refusals
        wrapped = fastrpc.metrics.meter(own, fastrpc.metrics.ServerMetrics().method(name))
        assert wrapped.call is wrapped.func and wrapped.refusals == ()
        assert hooked[name].call is hooked[name].func and hooked[name].refusals == ()


def test_a_type_error_inside_a_handler_is_internal(core: type) -> None:
    assert error(call(core, SERVER, "raises_type_error", [1]))[:2] == (-32603, "internal error in 'raises_type_error': TypeError")
    assert error(call(core, SERVER, "raises_type_error", {"a": 1}))[0] == -32603


# -- each family: what passes, converted -----------------------------------------------------------------------

def test_scalars_pass_and_an_int_becomes_a_float(core: type) -> None:
    assert result(call(core, SERVER, "scalars", [1, 2, "s", True, None])) == "ok"
    assert seen[-1] == (1, 2.0, "s", True, None) and type(seen[-1][1]) is float
    assert result(call(core, SERVER, "scalars", {"i": -5, "f": 0.5, "s": "", "b": False, "n": None})) == "ok"
    assert seen[-1] == (-5, 0.5, "", False, None)


def test_containers_convert(core: type) -> None:
    params = [[1, 2], {"x": 1, "y": 2.5}, [3, "z"], [1, 2, 3], ["a", "b", "a"], [1, 1, 2], {"1": "one", "-20": "x"}]
    assert result(call(core, SERVER, "containers", params)) == "ok"
    li, d, t, tv, st, fs, di = seen[-1]
    assert li == [1, 2] and d == {"x": 1.0, "y": 2.5} and type(d["x"]) is float
    assert t == (3, "z") and tv == (1, 2, 3) and st == {"a", "b"} and fs == frozenset({1, 2}) and type(fs) is frozenset
    assert di == {1: "one", -20: "x"}


def test_unions_literals_enums_any(core: type) -> None:
    assert result(call(core, SERVER, "choices", [None, "s", "a", "green", 2, {"any": [1]}])) == "ok"
    assert seen[-1] == (None, "s", "a", Color.GREEN, Level.HIGH, {"any": [1]})
    assert result(call(core, SERVER, "choices", [3, 4, 1, "red", 1, None])) == "ok"
    assert seen[-1] == (3, 4, 1, Color.RED, Level.LOW, None)


def test_dataclasses_and_typed_dicts_are_built(core: type) -> None:
    params = {
        "order": {"items": [{"name": "a", "qty": 2}, {"name": "b", "qty": 1, "price": 3}], "color": "green"},
        "p": {"x": 1, "y": 2},
        "t": {"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]},
        "m": {"title": "T", "year": 1999},
        "patch": {},
        "mixed": {"title": "M"},
    }
    assert result(call(core, SERVER, "objects", params)) == "ok"
    order, p, t, m, patch, mixed = seen[-1]
    assert order == Order([Item("a", 2, 0.0), Item("b", 1, 3.0)], Color.GREEN, [])
    assert type(order.items[1].price) is float
    assert p == Point(1, 2) and hash(p) == hash(Point(1, 2))
    assert t == Tree(1, [Tree(2, [Tree(3)])])
    assert m == {"title": "T", "year": 1999} and patch == {} and mixed == {"title": "M"}


def test_library_models_are_built(core: type) -> None:
    assert result(call(core, SERVER, "models", [{"name": "ann", "age": 3}, {"name": "rex", "legs": 4}])) == "ok"
    assert seen[-1] == (User(name="ann", age=3), Pet("rex", 4))


def test_signature_shapes(core: type) -> None:
    assert result(call(core, SERVER, "shaped", [1, "b"])) == "ok" and seen[-1] == (1, "b", 1.0)
    assert result(call(core, SERVER, "variadic", [1, 2])) == "ok" and seen[-1] == ((1, 2), {})
    assert result(call(core, SERVER, "variadic", {"x": "y"})) == "ok" and seen[-1] == ((), {"x": "y"})
    assert result(call(core, SERVER, "defaults", [1])) == "ok" and seen[-1] == (1, None, [])
    assert result(call(core, SERVER, "defaults", {"a": 1, "b": "s", "c": [2]})) == "ok" and seen[-1] == (1, "s", [2])


def test_async_typed_handler(core: type) -> None:
    assert SERVER.methods["slow_add"].is_async
    assert result(call(core, SERVER, "slow_add", [1, 2])) == 3
    assert error(call(core, SERVER, "slow_add", [1, "2"])) == (
        -32602, "invalid params for 'slow_add': params.b: expected int, got str", ["params.b: expected int, got str"])


# -- each error path, with its exact data ---------------------------------------------------------------------

ERRORS = [
    ("add", [1, "2"], ["params.b: expected int, got str"]),
    ("add", {"a": 1.5, "b": True}, ["params.a: expected int, got float", "params.b: expected int, got bool"]),
    ("add", [1], ["params.b: missing"]),
    ("add", ABSENT, ["params.a: missing", "params.b: missing"]),
    ("add", 7, ["params.b: missing"]),
    ("add", [1, 2, 3, 4], ["params[2]: unexpected", "params[3]: unexpected"]),
    ("add", {"a": 1, "c": 3, "bad key": 4}, ["params.b: missing", "params.c: unexpected", 'params["bad key"]: unexpected']),
    ("add", {"a": 1, "b": "x", "c": 3}, ["params.b: expected int, got str", "params.c: unexpected"]),
    ("scalars", [True, "1", 1, 1, 0],
     ["params.i: expected int, got bool", "params.f: expected float, got str", "params.s: expected str, got int",
      "params.b: expected bool, got int", "params.n: expected None, got int"]),
    ("containers", [[1, "x"], {"k": "v"}, [1], [1, None], [1], ["x"], {"x": "y", "1": 2}],
     ["params.li[1]: expected int, got str", "params.d.k: expected float, got str",
      "params.t: expected tuple[int, str], got list of 1", "params.tv[1]: expected int, got None",
      "params.st[0]: expected str, got int", "params.fs[0]: expected int, got str",
      "params.di.x: key expected int, got 'x'", "params.di[\"1\"]: expected str, got int"]),
    ("containers", [{}, [], "s", {}, {}, None, []],
     ["params.li: expected list[int], got dict", "params.d: expected dict[str, float], got list",
      "params.t: expected tuple[int, str], got str", "params.tv: expected tuple[int, ...], got dict",
      "params.st: expected set[str], got dict", "params.fs: expected frozenset[int], got None",
      "params.di: expected dict[int, str], got list"]),
    ("choices", ["1", [], "b", "blue", 3, 0],
     ["params.o: expected int | None, got str", "params.u: expected int | str, got list",
      "params.lit: expected 'a' | 1, got 'b'", "params.c: expected Color ('red' | 'green'), got 'blue'",
      "params.lv: expected Level (1 | 2), got 3"]),
    ("choices", [None, 1, True, 1, "1", 0], [
        "params.lit: expected 'a' | 1, got bool", "params.c: expected Color ('red' | 'green'), got int",
        "params.lv: expected Level (1 | 2), got str"]),
    ("objects", {"order": {"items": [{"name": "a", "qty": "2"}, {"qty": 1, "extra": 0}, 5], "color": "blue", "tags": [1]},
                 "p": {"x": 1}, "t": {"value": 1, "children": [{"value": "2"}]}, "m": {"title": "T"},
                 "patch": {"year": "1999"}, "mixed": {"year": 1}},
     ["params.order.items[0].qty: expected int, got str", "params.order.items[1].name: missing",
      "params.order.items[1].extra: unexpected", "params.order.items[2]: expected Item, got int",
      "params.order.color: expected Color ('red' | 'green'), got 'blue'", "params.order.tags[0]: expected str, got int",
      "params.p.y: missing", "params.t.children[0].value: expected int, got str", "params.m.year: missing",
      "params.patch.year: expected int, got str", "params.mixed.title: missing"]),
    ("objects", [[], None, 1, "m", [], 2.5],
     ["params.order: expected Order, got list", "params.p: expected Point, got None", "params.t: expected Tree, got int",
      "params.m: expected Movie, got str", "params.patch: expected Patch, got list", "params.mixed: expected Mixed, got float"]),
    ("models", [{"name": "ann", "age": "x"}, {"name": "rex", "legs": "four"}],
     ["params.user.age: Input should be a valid integer, unable to parse string as an integer",
      "params.pet.legs: expected int, got str"]),
    ("models", [{"name": 1}, 5],
     ["params.user.name: Input should be a valid string", "params.user.age: Field required",
      "params.pet: expected object, got int"]),
    ("shaped", {"a": 1, "b": "x"}, ["params.a: missing", "params.a: unexpected"]),
    ("shaped", [1, "b", 3.0], ["params[2]: unexpected"]),
    ("shaped", [1, 2], ["params.b: expected str, got int"]),
    ("variadic", [1, "x"], ["params[1]: expected int, got str"]),
    ("variadic", {"k": 1}, ["params.k: expected str, got int"]),
    ("defaults", {"a": 1, "c": ["x"]}, ["params.c[0]: expected int, got str"]),
    ("positive", [{"n": 0}], ["params.p: invalid Positive: n must be positive"]),
]


@pytest.mark.parametrize("name, params, data", ERRORS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(ERRORS)])
def test_mismatch_data(core: type, name: str, params: Any, data: List[str]) -> None:
    code, message, got = error(call(core, SERVER, name, params))
    assert (code, got) == (-32602, data)
    more = f" (and {len(data) - 1} more)" if len(data) > 1 else ""
    assert message == f"invalid params for {name!r}: {data[0]}{more}"


def test_errors_are_bounded(core: type) -> None:
    code, message, data = error(call(core, SERVER, "many", [["x"] * 1000]))
    assert code == -32602 and len(data) == MAX_ERRORS == 20
    assert data == [f"params.xs[{i}]: expected int, got str" for i in range(20)]
    assert message == "invalid params for 'many': params.xs[0]: expected int, got str (and more than 19 more)"
    code, message, data = error(call(core, SERVER, "many", [list(range(19)) + ["x"]]))
    assert data == ["params.xs[19]: expected int, got str"]


def test_registered_name_is_the_one_reported(core: type) -> None:
    server = fastrpc.Server()
    server.method("sum2")(add)
    assert error(call(core, server, "sum2", [1]))[1] == "invalid params for 'sum2': params.b: missing"


def test_typed_errors_through_middleware_and_metrics(core: type) -> None:
    for setup in ("middleware", "metrics"):
        if setup == "middleware":
            methods: Any = HookedMethods(all_families().methods, [fastrpc.Middleware()], None)
        else:
            metered = fastrpc.Server()
            metered.enable_metrics()
            methods = all_families(metered)._registry
            assert methods is not metered.methods and methods["add"].func.__wrapped__ is metered.methods["add"].func
        holder = type("S", (), {"methods": methods})()
        assert error(call(core, holder, "add", [1, 2, 3]))[2] == ["params[2]: unexpected"], setup  # type: ignore[arg-type]
        assert error(call(core, holder, "add", [1, "x"]))[2] == ["params.b: expected int, got str"], setup  # type: ignore[arg-type]
        assert error(call(core, holder, "untyped", [1]))[1] == "invalid params for 'untyped': missing a required argument: 'b'"  # type: ignore[arg-type]
        assert result(call(core, holder, "add", [1, 2])) == 3  # type: ignore[arg-type]


def test_unresolvable_hints_warn_and_leave_the_handler_unchecked() -> None:
    def handler(a: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    server = fastrpc.Server()
    with pytest.warns(UserWarning, match="cannot be resolved"):
        server.method(handler)
    assert server.methods["handler"].func is handler


def test_a_dataclass_with_unresolvable_hints_leaves_the_handler_unchecked() -> None:
    @dataclasses.dataclass
    class Local:
        x: NoSuchType  # type: ignore[name-defined]  # noqa: F821

    def handler(p: Local) -> None:
        return None

    handler.__annotations__["p"] = Local  # resolvable itself; its field is not
    with pytest.warns(UserWarning, match="cannot be resolved"):
        contract = contracts.Contract(handler)
    assert contract.func is handler and Local not in contracts._NODES


def test_reserved_parameter_names() -> None:
    def handler(__fr_h: int) -> None:
        return None

    with pytest.raises(ValueError, match="reserved"):
        fastrpc.Server().method(handler)


# -- decode ------------------------------------------------------------------------------------------------------

def test_decode_every_family() -> None:
    for _ in range(2):  # the second call runs the compiled converter
        assert decode({"value": 1, "children": [{"value": 2}]}, Tree) == Tree(1, [Tree(2)])
        assert decode([1, 2], Tuple[int, float]) == (1, 2.0)
        assert decode(["a"], Set[str]) == {"a"}
        assert decode("green", Color) is Color.GREEN
        assert decode(None, Optional[Point]) is None
        assert decode({"x": 1, "y": 2}, Optional[Point]) == Point(1, 2)
        assert decode({"title": "t", "year": 1}, Movie) == {"title": "t", "year": 1}
        assert decode({"name": "a", "age": 1}, User) == User(name="a", age=1)
        assert decode({"name": "a", "legs": 1}, Pet) == Pet("a", 1)
        assert decode({"1": [1]}, Dict[int, List[float]]) == {1: [1.0]}
        assert decode([1, "x"], Any) == [1, "x"]


def test_decode_errors() -> None:
    with pytest.raises(DecodeError) as info:
        decode({"value": "1", "children": [{"value": None, "x": 1}]}, Tree, path="result")
    assert info.value.errors == ["result.value: expected int, got str", "result.children[0].value: expected int, got None",
                                 "result.children[0].x: unexpected"]
    assert str(info.value) == "result.value: expected int, got str (and 2 more)"
    with pytest.raises(DecodeError, match=r"^value: expected int, got str$"):
        decode("1", int)
    assert isinstance(DecodeError(["x"]), ValueError)


# -- schemas ------------------------------------------------------------------------------------------------------

def test_method_schema_shape() -> None:
    assert method_schema(add) == {
        "params": [{"name": "a", "required": True, "schema": {"type": "integer"}},
                   {"name": "b", "required": True, "schema": {"type": "integer"}}],
        "result": {"name": "result", "schema": {"type": "integer"}},
        "summary": "Add two integers.",
    }
    assert method_schema(SERVER.methods["add"].func) == method_schema(add)  # the checker describes its handler
    assert method_schema(untyped) == {
        "params": [{"name": "a", "required": True, "schema": {}}, {"name": "b", "required": True, "schema": {}}],
        "result": {"name": "result", "schema": {}}, "summary": ""}
    assert [p["name"] for p in method_schema(variadic)["params"]] == []
    assert [(p["name"], p["required"]) for p in method_schema(defaults)["params"]] == [("a", True), ("b", False), ("c", False)]


ITEM_SCHEMA = {"type": "object", "title": "Item", "additionalProperties": False, "required": ["name", "qty"],
               "properties": {"name": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "number"}}}
SCHEMAS = [
    (int, {"type": "integer"}), (float, {"type": "number"}), (str, {"type": "string"}), (bool, {"type": "boolean"}),
    (None, {"type": "null"}), (Any, {}),
    (List[int], {"type": "array", "items": {"type": "integer"}}),
    (list, {"type": "array"}),
    (Tuple[int, str], {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False,
                       "minItems": 2, "maxItems": 2}),
    (Tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (Set[str], {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
    (FrozenSet[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
    (Dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (Dict[int, str], {"type": "object", "additionalProperties": {"type": "string"},
                      "propertyNames": {"pattern": "^-?(0|[1-9][0-9]*)$"}}),
    (Optional[int], {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
    (Union[int, str], {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    (Literal["a", 1], {"enum": ["a", 1]}),
    (Color, {"enum": ["red", "green"], "title": "Color"}),
    (Item, ITEM_SCHEMA),
    (Movie, {"type": "object", "title": "Movie", "additionalProperties": False, "required": ["title", "year"],
             "properties": {"title": {"type": "string"}, "year": {"type": "integer"}}}),
    (Patch, {"type": "object", "title": "Patch", "additionalProperties": False, "required": [],
             "properties": {"title": {"type": "string"}, "year": {"type": "integer"}}}),
    (Mixed, {"type": "object", "title": "Mixed", "additionalProperties": False, "required": ["title"],
             "properties": {"title": {"type": "string"}, "year": {"type": "integer"}}}),
    (Tree, {"$ref": "#/$defs/Tree", "$defs": {"Tree": {
        "type": "object", "title": "Tree", "additionalProperties": False, "required": ["value"],
        "properties": {"value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Tree"}}}}}}),
    (List[Item], {"type": "array", "items": ITEM_SCHEMA}),
]


@pytest.mark.parametrize("hint, schema", SCHEMAS, ids=[str(i) for i in range(len(SCHEMAS))])
def test_type_schema(hint: Any, schema: Dict[str, Any]) -> None:
    assert type_schema(hint) == schema


def test_library_schemas() -> None:
    assert type_schema(User) == User.model_json_schema()
    pet = type_schema(Pet)
    assert pet == msgspec.json.schema(Pet)
    assert pet["$ref"] == "#/$defs/Pet" and pet["$defs"]["Pet"]["required"] == ["name", "legs"]
    nested = type_schema(List[Pet])
    assert nested == {"type": "array", "items": {"$ref": "#/$defs/Pet"}, "$defs": pet["$defs"]}


# -- results ------------------------------------------------------------------------------------------------------

def test_library_results_are_encoded(core: type) -> None:
    server = fastrpc.Server()

    @server.method
    def user() -> User:
        return User(name="ann", age=3)

    @server.method
    def pets() -> List[Pet]:
        return [Pet("rex", 4)]

    @server.method
    def point() -> Point:
        return Point(1, 2)

    @server.method
    def unencodable() -> Any:
        return object()

    assert result(call(core, server, "user")) == {"name": "ann", "age": 3}
    assert result(call(core, server, "pets")) == [{"name": "rex", "legs": 4}]
    assert result(call(core, server, "point")) == {"x": 1, "y": 2}
    code, message, _ = error(call(core, server, "unencodable"))
    assert code == -32603 and "not JSON serializable" in message
    assert decode(result(call(core, server, "user")), User) == User(name="ann", age=3)


def test_pipelined_typed_calls_keep_order(core: type) -> None:
    connection = core(SERVER.methods, lambda pending: None)
    bodies = [orjson.dumps({"in": "add", "params": [i, "x" if i % 3 == 0 else i], "id": i}) for i in range(30)]
    data = connection.receive_data(pack_frames(bodies))
    replies = []
    while data:
        n = int.from_bytes(data[:4], "big")
        replies.append(orjson.loads(data[4:4 + n]))
        data = data[4 + n:]
    assert [r["id"] for r in replies] == list(range(30))
    assert all(("error" in r) == (r["id"] % 3 == 0) for r in replies)


# -- end to end ---------------------------------------------------------------------------------------------------

def test_end_to_end_async_client(run: Any) -> None:
    async def main() -> None:
        async with serving(all_families()) as port, fastrpc.connect("127.0.0.1", port) as client:
            assert await client.call("add", [1, 2]) == 3
            assert await client.call("slow_add", {"a": 1, "b": 2}) == 3
            assert await client.call("objects", {
                "order": {"items": [{"name": "a", "qty": 1}]}, "p": {"x": 1, "y": 2}, "t": {"value": 1},
                "m": {"title": "t", "year": 1}, "patch": {}, "mixed": {"title": "m"}}) == "ok"
            with pytest.raises(fastrpc.InvalidParams) as info:
                await client.call("add", [1, "2"])
            assert info.value.data == ["params.b: expected int, got str"]
            with pytest.raises(fastrpc.InvalidParams) as info:
                await client.call("slow_add", [1, 2, 3])
            assert info.value.data == ["params[2]: unexpected"]
            assert await client.call("add", [2, 2]) == 4  # the connection serves on

    run(main())


def test_end_to_end_blocking_client() -> None:
    with serving_in_thread(all_families()) as port, fastrpc.SyncClient("127.0.0.1", port) as client:
        assert client.call("models", [{"name": "a", "age": 1}, {"name": "b", "legs": 2}]) == "ok"
        with pytest.raises(fastrpc.InvalidParams) as info:
            client.call("objects", {"order": {"items": "none"}})
        assert info.value.data == ["params.order.items: expected list[Item], got str", "params.p: missing",
                                   "params.t: missing", "params.m: missing", "params.patch: missing", "params.mixed: missing"]


def test_contracts_imports_no_optional_library() -> None:
    """pydantic and msgspec are looked for only where already imported: fastrpc never imports them."""
    import subprocess

    code = ("import sys, fastrpc, fastrpc.contracts as c\n"
            "import dataclasses\n"
            "@dataclasses.dataclass\nclass P:\n    x: int\n"
            "def f(p: P) -> int: return p.x\n"
            "assert c.contract(f).func({'x': 1}) == 1\n"
            "assert 'pydantic' not in sys.modules and 'msgspec' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_warnings_for_plain_handlers() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        all_families()
