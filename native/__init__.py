"""The sensor's compiled hot path (Cython), with a pure-Python twin for every module.

``COSTMESH_NO_EXTENSIONS=1`` selects the twins at run time, as aiohttp's ``AIOHTTP_NO_EXTENSIONS`` does, so the parser
tests can run against both builds and require that they agree.

Public modules (import these): ``sensor`` (``Sensor``: frames or captures in, ``ObservedCall`` out) and ``capture``
(``CaptureReader``, ``CaptureError``). Per concern, compiled / twin:

- ``_capture.pyx`` / ``_capture_py.py``: pcap and pcapng, streamed.
- ``_net.pyx`` / ``_net_py.py``: link, IPv4/IPv6, TCP/UDP headers.
- ``_engine.pyx`` / ``_engine_py.py``: flow table, TCP ordering, HTTP/1.1, PostgreSQL, TLS ClientHello and DNS-over-TCP
  stream parsers, window aggregation; its C surface is ``_engine.pxd``, its inline helpers ``_bytes.pxd`` (buffers,
  scans), ``_http.pxd`` (header values), ``_pgwire.pxd`` (message recognition).
- ``_usage.pyx`` / ``_usage_py.py``: the AI usage fast path (provider, model, tokens of a plain JSON response read in C
  when the answer is certain to equal ``ai``'s; otherwise the engine calls ``ai`` as before). The compiled engine
  calls it; the pure-Python engine always takes the full path, and the tests hold the twin and ``ai`` to the same
  answers.

- ``_fold.pyx`` / ``_fold_py.py``: the attributor's fold (public name ``fold.Folder``): msgpack ``CallBatch``
  payloads summed per window and key into staging rows without a Python object per record; it declines what it cannot
  be sure equals msgspec's decode, and the attributor then decodes that payload with msgspec.

Shared by both builds, called off the per-frame path: ``rules`` (extraction rules, JWT), ``ai`` (AI usage), ``names``
(SNI, DNS), ``kinds`` (counter and error names, ``CaptureError``).
"""

import os

NO_EXTENSIONS = os.environ.get("COSTMESH_NO_EXTENSIONS") == "1"
