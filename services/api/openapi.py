"""The OpenAPI 3.1 document of the API, generated from the route table and the answer types.

Schemas come from ``msgspec.json.schema_components`` over the very types the handlers return, parameters from the
routes' ``Param`` declarations, security from their roles: nothing is written twice. Served at ``/v1/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from costmesh import __version__

from . import answers as a
from .routes import Route

REF = "#/components/schemas/{name}"


def _ref(t: type) -> dict[str, str]:
    return {"$ref": REF.format(name=t.__name__)}


def _json(t: type) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(t)}}


def document(routes: Sequence[Route], auth: bool) -> dict[str, Any]:
    """The document; ``auth`` says whether bearer tokens are enforced (the security requirement is stated either
    way, with the role each route needs in its ``x-costmesh-role``)."""
    _, schemas = msgspec.json.schema_components([r.answer for r in routes] + [a.Error], ref_template=REF)
    paths: dict[str, Any] = {}
    for route in routes:
        responses: dict[str, Any] = {
            "200": {"description": route.answer.__doc__.strip().splitlines()[0] if route.answer.__doc__ else "OK"},
            "400": {
                "description": "A parameter is unknown or its value is bad (named in error).",
                "content": _json(a.Error),
            },
        }
        if route.role is not None:
            responses["401"] = {"description": "No bearer token, or an unknown one.", "content": _json(a.Error)}
            responses["403"] = {"description": "The token's role may not read this route.", "content": _json(a.Error)}
        content = _json(route.answer)
        if route.csv:
            content["text/csv"] = {"schema": {"type": "string"}}
        responses["200"]["content"] = content
        if route.not_found:
            responses["404"] = {
                "description": route.not_found[0].upper() + route.not_found[1:],
                "content": _json(a.Error),
            }
        paths[route.path] = {
            "get": {
                "operationId": route.handler.__name__.lstrip("_").replace("_", "-"),
                "summary": route.summary,
                "parameters": [p.openapi() for p in route.all_params()],
                "responses": responses,
                "security": [] if route.role is None else [{"bearer": []}],
                "x-costmesh-role": route.role or "public",
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "costmesh API",
            "version": __version__,
            "description": (
                "Cost and margin per customer, feature and AI agent from observed consumption. Amounts are exact "
                "decimal strings with their currency. Roles: viewer (cost, usage, graph, alerts) < finance (also P&L "
                "and revenue) < admin (also imports and config). "
                + ("Bearer tokens are enforced." if auth else "No tokens are configured: open, loopback only.")
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
