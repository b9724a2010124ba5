"""The ``COSTMESH_DEBUG=1`` build (``setup.py``: ``-O0 -g``, Cython's bounds checks, the engine's own invariant checks)
parses the capture corpus, intact and mutated, with every check passing, and gives exactly the records and counters
of the normal build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from costmesh import native

from .conftest import DATA, REPO, SHARED_DATA

pytestmark = pytest.mark.skipif(
    native.NO_EXTENSIONS, reason="the debug build is of the compiled extensions: the compiled run checks it"
)

#: Runs in a child process: every capture whole, then MUTATIONS seeded mutations of its frames (bytes flipped, frames
#: cut) one frame at a time, all through the compiled engine found first on sys.path; prints the records as JSON.
SCRIPT = r"""
import json, random, sys
import msgspec
from costmesh.native import _capture, _engine
from costmesh.common.config import Config
from costmesh.sensor.core import Sensor

assert _engine.__file__.startswith(sys.argv[1]), _engine.__file__
out = {}
for path in sys.argv[3:]:
    runs = []
    s = Sensor(Config(), "n", engine_cls=_engine.Engine, reader_cls=_capture.CaptureReader)
    frames = []
    try:
        frames = list(_capture.CaptureReader(path))
        s.feed_capture(path)
    except Exception as exc:
        if type(exc).__name__ != "CaptureError":
            raise
    runs.append([msgspec.structs.asdict(c) for c in s.drain(final=True)] + [s.stats()])
    rng = random.Random(path)
    for _ in range(int(sys.argv[2])):
        s = Sensor(Config(), "n", engine_cls=_engine.Engine, reader_cls=_capture.CaptureReader)
        for ts, linktype, frame in frames:
            data = bytearray(frame)
            if data and rng.random() < 0.3:
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            if data and rng.random() < 0.1:
                del data[rng.randrange(len(data)):]
            s.feed_frame(ts, linktype, bytes(data))
        runs.append([msgspec.structs.asdict(c) for c in s.drain(final=True)] + [s.stats()])
    out[path] = runs
print(json.dumps(out, sort_keys=True))
"""
MUTATIONS = 8


@pytest.fixture(scope="module")
def debug_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``costmesh`` laid out in a temporary folder with ``native`` built by ``COSTMESH_DEBUG=1 setup.py``."""
    src = tmp_path_factory.mktemp("debug-src")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    (src / "services").mkdir()
    shutil.copy2(REPO / "services" / "__init__.py", src / "services" / "__init__.py")  # the package version
    shutil.copytree(REPO / "native", src / "native", ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    env = {**os.environ, "COSTMESH_DEBUG": "1"}
    env.pop("COSTMESH_NO_EXTENSIONS", None)
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    pkg = tmp_path_factory.mktemp("debug-pkg") / "costmesh"
    pkg.mkdir()
    for entry in (REPO / "services").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "native").symlink_to(src / "native")
    return pkg.parent


def _records(captures: list[Path], pythonpath: Path | None, engine_dir: Path) -> dict:
    env = dict(os.environ)
    env.pop("COSTMESH_NO_EXTENSIONS", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(engine_dir), str(MUTATIONS), *map(str, captures)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_the_debug_build_checks_pass_and_its_records_equal_the_normal_build(debug_package):
    captures = [*sorted(p for p in (SHARED_DATA / "pcap").rglob("*") if p.is_file()), DATA / "demo_tenants.pcap"]
    assert len(captures) > 5
    debug = _records(captures, debug_package, debug_package / "costmesh" / "native")
    normal = _records(captures, None, REPO / "native")
    assert debug == normal
    assert any(run[:-1] for runs in normal.values() for run in runs)  # the corpus made records at all
