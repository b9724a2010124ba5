"""Slack delivery of runaway-AI-cost alerts through an incoming webhook.

Reads: ``Alert`` events handed to ``SlackNotifier.send``; the webhook URL from the environment variable named by
``config.slack.webhook_url_env`` (it is a secret: never in the config file, never logged). Emits: one HTTP POST per
alert, in order, from one named task, so the detector never waits on Slack.

Slack answers 200 ``ok``; 429 with ``Retry-After`` (seconds) when rate limited, and 5xx when unwell: both are
retried (Retry-After honoured, else exponential back-off) until ``max_attempts``. Other 4xx (a revoked webhook, a bad
payload) will not get better by retrying: counted as an error and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import aiohttp

from costmesh.common.metrics import ERRORS
from costmesh.common.schemas import Alert

log = logging.getLogger(__name__)


def _dollars(micros: int) -> str:
    return f"${micros // 1_000_000:,}.{micros % 1_000_000 // 10_000:02d}"


def format_alert(alert: Alert) -> dict[str, object]:
    """The webhook payload: a one-line ``text`` (notifications) plus fields for the reader."""
    icon = ":rotating_light:" if alert.state == "firing" else ":white_check_mark:"
    head = f"{icon} {alert.message}"
    scope = [f"tenant {alert.tenant or '(none)'}"]
    scope += [f"feature {alert.feature}"] if alert.feature else []
    scope += [f"agent {alert.agent}"] if alert.agent else []
    facts = [", ".join(scope), f"rate {_dollars(alert.rate_micros_per_hour)}/h over {alert.window_s} s"]
    if alert.reason == "budget":
        facts.append(f"budget {_dollars(alert.budget_micros_per_hour)}/h")
    else:
        facts.append(f"baseline {_dollars(alert.baseline_micros_per_hour)}/h")
    since = datetime.fromtimestamp(alert.started_at_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts.append(f"since {since}")
    return {"text": f"{head} ({', '.join(facts)}) [alert {alert.alert_id}]"}


class SlackNotifier:
    """Posts alerts to one webhook, in order, retrying what Slack asks to be retried."""

    def __init__(self, url: str, max_attempts: int = 8, max_backoff_s: float = 30.0) -> None:
        self.url = url
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self.delivered = 0
        self.dropped = 0
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=1000)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._task = asyncio.create_task(self._sender(), name="slack-sender")

    def send(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            ERRORS.labels("attributor", "slack_queue_full").inc()

    async def flush(self) -> None:
        await self._queue.join()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _sender(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                if await self.post(alert):
                    self.delivered += 1
                else:
                    self.dropped += 1
            finally:
                self._queue.task_done()

    async def post(self, alert: Alert) -> bool:
        """Deliver one alert; True once Slack accepted it."""
        assert self._session is not None, "start() first"
        payload = format_alert(alert)
        backoff = 0.5
        for attempt in range(1, self.max_attempts + 1):
            wait = backoff
            try:
                async with self._session.post(self.url, json=payload) as resp:
                    body = await resp.text()
                    if resp.status == 200:
                        return True
                    if resp.status == 429 or resp.status >= 500:
                        retry_after = resp.headers.get("Retry-After", "")
                        if retry_after.isdigit():
                            wait = float(retry_after)
                        log.warning(
                            "slack webhook asked to retry",
                            extra={"status": resp.status, "attempt": attempt, "wait_s": wait},
                        )
                    else:
                        ERRORS.labels("attributor", "slack_rejected").inc()
                        log.error("slack webhook rejected an alert", extra={"status": resp.status, "body": body[:200]})
                        return False
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("slack webhook unreachable", extra={"why": repr(exc), "attempt": attempt})
            await asyncio.sleep(min(wait, self.max_backoff_s))
            backoff = min(backoff * 2, self.max_backoff_s)
        ERRORS.labels("attributor", "slack_gave_up").inc()
        return False
