"""Whole records and batches: the allow-list, every field class, merging, pseudonyms, credential-header rules."""

from __future__ import annotations

from typing import get_type_hints

import msgspec
import pytest

from costmesh.common.config import Config, ConfigError, RedactorConfig, Rule
from costmesh.common.schemas import COUNTERS, CallBatch, FlowVolume, ObservedCall
from costmesh.redactor import policy, scan
from costmesh.redactor.records import RecordRedactor

from .conftest import metric
from .redactor_fixtures import PLANTS


def _call(**kw) -> ObservedCall:
    base = {"window_start_us": 0, "window_end_us": 1_000_000, "node": "n1", "src_workload": "web", "dst": "orders"}
    base.update(kw)
    base.setdefault("protocol", "http")
    return ObservedCall(**base)


def _batch(*records: ObservedCall, flows: tuple[FlowVolume, ...] = ()) -> CallBatch:
    return CallBatch(batch_id="n1-abc-1", node="n1", seq=1, records=list(records), flows=list(flows))


def _roundtrip(batch: CallBatch) -> CallBatch:
    return policy.Decoder().decode(msgspec.msgpack.encode(batch))[0]


def test_every_contract_field_has_a_class() -> None:
    hints = get_type_hints(ObservedCall)
    strs = {f for f in ObservedCall.__struct_fields__ if hints[f] is str}
    assert strs == policy.TEXT | policy.OPERATION | policy.ENDPOINT | policy.TENANT
    ints = {f for f in ObservedCall.__struct_fields__ if hints[f] is int}
    assert ints - set(COUNTERS) == {"v", "window_start_us", "window_end_us"}


def test_records_that_shape_alike_merge_with_counters_summed() -> None:
    r = RecordRedactor(Config())
    batch = _batch(
        _call(operation="GET /v1/orders/17?page=1", requests=2, bytes_in=10, busy_us=5),
        _call(operation="GET /v1/orders/99182?page=4&x=1", requests=1, bytes_in=7),
        _call(operation="GET /v1/orders/99182?page=4", requests=3, errors=1, bytes_in=1, busy_us=1),
        _call(operation="SELECT * FROM t WHERE id IN (1,2)", protocol="postgres", requests=1),
        _call(operation="SELECT * FROM t WHERE id IN (5)", protocol="postgres", requests=4),
    )
    out, stats = r.redact_batch(_roundtrip(batch))
    got = {(c.protocol, c.operation): (c.requests, c.errors, c.bytes_in, c.busy_us) for c in out.records}
    assert got == {
        ("http", "GET /v1/orders/{id}?page"): (5, 1, 11, 6),
        ("http", "GET /v1/orders/{id}?page&x"): (1, 0, 7, 0),
        ("postgres", "SELECT * FROM t WHERE id IN (?)"): (5, 0, 0, 0),
    }
    assert (stats.records_in, stats.records_out) == (5, 3)


def test_secrets_in_every_free_text_field_are_redacted_and_counted() -> None:
    r = RecordRedactor(Config())
    email = "carol.leak" + "@" + "example.net"
    key = next(p.text for p in PLANTS if p.kind == "openai_key")
    rec = _call(
        node="node-" + email,
        src_workload=email,
        dst="api-" + key,
        operation=f"GET /u/{email}/k/{key}?token={key}",
        tenant=email,
        tenant_rule="rule-" + key,
        feature=key,
        agent=email,
        provider=key,
        model=email,
    )
    out, stats = r.redact_batch(_roundtrip(_batch(rec)))
    text = msgspec.json.encode(out).decode()
    assert email not in text and key not in text
    assert stats.redactions["email"] >= 5 and stats.redactions["openai_key"] >= 4
    for name in policy.TEXT | policy.OPERATION | policy.ENDPOINT | policy.TENANT:
        assert scan.redact(getattr(out.records[0], name))[1] == (), name


def test_endpoints_keep_private_addresses_and_lose_public_ones() -> None:
    r = RecordRedactor(Config())
    assert r.endpoint("10.0.0.20:8080")[0] == "10.0.0.20:8080"
    assert r.endpoint("127.0.0.1")[0] == "127.0.0.1"
    assert r.endpoint("[fd00::5]:443")[0] == "[fd00::5]:443"
    assert r.endpoint("203.0.113.9:443")[0] == "[REDACTED:ip_address]:443"
    assert r.endpoint("8.8.8.8")[0] == "[REDACTED:ip_address]"
    assert r.endpoint("orders")[0] == "orders"
    flow = FlowVolume(
        window_start_us=0, window_end_us=1, node="n1", l4="tcp", src_addr="10.1.1.1", src_port=1, dst_addr="1.1.1.1",
        dst_port=443,
    )  # fmt: skip
    out, _ = r.redact_batch(_roundtrip(_batch(flows=(flow,))))
    assert (out.flows[0].src_addr, out.flows[0].dst_addr) == ("10.1.1.1", "[REDACTED:ip_address]")


def test_tenants_are_pseudonymised_when_a_key_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CM_TEST_TENANT_KEY", "0123456789abcdef-shared")
    cfg = Config(redactor=RedactorConfig(tenant_hmac_key_env="CM_TEST_TENANT_KEY"))
    a = RecordRedactor(cfg).redact_batch(_roundtrip(_batch(_call(tenant="acme", requests=1))))[0]
    b = RecordRedactor(cfg).redact_batch(_roundtrip(_batch(_call(tenant="acme", requests=1))))[0]
    assert a.records[0].tenant == b.records[0].tenant != "acme"
    assert a.records[0].tenant.startswith("t_")


