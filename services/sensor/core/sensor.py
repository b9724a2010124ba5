"""The sensor's parsing core behind one class: frames or capture files in, ``ObservedCall`` records out.

Reads: a ``Config`` (extraction rules, workloads, sensor ports/limits) and frames, live or from capture files. Emits:
``ObservedCall`` per window, source, destination, protocol, operation and tenant/feature/agent, plus ``stats()``
(frames, flows, parse errors by kind). The per-frame work runs in ``costmesh.native.engine.Engine`` (compiled or its
pure-Python twin, chosen by ``COSTMESH_NO_EXTENSIONS``); this module holds the cold paths both builds call back
(``Slow``: naming, rules that need Python, AI usage, DNS and TLS names) and builds the contract records.
"""

from __future__ import annotations

import gc
import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from costmesh.common.config import Config
from costmesh.common.schemas import ObservedCall
from costmesh.native.capture import CaptureError, CaptureReader
from costmesh.native.engine import BUILD, Engine
from costmesh.native.http import is_ai_request

from . import ai, names
from .rules import RuleSet, decode_json

__all__ = ["BUILD", "CaptureError", "CaptureReader", "Engine", "Sensor", "Slow", "address_text"]

MAX_DNS_NAMES = 65536
_V4 = b"\x00" * 10 + b"\xff\xff"


def address_text(addr: bytes) -> str:
    if addr[:12] == _V4:
        return ".".join(str(b) for b in addr[12:])
    return str(ipaddress.IPv6Address(addr))


class Slow:
    """Cold paths called by the engine (both builds): at most once per request head, AI call, DNS message, TLS or
    PostgreSQL connection, never per frame in the default configuration."""

    def __init__(self, config: Config) -> None:
        self.rules = RuleSet(config.rules)
        self._body_cache: tuple[bytes, object] | None = None
        self._providers: dict[tuple[bytes, bytes], str] = {}
        self.dns_names: OrderedDict[bytes, str] = OrderedDict()

    def is_ai(self, target: bytes, host: bytes) -> bool:
        return is_ai_request(target, host)

    def _decode(self, body: bytes):
        """Decode a request body once for both the body rules and the AI request (same call completes both)."""
        cached = self._body_cache
        if cached is not None and cached[0] == body:
            return cached[1]
        doc = decode_json(body)
        self._body_cache = (body, doc)
        return doc

    def resolve(self, head: bytes, body: bytes | None, starts: tuple[int, int, int], is_ai: bool):
        self._body_cache = None
        return self.rules.resolve(head, body, starts, is_ai, self._decode)

    def _provider(self, target: bytes, host: bytes) -> str:
        key = (target, host)
        provider = self._providers.get(key)
        if provider is None:
            if len(self._providers) > 4096:
                self._providers.clear()
            provider = self._providers[key] = ai.provider_of(target, host)
        return provider

    def _request_model(self, req_body: bytes) -> str:
        return ai.parse_request(req_body, self._decode(req_body) if req_body else None).model

    def complete(self, head, body, starts, is_ai, target, host, resp_body, ct, ce, answered):
        """End of a request whose completion needs Python: (ids for the deferred targets or None, AI usage tuple,
        None for an unreadable AI body, or None when not an AI call)."""
        found = self.rules.resolve(head, body, starts, is_ai, self._decode) if starts is not None else None
        usage = self.ai(target, host, body, resp_body, ct, ce, answered) if is_ai else None
        self._body_cache = None
        return found, usage

    def ai(self, target, host, req_body, resp_body, ct, ce, answered):
        provider = self._provider(target, host)
        if not answered:
            model = self._request_model(req_body) or ai._model_from_path(target)
            return (provider.encode(), model.encode("utf-8", "replace")[:256], 0, 0, 0, 0)
        try:
            # the model the response names wins; the request's (decoded only when needed), then the path's
            u = ai.response_usage(resp_body, ct, ce, b"", host, "", provider)
        except ValueError:
            return None
        model = u.model or self._request_model(req_body) or ai._model_from_path(target)
        return (
            u.provider.encode(),
            model.encode("utf-8", "replace")[:256],
            u.tokens_in,
            u.tokens_out,
            u.tokens_cached,
            u.tokens_reasoning,
        )

    def dns(self, msg: bytes):
        try:
            m = names.dns_message(msg)
        except ValueError:
            return None
        for addr, name in m.answers:
            key = _V4 + addr if len(addr) == 4 else addr
            self.dns_names[key] = name.decode("ascii", "replace")
            self.dns_names.move_to_end(key)
            if len(self.dns_names) > MAX_DNS_NAMES:
                self.dns_names.popitem(last=False)
        return (m.response, m.rcode, m.qname)

    def tls(self, record: bytes):
        try:
            hello = names.client_hello(record)
        except ValueError:
            return None
        return (hello.sni, hello.ech, self.rules.resolve_sni(hello.sni))

    def pg_startup(self, user: bytes, database: bytes):
        return self.rules.resolve_pg(user, database)


