"""The error tree drawn in ``costmesh.common.errors`` is the tree the code has: every exception class of the package is
drawn there under its real parent (naming its module), or listed there as control flow that never leaves its module."""

from __future__ import annotations

import importlib
import inspect
import re

from costmesh.common import errors

from .test_layering import REPO, module_name, source_files

DOC = errors.__doc__ or ""
TREE, _, CONTROL_FLOW = DOC.partition("Control flow that never leaves its module")


def drawn() -> dict[str, tuple[str, str]]:
    """Each class in the drawing → (its parent in the drawing, the module named beside it)."""
    out: dict[str, tuple[str, str]] = {}
    stack: list[str] = []
    for line in TREE.splitlines():
        m = re.match(r"^\s{4}(?P<lead>[│ ]*(?:[├└]── )?)(?P<name>[A-Z]\w+)\b(?P<rest>.*)$", line)
        if m is None:
            continue
        depth = len(m["lead"]) // 4
        del stack[depth:]
        where = re.search(r"\((\w+\.\w+)", m["rest"])
        out[m["name"]] = (stack[-1] if stack else "", where[1] if where else "")
        stack.append(m["name"])
    return out


def exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for path in source_files(REPO):
        if path.suffix != ".py":
            continue
        module = importlib.import_module(module_name(path, REPO))
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_exception_class_is_drawn_under_its_parent_or_listed_as_control_flow():
    tree = drawn()
    assert tree["CostmeshError"] == ("", "")
    problems = []
    for qualified, cls in sorted(exception_classes().items()):
        name = cls.__name__
        if name in tree:
            parent, where = tree[name]
            if name != "CostmeshError" and parent not in {b.__name__ for b in cls.__bases__}:
                problems.append(
                    f"{qualified}: drawn under {parent}, derives from {[b.__name__ for b in cls.__bases__]}"
                )
            if where and not qualified.startswith(f"costmesh.{where}"):
                problems.append(f"{qualified}: drawn as defined in {where}")
        elif name not in CONTROL_FLOW:
            problems.append(f"{qualified}: neither in the tree of costmesh.common.errors nor listed as control flow")
        elif issubclass(cls, errors.CostmeshError):
            problems.append(f"{qualified}: listed as control flow but derives from CostmeshError")
    assert not problems, "\n".join(problems)


def test_every_drawn_class_exists_and_is_a_costmesh_error():
    classes = {cls.__name__: cls for cls in exception_classes().values()}
    for name in drawn():
        assert name in classes, f"{name} is drawn but not defined"
        assert issubclass(classes[name], errors.CostmeshError)
