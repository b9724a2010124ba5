"""The sensor's parsing core, run on both builds (compiled ``_engine``/``_capture``/``_net`` and their pure-Python
twins): real captures, synthetic edge cases, extraction rules, AI usage; the two builds must agree exactly."""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct

import msgspec
import pytest

from costmesh.common.config import Config, Rule, SensorConfig, Workload
from costmesh.native import _capture_py, _engine_py, _net_py
from costmesh.sensor.core import Sensor

from .conftest import DATA, SHARED_DATA
from .data.make_demo_capture import frame

try:
    from costmesh.native import _capture, _engine, _net
except ImportError as exc:  # the compiled build is part of the product: its absence is a failure, not a skip
    raise ImportError("compiled costmesh.native modules missing: run `make deps`") from exc

BUILDS = {
    "cython": (_engine.Engine, _capture.CaptureReader, _net),
    "python": (_engine_py.Engine, _capture_py.CaptureReader, _net_py),
}
PCAPS = sorted(p for p in (SHARED_DATA / "pcap").rglob("*") if p.is_file())
T0 = 1_767_225_600_000_000


@pytest.fixture(params=sorted(BUILDS))
def build(request):
    return BUILDS[request.param]


def sensor_for(build, config: Config | None = None, **kw) -> Sensor:
    engine_cls, reader_cls, _net_mod = build
    return Sensor(config or Config(), "n", engine_cls=engine_cls, reader_cls=reader_cls, **kw)


def run_capture(build, source, config: Config | None = None):
    s = sensor_for(build, config)
    error = None
    try:
        s.feed_capture(source)
    except Exception as exc:
        if type(exc).__name__ != "CaptureError":
            raise
        error = (exc.offset, exc.kind)
    calls = [msgspec.structs.asdict(c) for c in s.drain(final=True)]
    return calls, s.stats(), error


