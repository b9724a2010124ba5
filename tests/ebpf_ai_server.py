"""A small OpenAI-compatible endpoint over HTTPS, run as its own process by the live-capture tests so that the
client's TLS plaintext and the server's come from different pids.

Usage: python ebpf_ai_server.py CERT KEY PORT. Answers POST /v1/chat/completions with a fixed completion whose
``usage`` the tests know; prints "ready" once listening.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys

from aiohttp import web

USAGE = {
    "prompt_tokens": 37,
    "completion_tokens": 12,
    "total_tokens": 49,
    "prompt_tokens_details": {"cached_tokens": 5},
    "completion_tokens_details": {"reasoning_tokens": 3},
}


async def completions(request: web.Request) -> web.Response:
    body = await request.json()
    answer = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": body.get("model", "gpt-test"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
    return web.Response(body=json.dumps(answer, separators=(",", ":")).encode(), content_type="application/json")


async def main(cert: str, key: str, port: int) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes our stdin
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
