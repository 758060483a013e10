"""TLS and mutual TLS, with certificates made at test time (trustme): none is committed."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import trustme

import fastrpc
from fastrpc.tls import client_context, server_context

from .conftest import RawConnection, demo_server, free_port, serve, serving_in_thread


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """PEM files: the CA, the server's certificate and key, a client's certificate and key."""
    folder = tmp_path_factory.mktemp("tls")
    server_cert, client_cert = ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("client@example.test")
    paths = {name: str(folder / f"{name}.pem") for name in ("ca", "cert", "key", "client_cert", "client_key")}
    ca.cert_pem.write_to_path(paths["ca"])
    server_cert.cert_chain_pems[0].write_to_path(paths["cert"])
    server_cert.private_key_pem.write_to_path(paths["key"])
    client_cert.cert_chain_pems[0].write_to_path(paths["client_cert"])
    client_cert.private_key_pem.write_to_path(paths["client_key"])
    yield paths


async def start(files: dict, **kwargs: Any) -> fastrpc.Server:
    server = demo_server()
    await server.start("127.0.0.1", 0, ssl=server_context(files["cert"], files["key"], **kwargs))
    return server


def test_tls_call(run: Any, files: dict) -> None:
    async def main() -> None:
        server = await start(files)
        try:
            async with fastrpc.connect("127.0.0.1", server.port, ssl=client_context(files["ca"])) as client:
                assert await client.call("add", [1, 2]) == 3
                assert await client.call("echo", "x" * 300_000) == "x" * 300_000  # many TLS records
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_untrusted_server_is_refused(run: Any, files: dict) -> None:
    async def main() -> None:
        server = await start(files)
        try:
            with pytest.raises(fastrpc.ConnectionClosed, match="could not connect"):
                await fastrpc.connect("127.0.0.1", server.port, ssl=client_context())  # system CAs only
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_mutual_tls(run: Any, files: dict) -> None:
    async def main() -> None:
        server = await start(files, ca=files["ca"])
        try:
            with_cert = client_context(files["ca"], cert=files["client_cert"], key=files["client_key"])
            async with fastrpc.connect("127.0.0.1", server.port, ssl=with_cert) as client:
                assert await client.call("ping", 1) == 1
            # Without a client certificate the handshake fails, at once or (TLS 1.3) at the first exchange.
            with pytest.raises(fastrpc.ConnectionClosed):
                async with fastrpc.connect("127.0.0.1", server.port, ssl=client_context(files["ca"]), timeout=5) as bare:
                    await bare.call("ping")
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_plain_client_gets_nothing_from_a_tls_server(run: Any, files: dict) -> None:
    async def main() -> None:
        server = await start(files)
        try:
            with pytest.raises((fastrpc.ConnectionClosed, fastrpc.CallTimeout)):
                async with fastrpc.connect("127.0.0.1", server.port, timeout=2) as plain:
                    await plain.call("ping")
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_serve_with_tls_options(tmp_path: Path, files: dict) -> None:
    import asyncio

    port = free_port()
    args = ["--port", str(port), "--tls-cert", files["cert"], "--tls-key", files["key"], "--tls-ca", files["ca"]]
    for proc in serve(args, tmp_path):
        async def main() -> None:
            context = client_context(files["ca"], cert=files["client_cert"], key=files["client_key"])
            async with fastrpc.connect("127.0.0.1", port, ssl=context) as client:
                assert await client.call("add", [2, 3]) == 5

        asyncio.run(main())
        call = [sys.executable, "-m", "fastrpc", "call", f"127.0.0.1:{port}", "add", "[4, 5]", "--tls-ca", files["ca"]]
        out = subprocess.run(call + ["--tls-cert", files["client_cert"], "--tls-key", files["client_key"]],
                             capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stdout) == (0, "9\n"), out.stderr
        out = subprocess.run(call, capture_output=True, text=True, timeout=30)  # no client certificate
        assert out.returncode == 3, out.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "(TLS, framing " in proc.stderr.read()
    out = subprocess.run([sys.executable, "-m", "fastrpc", "serve", "--tls-cert", str(tmp_path / "missing.pem")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "cannot load the TLS certificate" in out.stderr
    out = subprocess.run([sys.executable, "-m", "fastrpc", "serve", "--tls-ca", files["ca"]],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "need --tls-cert" in out.stderr


def test_contexts() -> None:
    assert client_context().verify_mode == ssl.CERT_REQUIRED


def test_sync_client_tls(files: dict) -> None:
    server = demo_server()
    context = server_context(files["cert"], files["key"], ca=files["ca"])
    with serving_in_thread(server, ssl=context) as port:
        with_cert = client_context(files["ca"], cert=files["client_cert"], key=files["client_key"])
        with fastrpc.SyncClient("127.0.0.1", port, ssl=with_cert, timeout=10) as client:
            assert client.call("add", [1, 2]) == 3
            assert client.call("echo", "y" * 200_000) == "y" * 200_000
            results: list = []
            threads = [threading.Thread(target=lambda i=i: results.append(
                client.call_many([("add", [i, j]) for j in range(50)]) == [i + j for j in range(50)])) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert results == [True] * 8  # many threads share the TLS session
        with pytest.raises(fastrpc.ConnectionClosed, match="TLS"):
            fastrpc.SyncClient("127.0.0.1", port, ssl=client_context(), timeout=5)  # untrusted
        with pytest.raises(fastrpc.ConnectionClosed):
            with fastrpc.SyncClient("127.0.0.1", port, ssl=client_context(files["ca"]), timeout=5) as bare:
                bare.call("ping")  # no client certificate: refused at the handshake or the first exchange


def test_tls_handshake_that_never_finishes(run: Any, files: dict) -> None:
    """Half a ClientHello, then silence: dropped after the frame timeout while a real client is served."""
    async def main() -> None:
        server = demo_server(frame_timeout=0.3)
        await server.start("127.0.0.1", 0, ssl=server_context(files["cert"], files["key"]))
        try:
            stalled = [await RawConnection.open(server.port) for _ in range(5)]
            for raw in stalled:
                await raw.send(b"\x16\x03\x01\x02\x00\x01")  # a record header announcing 512 bytes, and 1 of them
            async with fastrpc.connect("127.0.0.1", server.port, ssl=client_context(files["ca"])) as client:
                assert await client.call("add", [1, 2]) == 3
                for raw in stalled:
                    assert await asyncio.wait_for(raw.reader.read(100), 5) == b""  # closed, not held for 60 s
                    await raw.close()
                assert await client.call("add", [2, 2]) == 4
        finally:
            server.close()
            await server.wait_closed()

    run(main())