def pcap_bytes(frames: list[tuple[int, bytes]], linktype: int = 1, order: str = "<", nanos: bool = False) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for ts, data in frames:
        frac = (ts % 1_000_000) * (1000 if nanos else 1)
        out.append(struct.pack(order + "IIII", ts // 1_000_000, frac, len(data), len(data)) + data)
    return b"".join(out)


def conversation(exchanges: list[tuple[bytes, bytes]], sport: int = 40000, dport: int = 8080, split: int = 0):
    """Ethernet frames of one TCP connection (handshake, request/response pairs, FINs); ``split`` cuts every payload
    into segments of that size."""
    c, s = "10.0.0.10", "10.0.0.20"
    cseq, sseq = 1000, 5000
    out = []
    t = T0
    out.append((t, frame(c, sport, s, dport, cseq, 0, 0x02)))
    out.append((t + 10, frame(s, dport, c, sport, sseq, cseq + 1, 0x12)))
    cseq += 1
    sseq += 1
    t += 100
    for req, resp in exchanges:
        for src, sp, dst, dp, data, who in ((c, sport, s, dport, req, "c"), (s, dport, c, sport, resp, "s")):
            step = split or max(1, len(data))
            for i in range(0, len(data), step):
                part = data[i : i + step]
                seq = cseq if who == "c" else sseq
                out.append((t, frame(src, sp, dst, dp, seq, 0, 0x18, part)))
                if who == "c":
                    cseq += len(part)
                else:
                    sseq += len(part)
                t += 100
            t += 1000
    out.append((t, frame(c, sport, s, dport, cseq, sseq, 0x11)))
    out.append((t + 10, frame(s, dport, c, sport, sseq, cseq + 1, 0x11)))
    return out


def both_agree(source_factory, config: Config | None = None):
    results = [run_capture(BUILDS[b], source_factory(), config) for b in sorted(BUILDS)]
    assert results[0] == results[1], "compiled build and pure-Python twin disagree"
    return results[0]


# ---- real captures --------------------------------------------------------------------------------------------------


def test_corpus_is_present():
    assert len(PCAPS) >= 40, f"expected the shared capture corpus under {SHARED_DATA}"


@pytest.mark.parametrize("path", PCAPS, ids=lambda p: p.name)
def test_every_shared_capture_parses_without_error_and_builds_agree(path):
    calls, stats, error = both_agree(lambda: path)  # noqa: RUF059
    assert error is None
    assert stats["errors"] == {}
    assert stats["counters"]["frames"] > 0


def _calls(name: str, config: Config | None = None):
    path = next(p for p in PCAPS if p.name == name)
    return both_agree(lambda: path, config)


def test_demo_capture_matches_ground_truth():
    truth = json.loads((DATA / "demo_tenants.truth.json").read_text())
    calls, stats, _ = both_agree(lambda: DATA / "demo_tenants.pcap")
    per: dict[str, int] = {}
    for c in calls:
        per[c.get("tenant", "")] = per.get(c.get("tenant", ""), 0) + c["requests"]
    assert per == truth["requests_by_tenant"]
    assert sum(c.get("errors", 0) for c in calls) == truth["errors"]
    assert {c.get("tenant_rule", "") for c in calls} == {"header:x-tenant-id", ""}
    assert all(c["operation"].startswith("GET /v1/orders/") for c in calls)
    assert stats["counters"]["flows"] == 3


def test_http_real_captures():
    calls, stats, _ = _calls("zeek_http_pipelined-requests.pcap")
    assert sum(c["requests"] for c in calls) == 5 and stats["counters"]["http_responses"] == 5
    calls, stats, _ = _calls("zeek_http_100-continue.pcap")
    assert [c["requests"] for c in calls] == [1] and calls[0]["operation"].startswith("POST ")
    assert stats["counters"]["http_responses"] == 2  # 100 Continue, then the final one
    calls, _, _ = _calls("ndpi_http.pcapng")
    assert calls[0]["operation"] == "GET /" and calls[0]["dst"] == "google.com"
    calls, stats, _ = _calls("deepflow_httpv1.pcap")
    assert calls[0]["operation"].startswith("POST /query?") and stats["counters"]["midstream_http"] == 1


def test_openai_compatible_captures_carry_usage():
    calls, _, _ = _calls("deepflow_openai_normal_usage.pcap")
    (c,) = calls
    assert (c["tokens_in"], c["tokens_out"], c["model"]) == (18, 512, "Qwen3.6-0.8B")
    calls, _, _ = _calls("deepflow_openai_stream_usage.pcap")
    (c,) = calls
    assert c["provider"] == "openai" and c["tokens_in"] + c["tokens_out"] > 0
    assert c["operation"] == "POST /v1/chat/completions"


def test_postgres_real_captures():
    calls, stats, _ = _calls("zeek_psql-create-insert-select-delete-drop.pcap")
    assert sum(c["requests"] for c in calls) == 7 and all(c["protocol"] == "postgres" for c in calls)
    assert all(c["busy_us"] > 0 for c in calls)
    calls, stats, _ = _calls("deepflow_error.pcap")
    assert calls[0]["operation"] == "asdsdfdsf;" and calls[0]["errors"] == 1
    calls, stats, _ = _calls("deepflow_pgsql-all_port8000.pcap")
    assert stats["counters"]["midstream_postgres"] == 1 and stats["counters"]["pg_queries"] > 10
    assert all(c["dst"].endswith(":8000") for c in calls)
    calls, stats, _ = _calls("zeek_psql-aws-ssl-require.pcap")
    assert stats["counters"]["pg_tls"] == 1
    calls, stats, _ = _calls("ndpi_pgsql.pcap")
    assert "select * from mailboxes" in {c["operation"] for c in calls}


def test_postgres_database_rule():
    config = Config(rules=[Rule(source="pg_database", pattern="^(mail)", name="db")])
    calls, _, _ = _calls("ndpi_pgsql.pcap", config)
    tagged = [c for c in calls if c.get("tenant")]
    assert tagged and all(c["tenant"] == "mail" and c["tenant_method"] == "db" for c in tagged)


def test_tls_sni_and_dns_names():
    calls, stats, _ = _calls("zeek_openjdk-25.0.2-zeek.org_linktype-sll2.pcap")
    assert {c["dst"] for c in calls} == {"zeek.org"}
    calls, stats, _ = _calls("zeek_tls13-ech.pcap")
    assert stats["counters"]["tls_ech"] == 2 and any(c.get("operation") == "ech" for c in calls)
    calls, stats, _ = _calls("zeek_dns53.pcap")
    assert calls and calls[0]["protocol"] == "dns"
    calls, stats, _ = _calls("deepflow_nxdomain.pcap")
    assert sum(c.get("errors", 0) for c in calls) == 2


def test_loopback_linktype_is_decoded():
    _calls_, stats, _ = _calls("zeek_redis_set_linktype-null.pcap")  # noqa: RUF059
    assert stats["counters"]["flows"] == 1 and stats["counters"]["non_ip"] == 0


# ---- capture formats ------------------------------------------------------------------------------------------------

REQ = b"GET /a?tenant=q1 HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: acme\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(("order", "nanos"), [("<", False), (">", False), ("<", True), (">", True)])
def test_pcap_byte_orders_and_resolutions(build, order, nanos):
    data = pcap_bytes(conversation([(REQ, RESP)]), order=order, nanos=nanos)
    calls, _stats, error = run_capture(build, io.BytesIO(data))
    assert error is None and len(calls) == 1
    assert calls[0]["window_start_us"] == T0 and calls[0]["tenant"] == "acme"
    assert calls[0]["busy_us"] == 1100  # request at +100 µs, response at +1200 µs


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def pcapng_bytes(frames, order: str = "<") -> bytes:
    shb = _block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb_raw = _block(order, 1, struct.pack(order + "HHI", 101, 0, 0))  # interface 0: raw IP, µs
    opt = struct.pack(order + "HH", 9, 1) + b"\x09\0\0\0" + struct.pack(order + "HH", 0, 0)
    idb_eth = _block(order, 1, struct.pack(order + "HHI", 1, 0, 0) + opt)  # interface 1: Ethernet, ns
    out = [shb, idb_raw, idb_eth]
    for i, (ts, data) in enumerate(frames):
        if i == 0:  # a Simple Packet Block on interface 0 (raw IP: strip the Ethernet header)
            raw = data[14:]
            out.append(_block(order, 3, struct.pack(order + "I", len(raw)) + raw))
            continue
        ticks = ts * 1000
        hdr = struct.pack(order + "IIIII", 1, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
        out.append(_block(order, 6, hdr + data))
    return b"".join(out)


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_interfaces_epb_spb(build, order):
    frames = conversation([(REQ, RESP)])
    calls, stats, error = run_capture(build, io.BytesIO(pcapng_bytes(frames, order)))
    assert error is None and stats["counters"]["frames"] == len(frames)
    assert len(calls) == 1 and calls[0]["window_start_us"] == T0 and calls[0]["tenant"] == "acme"


def test_truncated_and_corrupt_captures_keep_what_was_read(build):
    frames = conversation([(REQ, RESP)] * 3)
    data = pcap_bytes(frames)
    cut = data[: len(data) - 30]
    calls, stats, error = run_capture(build, io.BytesIO(cut))
    offset, kind = error
    assert kind == "capture_truncated" and 24 < offset < len(cut)
    assert stats["errors"] == {"capture_truncated": 1}
    assert sum(c["requests"] for c in calls) == 3  # the last response was lost, the requests were seen
    bad = bytearray(data)
    struct.pack_into("<I", bad, 24 + 8, 10_000_000)  # first record's caplen
    _calls2, stats, error = run_capture(build, io.BytesIO(bytes(bad)))
    assert error == (24, "capture_corrupt")
    _c, _s, error = run_capture(build, io.BytesIO(b"this is not a capture file at all, honestly"))
    assert error == (0, "capture_format")


def test_link_types(build):
    eth = frame("10.0.0.10", 40000, "10.0.0.20", 8080, 1, 0, 0x18, REQ)
    ip = eth[14:]
    vlan = eth[:12] + b"\x81\x00\x00\x07" + eth[12:]
    sll = b"\x00\x04\x00\x01\x00\x06" + b"\x02" * 8 + b"\x08\x00" + ip
    sll2 = b"\x08\x00\x00\x00" + b"\x00\x00\x00\x02\x00\x01\x04\x06" + b"\x02" * 8 + ip
    null_le = struct.pack("<I", 2) + ip
    loop_be = struct.pack(">I", 2) + ip
    for linktype, f in ((1, vlan), (101, ip), (113, sll), (276, sll2), (0, null_le), (108, loop_be), (228, ip)):
        s = sensor_for(build)
        s.feed_frame(T0, linktype, f)
        calls = s.drain(final=True)
        assert [c.tenant for c in calls] == ["acme"], linktype
    s = sensor_for(build)
    s.feed_frame(T0, 147, eth)
    assert s.stats()["errors"] == {"linktype_unsupported": 1}


def test_ipv6(build):
    def v6frame(payload: bytes) -> bytes:
        tcp = struct.pack("!HHIIBBHHH", 40000, 80, 7, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
        ip6 = struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(tcp),
            6,
            64,
            b"\x20\x01" + b"\0" * 13 + b"\x01",
            b"\xfe\x80" + b"\0" * 13 + b"\x02",
        )
        return b"\x02" * 12 + b"\x86\xdd" + ip6 + tcp

    s = sensor_for(build)
    s.feed_frame(T0, 1, v6frame(REQ))
    (c,) = s.drain(final=True)
    assert c.src_workload == "2001::1" and c.dst == "x" and c.tenant == "acme"


# ---- TCP and HTTP edge cases ---------------------------------------------------------------------------------------


def test_segments_out_of_order_and_retransmitted(build):
    frames = conversation([(REQ, RESP)], split=7)
    reordered = [*frames[:3], frames[4], frames[3], frames[5], *frames[5:]]  # swap two, retransmit one
    calls, stats, _ = run_capture(build, io.BytesIO(pcap_bytes(reordered)))
    assert len(calls) == 1 and calls[0]["tenant"] == "acme"
    assert stats["counters"]["tcp_retransmissions"] == 1 and stats["counters"]["tcp_out_of_order"] == 1
    assert calls[0]["bytes_out"] == len(REQ) and calls[0]["bytes_in"] == len(RESP)


def test_pipelining_chunked_head_and_keepalive(build):
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
    head = b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
    head_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"
    post = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    cont = b"HTTP/1.1 100 Continue\r\n\r\n"
    frames = conversation(
        [(REQ + REQ, RESP + chunked), (head, head_resp), (post, cont), (b"abcde", b"HTTP/1.1 503 No\r\n\r\n")]
    )
    calls, stats, _ = run_capture(build, io.BytesIO(pcap_bytes(frames)))
    ops = sorted((c["operation"], c["requests"], c.get("errors", 0)) for c in calls)
    assert ops == [("GET /a?tenant", 2, 0), ("HEAD /h", 1, 0), ("POST /p", 1, 1)]  # query values folded
    assert stats["errors"] == {}


def test_head_split_across_segments_and_sse_until_close(build):
    sse_head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    frames = conversation([(REQ, sse_head + b"data: 1\n\ndata: 2\n\n")], split=5)
    calls, _stats, _ = run_capture(build, io.BytesIO(pcap_bytes(frames)))
    (c,) = calls
    assert c["tenant"] == "acme" and c["bytes_in"] == len(sse_head) + 18  # completed at FIN


def _jwt(claims: dict) -> str:
    enc = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJub25lIn0.{enc}.c2ln"


@pytest.mark.parametrize(
    ("rules", "headers", "target", "expected"),
    [
        ([], "X-Customer-ID: cust9\r\n", "/a", ("cust9", "header:x-customer-id", "header")),
        ([], "baggage: a=1, tenant = bag7 ;p=1\r\n", "/a", ("bag7", "baggage:tenant", "baggage")),
        ([Rule(source="query", key="org")], "", "/a?x=1&org=q5", ("q5", "query:org", "query")),
        (
            [Rule(source="jwt_claim", key="org.id", name="jwt")],
            f"Authorization: Bearer {_jwt({'org': {'id': 'j1'}})}\r\n",
            "/a",
            ("j1", "jwt", "jwt"),
        ),
        ([Rule(source="path", pattern=r"^/t/([^/]+)/")], "", "/t/p42/items", ("p42", "path:^/t/([^/]+)/", "path")),
        (
            [Rule(source="host", pattern=r"^([a-z0-9]+)\.app\.example")],
            "",
            "/a",
            ("h3", "host:^([a-z0-9]+)\\.app\\.example", "host"),
        ),
        (
            [Rule(source="body", key="account.id", name="b")],
            "Content-Type: application/json\r\n",
            "/a",
            ("b8", "b", "body"),
        ),
        (
            [
                Rule(source="header", key="X-Org"),
                Rule(source="jwt_claim", key="sub"),
                Rule(source="header", key="X-Tenant-ID"),
            ],
            f"X-Tenant-ID: late\r\nAuthorization: Bearer {_jwt({'sub': 'first'})}\r\n",
            "/a",
            ("first", "jwt_claim:sub", "jwt"),
        ),
    ],
)
def test_extraction_rules_first_match_wins(build, rules, headers, target, expected):
    _check_rules(build, rules, headers, target, expected)


@pytest.mark.parametrize("length", [62, 63, 64, 70])
def test_header_rules_with_long_names(build, length):
    """The compiled head scan looks at header rules only for header names as long as one of theirs (63 and longer
    share one flag): long names must still match, and a longer or shorter header of the same prefix must not."""
    name = ("X-" + "l" * length)[:length]
    rules = [Rule(source="header", key=name, name="long")]
    headers = f"{name}x: no\r\n{name[:-1]}: no\r\n{name.upper()}: yes{length}\r\n"
    _check_rules(build, rules, headers, "/a", (f"yes{length}", "long", "header"))


def _check_rules(build, rules, headers, target, expected):
    body = b'{"account": {"id": "b8"}}'
    host = "h3.app.example" if "app" in str(rules) else "x"
    req = f"POST {target} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body
    config = Config(rules=rules) if rules else Config()
    calls, _, _ = run_capture(build, io.BytesIO(pcap_bytes(conversation([(req, RESP)]))), config)
    (c,) = calls
    assert (c["tenant"], c["tenant_rule"], c["tenant_method"]) == expected


def test_ai_call_gzip_body_and_request_metadata(build):
    usage = {
        "model": "gpt-4o-mini-2024-07-18",
        "usage": {"prompt_tokens": 50, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 20}},
    }
    body = gzip.compress(json.dumps(usage).encode())
    req_body = json.dumps({"model": "gpt-4o-mini", "user": "u-1", "metadata": {"agent_id": "planner"}}).encode()
    req = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(req_body)
    ) + req_body
    resp = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    calls, stats, _ = run_capture(build, io.BytesIO(pcap_bytes(conversation([(req, resp)], split=40))))
    (c,) = calls
    assert (c["provider"], c["model"], c["tokens_in"], c["tokens_cached"], c["tokens_out"]) == (
        "openai",
        "gpt-4o-mini-2024-07-18",
        30,
        20,
        7,
    )
    assert (c["tenant"], c["tenant_method"], c["tenant_rule"], c["agent"]) == ("u-1", "body", "ai-body:user", "planner")
    assert stats["counters"]["ai_calls"] == 1


def test_flow_table_is_bounded_lru(build):
    config = Config(sensor=SensorConfig(max_flows=2))
    frames = []
    for i in range(5):  # handshake + request, no response, no FIN; one connection after the other
        frames += [(ts + i * 10_000, f) for ts, f in conversation([(REQ, RESP)], sport=41000 + i)[:3]]
    calls, stats, _ = run_capture(build, io.BytesIO(pcap_bytes(frames)), config)
    assert stats["counters"]["flows_evicted"] == 3 and stats["flows_open"] == 0
    assert sum(c["requests"] for c in calls) == 5 and stats["counters"]["http_unanswered"] == 5


def test_workload_names_from_config(build):
    config = Config(
        workloads=[Workload(address="10.0.0.20", port=8080, name="orders"), Workload(address="10.0.0.0/24", name="web")]
    )
    calls, _, _ = run_capture(build, io.BytesIO(pcap_bytes(conversation([(REQ, RESP)]))), config)
    assert (calls[0]["src_workload"], calls[0]["dst"]) == ("web", "orders")


def test_live_identity_names_what_the_workloads_table_does_not(build):
    """The live sensor's naming hook (Kubernetes pods, /proc processes) names endpoints after the workloads table,
    which still wins where it matches; it is asked at every drain, so a name that changes (a pod replaced) shows."""
    config = Config(workloads=[Workload(address="10.0.0.20", port=9999, name="not-this-port")])
    names = {("10.0.0.20", 8080): "shop/orders", ("10.0.0.10", 0): "shop/web"}
    s = sensor_for(build, config, name_of=lambda addr, port: names.get((addr, port), ""))
    for ts, f in conversation([(REQ, RESP)]):
        s.feed_frame(ts, 1, f)
    (c,) = s.drain(final=True)
    assert (c.src_workload, c.dst) == ("shop/web", "shop/orders")
    names[("10.0.0.20", 8080)] = "shop/orders-v2"
    for ts, f in conversation([(REQ, RESP)], sport=40001):
        s.feed_frame(ts + 5_000_000, 1, f)
    (c,) = s.drain(final=True)
    assert c.dst == "shop/orders-v2"
    config.workloads.append(Workload(address="10.0.0.20", port=8080, name="orders"))
    s = sensor_for(build, config, name_of=lambda addr, port: names.get((addr, port), ""))
    for ts, f in conversation([(REQ, RESP)]):
        s.feed_frame(ts, 1, f)
    assert s.drain(final=True)[0].dst == "orders"


def test_windows_drain_incrementally(build):
    s = sensor_for(build)
    frames = conversation([(REQ, RESP)])
    for ts, f in frames:
        s.feed_frame(ts, 1, f)
    assert s.drain(now_us=T0 + 500_000) == []
    assert len(s.drain(now_us=T0 + 1_000_000)) == 1


def test_streamed_in_chunks_gives_the_same_totals(build):
    whole = sensor_for(build)
    whole.feed_capture(DATA / "demo_tenants.pcap")
    expected = whole.drain(final=True)
    streamed = sensor_for(build)
    handed: list = []
    streamed.feed_capture(DATA / "demo_tenants.pcap", handed.extend, chunk_frames=7)
    assert handed, "closed windows were handed over while reading"
    got = handed + streamed.drain(final=True)

    def totals(calls):
        out: dict = {}
        for c in calls:
            k = (c.window_start_us, c.tenant, c.operation)
            out[k] = out.get(k, 0) + c.requests
        return out

    assert totals(got) == totals(expected)


def test_public_modules_export_what_they_mean():
    from costmesh import native
    from costmesh.native import capture, engine
    from costmesh.sensor import core

    assert set(capture.__all__) == {"CaptureError", "CaptureReader"}
    assert set(engine.__all__) == {"BUILD", "PROTOCOLS", "Engine"}
    assert set(core.__all__) == {"BUILD", "CaptureError", "CaptureReader", "Sensor", "address_text"}
    # make deps builds the extensions; COSTMESH_NO_EXTENSIONS=1 (CI's second run) selects the twins
    if native.NO_EXTENSIONS:
        assert engine.BUILD == core.BUILD == "python"
        assert engine.Engine is _engine_py.Engine and capture.CaptureReader is _capture_py.CaptureReader
    else:
        assert engine.BUILD == core.BUILD == "cython"
        assert engine.Engine is _engine.Engine and capture.CaptureReader is _capture.CaptureReader


def test_net_decoders_agree_on_real_frames():
    n = 0
    for path in PCAPS:
        for _ts, linktype, f in _capture_py.CaptureReader(path):
            for cut in (len(f), 0, 13, 33, 40, 54):
                assert _net.decode(linktype, f[:cut]) == _net_py.decode(linktype, f[:cut])
            n += 1
    assert n > 2000


def _pg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def test_postgres_prepared_statement_bound_in_a_later_cycle(build):
    parse = _pg(b"P", b"s1\0SELECT * FROM t WHERE id = $1\0\0\0") + _pg(b"B", b"\0s1\0\0\0\0\0\0\0")
    execute = _pg(b"E", b"\0\0\0\0\0") + _pg(b"S", b"")
    bind_again = _pg(b"B", b"\0s1\0\0\0\0\0\0\0") + execute
    ready = _pg(b"1", b"") + _pg(b"2", b"") + _pg(b"C", b"SELECT 1\0") + _pg(b"Z", b"I")
    error = _pg(b"E", b"SERROR\0\0") + _pg(b"Z", b"I")
    frames = conversation([(parse + execute, ready), (bind_again, error)], dport=5432)
    frames = frames[2:]  # joined mid-stream: no handshake, no startup
    calls, stats, _ = run_capture(build, io.BytesIO(pcap_bytes(frames)))
    # both executions land in one record (same window, edge and statement); the second one failed
    assert [(c["operation"], c["requests"], c.get("errors", 0)) for c in calls] == [
        ("SELECT * FROM t WHERE id = $1", 2, 1)
    ]
    assert stats["counters"]["midstream_postgres"] == 1 and stats["counters"]["pg_queries"] == 2


def test_dns_answers_name_external_destinations(build):
    qname = b"\x03api\x07example\x03com\x00"
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([93, 184, 216, 34])
    dns = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01" + answer
    udp = struct.pack("!HHHH", 53, 5353, 8 + len(dns), 0) + dns
    ip = (
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([10, 0, 0, 2]), bytes([10, 0, 0, 10])
        )
        + udp
    )
    s = sensor_for(build)
    s.feed_frame(T0, 101, ip)
    req = b"GET /x HTTP/1.1\r\nX-Tenant-ID: acme\r\n\r\n"  # no Host: the destination is named from DNS
    s.feed_frame(T0 + 10, 1, frame("10.0.0.10", 40000, "93.184.216.34", 80, 1, 0, 0x18, req))
    calls = {c.protocol: c for c in s.drain(final=True)}
    assert calls["dns"].operation == "api.example.com" and calls["dns"].dst == "10.0.0.2:53"
    assert calls["http"].dst == "api.example.com"