def test_credential_header_rules_are_refused_and_their_tenants_dropped() -> None:
    with pytest.raises(ConfigError, match="never leaves the node"):
        RecordRedactor(Config(rules=[Rule(source="header", key="Authorization", name="authz")]))
    r = RecordRedactor(Config())
    rec = _call(tenant="opaque-value-from-a-cookie", tenant_method="header", tenant_rule="header:cookie", requests=1)
    out, stats = r.redact_batch(_roundtrip(_batch(rec)))
    assert (out.records[0].tenant, out.records[0].tenant_method) == ("", "unallocated")
    assert stats.fields_dropped == {"sensitive_header": 1}


def test_fields_outside_the_contract_are_dropped_and_counted() -> None:
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(_batch(_call(requests=1))))
    secret = next(p.text for p in PLANTS if p.kind == "github_token")
    raw["debug"] = secret
    raw["records"][0]["headers"] = {"cookie": secret}
    raw["records"][0][secret] = 1
    batch, dropped = policy.Decoder().decode(msgspec.msgpack.encode(raw))
    assert dropped == 3
    assert secret not in msgspec.json.encode(batch).decode()


def test_a_refusal_reason_quotes_no_value() -> None:
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(_batch(_call(requests=1))))
    secret = next(p.text for p in PLANTS if p.kind == "stripe_key")
    raw["records"][0]["protocol"] = secret
    with pytest.raises(policy.Refused) as err:
        policy.Decoder().decode(msgspec.msgpack.encode(raw))
    assert secret not in str(err.value)
    assert "$.records[0].protocol" in str(err.value)
    with pytest.raises(policy.Refused, match="msgpack"):
        policy.Decoder().decode(b"\xc1" + secret.encode())


def test_invalid_utf8_is_refused_with_a_reason_not_a_crash() -> None:
    good = msgspec.msgpack.encode(_batch(_call(requests=1, tenant="acme")))
    bad = good.replace(b"acme", b"ac\xffe")  # a str of the same length, no longer UTF-8
    for data in (bad, bad.replace(b"\xa4node", b"\xa4nodf")):  # strict decode, and the unknown-field path
        with pytest.raises(policy.Refused, match="not a msgpack batch"):
            policy.Decoder().decode(data)


def test_nul_characters_become_replacement_characters_and_are_counted() -> None:
    """PostgreSQL text cannot hold NUL: a record carrying one in any text field is kept, the NUL replaced by U+FFFD
    (kind nul_character), instead of failing the attributor's transaction downstream."""
    r = _call(
        requests=1, tenant="ac\x00me", operation="GET /a\x00b", dst="orders\x00", src_workload="w\x00eb", agent="a\x00"
    )
    out, stats = RecordRedactor(Config()).redact_batch(_roundtrip(_batch(r)))
    (rec,) = out.records
    fields = msgspec.structs.asdict(rec)
    assert not any("\x00" in v for v in fields.values() if isinstance(v, str))
    assert (rec.tenant, rec.dst, rec.src_workload, rec.agent) == ("ac\ufffdme", "orders\ufffd", "w\ufffdeb", "a\ufffd")
    assert "\ufffd" in rec.operation
    assert stats.redactions["nul_character"] == 5


def test_nul_revealed_by_percent_decoding_and_scope_ids_do_not_slip_through() -> None:
    """Review findings: a decoded ``%00`` next to a secret came back as a real NUL, and an IPv6 scope id (free text
    after ``%``) kept a link-local endpoint, and whatever followed it, as it was."""
    from costmesh.redactor.records import redact_deep

    secret = next(p.text for p in PLANTS if p.kind == "aws_access_key")
    out, kinds = redact_deep("%00%41" + secret[1:])
    assert "\x00" not in out and "nul_character" in kinds
    redactor = RecordRedactor(Config())
    for endpoint in (f"[fe80::1%{secret}]:443", "fe80::1%\x00"):
        value, found = redactor.endpoint(endpoint)
        assert secret not in value and "\x00" not in value and found


def test_values_hidden_by_url_encoding_are_found() -> None:
    r = RecordRedactor(Config())
    v6 = "2001%3Adb8%3A%3A8a2e%3A370%3A7334"
    assert r.operation("http", f"GET /v1/hosts/{v6}/x")[0] == "GET /v1/hosts/{id}/x"
    assert r.text(f"host {v6}") == ("host [REDACTED:ip_address]", ("ip_address",))
    assert r.text("agent%40" + "example.com%2Fx")[1] == ("email",)


def test_metrics_count_records_fields_and_kinds_with_bounded_labels() -> None:
    from costmesh.common.metrics import REGISTRY
    from costmesh.redactor.service import record_stats

    before = (
        metric("costmesh_redactor_records_in_total"),
        metric("costmesh_redactor_records_out_total"),
        metric("costmesh_redactor_redactions_total", kind="email"),
        metric("costmesh_redactor_fields_dropped_total", reason="sensitive_header"),
    )
    r = RecordRedactor(Config())
    email = "erin.leak" + "@" + "example.com"
    batch = _batch(
        _call(operation=f"GET /u/{email}", requests=1),
        _call(operation=f"GET /u/{email}", requests=1),
        _call(tenant="x", tenant_rule="header:authorization", requests=1),
    )
    _out, stats = r.redact_batch(_roundtrip(batch))
    record_stats(stats)
    after = (
        metric("costmesh_redactor_records_in_total"),
        metric("costmesh_redactor_records_out_total"),
        metric("costmesh_redactor_redactions_total", kind="email"),
        metric("costmesh_redactor_fields_dropped_total", reason="sensitive_header"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 2, 2, 1]
    for family in REGISTRY.collect():
        if family.name == "costmesh_redactor_redactions":
            assert {s.labels["kind"] for s in family.samples} <= set(scan.KINDS)
