"""The demo: a small multi-tenant SaaS run on loopback with known ground truth, for ``costmesh demo`` and the
accuracy benchmark (``loadtests/bench_accuracy.py``).

Each workload is a process of its own on its own 127.a.b.x address (a block per run), as pods have their own IPs:
the edge clients, a gateway, an orders service, an AI assistant, a job queue with a producer and a worker, a
background job, a real PostgreSQL and an OpenAI-compatible model endpoint over HTTP and HTTPS. The workloads write
what they did (requests, server time, database contexts, tokens, bytes) as they run (``truth``); costmesh sees only
the traffic. ``run`` captures a scenario with costmesh, writes the matching bill (``bill``) and compares the
allocation with the truth and with naive splits (``accuracy``).

Modules: ``plan`` (what one run is: addresses, tenants, mode, load), ``scenarios`` (the benchmark's scenarios),
``wire`` (byte counting at the server socket), ``context`` (the app's own tenant context: JWT, session), ``truth``,
``database``, ``workloads`` (one module per workload, run by ``process``), ``saas`` (starts and stops the SaaS),
``costmesh_config``, ``bill``, ``accuracy``, ``run``.
"""
