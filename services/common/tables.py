"""Plain aligned text tables for the command line (``costmesh demo``, ``analyze``, ``report``, ``billing unmatched``).

The first column is left-aligned (names), the others right-aligned (numbers); columns are two spaces apart.
"""

from __future__ import annotations

from collections.abc import Sequence


def align(row: Sequence[str], widths: Sequence[int]) -> str:
    """One line of a table: the first cell padded on the right, the others on the left."""
    return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))


def render_table(rows: list[dict], columns: list[str]) -> str:
    """A table of ``rows`` (dicts) under a header of ``columns`` and a rule; an empty cell shows as ``(none)``."""
    cells = [[str(r.get(c, "")) or "(none)" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [align(columns, widths), align(["-" * w for w in widths], widths)]
    return "\n".join(lines + [align(r, widths) for r in cells])
