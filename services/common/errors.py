"""costmesh's own errors, one tree, drawn here once. Each message says what failed and where (file, offset or row,
field, server); a caller catches these, never a lower library's: errors from asyncpg, nats, msgspec, botocore, bcc
or the OS are translated where they are met (``raise BillError(...) from exc``).

    CostmeshError
    ├── ConfigError          a config file or value that cannot be used: file, key, reason      (common.config)
    ├── Unreachable          NATS or PostgreSQL not reachable within the deadline: which, why   (common.natsio)
    ├── StartupError         an embedded server or a service of the stack did not come up       (here; raised by
    │                                                                                             common.embedded and
    │                                                                                             common.supervisor)
    ├── BpfUnavailable       the kernel refuses the eBPF programs (the live sensor idles)       (sensor.bpf)
    ├── UnknownAlert         no alert has this id or fingerprint (also a LookupError)           (common.alerting)
    ├── DemoError            the demo could not finish: which service or workload, where       (demo.errors)
    │   ├── CaptureUnavailable  neither eBPF nor a packet socket is allowed here                (demo.errors)
    │   └── SaasError        a demo workload died or did not get ready: which, its log         (demo.errors)
    └── InputError           input that cannot be read, located; counted where it is met, and the rest goes on
        ├── CaptureError     a truncated or corrupt capture: path, byte offset, kind           (native.kinds)
        ├── MoneyError       an amount that is not a finite decimal (also a ValueError)         (common.money)
        ├── BillError        a bill file that cannot be read at all                             (billing.bills)
        ├── FocusError       a file that cannot be read as FOCUS at all                         (billing.focus)
        ├── S3Error          a manifest or data file on S3 that cannot be used: s3:// location  (billing.s3source)
        ├── RevenueError     a revenue file that cannot be read at all                          (billing.revenue)
        ├── ReportError      input that makes a report impossible                               (billing.report)
        ├── Refused          a batch that cannot be read as the contract, values withheld      (redactor.policy)
        └── SilenceError     a silence that cannot be made: field and why (also a ValueError)   (common.alerting)

Control flow that never leaves its module is not part of the tree: ``billing.fast.FastPathUnavailable`` (the
pipeline takes the general path), ``billing.focus._RowError`` and ``billing.cur._RowError`` (turned into located
``ImportProblem``s), ``native._usage_py._Uncertain`` (the fast path declines), ``sensor.replay``'s ``_Stopped`` (a
replay ended early), ``api.app.BadRequest`` (an aiohttp 400 response naming the bad parameter), and in the demo SaaS
``demo.context.ContextError`` (a workload answers 401) and ``demo.recorder.RecorderUnavailable`` (turned into
``CaptureUnavailable``).
"""

from __future__ import annotations


class CostmeshError(Exception):
    """Base of every error costmesh raises on purpose."""


class InputError(CostmeshError):
    """Input (a capture, a bill, a revenue file, a message) that cannot be read; the message locates it."""


class StartupError(CostmeshError):
    """An embedded server or a service of the stack exited or did not become ready in time; the message says which
    and where its log is."""
