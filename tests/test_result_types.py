"""Clients reading a result as a type (``result_type=``): converted as typed handlers' params are, or a
DecodeError naming each mismatch under ``result``, on both clients and both loops."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Dict, List, Optional

import pytest

import fastrpc
from fastrpc.contracts import DecodeError

from .conftest import serving, serving_in_thread


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


@dataclasses.dataclass
class Item:
    name: str
    size: Size
    tags: Optional[List[str]] = None


def shop() -> fastrpc.Server:
    server = fastrpc.Server()

    @server.method
    def items() -> List[Dict[str, Any]]:
        return [{"name": "cup", "size": "s"}, {"name": "jug", "size": "l", "tags": ["glass"]}]

    @server.method
    def broken() -> List[Dict[str, Any]]:
        return [{"name": "cup", "size": "m"}, {"size": "s"}]

    return server


EXPECTED = [Item("cup", Size.SMALL), Item("jug", Size.LARGE, ["glass"])]
ERRORS = ["result[0].size: expected Size ('s' | 'l'), got 'm'", "result[1].name: missing"]


def test_the_async_client_decodes_results_into_a_type(run: Any) -> None:
    async def main() -> None:
        async with serving(shop()) as port, fastrpc.connect("127.0.0.1", port, timeout=5) as client:
            assert await client.call("items", result_type=List[Item]) == EXPECTED
            assert (await client.call("items"))[0] == {"name": "cup", "size": "s"}  # without one: as JSON decodes
            with pytest.raises(DecodeError) as caught:
                await client.call("broken", result_type=List[Item])
            assert caught.value.errors == ERRORS

    run(main())


def test_the_blocking_client_decodes_results_into_a_type() -> None:
    with serving_in_thread(shop()) as port, fastrpc.SyncClient("127.0.0.1", port, timeout=5) as client:
        assert client.call("items", result_type=List[Item]) == EXPECTED
        assert client.call("items")[0] == {"name": "cup", "size": "s"}  # without one: as JSON decodes
        with pytest.raises(DecodeError) as caught:
            client.call("broken", result_type=List[Item])
        assert caught.value.errors == ERRORS
