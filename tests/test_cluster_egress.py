"""NAT gateway egress per workload and then per tenant, through ``costmesh report`` with a capture (issue 16).

The capture (built here, deterministic): customers call ``shop/gateway`` (acme 3 calls, globex 1) and ``shop/worker``
(globex 2) with ``X-Tenant-ID``; the gateway and the worker call the internet over TLS (SNI ``api.stripe.com``,
``files.partner.example``) and a private in-cluster address (not egress). The bill's ``NatGateway-Bytes`` line must
be split by each workload's bytes to outside addresses, then by its inbound tenant mix; an AI API mapped by config
is egress too (it used to be counted as internal, leaving the demo's NAT line unallocated); addresses in the
configured cluster CIDRs never are.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from costmesh.billing.report import build_report
from costmesh.common.config import ClusterConfig, Config, ResourceMapping, Workload
from costmesh.sensor.replay import observe

from .data.make_demo_capture import frame

START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
CLIENTS, GATEWAY, WORKER, DB = "10.0.0.10", "10.0.0.20", "10.0.0.30", "10.0.0.40"
STRIPE, PARTNER = "93.184.216.34", "151.101.1.1"


def _hello(name: bytes) -> bytes:
    """A TLS ClientHello naming ``name`` (no server_name extension for b"")."""
    sni = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    ext = struct.pack("!HH", 0, len(sni)) + sni if name else b""
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _record(n: int) -> bytes:
    """A TLS application-data record of ``n`` bytes in all."""
    return b"\x17\x03\x03" + struct.pack("!H", n - 5) + b"\xab" * (n - 5)


class Capture:
    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.t = START_US + 60_000_000
        self.payload: dict[tuple[str, str], int] = {}

    def connection(self, client: str, cport: int, server: str, sport: int, exchanges: list[tuple[bytes, bytes]]):
        cseq, sseq, t = 1000, 5000, self.t
        self.frames += [
            (t, frame(client, cport, server, sport, cseq, 0, 0x02)),
            (t + 10, frame(server, sport, client, cport, sseq, cseq + 1, 0x12)),
            (t + 20, frame(client, cport, server, sport, cseq + 1, sseq + 1, 0x10)),
        ]
        cseq, sseq, t = cseq + 1, sseq + 1, t + 100
        for out, back in exchanges:
            self.frames.append((t, frame(client, cport, server, sport, cseq, sseq, 0x18, out)))
            cseq += len(out)
            t += 2_000
            if back:
                self.frames.append((t, frame(server, sport, client, cport, sseq, cseq, 0x18, back)))
                sseq += len(back)
            t += 1_000
            key = (client, server)
            self.payload[key] = self.payload.get(key, 0) + len(out) + len(back)
        self.frames.append((t, frame(client, cport, server, sport, cseq, sseq, 0x11)))
        self.frames.append((t + 10, frame(server, sport, client, cport, sseq, cseq + 1, 0x11)))
        self.t = t + 10_000

    def pcap(self, path: Path) -> Path:
        out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
        for ts, data in sorted(self.frames, key=lambda f: f[0]):
            out.append(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(data), len(data)) + data)
        path.write_bytes(b"".join(out))
        return path


def _request(tenant: str) -> tuple[bytes, bytes]:
    req = f"POST /v1/pay HTTP/1.1\r\nHost: gateway\r\nX-Tenant-ID: {tenant}\r\nContent-Length: 0\r\n\r\n".encode()
    return req, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _capture(tmp_path: Path, partner: bytes = b"files.partner.example") -> tuple[Path, Capture]:
    c = Capture()
    c.connection(CLIENTS, 40001, GATEWAY, 8080, [_request(t) for t in ("acme", "acme", "globex", "acme")])
    c.connection(CLIENTS, 40002, WORKER, 8080, [_request("globex"), _request("globex")])
    c.connection(
        GATEWAY, 41000, STRIPE, 443, [(_hello(b"api.stripe.com"), _record(1400)), (_record(3000), _record(600))]
    )
    c.connection(WORKER, 42000, PARTNER, 443, [(_hello(partner), _record(900)), (_record(1000), b"")])
    c.connection(GATEWAY, 43000, DB, 443, [(_hello(b"db.internal"), _record(5000))])  # inside: not egress
    return c.pcap(tmp_path / "egress.pcap"), c


def _bill(tmp_path: Path, amount: str = "10.00") -> Path:
    head = (
        "BilledCost,BillingAccountId,BillingCurrency,BillingPeriodStart,BillingPeriodEnd,ChargeCategory,"
        "ChargePeriodStart,ChargePeriodEnd,ProviderName,ResourceId,ServiceName,x_UsageType"
    )
    row = (
        f"{amount},123456789012,USD,2026-01-01 00:00:00,2026-02-01 00:00:00,Usage,2026-01-01 00:00:00,"
        "2026-01-01 01:00:00,AWS,nat-0abc,Amazon Virtual Private Cloud,EU-NatGateway-Bytes"
    )
    path = tmp_path / "bill.csv"
    path.write_text(head + "\n" + row + "\n")
    return path


def _config(**cluster) -> Config:
    names = {CLIENTS: "clients", GATEWAY: "shop/gateway", WORKER: "shop/worker", DB: "shop/db"}
    return Config(
        node="node-1",
        workloads=[Workload(address=a, name=n) for a, n in names.items()],
        cluster=ClusterConfig(**cluster),
    )


def _by(report: dict) -> dict[str, Decimal]:
    (line,) = report["lines"]
    out: dict[str, Decimal] = {}
    for a in line["allocations"]:
        key = a["tenant"] or a["method"]
        out[key] = out.get(key, Decimal(0)) + Decimal(a["amount"])
        assert a["basis"] == "egress_bytes"
    return out


def test_a_nat_line_splits_by_egress_bytes_per_workload_then_tenant(tmp_path):
    pcap, capture = _capture(tmp_path)
    report = build_report([_bill(tmp_path)], _config(), captures=[pcap], observe=observe)
    got = _by(report)
    gateway = capture.payload[(GATEWAY, STRIPE)]
    worker = capture.payload[(WORKER, PARTNER)]
    # the gateway's egress goes 3:1 acme:globex (its inbound calls), the worker's to globex alone
    acme = Decimal(10) * gateway / (gateway + worker) * 3 / 4
    print(f"egress bytes: gateway {gateway}, worker {worker}; acme {got['acme']} (expected {acme:.6f})")
    assert abs(got["acme"] - acme) <= Decimal("0.000001")
    assert got["acme"] + got["globex"] == Decimal("10.00") and set(got) == {"acme", "globex"}
    # per destination name: the sensor named the internet endpoints by SNI
    records = observe(pcap, _config())
    tls = {(r.src_workload, r.dst): r.bytes_in + r.bytes_out for r in records if r.protocol == "tls"}
    assert tls == {("shop/gateway", "api.stripe.com"): gateway, ("shop/worker", "files.partner.example"): worker,
                   ("shop/gateway", "shop/db"): capture.payload[(GATEWAY, DB)]}  # fmt: skip


def test_the_cli_report_gives_the_same_split(tmp_path):
    pcap, _ = _capture(tmp_path)
    config = tmp_path / "costmesh.toml"
    config.write_text(
        'node = "node-1"\n'
        + "".join(
            f'[[workloads]]\naddress = "{a}"\nname = "{n}"\n'
            for a, n in ((CLIENTS, "clients"), (GATEWAY, "shop/gateway"), (WORKER, "shop/worker"), (DB, "shop/db"))
        )
    )
    bill = _bill(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "costmesh.cli", "report", "--bill", str(bill), "--capture", str(pcap), "--config",
         str(config), "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _by(json.loads(result.stdout)) == _by(build_report([bill], _config(), captures=[pcap], observe=observe))


def test_a_mapped_ai_api_is_egress_and_cluster_cidrs_are_not(tmp_path):
    pcap, _ = _capture(tmp_path)
    # an AI API rule naming the stripe endpoint (as the demo maps its model host) leaves it outside
    config = _config()
    config.resources = [
        ResourceMapping(resource="payments", kind="ai_api", match="^pay:", endpoints=["api.stripe.com"])
    ]
    got = _by(build_report([_bill(tmp_path)], config, captures=[pcap], observe=observe))
    assert got == _by(build_report([_bill(tmp_path)], _config(), captures=[pcap], observe=observe))
    # a partner called by address (no SNI): egress when public, not when the cluster's CIDRs hold it (a publicly
    # addressed pod range, say) -- then the worker (globex alone) drops out and the gateway's 3:1 mix takes the line
    pcap, _ = _capture(tmp_path, partner=b"")
    worker_dst = {r.dst for r in observe(pcap, _config()) if r.src_workload == "shop/worker"}
    assert worker_dst == {f"{PARTNER}:443"}
    outside = _by(build_report([_bill(tmp_path)], _config(), captures=[pcap], observe=observe))
    inside = _by(build_report([_bill(tmp_path)], _config(cidrs=["151.101.0.0/16"]), captures=[pcap], observe=observe))
    assert outside["globex"] > Decimal("2.50")
    assert inside == {"acme": Decimal("7.50"), "globex": Decimal("2.50")}
