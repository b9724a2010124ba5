"""The ``costmesh`` command: the embedded stack (``up``, ``demo``), each service alone, and config checks.

Exit status: 0 success, 1 a runtime failure (an unreachable server, a service that died), 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from costmesh import __version__
from costmesh.common.config import Config, ConfigError, load_config
from costmesh.common.errors import StartupError
from costmesh.common.logs import setup_logging
from costmesh.common.natsio import Unreachable
from costmesh.common.tables import render_table

log = logging.getLogger("costmesh.cli")

SERVICES = {
    "sensor": "Capture traffic on this node (or replay captures) and send per-window call records to the redactor.",
    "redactor": "Check and redact this node's call records and publish them to the JetStream events stream.",
    "attributor": "Consume the events stream exactly once into the consumption store in PostgreSQL.",
    "billing": "Import bills and revenue and run cost allocation.",
    "api": "Serve the HTTP API: usage and cost queries, /metrics and /healthz.",
    "exporter": "Export the redacted events stream to an OpenTelemetry collector over OTLP (config section otlp).",
}


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"costmesh: invalid config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _command(sub: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
    """A subcommand whose one line of help is also its description."""
    return sub.add_parser(name, help=text, description=text)


def _service_parser(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = _command(sub, name, SERVICES[name])
    p.add_argument("--config", help="config file (TOML); defaults apply without one")
    p.add_argument("--nats-url", default="", help="NATS URL (default: nats.url from config)")
    p.add_argument("--dsn", default="", help="PostgreSQL DSN (default: postgres.dsn / dsn_env from config)")
    p.add_argument("--metrics-port", type=int, default=0, help="port of /metrics and /healthz (0: a free port)")
    if name == "sensor":
        p.add_argument(
            "--replay",
            action="append",
            default=[],
            metavar="CAPTURE",
            help="replay a capture file through the sensor (repeatable)",
        )
        p.add_argument(
            "--print-bpf",
            action="store_true",
            help="print the final text of the eBPF programs (placeholders replaced) on stderr when capturing live",
        )
    if name == "billing":
        p.add_argument(
            "action",
            nargs="?",
            default="run",
            choices=["run", "unmatched"],
            help="run: the service (default); unmatched: list the largest cost lines no observed resource explains",
        )
        p.add_argument("--bill", action="append", default=[], metavar="FILE", help="unmatched: bill file (repeatable)")
        p.add_argument(
            "--capture", action="append", default=[], metavar="FILE", help="unmatched: capture with the traffic"
        )
        p.add_argument("--period", help="unmatched: billing period YYYY-MM (default: all)")
        p.add_argument("--limit", type=int, default=20, help="unmatched: how many lines to list (default 20)")
    if name == "api":
        p.add_argument("--api-port", type=int, default=0, help="API listen port (default: api.port from config)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="costmesh",
        description="Runtime cost attribution for multi-tenant SaaS: who consumed what, and what it cost.",
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="override the config's level"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = _command(sub, "up", "Run everything: embedded NATS and PostgreSQL (unless configured) and all services.")
    up.add_argument("--config", help="config file (TOML)")
    up.add_argument("--data-dir", help="folder for embedded NATS and PostgreSQL data (default: data_dir from config)")
    up.add_argument("--replay", action="append", default=[], metavar="CAPTURE", help="capture for the sensor to replay")
    up.add_argument("--api-port", type=int, default=0, help="API listen port (default: api.port from config)")

    demo = sub.add_parser(
        "demo",
        help="Run a small multi-tenant SaaS on loopback, capture it, allocate its bill; print cost and margin per "
        "customer beside the truth.",
        description="Run the demo SaaS on loopback (each workload on its own 127.0.0.x address), capture it live with "
        "eBPF where allowed (else record and replay), import its bill and revenue, and print cost and margin per "
        "customer beside what really happened. With --capture, replay that capture through the pipeline instead.",
    )
    demo.add_argument("--capture", help="replay this capture file (pcap) instead of running the SaaS")
    demo.add_argument("--config", help="config file (TOML) for --capture")
    demo.add_argument("--replay", action="store_true", help="record the SaaS's traffic and replay it, not eBPF")
    demo.add_argument("--timeout", type=float, default=100, help="seconds to wait for the pipeline (default 100)")
    demo.add_argument(
        "--keep", action="store_true", help="then print the web console's URL and keep serving until Ctrl-C"
    )

    for name in SERVICES:
        _service_parser(sub, name)

    report = _command(
        sub, "report", "Print a chargeback report (cost and margin per customer) from bill files, without a deployment."
    )
    report.add_argument("--bill", nargs="+", required=True, metavar="FILE", help="bill files: FOCUS or AWS CUR")
    report.add_argument(
        "--capture", action="append", default=[], metavar="FILE", help="capture whose traffic splits the bill"
    )
    report.add_argument("--revenue", metavar="FILE", help="revenue CSV: customer, period, amount, currency")
    report.add_argument("--config", help="config file (TOML): resources, workloads, tag keys, rate cards")
    report.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output (default table)")
    report.add_argument("--currency", help="report only lines in this currency (needed when bills mix currencies)")

    analyze = _command(
        sub, "analyze", "Analyze a capture offline through the sensor's parser and print calls per tenant."
    )
    analyze.add_argument("capture", metavar="CAPTURE", help="capture file (pcap or pcapng)")
    analyze.add_argument("--config", help="config file (TOML): extraction rules, workloads, sensor ports")
    analyze.add_argument("--format", choices=["table", "json"], default="table", help="output format (default table)")

    config = _command(sub, "config", "Work with config files.")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = _command(config_sub, "check", "Validate a config file; exit 2 naming file, key and reason if invalid.")
    check.add_argument("file", help="config file (TOML)")

    _command(sub, "version", "Print the costmesh version.")
    return parser


def _run_service(args: argparse.Namespace, config: Config) -> int:
    from costmesh.common.db import dsn_of
    from costmesh.common.runtime import ServiceContext, run_service

    nats_url = args.nats_url or config.nats.url
    try:
        dsn = args.dsn or dsn_of(config.postgres)
    except ConfigError as exc:
        print(f"costmesh: invalid config: {exc}", file=sys.stderr)
        return 2
    if not nats_url:
        print("costmesh: no NATS URL: give --nats-url or nats.url (or run `costmesh up`)", file=sys.stderr)
        return 2
    if args.command in ("attributor", "billing", "api") and not dsn:
        print("costmesh: no PostgreSQL DSN: give --dsn or postgres.dsn (or run `costmesh up`)", file=sys.stderr)
        return 2
    ctx = ServiceContext(args.command, config, nats_url, dsn, args.metrics_port)
    if args.command == "sensor":
        from costmesh.sensor import service as sensor

        replay = [Path(p) for p in args.replay]
        return run_service(ctx, lambda c: sensor.main(c, replay, print_bpf=args.print_bpf))
    if args.command == "api" and args.api_port:
        config.api.port = args.api_port
    module = {
        "redactor": "costmesh.redactor.service",
        "attributor": "costmesh.attributor.service",
        "billing": "costmesh.billing.service",
        "api": "costmesh.api.app",
        "exporter": "costmesh.exporter.service",
    }[args.command]
    main = __import__(module, fromlist=["main"]).main
    return run_service(ctx, main)


def _demo_saas(args: argparse.Namespace) -> int:
    """``costmesh demo``: the demo SaaS end to end (``costmesh.demo.run``), then what ``_print_saas_demo`` prints and
    ``finish_demo``, with the stack still up. Where nothing can be captured, the shipped sample capture instead."""
    from costmesh.demo.errors import CaptureUnavailable, DemoError, SaasError
    from costmesh.demo.run import DemoRun
    from costmesh.demo.scenarios import DEMO

    with (
        tempfile.TemporaryDirectory(prefix="costmesh-demo-") as tmp,
        DemoRun(DEMO, Path(tmp), force_replay=args.replay) as run,
    ):
        addrs = sorted(run.saas.plan.addresses.values(), key=lambda a: int(a.rsplit(".", 1)[1]))
        where = f"{addrs[0]}-{addrs[-1].rsplit('.', 1)[1]}"
        print(f"costmesh demo: {DEMO.title}; workloads on {where}, costmesh API on {run.base_url}", flush=True)
        try:
            result = run.run(args.timeout)
        except CaptureUnavailable as exc:
            unavailable = exc
        except (DemoError, SaasError) as exc:
            print(f"costmesh: demo failed: {exc}", file=sys.stderr)
            return 1
        else:
            _print_saas_demo(result)
            return finish_demo(run, args)
    return _demo_sample(args, unavailable)


def _print_saas_demo(result) -> None:
    """Capture mode, traffic, cost and margin per customer (``/v1/pnl``), and the costs beside the truth."""
    from costmesh.billing.report import from_api_pnl
    from costmesh.billing.report import render_table as render_chargeback
    from costmesh.demo.accuracy import assess, render_scenario
    from costmesh.demo.scenarios import DEMO

    customers = [t.name for t in DEMO.tenants]
    accuracy = assess(result, title=DEMO.title, mode=DEMO.mode, target_pct=DEMO.target_pct, customers=customers)
    edge = sum(result.truth.share_of("edge").values())
    print(f"capture: {result.capture} ({result.capture_note})")
    print(
        f"traffic: {edge} requests from {len(customers)} customers in {result.traffic_s:.1f} s "
        f"({result.failed_requests} failed); bill: {len(result.bill.lines)} lines for "
        f"{result.bill.charge_start:%Y-%m-%d %H:%M}-{result.bill.charge_end:%H:%M} UTC"
    )
    print()
    print(render_chargeback(from_api_pnl(result.pnl), note="Amounts rounded to cents; GET /v1/pnl has them exactly."))
    print()
    print("What really happened (the SaaS's own measurements), beside costmesh and two naive splits:")
    print(render_scenario(accuracy))


def _demo_sample(args: argparse.Namespace, why: Exception) -> int:
    """The last resort where nothing can be captured (not root): the sample capture of the repository, replayed."""
    sample = Path(__file__).resolve().parent.parent / "tests" / "data"
    capture, config = sample / "demo_tenants.pcap", sample / "demo" / "costmesh.toml"
    if not capture.exists():
        print(f"costmesh: demo failed: {why}; no sample capture at {capture} to replay instead", file=sys.stderr)
        return 1
    print(f"capture: replay of the sample {capture} ({why})", flush=True)
    args.capture, args.config = str(capture), str(config)
    return _demo(args, _load(args.config))


def finish_demo(run, args: argparse.Namespace) -> int:
    """The demo's last step, run while the whole stack is still up: say where the console answers, and with
    ``--keep`` serve it until Ctrl-C (``supervisor.keep_serving``). When it returns the stack stops."""
    from costmesh.common.supervisor import keep_serving

    if args.keep and run.stack is not None:
        return keep_serving(run.stack)
    print(f"The costmesh console: {run.console_url} (stops with the demo; --keep serves it until Ctrl-C)")
    return 0


def _demo(args: argparse.Namespace, config: Config) -> int:
    """Replay the capture through the whole pipeline and print consumption per tenant; when the config names bills,
    also wait for an allocation run that saw all of it and print cost and margin per customer (``/v1/pnl``)."""
    from costmesh.billing.report import from_api_pnl
    from costmesh.billing.report import render_table as render_chargeback
    from costmesh.common.embedded import free_port
    from costmesh.common.supervisor import Stack, http_json, keep_serving

    with tempfile.TemporaryDirectory(prefix="costmesh-demo-") as tmp:
        stack = Stack(config, args.config, Path(tmp), [args.capture], api_port=free_port())
        try:
            stack.start()
            end = time.monotonic() + args.timeout
            base = f"http://127.0.0.1:{stack.api_port}"
            while True:
                sensor = stack.health("sensor")
                applied = http_json(base + "/v1/ingest")["applied_batches"]
                if sensor.get("replay_done") and applied >= int(sensor.get("batches_published", 0)):
                    break
                if time.monotonic() > end:
                    print(
                        f"costmesh: demo timed out: {applied} of {sensor.get('batches_published')} batches applied",
                        file=sys.stderr,
                    )
                    return 1
                time.sleep(0.2)
            rows = http_json(base + "/v1/usage?group_by=tenant")["rows"]
            pnls = []
            if config.billing.sources:
                # Billing reads hourly rollups, which the attributor's maintenance writes: a pass going on now may
                # have started before the last batch, so wait for the one after it; then the same for billing.
                passes = int(stack.health("attributor").get("maintenance_passes", 0))
                while int(stack.health("attributor").get("maintenance_passes", 0)) < passes + 2:
                    if time.monotonic() > end:
                        print("costmesh: demo timed out waiting for the attributor's rollups", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
                runs = int(stack.health("billing").get("allocation_runs", 0))
                while (billing := stack.health("billing")).get("allocation_runs", 0) < runs + 2:
                    if time.monotonic() > end:
                        print("costmesh: demo timed out waiting for the allocation run", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
                pnls = [http_json(f"{base}/v1/pnl?period={period}") for period in billing.get("periods", [])]
            print(render_table(rows, ["tenant", "requests", "errors", "bytes_in", "bytes_out", "busy_us"]))
            for pnl in pnls:
                print()
                note = "Amounts rounded to cents here; GET /v1/pnl gives them exactly."
                print(render_chargeback(from_api_pnl(pnl), note=note))
            if args.keep:
                return keep_serving(stack)
        finally:
            stack.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"costmesh {__version__}")
        return 0
    if args.command == "config":
        try:
            load_config(args.file)
        except ConfigError as exc:
            print(f"costmesh: invalid config: {exc}", file=sys.stderr)
            return 2
        print(f"{args.file}: ok")
        return 0
    config = _load(getattr(args, "config", None))
    if args.command == "demo" and not args.capture:
        config.log_level = "warning"  # the demo prints its own story; the services' progress is in their logs
    if args.log_level:
        config.log_level = args.log_level
    if args.command == "report":
        from costmesh.billing.report import main as report_main
        from costmesh.sensor.replay import observe

        return report_main(args, config, observe)
    if args.command == "billing" and args.action != "run":
        from costmesh.billing.commands import unmatched
        from costmesh.sensor.replay import observe

        return unmatched(args, config, observe)
    if args.command in SERVICES:
        return _run_service(args, config)
    if args.command == "analyze":
        from costmesh.sensor.analyze import run as analyze

        return analyze(args.capture, config, args.format)
    setup_logging("up", config.log_level)
    try:
        if args.command == "demo":
            return _demo(args, config) if args.capture else _demo_saas(args)
        from costmesh.common.supervisor import run_up

        if args.api_port:
            config.api.port = args.api_port
        return run_up(config, args.config, Path(args.data_dir or config.data_dir), args.replay)
    except (Unreachable, StartupError) as exc:
        print(f"costmesh: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"costmesh: invalid config: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
