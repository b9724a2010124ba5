"""The attributor's fold of call batches into staging rows: the public name, from the compiled build or its twin.

``Folder()``: ``add(payload)`` folds one encoded ``CallBatch`` and returns ``(batch_id, node, seq, n_records,
has_tokens)``, or ``None`` (nothing added) when the caller must decode that payload with msgspec itself and pass its
records to ``add_records``; ``rows()`` gives the staging tuples summed per (window, key), in order of first appearance.
"""

from __future__ import annotations

from . import NO_EXTENSIONS

if NO_EXTENSIONS:
    from ._fold_py import Folder
else:
    try:
        from ._fold import Folder
    except ImportError:  # not built (e.g. an install with COSTMESH_NO_EXTENSIONS=1): the twin, same rows
        from ._fold_py import Folder

__all__ = ["Folder"]
