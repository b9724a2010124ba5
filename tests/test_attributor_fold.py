"""The attributor's fold of call batches (compiled ``_fold`` and its twin ``_fold_py``): wherever ``add`` answers, the
batch identity and the rows equal what msgspec's decode of the same payload gives, folded in Python; where it cannot
be sure it declines (``None``) and adds nothing, and ``fold_group`` then decodes with msgspec, so the group's rows are
always the reference rows. Checked on hand-made edge cases, generated batches and damaged payloads (hypothesis)."""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costmesh.attributor.apply import AGG_COLUMNS, staging_rows
from costmesh.attributor.fold import BatchRef, Meta, fold_group
from costmesh.common.schemas import COUNTERS, CallBatch, Codec, ObservedCall
from costmesh.common.usage import QUEUE_PROTOCOLS
from costmesh.native import _fold_py
from costmesh.native._fold_py import holds_nul, ints_fit

try:
    from costmesh.native import _fold
except ImportError as exc:  # the compiled build is part of the product: its absence is a failure, not a skip
    raise ImportError("compiled costmesh.native._fold missing: run `make deps`") from exc

FOLDERS = {"cython": _fold.Folder, "python": _fold_py.Folder}
CODEC = Codec()
RAW = msgspec.msgpack.Encoder()
PROTOCOLS = ["http", "postgres", "tls", "dns", "kafka", "redis", "mongodb", "amqp", "nats", "tcp", "udp"]
METHODS = ["header", "baggage", "jwt", "query", "path", "body", "db", "sni", "host", "trace", "propagated", "platform"]


