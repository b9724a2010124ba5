"""Names of the sensor's counters and parse-error kinds, shared by both builds (they count into arrays by index).

Error kinds label ``costmesh_errors_total{service="sensor",kind=...}``; counters describe what was seen.
"""

from __future__ import annotations

from typing import Final

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
)
C = {name: i for i, name in enumerate(COUNTERS)}


class CaptureError(Exception):
    """A capture that cannot be read further: ``path``, byte ``offset`` of the bad record, ``kind``, ``reason``.

    Defined once here so both capture readers raise the same class."""

    def __init__(self, path: str, offset: int, kind: str, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.kind = kind
        self.reason = reason
