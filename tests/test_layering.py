"""The rooms of the package and what each may import, checked on every import statement of the source tree.

- ``costmesh.common`` (``services/common``): what the services share; imports no service, not ``native``, not the CLI.
- ``costmesh.native`` (``native/``): the compiled hot paths and their twins; imports only ``costmesh.common``.
- a service (``costmesh.sensor``, ``redactor``, ``attributor``, ``billing``, ``api``): itself, ``common``, ``native``;
  never another service, never the CLI (a service that needs another's work is handed it, or the shared part moves
  to ``common``).
- ``costmesh.cli``: the entry point, may import any room.

Imports are read with ``ast`` (``.py``: module level, inside functions and under ``TYPE_CHECKING`` alike) and line by
line (``.pyx``/``.pxd``/``.pxi``: ``import``, ``from ... import``, ``cimport``); a failure names file, line and rule.
Besides, no module may take part in an import cycle (``TYPE_CHECKING`` imports aside: they never run).
"""

from __future__ import annotations

import ast
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from .conftest import REPO

#: Source folder → the package it is.
ROOTS = {"services": "costmesh", "native": "costmesh.native"}
SERVICES = ("sensor", "redactor", "attributor", "billing", "api", "exporter")
_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+c?import\b|c?import\s+([\w.]+))")


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository
    line: int
    importer: str  # dotted module name of the file
    target: str  # dotted name imported (absolute)
    runs: bool  # False under ``if TYPE_CHECKING:``


def module_name(path: Path, root: Path) -> str:
    folder = path.relative_to(root).parts[0]
    parts = list(path.relative_to(root / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([ROOTS[folder], *parts])


def _absolute(importer: str, is_package: bool, level: int, name: str) -> str:
    if not level:
        return name
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, name] if name else base)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(path: Path, root: Path) -> list[Import]:
    importer = module_name(path, root)
    is_package = path.name.startswith("__init__.")
    rel = str(path.relative_to(root))
    out: list[Import] = []
    if path.suffix == ".py":
        tree = ast.parse(path.read_text(), str(path))
        hidden = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(importer, is_package, node.level, node.module or "")
                names = [f"{base}.{a.name}" if a.name != "*" else base for a in node.names]
            else:
                continue
            out += [Import(rel, node.lineno, importer, n, node.lineno not in hidden) for n in names]
        return out
    for lineno, text in enumerate(path.read_text().splitlines(), 1):
        m = _CYTHON_IMPORT.match(text)
        if m is None or text.lstrip().startswith("#"):
            continue
        name = m.group(1) if m.group(1) is not None else m.group(2)
        level = len(name) - len(name.lstrip("."))
        out.append(Import(rel, lineno, importer, _absolute(importer, is_package, level, name.lstrip(".")), True))
    return out


def room(module: str) -> str | None:
    """``common``, ``native``, ``cli``, a service name, ``costmesh`` (the package itself) or None (not ours)."""
    parts = module.split(".")
    if parts[0] != "costmesh":
        return None
    if len(parts) == 1 or parts[1] == "__version__":
        return "costmesh"
    return parts[1]


def violation(imp: Import) -> str | None:
    src, dst = room(imp.importer), room(imp.target)
    if dst is None or dst == src or dst == "costmesh":
        return None
    if src == "common":
        return f"common imports {dst} ({imp.target}): common imports no service, not native, not the CLI"
    if src == "native":
        return None if dst == "common" else f"native imports {dst} ({imp.target}): native imports only common"
    if src == "demo":
        return None if dst == "common" else f"the demo imports {dst} ({imp.target}): the demo SaaS imports only common"
    if src in SERVICES:
        if dst in ("common", "native"):
            return None
        what = "the CLI" if dst == "cli" else "another service"
        return f"service {src} imports {what} ({imp.target}): a service imports only itself, common and native"
    return None  # the CLI and the package root may import any room


