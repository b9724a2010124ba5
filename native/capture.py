"""Capture files (pcap, pcapng) read as a stream of frames: the public names, from the compiled build or its twin.

``CaptureReader(path or binary file)`` iterates ``(timestamp µs, link type, frame bytes)``; ``CaptureError`` names the
file, byte offset and kind of a truncated or corrupt capture (every frame before it has been delivered).
"""

from __future__ import annotations

from . import NO_EXTENSIONS

if NO_EXTENSIONS:
    from ._capture_py import CaptureError, CaptureReader
else:
    try:
        from ._capture import CaptureError, CaptureReader
    except ImportError:  # not built (e.g. an install with COSTMESH_NO_EXTENSIONS=1): the twin, same behaviour
        from ._capture_py import CaptureError, CaptureReader

__all__ = ["CaptureError", "CaptureReader"]
