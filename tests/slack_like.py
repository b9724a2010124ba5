"""A local HTTP receiver that answers as Slack's incoming webhooks do, for tests and ``loadtests/bench_alerts.py``.

Slack's answers (api.slack.com/messaging/webhooks): 200 ``ok``; 429 ``rate_limited`` with ``Retry-After`` (seconds);
400 ``invalid_payload`` / ``invalid_blocks`` for a body it cannot use; 403 ``action_prohibited``; 404
``no_service`` / ``channel_not_found``; 410 ``channel_is_archived``; 500 ``rollup_error``. Besides a script of answers
for the first requests, it checks each message as Slack would: more than 50 blocks, or a section text past 3,000
characters, is refused with ``invalid_blocks``. It records every request with its arrival time (``time.time()``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from aiohttp import web

ANSWERS = {
    200: "ok",
    400: "invalid_payload",
    403: "action_prohibited",
    404: "no_service",
    410: "channel_is_archived",
    429: "rate_limited",
    500: "rollup_error",
}


@dataclass
class Received:
    at: float
    body: dict
    headers: dict[str, str]
    raw: bytes


def slack_refusal(body: dict) -> str:
    """What Slack says of a message it refuses; '' for one it takes."""
    if not isinstance(body.get("text"), str) and "blocks" not in body:
        return "invalid_payload"
    blocks = body.get("blocks", [])
    if len(blocks) > 50:
        return "invalid_blocks"
    for b in blocks:
        texts = [b.get("text", {}).get("text", "")] + [f.get("text", "") for f in b.get("fields", [])]
        limit = 150 if b.get("type") == "header" else 3000
        if any(len(t) > limit for t in texts) or len(b.get("fields", [])) > 10:
            return "invalid_blocks"
    return ""


@dataclass
class SlackLike:
    """``script``: (status, body or None, Retry-After or None) answers for the first requests, then 200 ``ok``."""

    script: list[tuple[int, str | None, str | None]] = field(default_factory=list)
    path: str = "/services/T000/B000/XXXX"
    requests: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        got = Received(time.time(), json.loads(raw), dict(request.headers), raw)
        n = len(self.requests)
        self.requests.append(got)
        if n < len(self.script):
            status, text, retry_after = self.script[n]
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            if status != 200:
                return web.Response(status=status, text=text or ANSWERS.get(status, "error"), headers=headers)
        refusal = slack_refusal(got.body) if self.path.startswith("/services/") else ""
        if refusal:
            return web.Response(status=400, text=refusal)
        self.accepted.append(got)
        return web.Response(text="ok")

    async def start(self) -> SlackLike:
        app = web.Application()
        app.router.add_post(self.path, self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{self.path}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
