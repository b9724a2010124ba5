"""Delivery of the notification outbox to Slack (an incoming webhook) and to a generic JSON webhook.

Reads: ``alert_outbox`` rows of one receiver, oldest first; the URLs and the HMAC key from the environment variables
the config names (secrets: never in the config file, never logged). Writes: ``sent_at`` the moment a receiver
accepted a row, or ``failed`` with the reason it never will. One named task per receiver, run by the leader only,
so Slack's pace holds across replicas and a slow receiver never holds up the other.

Slack's answers, and what they get:
- 200 ``ok``: delivered. At most one message per second per webhook (Slack's limit, with short bursts), also after
  a restart (the last ``sent_at`` is read back).
- 429 with ``Retry-After`` (seconds): wait that long, then the same message again (order is kept).
- 5xx, or no answer: retried with exponential back-off.
- 400 ``invalid_blocks`` (and its kin): the blocks were refused, so the plain ``text`` fallback is sent instead.
- Any other 4xx (a revoked webhook, an archived channel): will not get better; counted and recorded as failed.
A row is given up after ``MAX_ATTEMPTS`` tries. A crash between a receiver's 200 and the ``sent_at`` commit is the
one case that sends a row twice; the generic webhook carries ``X-Costmesh-Delivery`` (the outbox id) so a receiver
can drop the copy.

The generic webhook's body is the ``notify.Notification`` JSON, signed: ``X-Costmesh-Signature: t=<unix seconds>,
v1=<hex HMAC-SHA256 of "<t>." + body>`` (the timestamp is signed too, so a captured request cannot be replayed later
unnoticed); any 2xx is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
from prometheus_client import Counter

from costmesh.common.metrics import ERRORS, REGISTRY

from . import blockkit
from .notify import Receiver

log = logging.getLogger(__name__)

NOTIFICATIONS = Counter(
    "costmesh_alert_notifications_total",
    "Alert notifications handed to receivers, by receiver and outcome (sent, text_only, failed, retried).",
    ["receiver", "outcome"],
    registry=REGISTRY,
)

MAX_ATTEMPTS = 12
#: Slack's rate limit for incoming webhooks: one message per second.
SLACK_INTERVAL_S = 1.0
MAX_BACKOFF_S = 30.0
#: A Retry-After longer than this is taken as this (a broken header must not park alerts for a day).
MAX_RETRY_AFTER_S = 60.0
#: Slack's answers that mean "the blocks are wrong": the text alone will go through.
BLOCK_ERRORS = frozenset({"invalid_blocks", "invalid_blocks_format", "too_many_blocks", "invalid_attachments"})


def signature(key: bytes, timestamp: int, body: bytes) -> str:
    """The value of ``X-Costmesh-Signature`` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass(frozen=True)
class Target:
    receiver: Receiver
    url: str
    hmac_key: bytes = b""


@dataclass
class _Answer:
    status: int
    text: str
    retry_after: float | None


class Sender:
    """Delivers one receiver's outbox, in order, at the receiver's pace."""

    def __init__(self, target: Target, conn: asyncpg.Connection, session: aiohttp.ClientSession) -> None:
        self.target = target
        self.conn = conn
        self.session = session
        self.wake = asyncio.Event()
        self._last_post = 0.0

    async def run(self, stopping: asyncio.Event) -> None:
        last = await self.conn.fetchval(
            "SELECT extract(epoch FROM max(sent_at))::float8 FROM alert_outbox WHERE receiver = $1",
            self.target.receiver,
        )
        if last:  # pace from the last message sent, also by an earlier leader
            self._last_post = time.monotonic() - max(time.time() - last, 0.0)
        while not stopping.is_set():
            rows = await self.conn.fetch(
                "SELECT outbox_id, body, attempts FROM alert_outbox WHERE receiver = $1 AND sent_at IS NULL "
                "AND failed IS NULL ORDER BY outbox_id LIMIT 20",
                self.target.receiver,
            )
            if not rows:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken(stopping), 1.0)
                continue
            for row in rows:
                if stopping.is_set():
                    return
                await self._deliver(row["outbox_id"], json.loads(row["body"]), row["attempts"], stopping)

    async def _woken(self, stopping: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _deliver(self, outbox_id: int, body: dict, attempts: int, stopping: asyncio.Event) -> None:
        receiver = self.target.receiver
        backoff = 0.5
        text_only = False
        while attempts < MAX_ATTEMPTS and not stopping.is_set():
            attempts += 1
            payload = blockkit.text_only(body) if text_only else body
            answer = await self._post(outbox_id, payload)
            wait = backoff
            if answer is not None and answer.retry_after is not None:
                wait = min(answer.retry_after, MAX_RETRY_AFTER_S)
            if answer is not None and 200 <= answer.status < 300:
                await self._done(outbox_id, attempts, None)
                NOTIFICATIONS.labels(receiver, "text_only" if text_only else "sent").inc()
                return
            if answer is None or answer.status == 429 or answer.status >= 500:
                NOTIFICATIONS.labels(receiver, "retried").inc()
                log.warning(
                    "receiver asked to retry",
                    extra={"receiver": receiver, "status": answer.status if answer else 0, "wait_s": wait},
                )
            elif receiver == "slack" and answer.status == 400 and answer.text.strip() in BLOCK_ERRORS and not text_only:
                ERRORS.labels("attributor", "slack_blocks_refused").inc()
                log.error("slack refused the blocks; sending the text alone", extra={"why": answer.text[:100]})
                text_only = True
                continue
            else:
                ERRORS.labels("attributor", f"{receiver}_rejected").inc()
                log.error("receiver rejected a notification", extra={"receiver": receiver, "status": answer.status})
                await self._done(outbox_id, attempts, f"HTTP {answer.status}: {answer.text[:200]}")
                NOTIFICATIONS.labels(receiver, "failed").inc()
                return
            await self.conn.execute("UPDATE alert_outbox SET attempts = $2 WHERE outbox_id = $1", outbox_id, attempts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        if attempts >= MAX_ATTEMPTS:
            ERRORS.labels("attributor", f"{receiver}_gave_up").inc()
            await self._done(outbox_id, attempts, f"gave up after {attempts} attempts")
            NOTIFICATIONS.labels(receiver, "failed").inc()

    async def _done(self, outbox_id: int, attempts: int, failed: str | None) -> None:
        await self.conn.execute(
            "UPDATE alert_outbox SET attempts = $2, sent_at = CASE WHEN $3::text IS NULL THEN now() END, "
            "failed = $3 WHERE outbox_id = $1",
            outbox_id,
            attempts,
            failed,
        )

    async def _post(self, outbox_id: int, payload: dict) -> _Answer | None:
        """One POST; ``None`` when the receiver could not be reached."""
        data = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        if self.target.receiver == "slack":
            pause = self._last_post + SLACK_INTERVAL_S - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
        else:
            headers["X-Costmesh-Delivery"] = str(outbox_id)
            headers["X-Costmesh-Signature"] = signature(self.target.hmac_key, int(time.time()), data)
        try:
            async with self.session.post(self.target.url, data=data, headers=headers) as resp:
                text = await resp.text()
                retry_after = resp.headers.get("Retry-After", "")
                return _Answer(resp.status, text, float(retry_after) if retry_after.isdigit() else None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("receiver unreachable", extra={"receiver": self.target.receiver, "why": type(exc).__name__})
            return None
        finally:
            self._last_post = time.monotonic()
