"""Kernel programs of the live sensor and the one place their text is prepared and loaded.

The C sources live beside this module (``sensor.bpf.c``: socket filter and flow counters; ``tls.bpf.c``: OpenSSL
uprobes; ``reads.bpf.c``: when servers read their requests); the records they share with user space are declared
once, in ``records.h``. ``program_text`` inlines the
header and replaces the UPPER_SNAKE placeholders, so the text that is compiled is exactly the text that
``costmesh sensor --print-bpf`` shows. ``load`` compiles it with bcc and translates every way of failing (no bcc, not
root, no kernel headers, the verifier or the kernel saying no) into ``BpfUnavailable`` carrying the kernel's words.

User-space mirrors of the records are here too (``FLOW_KEY``, ``TLS_EVENT_HEAD``); a test compiles the programs and
checks the sizes against the C declarations.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
from pathlib import Path
from typing import Any

from costmesh.common.errors import CostmeshError

HERE = Path(__file__).resolve().parent

#: struct flow_key: saddr[16], daddr[16], sport, dport, proto, gen, ifindex.
FLOW_KEY = struct.Struct("=16s16sHHBBH")
#: struct tls_event without data[]: ts_ns, ssl, cgroup_id, pid, tid, len, offset, captured, direction, pad, comm.
TLS_EVENT_HEAD = struct.Struct("=QQQIIIIIB3x16s")
#: struct exec_event: pid, comm.
EXEC_EVENT = struct.Struct("=I16s")
#: struct read_event: ts_ns, local, peer, local_port, peer_port, pad.
READ_EVENT = struct.Struct("=Q16s16sHHI")

STAT_SEEN_PACKETS = 0
STAT_PASSED_PACKETS = 1
STAT_FLOW_FULL_PACKETS = 2
STAT_FLOW_FULL_BYTES = 3
STAT_TLS_LOST = 4
STAT_TLS_EVENTS = 5
STAT_READS_LOST = 6
STAT_COUNT = 7

PORT_WATCH = 1
PORT_AI = 2

_INCLUDE = re.compile(r'^#include "([a-z_]+\.h)"\s*$', re.M)


class BpfUnavailable(CostmeshError):
    """The kernel programs cannot run here; the message says why in the words of whatever refused."""


def program_text(name: str, values: dict[str, int | str]) -> str:
    """The final C text of ``<name>.bpf.c``: local headers inlined, each placeholder replaced by its value.

    Every key of ``values`` must occur in the text (a misspelt placeholder is an error, not a silent default).
    """
    text = (HERE / f"{name}.bpf.c").read_text()
    text = _INCLUDE.sub(lambda m: (HERE / m.group(1)).read_text(), text)
    for key, value in values.items():
        if not re.search(rf"\b{key}\b", text):
            raise KeyError(f"{name}.bpf.c has no placeholder {key}")
        text = re.sub(rf"\b{key}\b", str(int(value)) if isinstance(value, bool) else str(value), text)
    return text


def load(text: str) -> Any:
    """Compile and load a program with bcc; returns the ``bcc.BPF`` object. Raises ``BpfUnavailable``."""
    if os.geteuid() != 0:
        raise BpfUnavailable(
            f"live capture needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_RAW): running as uid {os.geteuid()}"
        )
    try:
        from bcc import BPF
    except ImportError as exc:
        raise BpfUnavailable(f"bcc is not importable ({exc}): install python3-bpfcc (make deps)") from exc
    build = Path("/lib/modules") / os.uname().release / "build"
    if not build.exists():
        raise BpfUnavailable(f"no kernel headers at {build} (scripts/system.d/bcc.sh links them)")
    err = io.StringIO()
    try:
        # bcc prints compiler and verifier messages on stderr (fd 2, from C): capture them for the exception.
        with _capture_fd2(err):
            return BPF(text=text.encode())
    except Exception as exc:
        detail = err.getvalue().strip().splitlines()
        raise BpfUnavailable(f"the kernel or bcc refused the program: {exc}; " + " | ".join(detail[-8:])) from exc


@contextlib.contextmanager
def _capture_fd2(sink: io.StringIO):
    """Redirect the process's fd 2 into ``sink`` while loading (bcc's compiler writes there, not to sys.stderr)."""
    import tempfile

    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.write(tmp.read().decode(errors="replace"))


def func_fd(bpf: Any, name: str, kind: str) -> int:
    """Load one function of a compiled program and return its fd (``kind``: ``socket_filter``)."""
    from bcc import BPF

    prog_type = {"socket_filter": BPF.SOCKET_FILTER}[kind]
    try:
        return bpf.load_func(name.encode(), prog_type).fd
    except Exception as exc:
        raise BpfUnavailable(f"the kernel refused {name}: {exc}") from exc
