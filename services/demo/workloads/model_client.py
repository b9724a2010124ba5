"""Calls to the model endpoint as an application makes them to api.openai.com: the OpenAI chat completions API over
HTTP or HTTPS (the name resolved to the endpoint's loopback address, certificate checked for the name), a JSON
answer or an SSE stream with ``stream_options.include_usage``. Each call has a request id
(``X-Client-Request-Id``, as OpenAI's API accepts) that the caller writes to the truth with the tenant it called for.
"""

from __future__ import annotations

import json
import socket
import ssl
import uuid
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ..plan import MODEL_HOST, MODEL_NAME
from ..truth import ModelAsked
from .base import Workload

PATH = "/v1/chat/completions"
WORDS = ("order", "customer", "invoice", "shipping", "refund", "discount", "inventory", "delivery", "account", "plan")


class _PinnedResolver(AbstractResolver):
    """Resolves the model's public name to its loopback address (what DNS would answer), nothing else."""

    def __init__(self, host: str, address: str) -> None:
        self.host, self.address = host, address

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        if host != self.host:
            raise OSError(f"unknown host {host}")
        return [
            ResolveResult(
                hostname=host, host=self.address, port=port, family=socket.AF_INET, proto=0, flags=socket.AI_NUMERICHOST
            )
        ]

    async def close(self) -> None:
        pass


def prompt(words: int, seed: int) -> str:
    return " ".join(WORDS[(seed + i * 7) % len(WORDS)] for i in range(words))


class ModelClient:
    """One workload's connections to the model endpoint (both schemes)."""

    def __init__(self, w: Workload) -> None:
        self.w = w
        tls = ssl.create_default_context(cafile=w.plan.tls_chain)
        connector = aiohttp.TCPConnector(
            local_addr=(w.address, 0), resolver=_PinnedResolver(MODEL_HOST, w.plan.addresses["model"]), ssl=tls
        )
        self.http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))

    async def close(self) -> None:
        await self.http.close()

    async def ask(
        self, tenant: str, words: int, max_tokens: int, *, stream: bool, https: bool, user: bool, seed: int = 0
    ) -> dict[str, Any]:
        """One chat completion for ``tenant``; returns the ``usage`` the endpoint reported. ``user`` puts the tenant
        in the request's ``user`` field (the OpenAI way of naming the end user)."""
        request_id = uuid.uuid4().hex
        self.w.truth.write(ModelAsked(request_id, tenant, self.w.name))
        body: dict[str, Any] = {
            "model": MODEL_NAME,
            "messages": [
                {"role": "system", "content": "You help the customers of a small online shop."},
                {"role": "user", "content": prompt(words, seed)},
            ],
            "max_tokens": max_tokens,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if user:
            body["user"] = tenant
        scheme, port = ("https", "model_https") if https else ("http", "model_http")
        url = f"{scheme}://{MODEL_HOST}:{self.w.plan.ports[port]}{PATH}"
        headers = {
            "Host": MODEL_HOST,
            "Authorization": "Bearer sk-demo-not-a-real-key",
            "Content-Type": "application/json",
            "X-Client-Request-Id": request_id,
        }
        async with self.http.post(url, data=json.dumps(body), headers=headers) as resp:
            resp.raise_for_status()
            if not stream:
                return (await resp.json())["usage"]
            usage: dict[str, Any] = {}
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
            return usage
