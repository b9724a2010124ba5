"""NATS and JetStream helpers: connecting with the configured credentials, idempotent stream and consumer setup,
batched publish de-duplicated by batch id.

Subjects: ``costmesh.raw.<node>`` (core NATS, node-local, sensor → redactor), ``costmesh.events.<node>`` (stream
``COSTMESH_EVENTS``, redactor → attributor), ``costmesh.alerts``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable
from typing import TypeVar

import nats
import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from .config import ConfigError, NatsConfig, resolve_secret
from .errors import CostmeshError

log = logging.getLogger(__name__)

RAW_SUBJECT = "costmesh.raw.{node}"
EVENTS_SUBJECT = "costmesh.events.{node}"
EVENTS_WILDCARD = "costmesh.events.>"
ALERTS_SUBJECT = "costmesh.alerts"

#: Connection attempts must give up well inside the 10 s that ``costmesh up`` promises for an unreachable server.
CONNECT_DEADLINE_S = 8.0


T = TypeVar("T")


class Unreachable(CostmeshError):
    """A required server (NATS or PostgreSQL) could not be reached; the message names it and why."""


def _tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    if not (cfg.tls_ca_file or cfg.tls_cert_file or cfg.tls_required or cfg.url.startswith("tls://")):
        return None
    ctx = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
    if cfg.tls_cert_file:
        ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file or None)
    return ctx


async def connect(cfg: NatsConfig, url: str, name: str) -> Client:
    """Connect with TLS/creds/nkey/user/token from config; raises ``Unreachable`` within ``CONNECT_DEADLINE_S``.

    After the first connection succeeds the client reconnects forever: a NATS restart must not stop a service.
    """
    options: dict[str, object] = {
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        # a drain on stop must not outlast the supervisor's patience (it waits 15 s) when the server is gone
        "drain_timeout": 5,
    }
    try:
        tls = _tls_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"nats TLS files: {exc}") from exc
    if tls is not None:
        options["tls"] = tls
        options["tls_hostname"] = "localhost" if "127.0.0.1" in url or "localhost" in url else None
    if cfg.creds_file:
        options["user_credentials"] = cfg.creds_file
    if cfg.nkey_seed_file:
        options["nkeys_seed"] = cfg.nkey_seed_file
    if cfg.user:
        options["user"] = cfg.user
        options["password"] = resolve_secret(cfg.password_env, "nats.password_env")
    if cfg.token_env:
        options["token"] = resolve_secret(cfg.token_env, "nats.token_env")

    first_error: list[BaseException] = []

    async def on_error(exc: BaseException) -> None:
        if not first_error:
            first_error.append(exc)
        log.warning("nats error: %s", exc)

    async def attempt() -> Client:
        while True:
            try:
                return await nats.connect(servers=[url], error_cb=on_error, **options)
            except Exception as exc:  # nats raises a mix of OSError, TimeoutError and its own errors here
                if not first_error:
                    first_error.append(exc)
                await asyncio.sleep(0.5)

    return await within_deadline(attempt(), first_error, f"NATS at {url}")


async def within_deadline(attempt: Awaitable[T], errors: list[BaseException], what: str) -> T:
    """``attempt`` (which retries until it connects, keeping the error worth reporting in ``errors``) within
    ``CONNECT_DEADLINE_S``; else ``Unreachable`` naming ``what`` and that error."""
    try:
        return await asyncio.wait_for(attempt, CONNECT_DEADLINE_S)
    except TimeoutError:
        why = errors[0] if errors else "timed out"
        raise Unreachable(f"could not reach {what} within {CONNECT_DEADLINE_S:g} s: {why!r}") from None


async def ensure_stream(js: JetStreamContext, cfg: NatsConfig) -> None:
    """Create or update the events stream; running it twice changes nothing."""
    stream = StreamConfig(
        name=cfg.stream,
        subjects=[EVENTS_WILDCARD],
        storage=StorageType.FILE,
        num_replicas=cfg.replicas,
        duplicate_window=float(cfg.duplicate_window_s),
        max_age=float(cfg.max_age_h * 3600),
    )
    try:
        await js.stream_info(cfg.stream)
    except NotFoundError:
        await js.add_stream(stream)
        log.info("created stream %s", cfg.stream)
        return
    await js.update_stream(stream)


async def ensure_consumer(js: JetStreamContext, stream: str, durable: str, ack_wait_s: float = 30.0) -> None:
    """Create the durable pull consumer that all attributor replicas share (one work queue)."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        max_ack_pending=4096,
        filter_subject=EVENTS_WILDCARD,
    )
    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:
        await js.add_consumer(stream, config)


async def publish_batch(js: JetStreamContext, subject: str, batch_id: str, payload: bytes) -> None:
    """Publish one batch with ``Nats-Msg-Id`` = batch id so the server drops a re-sent copy."""
    await js.publish(subject, payload, headers={"Nats-Msg-Id": batch_id})


async def drain_or_close(nc: Client) -> None:
    """Finish in-flight messages on stop; when the server is gone (draining raises), just close."""
    try:
        await nc.drain()
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        log.warning("could not drain the NATS connection, closing it", extra={"why": type(exc).__name__})
        await nc.close()
