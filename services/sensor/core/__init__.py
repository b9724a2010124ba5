"""The sensor's parsing core, the same for live capture, capture replays, ``costmesh analyze`` and reports.

``Sensor`` takes frames or capture files and gives ``ObservedCall`` records per window; the per-frame work runs in
``costmesh.native.engine`` (compiled, or its pure-Python twin), which calls back into ``Slow`` here for the cold
paths: extraction rules that need Python (``rules``), AI usage (``ai``), TLS ClientHello and DNS names (``names``).
"""

from .sensor import BUILD, CaptureError, CaptureReader, Sensor, address_text

__all__ = ["BUILD", "CaptureError", "CaptureReader", "Sensor", "address_text"]
