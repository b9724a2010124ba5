"""What the engine and its callers agree on, shared by both builds: counter and parse-error names (the engine counts
into arrays by index), the kinds of extraction rule the engine evaluates itself, the longest id it keeps, and the one
``CaptureError``.

Error kinds label ``costmesh_input_errors_total{service="sensor",kind=...}``; counters describe what was seen.
"""

from __future__ import annotations

from typing import Final

from costmesh.common.errors import InputError

ERROR_KINDS: Final = (
    "capture_format",
    "capture_truncated",
    "capture_corrupt",
    "linktype_unsupported",
    "frame_truncated",
    "ip_malformed",
    "ip_fragment",
    "tcp_malformed",
    "udp_malformed",
    "http_request_line",
    "http_status_line",
    "http_header",
    "http_content_length",
    "http_chunk",
    "http_head_too_long",
    "pg_message",
    "dns_malformed",
    "tls_malformed",
    "ai_body",
)
E = {name: i for i, name in enumerate(ERROR_KINDS)}

COUNTERS: Final = (
    "frames",
    "bytes",
    "non_ip",
    "other_l4",
    "flows",
    "flows_evicted",
    "tcp_retransmissions",
    "tcp_out_of_order",
    "tcp_gaps",
    "http_requests",
    "http_responses",
    "http_unpaired_responses",
    "http_unanswered",
    "pg_messages",
    "pg_queries",
    "pg_tls",
    "midstream_http",
    "midstream_postgres",
    "tls_client_hellos",
    "tls_ech",
    "dns_messages",
    "ai_calls",
    "flows_unrecognised",
    "server_reads",  # reads by a server on this host matched to a flow (the start of its server time)
)
C = {name: i for i, name in enumerate(COUNTERS)}

#: Protocol names of the engine's records, by record code (``R_*``): the contract's ``ObservedCall.protocol``.
PROTOCOLS: Final = ("http", "postgres", "tls", "dns")
R_HTTP, R_PG, R_TLS, R_DNS = 0, 1, 2, 3

#: Longest id (tenant, feature, agent, host) kept, in bytes; longer values are cut, in both builds.
MAX_VALUE: Final = 128

#: Kinds of extraction rule (``RuleSet.kinds``): the engine reads a header, a baggage key, a query parameter or the host
#: itself; anything else (``SRC_PY``: JWT, path, body, patterns) it hands to the rules' Python slow path.
SRC_HEADER, SRC_BAGGAGE, SRC_QUERY, SRC_HOST, SRC_PY = 0, 1, 2, 3, 4


class CaptureError(InputError):
    """A capture that cannot be read further: ``path``, byte ``offset`` of the bad record, ``kind``, ``reason``.

    Defined once here so both capture readers raise the same class."""

    def __init__(self, path: str, offset: int, kind: str, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.kind = kind
        self.reason = reason
