"""The parsing engine: the public names, from the compiled build or its twin (``COSTMESH_NO_EXTENSIONS``).

``Engine(slow, window_us, max_flows, pg_ports, http_ports, collapse_ids)`` takes frames (``feed_frame``,
``feed_capture``) and gives per-window aggregates (``drain``, ``drain_calls``); ``slow`` is the caller's object for the
cold paths (see ``costmesh.sensor.core.sensor.Slow``). ``PROTOCOLS`` names the protocol codes of its records;
``BUILD`` says which build runs ("cython" or "python").
"""

from __future__ import annotations

from . import NO_EXTENSIONS

if NO_EXTENSIONS:
    from ._engine_py import PROTOCOLS, Engine
else:
    try:
        from ._engine import PROTOCOLS, Engine
    except ImportError:  # not built (e.g. an install with COSTMESH_NO_EXTENSIONS=1): the twin, same behaviour
        from ._engine_py import PROTOCOLS, Engine

#: Which build runs: "cython" or "python".
BUILD = "python" if Engine.__module__.endswith("_py") else "cython"

__all__ = ["BUILD", "PROTOCOLS", "Engine"]
