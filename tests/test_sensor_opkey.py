"""The sensor folds ids and query values of HTTP operations (``sensor.collapse_ids``, the default): the compiled fold,
its pure-Python twin and the redactor's ``shapes.cache_key`` agree, and what the redactor emits is the same whether
the sensor folded or not."""

from __future__ import annotations

import io
import random
import struct

import msgspec
import pytest

from costmesh.common.config import Config, SensorConfig
from costmesh.common.schemas import CallBatch
from costmesh.native import _capture, _capture_py, _engine, _engine_py
from costmesh.native.http import collapse_http_op
from costmesh.redactor import shapes
from costmesh.redactor.records import RecordRedactor
from costmesh.sensor.core import Sensor

from .conftest import DATA, SHARED_DATA
from .data.make_demo_capture import frame

UUID = "3f2b8c1e-9d4a-4e7b-8c2d-1a2b3c4d5e6f"

CASES = [
    ("GET /v1/orders/123", "GET /v1/orders/0"),
    ("GET /v1/orders/123/items?page=2&q=abc", "GET /v1/orders/0/items?page&q"),
    (f"DELETE /u/{UUID}", "DELETE /u/00000000-0000-0000-0000-000000000000"),
    (f"GET /u/{UUID.upper()};v=1", "GET /u/00000000-0000-0000-0000-000000000000;v=1"),
    ("GET /u/" + "7" * 36, "GET /u/00000000-0000-0000-0000-000000000000"),  # 36 digits: the nil UUID, as the key
    ("GET /u/abcdefab-abcd-abcd-abcd-abcdefabcdef", "GET /u/00000000-0000-0000-0000-000000000000"),  # no digit
    ("GET /healthz", "GET /healthz"),
    ("GET /a1/12ab/2024-01-01/v2", "GET /a1/12ab/2024-01-01/v2"),  # not all digits: kept (the redactor shapes them)
    ("GET /x/12#frag=1", "GET /x/0#frag=1"),
    ("GET /x?a=1=2&b;c=#d", "GET /x?a&b;c#d"),
    ("GET /x?", "GET /x?"),
    ("GET //1//2/", "GET //0//0/"),
    ("GET /1 2/3", "GET /0 2/0"),
    ("GET /", "GET /"),
    ("CONNECT api.openai.com:443", "CONNECT api.openai.com:443"),
    ("GET http://h:80/a/99?x=y", "GET http://h:80/a/0?x"),
]


@pytest.mark.parametrize(("raw", "folded"), CASES)
def test_fold_table(raw: str, folded: str) -> None:
    assert shapes.cache_key("http", raw) == folded
    assert collapse_http_op(raw.encode()) == folded.encode()
    assert _engine.collapse_http_op(raw.encode()) == folded.encode()


def test_not_printable_ascii_is_left_as_seen() -> None:
    for raw in (b"GET /caf\xc3\xa9/1", b"GET /1\xc2\xa0x", b"GET /1\tx", b"GET /a?b=\x00", b"GET /\x7f/1"):
        assert collapse_http_op(raw) == raw
        assert _engine.collapse_http_op(raw) == raw


def _random_op(rng: random.Random) -> bytes:
    parts = ["/", "/", "/", "1", "42", "0017", UUID, UUID[:35], UUID + "0", "?", "=", "&", ";", "#", " ", "-", "ab"]
    parts += ["abcdefab-abcd-abcd-abcd-abcdefabcdef", "x"]
    parts += ["v1", "orders", "x=1", "F", "\x00", "é", "\t", str(rng.randrange(10**40))]
    out = rng.choice(["GET ", "POST ", "", "G "]) + "".join(rng.choice(parts) for _ in range(rng.randrange(0, 14)))
    return out.encode()


def test_fold_agrees_with_the_redactors_key_on_random_operations() -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    seen_raw, seen_folded = RecordRedactor(Config()), RecordRedactor(Config())  # separate caches
    for _ in range(5_000):
        op = _random_op(rng)
        got = _engine.collapse_http_op(op)
        assert got == collapse_http_op(op), (seed, op)
        if all(0x20 <= b <= 0x7E for b in op):
            assert got.decode() == shapes.cache_key("http", op.decode()), (seed, op)
            assert shapes.cache_key("http", got.decode()) == got.decode(), (seed, op)  # a key's key is itself
            # what the redactor emits for the operation (shape and kinds found) does not depend on the fold
            assert seen_folded.operation("http", got.decode()) == seen_raw.operation("http", op.decode()), (seed, op)
        else:
            assert got == op, (seed, op)


def _ids_capture() -> bytes:
    """Keep-alive requests whose paths and queries carry ids, UUIDs and values, and one AI call."""
    rng = random.Random(7)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    cseq, sseq, t = 1000, 5000, 1_767_225_600_000_000
    for i in range(300):
        target = rng.choice(
            [f"/v1/orders/{rng.randrange(10**6)}", f"/u/{UUID}/x?page={i}&q=a", f"/s?q={i}", "/v1/chat/completions"]
        )
        req = f"GET {target} HTTP/1.1\r\nHost: svc\r\nX-Tenant-ID: t{i % 3}\r\n\r\n".encode()
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        for src, sp, dst, dp, seq, data in (
            ("10.0.0.1", 40000, "10.0.0.2", 8080, cseq, req),
            ("10.0.0.2", 8080, "10.0.0.1", 40000, sseq, resp),
        ):
            f = frame(src, sp, dst, dp, seq, 0, 0x18, data)
            out.append(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(f), len(f)) + f)
            t += 3000
        cseq += len(req)
        sseq += len(resp)
    return b"".join(out)


def _redacted(calls: list) -> list:
    batch = CallBatch(batch_id="b", node="n", seq=1, records=calls)
    out, _stats = RecordRedactor(Config()).redact_batch(batch)
    return sorted((msgspec.structs.asdict(r) for r in out.records), key=lambda d: sorted(d.items()))


SOURCES = {"ids": _ids_capture, "demo": lambda: (DATA / "demo_tenants.pcap").read_bytes()}
for _dir in ("http", "openai-compatible-http"):
    for _p in sorted((SHARED_DATA / "pcap" / _dir).glob("*")):
        if _p.is_file():
            SOURCES[_p.name] = _p.read_bytes


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_redactor_output_is_the_same_folded_or_not(source: str) -> None:
    data = SOURCES[source]()
    results = {}
    for name, engine_cls, reader_cls in (
        ("cython", _engine.Engine, _capture.CaptureReader),
        ("python", _engine_py.Engine, _capture_py.CaptureReader),
    ):
        for fold in (True, False):
            s = Sensor(
                Config(sensor=SensorConfig(collapse_ids=fold)), "n", engine_cls=engine_cls, reader_cls=reader_cls
            )
            s.feed_capture(io.BytesIO(data))
            calls = s.drain(final=True)
            results[name, fold] = (len(calls), sum(c.requests for c in calls), _redacted(calls))
    assert results["cython", True] == results["python", True]
    assert results["cython", False] == results["python", False]
    (n_fold, req_fold, red_fold), (n_raw, req_raw, red_raw) = results["cython", True], results["cython", False]
    assert req_fold == req_raw and red_fold == red_raw
    if source == "ids":
        assert n_fold * 5 < n_raw, (n_fold, n_raw)  # ids and values folded: one record per route and tenant
