"""The redactor's own Prometheus metrics (in the process registry). Label values are bounded sets only: the detector
kind (``scan.KINDS``, and ``nul_character``) and the reason a field was dropped — never a field name seen on the wire,
which a rogue publisher controls."""

from __future__ import annotations

from prometheus_client import Counter

from costmesh.common.metrics import REGISTRY

RECORDS_IN = Counter(
    "costmesh_redactor_records_in_total", "ObservedCall records received from sensors.", registry=REGISTRY
)
RECORDS_OUT = Counter(
    "costmesh_redactor_records_out_total",
    "ObservedCall records published after redaction (fewer than in when shaping merged records).",
    registry=REGISTRY,
)
FIELDS_DROPPED = Counter(
    "costmesh_redactor_fields_dropped_total",
    "Fields that did not leave the node: unknown_field (outside the contract), sensitive_header (a tenant read from "
    "a credential header).",
    ["reason"],
    registry=REGISTRY,
)
REDACTIONS = Counter(
    "costmesh_redactor_redactions_total",
    "Values replaced, by kind: a detector's kind ([REDACTED:<kind>] in their place), or nul_character (a NUL "
    "character, replaced by U+FFFD).",
    ["kind"],
    registry=REGISTRY,
)
