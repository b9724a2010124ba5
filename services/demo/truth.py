"""Ground truth: what the demo's workloads did, written by them as they run, never what costmesh observed.

Each workload process appends events to ``<run>/truth/<workload>.jsonl``; PostgreSQL itself writes the duration of
every statement to its log (``log_min_duration_statement = 0``, prefixed with the session's ``application_name``).
``load_truth`` joins them into the quantity that drives each bill line, per tenant (``""`` is platform work, done
for no tenant):

- ``database``: PostgreSQL server time (µs) of every statement, as PostgreSQL measured it, summed by the session it
  ran in. Every database session is opened on behalf of one tenant (or for platform work) and says so in a
  ``DbSession`` event; the queue worker opens its session for the tenant of the job it handles.
- ``node``: server time (µs) the node's workloads spent on each tenant: request handling in the gateway, orders and
  the assistant (from handler entry to response end), job handling in the worker, each run of the background job.
  It is the capacity held for the tenant (a request waiting on the database still holds its worker), not CPU time.
- ``nat``: bytes of HTTP messages exchanged with the external model endpoint (requests as received, responses as
  sent, counted at the endpoint's socket; TLS record overhead and handshakes not included), joined to the caller's
  tenant by the request id the caller sent.
- ``ai_input`` / ``ai_output``: the input (prompt) and output (completion) tokens the model endpoint counted and
  billed for each call, joined the same way.
- ``queue``: bytes of the queue's API calls made for each message (its send, its delivery, its deletion), joined to
  the tenant the producer enqueued it for; an empty receive is platform work (polling for nobody).
- ``edge``: requests at the edge per tenant, as the clients sent them (what a spreadsheet would split by).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Final

import msgspec


class Served(msgspec.Struct, tag="served", frozen=True):
    """A workload on the node spent ``server_us`` on a request or job for ``tenant`` ("": platform work)."""

    workload: str
    tenant: str
    operation: str
    server_us: int


class Edge(msgspec.Struct, tag="edge", frozen=True):
    """The clients sent one request for ``tenant`` and got ``status`` back."""

    tenant: str
    operation: str
    status: int


class DbSession(msgspec.Struct, tag="db_session", frozen=True):
    """Database sessions with ``application_name`` = ``app_name`` work for ``tenant`` ("": platform)."""

    app_name: str
    tenant: str


class ModelAsked(msgspec.Struct, tag="model_asked", frozen=True):
    """A workload called the model for ``tenant`` with request id ``request_id``."""

    request_id: str
    tenant: str
    caller: str


class ModelServed(msgspec.Struct, tag="model_served", frozen=True):
    """The model endpoint answered ``request_id``: tokens it billed and bytes it received and sent."""

    request_id: str
    tokens_in: int
    tokens_out: int
    bytes_in: int
    bytes_out: int
    stream: bool
    tls: bool


class Enqueued(msgspec.Struct, tag="enqueued", frozen=True):
    """The producer put message ``message_id`` on the queue for ``tenant``."""

    message_id: str
    tenant: str


class QueueServed(msgspec.Struct, tag="queue_served", frozen=True):
    """The queue answered one API call about ``message_id`` ("" for a receive that found nothing)."""

    operation: str
    message_id: str
    bytes_in: int
    bytes_out: int


Event = Served | Edge | DbSession | ModelAsked | ModelServed | Enqueued | QueueServed

#: The quantities of the truth, one per kind of bill line (see the module docstring), plus the edge requests.
QUANTITIES: Final = ("database", "node", "nat", "ai_input", "ai_output", "queue", "edge")
PLATFORM: Final = ""


class TruthWriter:
    """Appends events of one workload, one JSON line each, unbuffered: a reader (the demo supervisor, which waits
    for the queue to drain) sees every event at once, and nothing is lost if the process is killed."""

    def __init__(self, run_dir: str | Path, workload: str) -> None:
        folder = Path(run_dir) / "truth"
        folder.mkdir(parents=True, exist_ok=True)
        self._file = open(folder / f"{workload}.jsonl", "ab", buffering=0)  # noqa: SIM115 (lives with the process)
        self._encoder = msgspec.json.Encoder()

    def write(self, event: Event) -> None:
        self._file.write(self._encoder.encode(event) + b"\n")

    def close(self) -> None:
        self._file.close()


_decoder = msgspec.json.Decoder(Event)


def read_events(run_dir: str | Path) -> list[Event]:
    out: list[Event] = []
    for path in sorted((Path(run_dir) / "truth").glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            if line:
                out.append(_decoder.decode(line))
    return out


#: A statement's duration in the PostgreSQL log, with ``log_line_prefix = '%a|'`` (the session's application name).
_DURATION = re.compile(rb"^(?P<app>[^|\n]*)\|LOG:  duration: (?P<ms>\d+)\.(?P<frac>\d{3}) ms", re.M)


def statement_time_by_app(log_text: bytes) -> dict[str, int]:
    """Server time in µs per ``application_name`` from a PostgreSQL log (durations are printed in ms to the µs)."""
    out: dict[str, int] = defaultdict(int)
    for m in _DURATION.finditer(log_text):
        out[m.group("app").decode()] += int(m.group("ms")) * 1000 + int(m.group("frac"))
    return dict(out)


class Truth(msgspec.Struct):
    """Per quantity, per tenant ("" = platform): the amount that drives the bill line. ``unexplained`` counts what
    could not be joined to a tenant or to platform work (should stay 0: it would make the truth incomplete)."""

    quantities: dict[str, dict[str, int]]
    unexplained: dict[str, int]
    events: int

    def share_of(self, quantity: str) -> dict[str, int]:
        return self.quantities.get(quantity, {})


def load_truth(run_dir: str | Path, db_log: bytes, node_workloads: tuple[str, ...]) -> Truth:
    """Join the workloads' events and PostgreSQL's statement log into per-tenant quantities."""
    events = read_events(run_dir)
    q: dict[str, dict[str, int]] = {name: defaultdict(int) for name in QUANTITIES}
    unexplained: dict[str, int] = defaultdict(int)
    sessions: dict[str, str] = {}
    asked: dict[str, str] = {}
    enqueued: dict[str, str] = {}
    for e in events:
        if isinstance(e, DbSession):
            sessions[e.app_name] = e.tenant
        elif isinstance(e, ModelAsked):
            asked[e.request_id] = e.tenant
        elif isinstance(e, Enqueued):
            enqueued[e.message_id] = e.tenant
    for e in events:
        if isinstance(e, Served) and e.workload in node_workloads:
            q["node"][e.tenant] += e.server_us
        elif isinstance(e, Edge):
            q["edge"][e.tenant] += 1
        elif isinstance(e, ModelServed):
            tenant = asked.get(e.request_id)
            if tenant is None:
                unexplained["model_calls"] += 1
                continue
            q["nat"][tenant] += e.bytes_in + e.bytes_out
            q["ai_input"][tenant] += e.tokens_in
            q["ai_output"][tenant] += e.tokens_out
        elif isinstance(e, QueueServed):
            if not e.message_id:
                q["queue"][PLATFORM] += e.bytes_in + e.bytes_out
                continue
            tenant = enqueued.get(e.message_id)
            if tenant is None:
                unexplained["queue_calls"] += 1
                continue
            q["queue"][tenant] += e.bytes_in + e.bytes_out
    for app, us in statement_time_by_app(db_log).items():
        tenant = sessions.get(app)
        if tenant is None:
            unexplained[f"db_time_us:{app or '(no application_name)'}"] += us
            continue
        q["database"][tenant] += us
    return Truth(
        quantities={k: {t: v for t, v in sorted(d.items()) if v} for k, d in q.items()},
        unexplained=dict(unexplained),
        events=len(events),
    )
