"""Shapes: route templates, parameter names only, SQL fingerprints, topics, Redis commands (tables of cases)."""

from __future__ import annotations

import pytest

from costmesh.redactor import shapes

HTTP_CASES = [
    ("GET /users/123/orders", "GET /users/{id}/orders"),
    ("GET /users/123/orders/9f1c2b4e-3d6a-4b8e-9c2f-1a2b3c4d5e6f", "GET /users/{id}/orders/{uuid}"),
    ("GET /repos/x/commit/3f786850e387550fdab836ed7e6dc881de23001b", "GET /repos/x/commit/{hex}"),
    ("GET /v1/orders?page=2&sort=asc&page=3", "GET /v1/orders?page&sort"),
    ("GET /v1/search?sort=asc&q=hello+world", "GET /v1/search?q&sort"),
    ("GET /v1/orders/42?", "GET /v1/orders/{id}?"),
    ("POST /v1/users/u_8f7a6b5c/avatar HTTP/1.1", "POST /v1/users/{id}/avatar"),
    ("GET /oauth2/v1beta1/token", "GET /oauth2/v1beta1/token"),
    ("GET /reports/2026-11-26/summary", "GET /reports/{date}/summary"),
    ("GET /cart;jsessionid=ABC123DEF/items", "GET /cart;jsessionid/items"),
    ("GET /page#section-2", "GET /page"),
    ("GET /blob/" + "a" * 60, "GET /blob/{blob}"),
    ("GET /t/Xk9fQ2mLpAaZBcDe", "GET /t/{token}"),
    ("GET http://orders.internal:8080/v1/orders/7?x=1", "GET http://orders.internal:8080/v1/orders/{id}?x"),
    ("CONNECT api.openai.com:443", "CONNECT api.openai.com:443"),
    ("GET /v1/x?=novalue&4111=x&ok=1", "GET /v1/x?ok&{param}"),
    ("GET /x HTTP/1.1\r\nAuthorization: Bearer abc\r\nCookie: s=1", "GET /x"),
    ("GET /x\nSet-Cookie: s=1", "GET /x"),
    ("get /x", "{method} /x"),
    ("/no/method/12", "/no/method/{id}"),
    ("GET /u/[REDACTED:email]/orders", "GET /u/[REDACTED:email]/orders"),
    ("GET /x?[REDACTED:openai_key]", "GET /x?[REDACTED:openai_key]"),
]


@pytest.mark.parametrize(("raw", "shaped"), HTTP_CASES)
def test_http_route_template(raw: str, shaped: str) -> None:
    assert shapes.shape("http", raw) == shaped


SQL_CASES = [
    ("SELECT * FROM users WHERE id = 42", "SELECT * FROM users WHERE id = ?"),
    ("SELECT * FROM users WHERE email = 'a@b.c' AND n > 3.5e2", "SELECT * FROM users WHERE email = ? AND n > ?"),
    ("SELECT * FROM t WHERE id IN (1, 2, 3, 4)", "SELECT * FROM t WHERE id IN (?)"),
    ("SELECT * FROM t WHERE id in ($1,$2,$3)", "SELECT * FROM t WHERE id IN (?)"),
    ("SELECT * FROM t WHERE id = ANY(ARRAY[1,2,3])", "SELECT * FROM t WHERE id = ANY(ARRAY[?])"),
    ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')", "INSERT INTO t (a, b) VALUES (?, ?)"),
    ("SELECT 'it''s' AS s", "SELECT ? AS s"),
    ("SELECT E'a\\'b' AS s", "SELECT ? AS s"),
    ("SELECT $$ body 'x' $$, $f$ y $f$", "SELECT ?, ?"),
    ("SELECT 1 -- secret comment\nFROM t", "SELECT ? FROM t"),
    ("SELECT /* tenant=acme */ x FROM t", "SELECT x FROM t"),
    ('SELECT "Col1" FROM "Tab 2" WHERE c2 = 7', 'SELECT "Col1" FROM "Tab 2" WHERE c2 = ?'),
    ("SELECT  *\n\tFROM   t", "SELECT * FROM t"),
    ("SELECT * FROM t WHERE note = 'cut off by the 2 KiB lim", "SELECT * FROM t WHERE note = ?"),
    ("SELECT * FROM t WHERE k = X'DEADBEEF'", "SELECT * FROM t WHERE k = ?"),
    ("SELECT * FROM t WHERE c = [REDACTED:email]", "SELECT * FROM t WHERE c = ?"),
    ("SELECT t1.c FROM t1", "SELECT t1.c FROM t1"),
]


@pytest.mark.parametrize(("raw", "shaped"), SQL_CASES)
def test_sql_fingerprint(raw: str, shaped: str) -> None:
    assert shapes.shape("postgres", raw) == shaped


@pytest.mark.parametrize(
    ("protocol", "raw", "shaped"),
    [
        ("kafka", "orders.events", "orders.events"),
        ("kafka", "tenant.12345.events", "tenant.{id}.events"),
        ("amqp", "jobs.9f1c2b4e-3d6a-4b8e-9c2f-1a2b3c4d5e6f", "jobs.{uuid}"),
        ("redis", "GET session:abc123", "GET"),
        ("redis", "hset user:1 name bob", "HSET"),
        ("tls", "api.openai.com", "api.openai.com"),
        ("http", "", ""),
    ],
)
def test_other_protocols(protocol: str, raw: str, shaped: str) -> None:
    assert shapes.shape(protocol, raw) == shaped


def test_shapes_of_ids_merge() -> None:
    a = shapes.shape("http", "GET /v1/orders/1?page=1")
    b = shapes.shape("http", "GET /v1/orders/982734?page=7")
    assert a == b == "GET /v1/orders/{id}?page"


@pytest.mark.parametrize(
    ("protocol", "raw"),
    [("http", raw) for raw, _ in HTTP_CASES] + [("postgres", raw) for raw, _ in SQL_CASES],
)
def test_cache_key_has_the_same_shape(protocol: str, raw: str) -> None:
    assert shapes.shape(protocol, shapes.cache_key(protocol, raw)) == shapes.shape(protocol, raw)


def test_cache_key_folds_ids_and_values() -> None:
    a = shapes.cache_key("http", "GET /v1/orders/17/items?page=1&q=abc HTTP/1.1")
    b = shapes.cache_key("http", "GET /v1/orders/99182/items?page=4&q=xyz HTTP/1.1")
    assert a == b
    assert shapes.cache_key("postgres", "SELECT 1 WHERE a = 'x'") == shapes.cache_key(
        "postgres", "SELECT 2 WHERE a = 'y'"
    )
