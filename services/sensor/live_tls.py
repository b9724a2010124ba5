"""TLS plaintext (from the OpenSSL uprobes) → HTTP calls with tenant, model and token usage, per window.

Reads: ``TlsChunk`` batches from ``LiveCapture`` (one per SSL_read/SSL_write call or part of one), per process and
SSL connection. Emits: ``ObservedCall`` records (protocol ``http``, ``dst`` the Host header, ``operation``
``"METHOD /path"`` as seen) with ``tokens_*``, ``provider`` and ``model`` read from the response's ``usage`` object.

This is the interim TLS parser of the live-capture work: the Cython HTTP and AI parsers of the issue "Sensor hot
path" take its place behind the same ``TlsSink`` protocol. It understands HTTP/1.1 with Content-Length or chunked
bodies, JSON and SSE (streamed) responses, and the usage shapes of OpenAI (chat completions and responses) and
Anthropic. ``ai_usage`` is the small helper the AI parser replaces.

Which side of a connection the process is on is read from the first bytes: a process that writes a request is the
client, one that reads a request is the server; either way requests and responses are paired in order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from costmesh.common.config import Config
from costmesh.common.metrics import ERRORS
from costmesh.common.schemas import ObservedCall

from .live import TlsChunk

log = logging.getLogger(__name__)

TLS_CHUNK = 4096  # records.h
_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"PATCH ", b"HEAD ", b"OPTIONS ")
_MAX_STREAM = 8 << 20  # a stream buffering more than this without a complete message is dropped
IDLE_US = 300_000_000  # a TLS connection without plaintext for 5 minutes is forgotten (SSL* pointers get reused)


@dataclass(slots=True)
class Usage:
    """Tokens of one AI call, as the provider's response reports them."""

    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    tokens_reasoning: int = 0
    model: str = ""


