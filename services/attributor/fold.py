"""Decoding and folding a fetched group off the event loop: in a thread (the compiled fold releases the GIL) or in
worker processes (``attributor.fold_processes``).

Reads: the raw message payloads of one fetched group. Emits a ``FoldedGroup``: per message either the batch's
identity and size or why it could not be decoded, plus the ``staging_agg`` rows of the whole group, summed per
minute and key (``costmesh.native.fold``) and written as binary COPY data. The consumer keeps the payloads: the rare
batch it needs in full (one seen before, one with AI tokens to price) it decodes itself, on demand (``BatchRef``).
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass, field

import msgspec

from costmesh.common.schemas import CallBatch, CapacitySample, Codec, ComputeSample, ObservedCall
from costmesh.native._fold_py import holds_nul, ints_fit
from costmesh.native.fold import Folder

_codec: Codec | None = None
_PR_SET_PDEATHSIG = 1


def _the_codec() -> Codec:
    global _codec
    if _codec is None:
        _codec = Codec()
    return _codec


def die_with_parent() -> None:
    """Worker initializer: the kernel kills the worker when the consumer process dies, even by ``kill -9``
    (workers are forked directly from the consumer, so the consumer is their parent)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the consumer died before the line above took effect
        os._exit(0)


@dataclass(frozen=True, slots=True)
class Meta:
    batch_id: str
    node: str
    seq: int
    n_records: int
    has_tokens: bool
    #: The batch carries compute samples or node capacity (only msgspec-decoded batches can: the compiled fold
    #: declines fields it does not know).
    has_compute: bool = False


@dataclass(slots=True)
class FoldedGroup:
    metas: list[Meta | str] = field(default_factory=list)  # per payload: its batch, or the decoding error
    copy: bytes = b""  # the staging_agg rows of the group as binary COPY data
    rows: int = 0
    records: int = 0


def fold_group(payloads: list[bytes]) -> FoldedGroup:
    """Fold every payload; those the compiled fold does not take are decoded by msgspec, which either names what is
    wrong with them or gives records that are folded into the same rows."""
    folder = Folder()
    out = FoldedGroup()
    for payload, meta in zip(payloads, folder.add_many(payloads), strict=True):
        if meta is not None:
            out.metas.append(Meta(*meta))
            continue
        try:
            b = _the_codec().decode_batch(payload)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
            # msgspec raises UnicodeDecodeError (not DecodeError) for a string that is not UTF-8
            out.metas.append(str(exc))
            continue
        if not ints_fit(b):
            out.metas.append("an integer beyond 64 bits (PostgreSQL bigint cannot hold it)")
            continue
        if holds_nul(b):
            out.metas.append("a string holds a NUL character (PostgreSQL text cannot store it)")
            continue
        folder.add_records(b.records)
        has_tokens = any(r.tokens_in or r.tokens_out or r.tokens_cached or r.tokens_reasoning for r in b.records)
        out.metas.append(Meta(b.batch_id, b.node, b.seq, len(b.records), has_tokens, bool(b.compute or b.capacity)))
    out.records = folder.records
    out.rows = len(folder)
    out.copy = folder.copy_data()
    return out


class BatchRef:
    """A batch known by its identity and size; its records are decoded (in this process) only if asked for."""

    __slots__ = ("_batch", "batch_id", "has_compute", "has_tokens", "n_records", "node", "payload", "seq")

    def __init__(self, meta: Meta, payload: bytes) -> None:
        self.batch_id = meta.batch_id
        self.node = meta.node
        self.seq = meta.seq
        self.n_records = meta.n_records
        self.has_tokens = meta.has_tokens
        self.has_compute = meta.has_compute
        self.payload = payload
        self._batch: CallBatch | None = None

    def _decoded(self) -> CallBatch:
        if self._batch is None:
            self._batch = _the_codec().decode_batch(self.payload)
        return self._batch

    @property
    def records(self) -> list[ObservedCall]:
        return self._decoded().records

    @property
    def compute(self) -> list[ComputeSample]:
        return self._decoded().compute if self.has_compute else []

    @property
    def capacity(self) -> list[CapacitySample]:
        return self._decoded().capacity if self.has_compute else []
