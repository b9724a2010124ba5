"""The model endpoint: an OpenAI-compatible chat completions API standing for api.openai.com, over HTTP and HTTPS.

It counts tokens as a provider does for its invoice (a fixed tokenizer: words and punctuation, plus a few tokens
of overhead per message) and answers with exactly ``max_tokens`` output tokens, as JSON with ``usage`` or as an SSE
stream whose last chunk carries ``usage`` when ``stream_options.include_usage`` is set (OpenAI's shape). Each call's
tokens and its bytes on the wire go to the truth under the caller's request id.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from typing import Any

from aiohttp import web

from ..truth import ModelServed, TruthWriter
from ..wire import listen, request_bytes, sent_so_far, serve
from .base import Workload

TRUTH = web.AppKey("truth", TruthWriter)
_TOKEN = re.compile(r"\w+|[^\w\s]")
PER_MESSAGE = 3
PER_REPLY = 3
ANSWER = ("Thanks", "for", "asking", ";", "your", "order", "ships", "today", "and", "arrives", "soon", ".")


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return PER_REPLY + sum(PER_MESSAGE + len(_TOKEN.findall(str(m.get("content", "")))) for m in messages)


def answer(tokens: int) -> list[str]:
    return [ANSWER[i % len(ANSWER)] for i in range(tokens)]


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


async def completions(request: web.Request) -> web.StreamResponse:
    sent_before = sent_so_far(request)
    body = await request.json()
    received = request_bytes(request)
    usage = {
        "prompt_tokens": prompt_tokens(body["messages"]),
        "completion_tokens": int(body.get("max_tokens", 16)),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    words = answer(usage["completion_tokens"])
    base = {"id": f"chatcmpl-{request.headers.get('X-Client-Request-Id', '')[:24]}", "created": int(time.time())}
    base["model"] = body.get("model", "")
    stream = bool(body.get("stream"))
    if not stream:
        doc = {
            **base,
            "object": "chat.completion",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}
            ],
            "usage": usage,
        }
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        payload = _dumps(doc)
        resp.content_length = len(payload)
        await resp.prepare(request)
        await resp.write(payload)
    else:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        await resp.write(b"data: " + _dumps({**chunk, "choices": [first]}) + b"\n\n")
        for i in range(0, len(words), 8):
            delta = {"index": 0, "delta": {"content": " ".join(words[i : i + 8]) + " "}, "finish_reason": None}
            await resp.write(b"data: " + _dumps({**chunk, "choices": [delta]}) + b"\n\n")
        done = {"index": 0, "delta": {}, "finish_reason": "stop"}
        await resp.write(b"data: " + _dumps({**chunk, "choices": [done]}) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + _dumps({**chunk, "choices": [], "usage": usage}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    request.app[TRUTH].write(
        ModelServed(
            request_id=request.headers.get("X-Client-Request-Id", ""),
            tokens_in=usage["prompt_tokens"],
            tokens_out=usage["completion_tokens"],
            bytes_in=received,
            bytes_out=sent_so_far(request) - sent_before,
            stream=stream,
            tls=request.secure,
        )
    )
    return resp


async def main(w: Workload) -> None:
    app = web.Application()
    app[TRUTH] = w.truth
    app.router.add_post("/v1/chat/completions", completions)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(w.plan.tls_chain, w.plan.tls_key)
    runner, plain = await serve(app, w.address, w.plan.ports["model_http"])
    secure = await listen(runner, w.address, w.plan.ports["model_https"], tls)
    w.on_ready()
    try:
        await w.stopping.wait()
    finally:
        plain.close()
        secure.close()
        await runner.cleanup()
