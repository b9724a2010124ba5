"""bcc comes from Debian's python3-bpfcc, linked alone into the virtualenv by scripts/venv.d/bcc.sh; the kernel headers
it compiles against are linked by scripts/system.d/bcc.sh. These tests check that the install did what it says."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def test_bcc_is_debians_package_and_only_it_is_on_the_path():
    import bcc

    assert Path(bcc.__file__).resolve().parent == Path("/usr/lib/python3/dist-packages/bcc")
    assert not [p for p in sys.path if "dist-packages" in p], "the whole distribution path leaked into the venv"
    assert bcc.__version__


@pytest.mark.skipif(os.geteuid() != 0, reason="scripts/system.d/bcc.sh sets these up only when run as root")
def test_kernel_headers_and_tracefs_are_set_up():
    build = Path("/lib/modules") / os.uname().release / "build"
    assert (build / "include" / "linux" / "kconfig.h").exists() or (build / "include").is_dir(), build
    assert Path("/sys/kernel/tracing/uprobe_events").exists(), "tracefs is not mounted on /sys/kernel/tracing"
