"""Writes a capture whose HTTP requests carry planted secrets and PII of every detector kind, for the zero-leak test.

Each planted value (``tests/redactor_fixtures.PLANTS``) travels in a request path and in a query string, both as is
(``@ : / = +`` left readable) and fully percent-encoded, and in ``X-Feature`` / ``X-Agent-ID`` headers; every request
also carries ``Authorization``, ``Cookie`` and ``X-Api-Key`` headers with secret values. One tenant id is an e-mail.
Responses pair with requests so the minimal sensor emits a record per request.

The capture is generated at test time (deterministic: fixed clock, no randomness) and not committed: it would hold
strings that repository secret scanners flag. To look at one: ``python -m tests.data.make_secret_capture OUT.pcap``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import quote

from tests.data.make_demo_capture import CLIENT, SERVER, SERVER_PORT, START_US, frame, write_pcap
from tests.redactor_fixtures import PLANTS

HEADER_SECRETS = (
    ("Authorization", "Bearer " + "hdr" + "Q7xLm2Vp9Rt4" + "Zk8Wb3Nc6Hd1"),
    ("Cookie", "session=" + "ck" + "Zk8Wb3Nc6Hd1" + "Q7xLm2Vp9Rt4; theme=dark"),
    ("X-Api-Key", "ak" + "Nc6Hd1Q7xLm2" + "Vp9Rt4Zk8Wb3"),
)
EMAIL_TENANT = "dave.leak" + "@" + "example.com"
_DIGIT_KINDS = ("card", "phone", "iban", "ssn")


def requests() -> list[tuple[str, list[tuple[str, str]]]]:
    """(request target, extra headers) of every planted request."""
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for i, plant in enumerate(PLANTS):
        for safe in ("/:@=+", ""):
            q = quote(plant.text, safe=safe)
            out.append((f"/v1/lookup/{q}/details", [("X-Tenant-ID", "acme")]))
            out.append((f"/v1/search?q={q}&page={i}", [("X-Tenant-ID", "globex")]))
        header_value = plant.text.replace("\\n", " ")
        out.append(("/v1/ping", [("X-Tenant-ID", "acme"), ("X-Feature", header_value), ("X-Agent-ID", header_value)]))
    out.append(("/v1/profile", [("X-Tenant-ID", EMAIL_TENANT)]))
    return out


def needles() -> set[str]:
    """Every form in which a planted value could leak: as planted, percent-encoded, digits only for numbers."""
    found: set[str] = {v.split(" ", 1)[1] if v.startswith("Bearer") else v.split(";")[0] for _h, v in HEADER_SECRETS}
    found.add(EMAIL_TENANT)
    for plant in PLANTS:
        for secret in plant.secrets:
            found.update({secret, quote(secret, safe=""), quote(secret, safe="/:@=+")})
            if plant.kind in _DIGIT_KINDS:
                found.add(re.sub(r"[^0-9]", "", secret))
    return {n for n in found if len(n) >= 8}


def build() -> list[tuple[int, bytes]]:
    frames: list[tuple[int, bytes]] = []
    now = START_US
    port, cseq, sseq = 41000, 5000, 700_000
    frames.append((now, frame(CLIENT, port, SERVER, SERVER_PORT, cseq, 0, 0x02)))
    frames.append((now + 50, frame(SERVER, SERVER_PORT, CLIENT, port, sseq, cseq + 1, 0x12)))
    cseq, sseq = cseq + 1, sseq + 1
    frames.append((now + 80, frame(CLIENT, port, SERVER, SERVER_PORT, cseq, sseq, 0x10)))
    now += 200
    for target, extra in requests():
        head = [f"GET {target} HTTP/1.1", "Host: orders.internal:8080", *(f"{h}: {v}" for h, v in HEADER_SECRETS)]
        head += [f"{h}: {v}" for h, v in extra]
        request = ("\r\n".join(head) + "\r\n\r\n").encode()
        body = b'{"ok": true}'
        response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n" + body
        frames.append((now, frame(CLIENT, port, SERVER, SERVER_PORT, cseq, sseq, 0x18, request)))
        cseq += len(request)
        now += 2_000
        frames.append((now, frame(SERVER, SERVER_PORT, CLIENT, port, sseq, cseq, 0x18, response)))
        sseq += len(response)
        now += 3_000
    frames.append((now, frame(CLIENT, port, SERVER, SERVER_PORT, cseq, sseq, 0x11)))
    frames.append((now + 60, frame(SERVER, SERVER_PORT, CLIENT, port, sseq, cseq + 1, 0x11)))
    return frames


def write(path: Path) -> int:
    """Write the capture; returns how many requests it holds."""
    write_pcap(path, build())
    return len(requests())


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "secret_capture.pcap")
    print(f"wrote {write(out)} requests to {out}")
