"""Discovery: ``rpc.discover``'s OpenRPC document, ``fastrpc describe`` and ``fastrpc stubgen``, whose
generated clients a real type checker (mypy) reads: a wrong call is reported, a right one passes."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List

import orjson
import pytest

import fastrpc
from fastrpc.discovery import document, format_document
from fastrpc.stubgen import generate, python_type

from .conftest import free_port, serving_in_thread

APP = '''
"""A shop, typed."""
import dataclasses
from typing import Iterator, List, Literal, Optional

import fastrpc


@dataclasses.dataclass
class Order:
    sku: str
    qty: int
    note: Optional[str] = None


app = fastrpc.Server()


@app.method
def add(a: int, b: int) -> int:
    """Add two numbers.

    The rest of the docstring is not the summary."""
    return a + b


@app.method("orders.place")
def place(order: Order, priority: Literal["low", "high"] = "low") -> List[float]:
    """Place an order."""
    return [float(order.qty), 1.0 if priority == "high" else 0.0]


@app.method
def anything(x, y=2):
    return [x, y]


@app.method
def countdown(start: int) -> Iterator[int]:
    """Stream start, start - 1, ..., 1."""
    yield from range(start, 0, -1)
'''

PACKAGE_ROOT = str(Path(fastrpc.__file__).resolve().parent.parent)


def load_app(tmp_path: Path, name: str = "shopapp") -> ModuleType:
    """The app, written where the command-line tests run (they import it as ``shopapp:app``)."""
    (tmp_path / f"{name}.py").write_text(APP)
    spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def cli(*args: str, cwd: Path) -> "subprocess.CompletedProcess[str]":
    env = {k: v for k, v in os.environ.items() if k != "FASTRPC_NO_EXTENSIONS"}
    return subprocess.run([sys.executable, "-m", "fastrpc", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def methods_by_name(doc: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {method["name"]: method for method in doc["methods"]}


def test_the_document_describes_each_method_from_its_hints(tmp_path: Path) -> None:
    doc = document(load_app(tmp_path).app.methods)
    assert doc["openrpc"] == "1.3.2" and doc["info"]["version"] == fastrpc.__version__
    methods = methods_by_name(doc)
    assert sorted(methods) == ["add", "anything", "countdown", "orders.place", "ping"]  # no rpc.* built-ins
    add = methods["add"]
    assert add["summary"] == "Add two numbers."
    assert [(p["name"], p["required"], p["schema"]) for p in add["params"]] == [
        ("a", True, {"type": "integer"}), ("b", True, {"type": "integer"})]
    assert add["result"]["schema"] == {"type": "integer"}
    place = methods["orders.place"]
    order, priority = place["params"]
    assert (order["name"], order["required"], priority["name"], priority["required"]) == ("order", True, "priority", False)
    assert python_type(order["schema"], order["schema"]) == "Dict[str, Any]"  # an object with properties
    assert set(order["schema"]["properties"]) == {"sku", "qty", "note"} and set(order["schema"]["required"]) == {"sku", "qty"}
    assert python_type(priority["schema"], priority["schema"]) == "Literal['low', 'high']"
    assert python_type(place["result"]["schema"], {}) == "List[float]"
    anything = methods["anything"]
    assert [(p["name"], p["required"], p["schema"]) for p in anything["params"]] == [("x", True, {}), ("y", False, {})]
    assert anything["result"]["schema"] == {} and "summary" not in anything
    assert methods["ping"]["x-raw-params"] is True
    countdown = methods["countdown"]  # a stream: its result is the schema of each item
    assert countdown["x-stream"] is True and countdown["result"] == {"name": "item", "schema": {"type": "integer"}}
    assert "x-stream" not in add


def test_rpc_discover_answers_the_document_and_can_be_turned_off(tmp_path: Path) -> None:
    app = load_app(tmp_path).app
    with serving_in_thread(app) as port, fastrpc.SyncClient("127.0.0.1", port, timeout=10) as client:
        assert client.call("rpc.discover") == orjson.loads(orjson.dumps(document(app.methods)))
    closed = fastrpc.Server(discovery=False)
    with serving_in_thread(closed) as port, fastrpc.SyncClient("127.0.0.1", port, timeout=10) as client:
        with pytest.raises(fastrpc.RemoteError) as caught:
            client.call("rpc.discover")
        assert caught.value.code == -32601


def test_describe_prints_signatures_and_json(tmp_path: Path) -> None:
    app = load_app(tmp_path).app
    with serving_in_thread(app) as port:
        shown = cli("describe", f"127.0.0.1:{port}", cwd=tmp_path)
        as_json = cli("describe", f"127.0.0.1:{port}", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "add(a: int, b: int) -> int" in lines and "    Add two numbers." in lines
    assert "anything(x: Any, y: Any = ...) -> Any" in lines
    assert "countdown(start: int) -> stream of int" in lines
    assert any(line.startswith("orders.place(order: ") and line.endswith(", priority: Literal['low', 'high'] = ...) -> List[float]")
               for line in lines), lines
    assert "types:" in lines
    assert as_json.returncode == 0 and orjson.loads(as_json.stdout) == orjson.loads(orjson.dumps(document(app.methods)))
    offline = cli("describe", "shopapp:app", cwd=tmp_path)  # the app imported, not served
    assert offline.returncode == 0 and offline.stdout == shown.stdout


def test_describe_says_why_it_cannot(tmp_path: Path) -> None:
    with serving_in_thread(fastrpc.Server(discovery=False)) as port:
        off = cli("describe", f"127.0.0.1:{port}", cwd=tmp_path)
    assert off.returncode == 1 and "discovery turned off" in off.stderr
    refused = cli("describe", f"127.0.0.1:{free_port()}", cwd=tmp_path)
    assert refused.returncode == 3, refused.stderr
    bad = cli("describe", "127.0.0.1:99999", cwd=tmp_path)
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


def mypy(tmp_path: Path, *files: str) -> "subprocess.CompletedProcess[str]":
    # MYPYPATH: an editable install is found through an import hook, which mypy does not follow;
    # fastrpc's own modules are read, not reported on (--follow-imports=silent).
    env = dict(os.environ, MYPYPATH=PACKAGE_ROOT)
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                           "--cache-dir", os.devnull, *files], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


GOOD = '''
import fastrpc
from shop_client import ShopClient, ShopSyncClient


async def use(client: fastrpc.Client) -> float:
    shop = ShopClient(client)
    total: int = await shop.add(1, 2)
    prices = await shop.orders_place({"sku": "a", "qty": total}, priority="high")
    async for left in shop.countdown(3):
        total += left
    return prices[0] + total


def use_blocking(client: fastrpc.SyncClient) -> int:
    return ShopSyncClient(client).add(2, 3) + sum(ShopSyncClient(client).countdown(3))
'''

BAD = '''
import fastrpc
from shop_client import ShopClient, ShopSyncClient


async def use(client: fastrpc.Client) -> None:
    shop = ShopClient(client)
    await shop.add("1", 2)
    await shop.orders_place({"sku": "a"}, priority="urgent")
    async for left in shop.countdown(3):
        name: str = left


def use_blocking(client: fastrpc.SyncClient) -> str:
    return ShopSyncClient(client).add(2, 3)
'''


def test_stubgen_writes_clients_a_type_checker_holds_calls_to(tmp_path: Path) -> None:
    with serving_in_thread(load_app(tmp_path).app) as port:
        made = cli("stubgen", f"127.0.0.1:{port}", "--name", "shop", "-o", "shop_client.py", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    offline = cli("stubgen", "shopapp:app", "--name", "shop", cwd=tmp_path)
    assert offline.stdout.replace("shopapp:app", "X") == (tmp_path / "shop_client.py").read_text().replace(f"127.0.0.1:{port}", "X")
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    good = mypy(tmp_path, "good.py", "shop_client.py")
    assert good.returncode == 0, good.stdout
    bad = mypy(tmp_path, "bad.py")
    errors = [line.split(": error: ", 1)[1] for line in bad.stdout.splitlines() if ": error: " in line]
    assert errors[0] == 'Argument 1 to "add" of "ShopClient" has incompatible type "str"; expected "int"  [arg-type]', bad.stdout
    assert errors[1].startswith('Missing key "qty" for TypedDict'), bad.stdout
    assert errors[2] == ('Argument "priority" to "orders_place" of "ShopClient" has incompatible type "Literal[\'urgent\']"; '
                         'expected "Literal[\'low\', \'high\']"  [arg-type]'), bad.stdout
    assert errors[3] == 'Incompatible types in assignment (expression has type "int", variable has type "str")  [assignment]', bad.stdout
    assert errors[4] == 'Incompatible return value type (got "int", expected "str")  [return-value]', bad.stdout
    assert len(errors) == 5, bad.stdout


def test_generated_clients_call_the_server(tmp_path: Path) -> None:
    app = load_app(tmp_path).app
    (tmp_path / "shop_client.py").write_text(generate(document(app.methods), "Shop"))
    spec = importlib.util.spec_from_file_location("shop_client", tmp_path / "shop_client.py")
    assert spec is not None and spec.loader is not None
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    with serving_in_thread(app) as port:
        with fastrpc.SyncClient("127.0.0.1", port, timeout=10) as sync:
            shop = stubs.ShopSyncClient(sync)
            assert shop.add(2, 3) == 5
            assert shop.orders_place({"sku": "a", "qty": 4}) == [4.0, 0.0]
            assert shop.orders_place({"sku": "a", "qty": 4}, priority="high") == [4.0, 1.0]
            assert shop.anything(1) == [1, 2] and shop.ping() is None and shop.ping("x") == "x"
            assert list(shop.countdown(3)) == [3, 2, 1]

        async def main() -> List[Any]:
            client = await fastrpc.connect("127.0.0.1", port, timeout=10)
            try:
                shop = stubs.ShopClient(client)
                return [await shop.add(1, 1), await shop.anything(1, y=5), [x async for x in shop.countdown(2)]]
            finally:
                await client.close()

        assert asyncio.run(main()) == [2, [1, 5], [2, 1]]


def test_describe_output_names_the_object_types() -> None:
    doc = {"methods": [{"name": "m", "params": [{"name": "o", "required": True, "schema": {
        "type": "object", "title": "Point", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
        "required": ["x", "y"]}}], "result": {"name": "result", "schema": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}]}
    assert format_document(doc) == textwrap.dedent("""\
        m(o: Point) -> Optional[str]

        types:
          Point = TypedDict('Point', {'x': 'float', 'y': 'float'})""")