def _client_hello(name: bytes) -> bytes:
    sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    ext = struct.pack("!HH", 0, len(sni)) + sni
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def test_connect_tunnel_names_the_tls_destination(build):
    connect = b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\nX-Tenant-ID: acme\r\n\r\n"
    established = b"HTTP/1.1 200 Connection established\r\n\r\n"
    frames = conversation([(connect, established), (_client_hello(b"api.openai.com"), b"\x16\x03\x03\x00\x01\x02")])
    calls, stats, _ = run_capture(build, io.BytesIO(pcap_bytes(frames)))
    by = {c["protocol"]: c for c in calls}
    assert by["http"]["operation"] == "CONNECT api.openai.com:443" and by["http"]["tenant"] == "acme"
    assert by["tls"]["dst"] == "api.openai.com" and stats["counters"]["tls_client_hellos"] == 1
    assert stats["errors"] == {}


def test_long_capture_streams_in_bounded_state(build):
    """What stays in the engine while a capture streams is the open windows, not the capture (the 1 GB case)."""
    frames = []
    t = T0
    seq = {p: [1, 1] for p in range(41000, 41004)}
    for i in range(400):  # 400 keep-alive calls over 40 s on 4 connections, each its own operation
        port = 41000 + i % 4
        req = f"GET /item/{i:03d} HTTP/1.1\r\nHost: x\r\nX-Tenant-ID: t{i % 7}\r\n\r\n".encode()
        frames.append((t, frame("10.0.0.10", port, "10.0.0.20", 8080, seq[port][0], 0, 0x18, req)))
        frames.append((t + 500, frame("10.0.0.20", 8080, "10.0.0.10", port, seq[port][1], 0, 0x18, RESP)))
        seq[port][0] += len(req)
        seq[port][1] += len(RESP)
        t += 100_000
    s = sensor_for(build, Config(sensor=SensorConfig(collapse_ids=False)))  # ids kept: 400 distinct operations
    seen: list = []
    peak = 0

    def take(records):
        nonlocal peak
        seen.extend(records)
        peak = max(peak, s.stats()["aggregates_open"])

    s.feed_capture(io.BytesIO(pcap_bytes(frames)), take, chunk_frames=20)
    seen += s.drain(final=True)
    assert sum(c.requests for c in seen) == 400 and len(seen) == 400
    assert 0 < peak <= 40, f"{peak} aggregates held while streaming"