class Sensor:
    """Frames → per-window ``ObservedCall``; ``engine_cls``/``reader_cls`` pick a build explicitly (tests)."""

    def __init__(
        self,
        config: Config,
        node: str,
        window_us: int | None = None,
        engine_cls: type | None = None,
        reader_cls: type | None = None,
        name_of: Callable[[str, int], str] | None = None,
    ) -> None:
        self.config = config
        self.node = node
        self.window_us = int(window_us or config.sensor.window_s * 1_000_000)
        self.slow = Slow(config)
        self.reader_cls = reader_cls or CaptureReader
        self.engine = (engine_cls or Engine)(
            self.slow,
            self.window_us,
            config.sensor.max_flows,
            config.sensor.postgres_ports,
            config.sensor.http_ports,
            config.sensor.collapse_ids,
        )
        self._workloads = [(ipaddress.ip_network(w.address, strict=False), w.port, w.name) for w in config.workloads]
        self._names: dict[tuple[bytes, int], str | None] = {}
        #: Names endpoints the workloads table does not (live: Kubernetes pods, /proc processes); "" when unknown.
        #: Asked again at every drain (pods come and go), never cached here.
        self.name_of = name_of

    def feed_capture(
        self,
        source: str | Path | BinaryIO,
        on_records: Callable[[list[ObservedCall]], None] | None = None,
        chunk_frames: int = 200_000,
    ) -> int:
        """Stream one capture through the engine; a ``CaptureError`` is counted, then raised (frames before it stay).

        With ``on_records``, windows that closed are drained every ``chunk_frames`` frames and handed over, so a
        capture of any size runs in bounded memory; the caller drains the rest (``drain(final=True)``) at the end."""
        reader = self.reader_cls(source)
        # The compiled engine reads the compiled reader in C; anything else is consumed as one resumable iterator.
        direct = type(reader).__module__.endswith("._capture") and type(self.engine).__module__.endswith("._engine")
        feed = reader if direct else iter(reader)
        total = 0
        try:
            while True:
                n = self.engine.feed_capture(feed, chunk_frames if on_records else -1)
                total += n
                if not n or not on_records:
                    return total
                records = self.drain(now_us=self.engine.last_ts - self.window_us)
                if records:
                    on_records(records)
        except CaptureError as exc:
            self.engine.count_error(exc.kind)
            raise
        finally:
            reader.close()

    def feed_frame(self, ts_us: int, linktype: int, frame: bytes) -> None:
        self.engine.feed_frame(ts_us, linktype, frame)

    def stats(self) -> dict:
        return self.engine.stats()

    def _workload(self, addr: bytes, port: int) -> str | None:
        key = (addr, port)
        if key not in self._names:
            ip = ipaddress.ip_address(address_text(addr))
            found = None
            for net, wport, name in self._workloads:
                if ip.version == net.version and ip in net and (not wport or wport == port):
                    found = name
                    break
            self._names[key] = found
        found = self._names[key]
        if found is None and self.name_of is not None:
            return self.name_of(address_text(addr), port) or None
        return found

    def _dst(self, addr: bytes, port: int, host: bytes) -> str:
        name = self._workload(addr, port)
        if name:
            return name
        if host:
            return host.decode("utf-8", "replace").lower()
        dns = self.slow.dns_names.get(addr)
        if dns:
            return dns
        text = address_text(addr)
        return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"

    def drain(self, now_us: int = -1, final: bool = False) -> list[ObservedCall]:
        """Records of the closed windows (all, and every open flow ended, when ``final``)."""
        gc_was_on = gc.isenabled()
        gc.disable()  # records are made by the thousand and hold no cycles: no collection passes meanwhile
        try:
            return self.engine.drain_calls(now_us, final, _Builder(self))
        finally:
            if gc_was_on:
                gc.enable()


class _Builder:
    """What one drain needs to make ``ObservedCall`` records: the record class, the per-record constants and the
    endpoint naming. The engine makes the records with these (compiled: ``_Calls`` in ``_records.pxi``, twin:
    ``_records_py.build``); both give the same records."""

    cls = ObservedCall

    def __init__(self, sensor: Sensor) -> None:
        rules = sensor.slow.rules
        self.node = sensor.node
        self.width = sensor.window_us
        self.method_of = [*rules.methods, "unallocated"]  # rule -1 (nothing matched) reads the last entry
        self.rule_of = [*rules.names, ""]
        self.src_name = lambda src: sensor._workload(src, 0) or address_text(src)
        self.dst_name = sensor._dst
