"""The job queue: a managed queue's HTTP API (send, long-poll receive, delete), in memory. It knows messages, not
tenants; every API call's bytes go to the truth under the message it was about (none for an empty receive)."""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web

from ..truth import QueueServed
from ..wire import request_bytes, sent_so_far
from .base import Workload

PATH = "/v1/queues/jobs/messages"


async def main(w: Workload) -> None:
    ready: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    in_flight: dict[str, bytes] = {}

    async def answered(request: web.Request, resp: web.StreamResponse, body: bytes, operation: str, message: str):
        await resp.prepare(request)
        if body:
            await resp.write(body)
        await resp.write_eof()
        w.truth.write(QueueServed(operation, message, request["received"], sent_so_far(request) - request["sent"]))
        return resp

    async def begin(request: web.Request) -> bytes:
        request["sent"] = sent_so_far(request)
        body = await request.read()
        request["received"] = request_bytes(request)
        return body

    async def send(request: web.Request) -> web.StreamResponse:
        body = await begin(request)
        message = uuid.uuid4().hex
        ready.put_nowait((message, body))
        out = b'{"id":"%s"}' % message.encode()
        resp = web.StreamResponse(status=201, headers={"Content-Type": "application/json"})
        resp.content_length = len(out)
        return await answered(request, resp, out, "send", message)

    async def receive(request: web.Request) -> web.StreamResponse:
        await begin(request)
        wait_s = int(request.query.get("wait_ms", "0")) / 1000
        try:
            message, body = await asyncio.wait_for(ready.get(), wait_s)
        except TimeoutError:
            return await answered(request, web.StreamResponse(status=204), b"", "receive", "")
        in_flight[message] = body
        out = b'{"id":"%s","body":%s}' % (message.encode(), body)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(out)
        return await answered(request, resp, out, "receive", message)

    async def delete(request: web.Request) -> web.StreamResponse:
        await begin(request)
        message = request.match_info["message"]
        if in_flight.pop(message, None) is None:
            raise web.HTTPNotFound()
        return await answered(request, web.StreamResponse(status=204), b"", "delete", message)

    app = web.Application()
    app.router.add_post(PATH, send)
    app.router.add_get(PATH, receive)
    app.router.add_delete(PATH + "/{message}", delete)
    await w.serve_until_stopped(app)
