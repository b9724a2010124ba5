"""Detectors: every planted secret/PII kind is redacted in paths, queries, JSON and SQL; no control is touched."""

from __future__ import annotations

import pytest

from costmesh.redactor import scan

from .redactor_fixtures import CONTEXTS, CONTROLS, PLANTS, Plant, embed


def _id(plant: Plant) -> str:
    return f"{plant.kind}:{plant.text[:14]}"


@pytest.mark.parametrize("plant", PLANTS, ids=_id)
@pytest.mark.parametrize("context", CONTEXTS, ids=["path", "query", "json", "sql"])
def test_true_positive_is_redacted_in_context(plant: Plant, context: str) -> None:
    text = embed(context, plant.text)
    out, kinds = scan.redact(text)
    for secret in plant.secrets:
        assert secret not in out, f"{plant.kind} leaked in {out!r}"
    assert kinds, out
    assert "[REDACTED:" in out


@pytest.mark.parametrize("plant", PLANTS, ids=_id)
def test_alone_the_kind_is_named(plant: Plant) -> None:
    out, kinds = scan.redact(plant.text)
    assert kinds[0] == plant.kind, out
    assert scan.placeholder(plant.kind) in out


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("context", CONTEXTS, ids=["path", "query", "json", "sql"])
def test_control_is_not_redacted(control: str, context: str) -> None:
    text = embed(context, control)
    assert scan.redact(text) == (text, ())


def test_every_kind_has_a_fixture() -> None:
    assert {p.kind for p in PLANTS} == set(scan.KINDS)


def test_redaction_is_idempotent_and_leaves_no_match() -> None:
    text = "\n".join(embed(c, p.text) for p in PLANTS for c in CONTEXTS)
    once, kinds = scan.redact(text)
    assert len(kinds) >= len(PLANTS) * len(CONTEXTS)
    assert scan.redact(once) == (once, ())


def test_grouped_card_keeps_a_trailing_group_that_is_not_part_of_it() -> None:
    card = "4111 " + "1111 " + "1111 " + "1111"
    assert scan.redact(f"paid with {card} 2024") == ("paid with [REDACTED:card] 2024", ("card",))


def test_only_the_value_of_an_assignment_or_url_userinfo_goes() -> None:
    assert scan.redact("postgres://app:" + "pw-Q7xLm2Vp9" + "@db:5432/x")[0] == (
        "postgres://[REDACTED:url_credentials]@db:5432/x"
    )
    assert scan.redact("secret_token=" + "Zq81Lm4Rt7Vw")[0] == "secret_token=[REDACTED:secret]"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4111" + "1111" + "1111" + "1111", True),
        ("4111" + "1111" + "1111" + "1112", False),
        ("79927398713", True),
        ("79927398710", False),
    ],
)
def test_luhn(value: str, expected: bool) -> None:
    assert scan._luhn_ok(value) is expected