def test_sni_rule_names_the_tenant():
    config = Config(rules=[Rule(source="sni", pattern=r"^([a-z]+)\.org$", name="sni-org")])
    calls, _, _ = _calls("zeek_openjdk-25.0.2-zeek.org_linktype-sll2.pcap", config)
    assert {(c["tenant"], c["tenant_rule"], c["tenant_method"]) for c in calls} == {("zeek", "sni-org", "sni")}


class _Trickle(io.RawIOBase):
    """A stream that hands out at most ``step`` bytes per read (pipes, sockets); ``readinto`` may be hidden."""

    def __init__(self, data: bytes, step: int, readinto: bool) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step
        if not readinto:
            self.readinto = None  # type: ignore[assignment]

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._step if n < 0 else min(n, self._step)
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(out)
        return out

    def readinto(self, b) -> int:  # type: ignore[override]
        out = self.read(len(b))
        b[: len(out)] = out
        return len(out)


@pytest.mark.parametrize("step", [1, 7, 4096])
@pytest.mark.parametrize("readinto", [True, False])
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_capture_reader_short_reads_and_small_chunks(step, readinto, fmt):
    """Frames come out the same whatever the stream hands over per read and however small the read buffer is (the
    compiled reader moves the unread tail and grows its one buffer for a record longer than a chunk)."""
    frames = conversation([(REQ, RESP), (REQ, RESP + b"x" * 3000)])
    data = pcap_bytes(frames) if fmt == "pcap" else pcapng_bytes(frames, "<")
    want = list(_capture_py.CaptureReader(io.BytesIO(data)))
    assert len(want) == len(frames)
    for name, (_e, reader_cls, _n) in sorted(BUILDS.items()):
        for chunk in (16, 1000, 1 << 20):
            got = list(reader_cls(_Trickle(data, step, readinto), chunk_size=chunk))
            assert got == want, (name, chunk)
    cut = data[:-30]
    for name, (_e, reader_cls, _n) in sorted(BUILDS.items()):
        reader = reader_cls(_Trickle(cut, step, readinto), chunk_size=64)
        with pytest.raises(Exception) as info:
            list(reader)
        assert type(info.value).__name__ == "CaptureError" and info.value.kind == "capture_truncated", name