def reference(payloads: list[bytes]) -> tuple[list, list[tuple]]:
    """Per payload (batch_id, node, seq, n, has_tokens) or None when msgspec refuses it; the rows folded in Python."""
    metas, sums = [], {}
    for p in payloads:
        try:
            b = CODEC.decode_batch(p)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            metas.append(None)
            continue
        if holds_nul(b) or not ints_fit(b):
            metas.append(None)  # msgspec takes it, PostgreSQL could not store it: malformed for the attributor
            continue
        toks = any(r.tokens_in or r.tokens_out or r.tokens_cached or r.tokens_reasoning for r in b.records)
        metas.append((b.batch_id, b.node, b.seq, len(b.records), toks))
        for r in b.records:
            w = r.window_start_us
            minute = int(w / 60_000_000) if abs(w) < 2**52 else (abs(w) // 60_000_000) * (1 if w >= 0 else -1)
            op = r.operation if r.protocol in QUEUE_PROTOCOLS else ""
            key = (minute, *(getattr(r, c) for c in AGG_COLUMNS[1:8]), op)
            acc = sums.setdefault(key, [0] * len(COUNTERS) + [w, w])
            for i, c in enumerate(COUNTERS):
                acc[i] += getattr(r, c)
            acc[-2], acc[-1] = min(acc[-2], w), max(acc[-1], w)
    return metas, [k + tuple(v) for k, v in sums.items()]


def parse_copy(data: bytes) -> list[tuple]:
    """Read binary COPY data for ``AGG_COLUMNS`` back into tuples (text for the key columns, bigint elsewhere)."""
    if not data:
        return []
    assert data[:19] == b"PGCOPY\n\xff\r\n\x00" + bytes(8)
    rows, at = [], 19
    while True:
        (n,) = struct.unpack_from(">h", data, at)
        at += 2
        if n == -1:
            assert at == len(data)
            return rows
        assert n == len(AGG_COLUMNS)
        row = []
        for i in range(n):
            (size,) = struct.unpack_from(">i", data, at)
            at += 4
            if 1 <= i <= 8:
                row.append(data[at : at + size].decode())
            else:
                assert size == 8
                row.append(struct.unpack_from(">q", data, at)[0])
            at += size
        rows.append(tuple(row))


def rec(**kw) -> dict:
    base = dict(window_start_us=60_000_000, window_end_us=61_000_000, node="n1", src_workload="api", dst="db:5432")
    base["protocol"] = "postgres"
    return base | kw


def batch(records: list[dict], **kw) -> bytes:
    return RAW.encode({"type": "call_batch", "batch_id": "b1", "node": "n1", "seq": 7, "records": records} | kw)


def check(payloads: list[bytes]) -> None:
    """Every build: answers equal the reference, declines add nothing, ``fold_group`` rows equal the reference."""
    metas, rows = reference(payloads)
    for name, cls in FOLDERS.items():
        folder = cls()
        accepted = []
        for p, want in zip(payloads, metas, strict=True):
            got = folder.add(p)
            if got is not None:
                assert want is not None, f"{name} accepted a payload msgspec refuses: {p!r}"
                assert got == want, name
                accepted.append(p)
        assert sorted(folder.rows()) == sorted(reference(accepted)[1]), name
        if any(not -(2**63) <= v < 2**63 for row in folder.rows() for v in row[9:]):
            with pytest.raises(OverflowError):
                folder.copy_data()  # sums past a bigint: refused, as asyncpg refuses such a tuple
        else:
            assert parse_copy(folder.copy_data()) == folder.rows(), name
    if any(not -(2**63) <= v < 2**63 for row in rows for v in row[9:]):
        with pytest.raises(OverflowError):
            fold_group(payloads)
        return
    folded = fold_group(payloads)
    for m, want in zip(folded.metas, metas, strict=True):
        assert isinstance(m, str) == (want is None)
        if want is not None:
            assert m == Meta(*want)
    assert sorted(parse_copy(folded.copy)) == sorted(rows) and folded.rows == len(rows)
    assert folded.records == sum(m[3] for m in metas if m is not None)


def test_folds_per_window_and_key_in_order_of_first_appearance():
    payloads = [
        batch([rec(tenant="a", requests=1, busy_us=5), rec(tenant="b", requests=2), rec(tenant="a", requests=3)]),
        batch([rec(tenant="b", requests=4, tokens_in=9, provider="openai", model="m")], batch_id="b2"),
        batch([rec(tenant="a", requests=1, window_start_us=120_000_000, window_end_us=121_000_000)], batch_id="b3"),
    ]
    for cls in FOLDERS.values():
        folder = cls()
        assert [m[-1] for m in folder.add_many(payloads)] == [False, True, False]
        rows = folder.rows()
        assert [(r[0], r[1], r[9], r[13], r[14], r[18], r[19]) for r in rows] == [
            (1, "a", 4, 5, 0, 60_000_000, 60_000_000),
            (1, "b", 6, 0, 9, 60_000_000, 60_000_000),
            (2, "a", 1, 0, 0, 120_000_000, 120_000_000),
        ]
        assert rows[0][2] == "unallocated" and rows[0][1:9] == (
            "a",
            "unallocated",
            "",
            "",
            "api",
            "db:5432",
            "postgres",
            "",
        )
        assert folder.records == 5 and len(folder) == 3
    check(payloads)


@pytest.mark.parametrize(
    "payload",
    [
        batch([rec(extra_field=1)]),  # a newer contract's field: msgspec skips it, the compiled fold declines
        batch([rec()], flows=[]),
        batch([rec(requests=2**64 - 1), rec(requests=5)]),  # beyond int64: exact in the slow path
        batch([rec(requests=-(2**63)), rec(requests=-1)]),
        batch([rec(requests=True)]),
        batch([rec(requests=1.5)]),
        batch([rec(protocol="gopher")]),
        batch([rec(tenant_method="guess")]),
        batch([rec(tenant=None)]),
        batch([{k: v for k, v in rec().items() if k != "dst"}]),
        batch([rec()], v=2),
        batch([rec()], type="alert"),
        batch([rec()]) + b"\x00",
        batch([rec()])[:-3],
        batch([rec(tenant="zürich-ü€𝄞")]),
        batch([]),
        RAW.encode({"batch_id": "b", "node": "n", "seq": 1}),
        RAW.encode({"type": "call_batch", "batch_id": "b", "node": "n"}),
        RAW.encode([1, 2, 3]),
        b"",
    ],
)
def test_edge_cases_equal_msgspec(payload):
    check([payload, batch([rec(tenant="other")], batch_id="ok")])


@pytest.mark.parametrize(
    "bad",
    [b"\xff\xfe\xfd\xfc", b"\xed\xa0\x80Z", b"\xc0\xafZZ", b"\xf4\x90\x80\x80", b"\xe2\x82ZZ", b"Z\xf0\x9f\x98"],
)
def test_invalid_utf8_declined(bad):
    for field in ("tenant", "dst", "node", "model"):
        payload = batch([rec(**{field: "ZZZZ"})])
        payload = payload.replace(b"ZZZZ", bad)
        check([payload])
        assert _fold.Folder().add(payload) is None


def test_duplicate_field_last_wins_in_msgspec_and_is_declined():
    one = RAW.encode(rec(tenant="first"))
    assert one[0] == 0x87  # a map of 7 fields: one more, "tenant" again
    dup = b"\x88" + one[1:] + RAW.encode("tenant") + RAW.encode("second")
    payload = b"\x85" + b"".join(
        RAW.encode(x) for x in ("type", "call_batch", "batch_id", "b", "node", "n", "seq", 1, "records")
    )
    payload += b"\x91" + dup
    assert CODEC.decode_batch(payload).records[0].tenant == "second"
    assert _fold.Folder().add(payload) is None
    check([payload])


def test_one_row_per_minute_with_first_and_last_window_and_the_topic_of_queue_calls_only():
    payloads = [
        batch(
            [
                rec(window_start_us=61_000_000, operation="SELECT 1", requests=1),
                rec(window_start_us=119_000_000, operation="SELECT 2", requests=2),
                rec(window_start_us=62_000_000, protocol="kafka", operation="produce orders", requests=4),
                rec(window_start_us=63_000_000, protocol="kafka", operation="produce refunds", requests=8),
                rec(window_start_us=-61_000_000, requests=16),  # truncated toward zero, as PostgreSQL divides
            ]
        )
    ]
    for cls in FOLDERS.values():
        folder = cls()
        folder.add_many(payloads)
        rows = folder.rows()
        assert [(r[0], r[7], r[8], r[9], r[18], r[19]) for r in rows] == [
            (1, "postgres", "", 3, 61_000_000, 119_000_000),
            (1, "kafka", "produce orders", 4, 62_000_000, 62_000_000),
            (1, "kafka", "produce refunds", 8, 63_000_000, 63_000_000),
            (-1, "postgres", "", 16, -61_000_000, -61_000_000),
        ]
    check(payloads)


def test_queue_protocols_agree():
    assert QUEUE_PROTOCOLS == _fold.QUEUE_PROTOCOLS == _fold_py.QUEUE_PROTOCOLS


@pytest.mark.parametrize("field", ["tenant", "operation", "model", "tenant_rule"])
def test_nul_in_a_string_is_malformed(field):
    payload = batch([rec(**{field: "a\x00b"})])
    assert getattr(CODEC.decode_batch(payload).records[0], field) == "a\x00b"  # msgspec takes it
    for cls in FOLDERS.values():
        assert cls().add(payload) is None
    assert "NUL" in fold_group([payload]).metas[0]
    check([payload, batch([rec(tenant="x" * 20 + "\x00")], batch_id="\x00")])


@pytest.mark.parametrize("field", ["window_start_us", "window_end_us", "requests", "tokens_reasoning"])
def test_integer_beyond_int64_is_malformed(field):
    payload = batch([rec(**{field: 2**64 - 1})])
    assert getattr(CODEC.decode_batch(payload).records[0], field) == 2**64 - 1  # msgspec takes it
    for cls in FOLDERS.values():
        assert cls().add(payload) is None
    assert "64 bits" in fold_group([payload]).metas[0]


def test_records_and_payloads_fold_into_the_same_rows():
    records = [ObservedCall(**rec(tenant=f"t{i % 3}", requests=i, bytes_out=2**63 - 1)) for i in range(10)]
    payload = CODEC.encode(CallBatch(batch_id="x", node="n", seq=1, records=records))
    for cls in FOLDERS.values():
        a, b = cls(), cls()
        a.add(payload)
        b.add_records(records)
        assert a.rows() == b.rows()
        assert a.rows()[0][12] == 4 * (2**63 - 1)  # 128-bit sums: the exact Python value
        with pytest.raises(OverflowError, match="does not fit a bigint"):
            a.copy_data()  # ... which a bigint cannot hold: refused as asyncpg refuses such a tuple


def test_staging_rows_equal_for_refs_and_batches():
    records = [ObservedCall(**rec(tenant=f"t{i % 4}", requests=1)) for i in range(40)]
    batches = [CallBatch(batch_id=f"b{i}", node="n", seq=i, records=records) for i in range(3)]
    refs = [BatchRef(Meta(b.batch_id, b.node, b.seq, len(b.records), False), CODEC.encode(b)) for b in batches]
    assert staging_rows(refs) == staging_rows(batches)
    assert [r[9] for r in staging_rows(refs)] == [30] * 4


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_int = st.one_of(st.integers(0, 200), st.integers(-(2**63), 2**64 - 1))


@st.composite
def payloads(draw) -> bytes:
    records = []
    for _ in range(draw(st.integers(0, 6))):
        r = rec(
            window_start_us=draw(st.sampled_from([0, 60_000_000, 61_000_000, -1, -60_000_001])),
            tenant=draw(st.sampled_from(["", "a", "b"]) | _text),
            src_workload=draw(st.sampled_from(["api", "web"])),
            protocol=draw(st.sampled_from(PROTOCOLS)),
        )
        if draw(st.booleans()):
            r["tenant_method"] = draw(st.sampled_from(METHODS))
        for c in draw(st.lists(st.sampled_from(COUNTERS), max_size=4, unique=True)):
            r[c] = draw(_int)
        if draw(st.integers(0, 9)) == 0:
            r["operation"] = draw(_text)
        records.append(r)
    body = batch(records, batch_id=draw(_text), seq=draw(st.integers(0, 2**40)))
    if draw(st.integers(0, 4)) == 0 and body:  # a damaged payload now and then
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([draw(st.integers(0, 255))]) + body[i + 1 :]
    return body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads(), min_size=1, max_size=4))
