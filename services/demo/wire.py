"""Bytes on the wire, counted where the server meets its socket: the truth of the byte-metered bill lines (NAT,
queue) must be what crossed the connection, headers and chunk framing included, not what a handler thinks it sent.

``serve`` runs an aiohttp application behind a protocol that counts every byte received and written per
connection (for TLS, the plaintext: the counting sits above the TLS layer). A handler takes its request's bytes with
``request_bytes`` once it has read the body, and its response's bytes as the growth of ``sent_so_far`` from its
start to after ``write_eof``.
This is exact because HTTP/1.1 clients here never pipeline: a connection carries one request at a time.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiohttp import web


class CountingTransport:
    """A transport that counts what is written through it and what its protocol received; the rest is delegated."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self._inner = inner
        self.received = 0
        self.sent = 0
        self._received_mark = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        self._inner.write(data)

    def writelines(self, chunks: Any) -> None:
        data = b"".join(chunks)
        self.sent += len(data)
        self._inner.write(data)

    def take_received(self) -> int:
        """Bytes received since the last call: one whole request when called after its body was read."""
        n, self._received_mark = self.received - self._received_mark, self.received
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _CountingProtocol(asyncio.Protocol):
    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        self._transport: CountingTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = CountingTransport(transport)  # type: ignore[arg-type]
        self._inner.connection_made(self._transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.received += len(data)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


async def listen(
    runner: web.AppRunner, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> asyncio.Server:
    """Serve a set-up runner's app on ``host:port`` with byte counting (one runner may listen several times)."""
    handler = runner.server
    assert handler is not None
    return await asyncio.get_running_loop().create_server(
        lambda: _CountingProtocol(handler()), host, port, ssl=ssl_context
    )


async def serve(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, asyncio.Server]:
    """Serve ``app`` on ``host:port`` with byte counting; close with ``server.close()`` then ``runner.cleanup()``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner, await listen(runner, host, port, ssl_context)


def _counter(request: web.BaseRequest) -> CountingTransport:
    transport = request.transport
    if not isinstance(transport, CountingTransport):
        raise RuntimeError("request not served through costmesh.demo.wire.serve")
    return transport


def request_bytes(request: web.BaseRequest) -> int:
    """The bytes of this request as received (head and body); call once, after the body was read."""
    return _counter(request).take_received()


def sent_so_far(request: web.BaseRequest) -> int:
    return _counter(request).sent