def test_ai_markers_in_host_and_path_agree():
    """Which requests count as AI calls (a known AI host, any case, or a known AI path) is the same in both builds:
    near misses, markers at the very start and end, and case in the host."""
    cases = [
        ("API.OpenAI.com", "/x"),
        ("x-anthropiC.internal", "/"),
        ("svc", "/v1/chat/completion"),
        ("svc", "/v1/chat/completions"),
        ("svc", "/p/v1/chat/completions?x=1"),
        ("svc", "/v1/messagesX"),
        ("svc", "/models/m:generateContent"),
        ("svc", "/models/m:generateConten"),
        ("openai", "/"),
        ("opena", "/invok"),
        ("bedrock-runtimE.eu", "/"),
        ("svc", "/converse"),
    ]
    exchanges = []
    for host, target in cases:
        req = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        exchanges.append((req, RESP))
    calls, stats, _ = both_agree(lambda: io.BytesIO(pcap_bytes(conversation(exchanges))))
    assert stats["counters"]["ai_calls"] == 9, stats["counters"]["ai_calls"]  # markers are substrings
    assert sum(c["requests"] for c in calls) == len(cases)


def _served(build, exchanges, dport: int, reads: list[tuple[int, str]], *, at_once: bool):
    """Feed ``conversation(exchanges)`` and the server reads ``reads`` (µs after the capture's start, and which end
    read: "server" or "client"): all reads before the first frame (as live, where frames wait in a ring block while
    the reads are already known), or each just before the first frame later than it. Returns (operation, requests,
    busy_us) per record and the engine's stats."""
    s = sensor_for(build)
    frames = conversation(exchanges, dport=dport)[2:]  # joined mid-stream: no handshake, no startup
    v4 = b"\0" * 10 + b"\xff\xff"
    ends = {"server": (v4 + bytes([10, 0, 0, 20]), dport, v4 + bytes([10, 0, 0, 10]), 40000)}
    ends["client"] = (ends["server"][2], 40000, ends["server"][0], dport)
    events = [(T0 + at, *ends[who]) for at, who in reads]
    if at_once:
        s.engine.server_reads(events)
    for ts, f in frames:
        if not at_once:
            s.engine.server_reads([e for e in events if e[0] <= ts])
            events = [e for e in events if e[0] > ts]
        s.feed_frame(ts, 1, f)
    calls = s.drain(final=True)
    return sorted((c.operation, c.requests, c.busy_us) for c in calls), s.stats()


