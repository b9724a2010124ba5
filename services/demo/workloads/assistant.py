"""The AI assistant: answers a customer's question by calling the model (JSON or SSE, HTTP or HTTPS as the request
asks); in direct mode the tenant goes in the OpenAI ``user`` field."""

from __future__ import annotations

from aiohttp import web

from .base import Workload
from .model_client import ModelClient


async def main(w: Workload) -> None:
    model = ModelClient(w)
    calls = 0

    async def assist(request: web.Request) -> web.Response:
        nonlocal calls
        tenant = w.tenant_of(request)
        ask = await request.json()
        calls += 1
        usage = await model.ask(
            tenant,
            ask["prompt_words"],
            ask["max_tokens"],
            stream=ask["stream"],
            https=ask["https"],
            user=w.plan.mode == "direct",
            seed=calls,
        )
        return web.json_response({"usage": usage})

    app = web.Application(middlewares=[w.timed()])
    app.router.add_post("/assist", assist)
    try:
        await w.serve_until_stopped(app)
    finally:
        await model.close()