def test_generated_payloads_equal_msgspec(group):
    check(group)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_wrong(body):
    check([body])


class _Msg:
    def __init__(self, size: int) -> None:
        self.data = bytes(size)


class _Sub:
    """A pull subscription over a backlog of ``n`` messages of ``size`` bytes; records what each pull asked for."""

    def __init__(self, n: int, size: int) -> None:
        self.left, self.size, self.asked = n, size, []

    async def fetch(self, batch: int, timeout: float) -> list:
        from nats.errors import TimeoutError as NatsTimeout

        self.asked.append(batch)
        if not self.left:
            raise NatsTimeout
        got = min(batch, self.left)
        self.left -= got
        return [_Msg(self.size) for _ in range(got)]


async def test_a_group_is_collected_in_pulls_bounded_in_bytes():
    from costmesh.attributor.service import PULL_BYTES, WORST_PULL_BYTES, PullSizer, fetch_group

    mb = 1024 * 1024
    sizer = PullSizer(max_payload=mb)
    sub = _Sub(2000, 100_000)
    group = await fetch_group(sub, 512, sizer)
    assert len(group) == 512  # a full group from a backlog, in several pulls
    assert all(n * mb <= WORST_PULL_BYTES for n in sub.asked)  # safe even if every payload had the maximum size
    assert len(sub.asked) == -(-512 // (WORST_PULL_BYTES // mb))
    tail = _Sub(30, 100_000)
    assert len(await fetch_group(tail, 512, sizer)) == 30
    assert len(tail.asked) == 1  # the pull came back short: the stream ran dry, no waiting for more
    sizer = PullSizer(max_payload=8 * mb)  # a server that allows large payloads; these are 2 MB
    big = _Sub(100, 2 * mb)
    assert len(await fetch_group(big, 64, sizer)) == 64
    assert big.asked[0] * 8 * mb <= WORST_PULL_BYTES and all(n * 2 * mb <= PULL_BYTES for n in big.asked[1:])


def test_add_records_refuses_integers_past_64_bits_and_adds_nothing():
    ok = ObservedCall(**rec(requests=1))
    big = ObservedCall(**rec(tenant="b", bytes_in=2**64 - 1))
    for cls in FOLDERS.values():
        folder = cls()
        with pytest.raises(OverflowError, match="bytes_in"):
            folder.add_records([ok, big])
        assert folder.rows() == [] and folder.records == 0


def test_many_keys_grow_the_table_and_the_key_arena():
    """Thousands of keys (the table grows many times), key bytes past several arena chunks, one key longer than a
    chunk, each key seen in several batches: the rows equal the reference."""
    payloads = [
        batch(
            [rec(tenant=f"tenant-{i:05d}-" + "x" * 60, requests=i + j) for i in range(j, 6000, 3)]
            + [rec(tenant="L" * 70_000, requests=1)],
            batch_id=f"b{j}",
        )
        for j in range(6)
    ]
    check(payloads)
    folder = _fold.Folder()
    folder.add_many(payloads)
    assert len(folder) == 6001 and folder.records == sum(len(range(j, 6000, 3)) + 1 for j in range(6))