@pytest.mark.parametrize("proto", ["http", "postgres"])
def test_server_time_starts_when_the_server_reads_the_request(build, proto):
    """A request waits in the socket until the server reads it (on a busy CPU, for its turn): the server time runs
    from that read (``Engine.server_reads``) to the answer, not from the request's arrival on the wire. Reads by the
    client's end, reads of another request, a request without a read (arrival, as before), and reads handed over
    long before their frames (as live), in both builds."""
    if proto == "http":
        exchanges = [(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")] * 3
        dport = 8080
    else:
        query = _pg(b"Q", b"SELECT 1\0")
        exchanges = [(query, _pg(b"C", b"SELECT 1\0") + _pg(b"Z", b"I"))] * 3
        dport = 5432
    # frames: the requests at 100, 2300, 4500 µs, each answered 1100 µs later, the FINs
    plain, _ = _served(build, exchanges, dport, [], at_once=True)
    assert [(n, busy) for _op, n, busy in plain] == [(3, 3 * 1100)]
    reads = [
        (50, "server"),  # before the first request arrived: of no request
        (400, "server"),  # the first read after the arrival counts
        (800, "server"),  # a second read of the same request
        (2500, "client"),  # the client reading its answer: not the server's start; the second request has no read
        (4900, "server"),
    ]
    for at_once in (True, False):
        served, stats = _served(build, exchanges, dport, reads, at_once=at_once)
        assert [busy for *_, busy in served] == [(1200 - 400) + 1100 + (5600 - 4900)], served
        assert stats["counters"]["server_reads"] == 3  # the server's reads of a known flow (not the one at 50)
