"""Token authentication: refused until ``auth``, hang-up after repeated failures, tokens never logged."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import fastrpc
from fastrpc.auth import MAX_FAILURES

from .conftest import RawConnection, demo_server, frame, serving, serving_in_thread

TOKEN = "s3cret-token-value"


def test_token_call(run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving(demo_server(tokens=[TOKEN, "another"])) as port:
            async with fastrpc.connect("127.0.0.1", port, token=TOKEN) as client:
                assert await client.call("add", [1, 2]) == 3
            with pytest.raises(fastrpc.Unauthenticated, match="not valid"):
                await fastrpc.connect("127.0.0.1", port, token="wrong")
            async with fastrpc.connect("127.0.0.1", port) as anonymous:
                with pytest.raises(fastrpc.Unauthenticated, match="authentication required"):
                    await anonymous.call("ping")

    with caplog.at_level(logging.DEBUG, logger="fastrpc"):
        run(main())
    assert TOKEN not in caplog.text and "wrong" not in caplog.text


def test_hang_up_after_repeated_failures(run: Any) -> None:
    async def main() -> None:
        async with serving(demo_server(tokens=[TOKEN])) as port:
            raw = await RawConnection.open(port)
            for attempt in range(1, MAX_FAILURES + 1):
                await raw.send(frame(b'{"in": "add", "params": [1, 2], "id": %d}' % attempt))
                reply = await raw.read_frame()
                assert b"-32004" in reply and (b"closing" in reply) == (attempt == MAX_FAILURES)
            assert await raw.at_eof()
            await raw.close()

    run(main())


def test_sync_client_token() -> None:
    with serving_in_thread(demo_server(tokens=[TOKEN])) as port:
        with fastrpc.SyncClient("127.0.0.1", port, token=TOKEN, timeout=5) as client:
            assert client.call_many([("add", [1, 2]), ("ping",)]) == [3, None]
        with pytest.raises(fastrpc.Unauthenticated):
            fastrpc.SyncClient("127.0.0.1", port, token="nope", timeout=5)


def test_bad_tokens() -> None:
    with pytest.raises(ValueError, match="non-empty strings"):
        fastrpc.Server(tokens=[""])
    server = fastrpc.Server(tokens=["a"])
    server.set_tokens([])
    assert not server.tokens