def _usage_of(obj: dict) -> Usage | None:
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    u = Usage(model=str(obj.get("model") or ""))
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # OpenAI chat completions
        u.tokens_in = int(usage.get("prompt_tokens") or 0)
        u.tokens_out = int(usage.get("completion_tokens") or 0)
        u.tokens_cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        u.tokens_reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    else:  # OpenAI responses API and Anthropic messages
        u.tokens_in = int(usage.get("input_tokens") or 0)
        u.tokens_out = int(usage.get("output_tokens") or 0)
        u.tokens_cached = int(
            (usage.get("input_tokens_details") or {}).get("cached_tokens") or usage.get("cache_read_input_tokens") or 0
        )
        u.tokens_reasoning = int((usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0)
    return u


def ai_usage(body: bytes, content_type: str = "") -> Usage | None:
    """The token usage in an AI response body (JSON, or SSE whose events carry ``usage``); ``None`` when absent."""
    if b'"usage"' not in body:
        return None
    if "text/event-stream" in content_type or body.lstrip().startswith(b"data:") or body.startswith(b"event:"):
        found: Usage | None = None
        model = ""
        for line in body.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if not payload or payload == b"[DONE]":
                continue
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            inner = obj.get("response") if isinstance(obj.get("response"), dict) else obj.get("message")
            for candidate in (obj, inner if isinstance(inner, dict) else {}):
                model = str(candidate.get("model") or model)
                u = _usage_of(candidate)
                if u is not None:
                    if found is not None and u.tokens_in == 0:  # Anthropic message_delta: output only
                        found.tokens_out = u.tokens_out or found.tokens_out
                    else:
                        found = u
        if found is not None:
            found.model = found.model or model
        return found
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    return _usage_of(obj) if isinstance(obj, dict) else None


@dataclass(slots=True)
class HttpMessage:
    start: bytes
    headers: dict[bytes, bytes]
    body: bytes
    ts_us: int
    size: int


def _take_message(buf: bytearray, ts_us: int) -> HttpMessage | None:
    """Remove and return one complete HTTP/1.x message from the front of ``buf``; ``None`` until it is complete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    pos = end + 4
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            try:
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            except ValueError:
                raise ValueError("bad chunk size") from None
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
            if size == 0:
                break
        data = bytes(body)
    else:
        length = int(headers.get(b"content-length", b"0") or 0)
        if len(buf) < pos + length:
            return None
        data = bytes(buf[pos : pos + length])
        pos += length
    del buf[:pos]
    return HttpMessage(lines[0], headers, data, ts_us, pos)


@dataclass
class _Conn:
    role: str = ""  # "client" (writes requests) or "server" (reads requests)
    out: bytearray = field(default_factory=bytearray)  # written by the process
    inp: bytearray = field(default_factory=bytearray)  # read by the process
    out_ts: int = 0
    inp_ts: int = 0
    requests: list[HttpMessage] = field(default_factory=list)
    last_us: int = 0  # last plaintext seen: connections idle for IDLE_US are forgotten


PidNamer = Callable[[int, int, str], str]


class TlsHttpSink:
    """Assembles per-connection plaintext streams, parses HTTP/1.1 from them and aggregates calls per window."""

    def __init__(
        self,
        config: Config,
        node: str,
        *,
        window_us: int = 1_000_000,
        name_of_pid: PidNamer | None = None,
        max_chunks: int = 16,
        keep_plaintext: int = 0,
    ) -> None:
        self.config = config
        self.node = node
        self.window_us = window_us
        self.name_of_pid = name_of_pid or (lambda pid, _cg, comm: f"{comm}[{pid}]")
        self.max_chunks = max_chunks
        self.conns: dict[tuple[int, int], _Conn] = {}
        self.totals: dict[tuple, list[int]] = {}
        #: With keep_plaintext > 0, the first bytes of each (pid, ssl, direction) stream, for inspection and tests.
        self.keep_plaintext = keep_plaintext
        self.plaintext: dict[tuple[int, int, str], bytearray] = {}
        self._latest_us = 0

    def feed_tls(self, chunks: Sequence[TlsChunk]) -> None:
        for c in chunks:
            conn = self.conns.setdefault((c.pid, c.ssl), _Conn())
            conn.last_us = c.ts_us
            self._latest_us = max(self._latest_us, c.ts_us)
            if self.keep_plaintext:
                kept = self.plaintext.setdefault((c.pid, c.ssl, c.direction), bytearray())
                if len(kept) < self.keep_plaintext:
                    kept += c.data[: self.keep_plaintext - len(kept)]
            buf = conn.out if c.direction == "write" else conn.inp
            want = min(TLS_CHUNK, c.length - c.offset)
            cut = len(c.data) < want or (
                c.offset == (self.max_chunks - 1) * TLS_CHUNK and c.offset + len(c.data) < c.length
            )
            if cut:
                ERRORS.labels("sensor", "tls_truncated").inc()
                buf.clear()  # the stream has a gap: start again at the next message
                continue
            if not buf:
                if c.direction == "write":
                    conn.out_ts = c.ts_us
                else:
                    conn.inp_ts = c.ts_us
            buf += c.data
            if not conn.role:
                if conn.out.startswith(_METHODS):
                    conn.role = "client"
                elif conn.inp.startswith(_METHODS):
                    conn.role = "server"
            try:
                self._parse(c.pid, c.cgroup_id, c.comm, conn)
            except ValueError as exc:
                ERRORS.labels("sensor", "tls_http").inc()
                log.debug("unparseable TLS plaintext of pid %d: %s", c.pid, exc)
                conn.out.clear()
                conn.inp.clear()
                conn.requests.clear()
            if len(buf) > _MAX_STREAM:
                ERRORS.labels("sensor", "tls_http").inc()
                buf.clear()

    def _parse(self, pid: int, cgroup_id: int, comm: str, conn: _Conn) -> None:
        if not conn.role:
            return
        req_buf, resp_buf = (conn.out, conn.inp) if conn.role == "client" else (conn.inp, conn.out)
        req_ts, resp_ts = (conn.out_ts, conn.inp_ts) if conn.role == "client" else (conn.inp_ts, conn.out_ts)
        while req_buf.startswith(_METHODS):
            msg = _take_message(req_buf, req_ts)
            if msg is None:
                break
            conn.requests.append(msg)
        while conn.requests and resp_buf.startswith(b"HTTP/1."):
            msg = _take_message(resp_buf, resp_ts)
            if msg is None:
                break
            self._call(pid, cgroup_id, comm, conn.role, conn.requests.pop(0), msg)

    def _ids(self, req: HttpMessage) -> dict[str, tuple[str, str, str]]:
        found: dict[str, tuple[str, str, str]] = {}
        body_obj: object = None
        for rule in self.config.rules:
            if rule.target in found:
                continue
            if rule.source == "header":
                value = req.headers.get(rule.key.lower().encode())
                if value:
                    found[rule.target] = (value.decode("latin-1"), rule.name or f"header:{rule.key}", "header")
            elif rule.source == "baggage":
                for item in req.headers.get(b"baggage", b"").decode("latin-1").split(","):
                    k, _, v = item.strip().partition("=")
                    if k == rule.key and v:
                        found[rule.target] = (v.split(";")[0], rule.name or f"baggage:{rule.key}", "baggage")
            elif rule.source == "body" and req.body:
                if body_obj is None:
                    try:
                        body_obj = json.loads(req.body)
                    except ValueError:
                        body_obj = {}
                value: object = body_obj
                for part in rule.key.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                if isinstance(value, str | int) and value != "":
                    found[rule.target] = (str(value), rule.name or f"body:{rule.key}", "body")
        return found

    def _call(self, pid: int, cgroup_id: int, comm: str, role: str, req: HttpMessage, resp: HttpMessage) -> None:
        method, _, rest = req.start.partition(b" ")
        target = rest.rpartition(b" ")[0] or rest
        host = req.headers.get(b"host", b"").decode("latin-1")
        try:
            status = int(resp.start[9:12])
        except ValueError:
            status = 0
        usage = ai_usage(resp.body, resp.headers.get(b"content-type", b"").decode("latin-1"))
        provider = ""
        if usage is not None:
            provider = "anthropic" if "anthropic" in host else "openai" if "openai" in host else "openai-compatible"
        ids = self._ids(req)
        me = self.name_of_pid(pid, cgroup_id, comm)
        # Plaintext does not say who the peer is: a client's peer is named by the Host header; a server's caller is
        # not known from plaintext alone, so it stays "tls-client".
        src, dst = (me, host or "tls") if role == "client" else ("tls-client", me)
        tenant, rule, method_name = ids.get("tenant", ("", "", "unallocated"))
        window = req.ts_us - req.ts_us % self.window_us
        key = (
            window,
            src,
            dst,
            f"{method.decode('latin-1')} {target.decode('latin-1')}",
            tenant,
            rule,
            method_name,
            ids.get("feature", ("", "", ""))[0],
            ids.get("agent", ("", "", ""))[0],
            provider,
            usage.model if usage else "",
        )
        acc = self.totals.setdefault(key, [0] * 9)
        acc[0] += 1
        acc[1] += status >= 500
        acc[2] += resp.size
        acc[3] += req.size
        acc[4] += max(0, resp.ts_us - req.ts_us)
        if usage is not None:
            acc[5] += usage.tokens_in
            acc[6] += usage.tokens_out
            acc[7] += usage.tokens_cached
            acc[8] += usage.tokens_reasoning

    def drain(self) -> list[ObservedCall]:
        """The calls aggregated so far, forgotten afterwards; also forgets connections idle for ``IDLE_US``."""
        horizon = self._latest_us - IDLE_US
        for key in [k for k, conn in self.conns.items() if conn.last_us < horizon]:
            del self.conns[key]
        out = []
        for key, acc in sorted(self.totals.items()):
            window, src, dst, op, tenant, rule, method, feature, agent, provider, model = key
            out.append(
                ObservedCall(
                    window_start_us=window,
                    window_end_us=window + self.window_us,
                    node=self.node,
                    src_workload=src,
                    dst=dst,
                    protocol="http",
                    operation=op,
                    tenant=tenant,
                    tenant_method=method,
                    tenant_rule=rule,
                    feature=feature,
                    agent=agent,
                    requests=acc[0],
                    errors=acc[1],
                    bytes_in=acc[2],
                    bytes_out=acc[3],
                    busy_us=acc[4],
                    tokens_in=acc[5],
                    tokens_out=acc[6],
                    tokens_cached=acc[7],
                    tokens_reasoning=acc[8],
                    provider=provider,
                    model=model,
                )
            )
        self.totals.clear()
        return out
