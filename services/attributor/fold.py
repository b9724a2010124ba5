"""Decoding and folding a fetched group in a worker process, so that the consumer's own core is left for NATS,
COPY and the transaction.

Reads: the raw message payloads of one fetched group. Emits (pickled back to the consumer) a ``FoldedGroup``: per
message either the batch's identity and size or why it could not be decoded, plus the staging rows of the whole
group (folded per window and key, or plain when folding does not pay). The consumer keeps the payloads: the rare
batch it needs in full (one seen before, one with AI tokens to price) it decodes itself, on demand (``BatchRef``).
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass, field

import msgspec

from costmesh.common.schemas import CallBatch, Codec, ObservedCall

from .apply import _has_tokens, plain_rows, staging_rows

_codec: Codec | None = None
_PR_SET_PDEATHSIG = 1


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


@dataclass(slots=True)
class FoldedGroup:
    metas: list[Meta | str] = field(default_factory=list)  # per payload: its batch, or the decoding error
    rows: list[tuple] = field(default_factory=list)
    records: int = 0


def decode_and_fold(payloads: list[bytes], fold: bool) -> FoldedGroup:
    """Runs in the worker: decode every payload, then fold (or not) the records of all decodable ones."""
    global _codec
    if _codec is None:
        _codec = Codec()
    out = FoldedGroup()
    batches: list[CallBatch] = []
    for payload in payloads:
        try:
            b = _codec.decode_batch(payload)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            out.metas.append(str(exc))
            continue
        batches.append(b)
        out.metas.append(Meta(b.batch_id, b.node, b.seq, len(b.records), _has_tokens(b.records)))
    out.records = sum(len(b.records) for b in batches)
    out.rows = staging_rows(batches) if fold else plain_rows(batches)
    return out


class BatchRef:
    """A batch known by its identity and size; its records are decoded (in this process) only if asked for."""

    __slots__ = ("_payload", "_records", "batch_id", "has_tokens", "n_records", "node", "seq")

    def __init__(self, meta: Meta, payload: bytes) -> None:
        self.batch_id = meta.batch_id
        self.node = meta.node
        self.seq = meta.seq
        self.n_records = meta.n_records
        self.has_tokens = meta.has_tokens
        self._payload = payload
        self._records: list[ObservedCall] | None = None

    @property
    def records(self) -> list[ObservedCall]:
        global _codec
        if self._records is None:
            if _codec is None:
                _codec = Codec()
            self._records = _codec.decode_batch(self._payload).records
        return self._records
