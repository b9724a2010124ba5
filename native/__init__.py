"""The compiled hot paths (Cython), with a pure-Python twin for every module: nothing else lives here.

``COSTMESH_NO_EXTENSIONS=1`` selects the twins at run time, as aiohttp's ``AIOHTTP_NO_EXTENSIONS`` does, so the
tests run against both builds and require that they agree. This package imports nothing from the services (only
``costmesh.common``); its callers hand it what it needs (the sensor passes its cold paths as the engine's ``slow``).

Public modules (import these; they pick the build): ``engine`` (``Engine``: frames in, per-window aggregates out),
``capture`` (``CaptureReader``, ``CaptureError``), ``fold`` (``Folder``), and the shared Python definitions ``http``
(HTTP helpers both builds agree on) and ``kinds`` (counter and error names, rule kinds). Per concern, compiled / twin:

- ``_capture.pyx`` / ``_capture_py.py``: pcap and pcapng, streamed.
- ``_net.pyx`` / ``_net_py.py``: link, IPv4/IPv6, TCP/UDP headers.
- the engine, one extension module split by concern, each file with its twin (a protocol is one such pair; how to add
  one: ``_engine.pyx``): ``_engine.pyx`` / ``_engine_py.py`` (surface, per-protocol dispatch; its C surface is
  ``_engine.pxd``), ``_flows.pxi`` / ``_flows_py.py`` (flow table, TCP ordering), ``_records.pxi`` /
  ``_records_py.py`` (aggregation, records), ``_http.pxi`` / ``_http_py.py`` (HTTP/1.1), ``_pg.pxi`` / ``_pg_py.py``
  (PostgreSQL), ``_tls.pxi`` / ``_tls_py.py`` (TLS ClientHello, DNS); inline helpers in ``_bytes.pxd``.
- ``_usage.pyx`` / ``_usage_py.py``: the AI usage fast path (provider, model, tokens of a plain JSON response read in C
  when the answer is certain to equal the sensor's ``ai`` module; otherwise the engine calls back into it). The
  compiled engine calls it; the pure-Python engine always takes the full path, and the tests hold the twin and ``ai``
  to the same answers.
- ``ring.pyx`` / ``ring_py.py``: the walk over a TPACKET_V3 ring's ready blocks, frames by pointer into the engine.
- ``_fold.pyx`` / ``_fold_py.py``: the attributor's fold (public name ``fold.Folder``): msgpack ``CallBatch``
  payloads summed per window and key into staging rows without a Python object per record; it declines what it cannot
  be sure equals msgspec's decode, and the attributor then decodes that payload with msgspec.
"""

import os

NO_EXTENSIONS = os.environ.get("COSTMESH_NO_EXTENSIONS") == "1"