def source_files(root: Path) -> list[Path]:
    files = []
    for folder in ROOTS:
        for pattern in ("*.py", "*.pyx", "*.pxd", "*.pxi"):
            files += [p for p in (root / folder).rglob(pattern) if "__pycache__" not in p.parts]
    return sorted(files)


def all_imports(root: Path) -> list[Import]:
    return [imp for path in source_files(root) for imp in imports_of(path, root)]


def violations(root: Path) -> list[str]:
    return [f"{imp.file}:{imp.line}: {why}" for imp in all_imports(root) if (why := violation(imp)) is not None]


def cycles(root: Path) -> list[str]:
    """Import cycles among our modules, one line each (``a -> b -> a``, with the line of every step)."""
    modules = {module_name(p, root) for p in source_files(root) if p.suffix == ".py" or p.suffix == ".pyx"}
    edges: dict[str, dict[str, str]] = {}
    for imp in all_imports(root):
        if not imp.runs:
            continue
        target = imp.target
        while target not in modules and "." in target:
            target = target.rsplit(".", 1)[0]  # ``from pkg import name``: the module ``pkg`` when ``name`` is not one
        if target in modules and target != imp.importer:
            edges.setdefault(imp.importer, {}).setdefault(target, f"{imp.file}:{imp.line}")
    found: list[str] = []
    seen: set[frozenset[str]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in edges.get(node, {}):
            if nxt == path[0]:
                ring = frozenset(path)
                if ring not in seen:
                    seen.add(ring)
                    steps = [*path, nxt]
                    lines = ", ".join(edges[a][b] for a, b in itertools.pairwise(steps))
                    found.append(f"{' -> '.join(steps)} ({lines})")
            elif nxt not in path and nxt > path[0]:  # each cycle is found once, from its smallest module
                walk(nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, [start])
    return found


def test_every_import_keeps_to_its_room():
    bad = violations(REPO)
    assert not bad, "imports across rooms:\n" + "\n".join(bad)


def test_no_module_takes_part_in_an_import_cycle():
    bad = cycles(REPO)
    assert not bad, "import cycles:\n" + "\n".join(bad)


def test_the_checks_see_function_level_imports_and_cycles(tmp_path):
    """The checker itself: a planted violation inside a function, one in a Cython file and a cycle are each named
    with their file and line; a ``TYPE_CHECKING`` import breaks no rule about cycles."""
    (tmp_path / "services" / "common").mkdir(parents=True)
    (tmp_path / "services" / "billing").mkdir()
    (tmp_path / "native").mkdir()
    for init in ("services", "services/common", "services/billing", "native"):
        (tmp_path / init / "__init__.py").write_text("")
    (tmp_path / "services" / "common" / "money.py").write_text(
        "import os\n\n\ndef f():\n    from costmesh.billing import store\n    return store\n"
    )
    (tmp_path / "services" / "billing" / "store.py").write_text(
        "from typing import TYPE_CHECKING\n\nfrom . import pnl\n\nif TYPE_CHECKING:\n    from .report import x\n"
    )
    (tmp_path / "services" / "billing" / "pnl.py").write_text("from .store import y\nfrom costmesh.api import app\n")
    (tmp_path / "services" / "billing" / "report.py").write_text("from .store import z\n")
    (tmp_path / "native" / "_engine.pyx").write_text("cimport cython\n\n    from costmesh.sensor.core import ai\n")
    assert violations(tmp_path) == [
        "native/_engine.pyx:3: native imports sensor (costmesh.sensor.core): native imports only common",
        "services/billing/pnl.py:2: service billing imports another service (costmesh.api.app): a service imports "
        "only itself, common and native",
        "services/common/money.py:5: common imports billing (costmesh.billing.store): common imports no service, "
        "not native, not the CLI",
    ]
    assert cycles(tmp_path) == [
        "costmesh.billing.pnl -> costmesh.billing.store -> costmesh.billing.pnl "
        "(services/billing/pnl.py:1, services/billing/store.py:3)"
    ]
