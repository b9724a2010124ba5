"""Pure-Python twin of ``_fold.pyx``: the same ``Folder`` interface and rows, built from msgspec's decode.

``COSTMESH_NO_EXTENSIONS=1`` selects this one; the fold tests run both and require the same rows. Unlike the compiled
fold it has no fast path to fall out of: ``add`` answers whenever ``Codec.decode_batch`` accepts the payload.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Iterable

import msgspec

from costmesh.common.schemas import CONSUMPTION_KEY, COUNTERS, Codec, ObservedCall

#: Protocols whose operation (the topic) is part of the key; elsewhere the operation is not kept.
QUEUE_PROTOCOLS = ("kafka", "amqp", "nats")
_MINUTE_US = 60_000_000
_values_of = operator.attrgetter(*COUNTERS)
_codec = Codec()


def minute_of(window_start_us: int) -> int:
    """``window_start_us / 60000000`` as PostgreSQL divides bigints (truncated toward zero)."""
    q = abs(window_start_us) // _MINUTE_US
    return q if window_start_us >= 0 else -q


_STR_FIELDS = tuple(f.name for f in msgspec.structs.fields(ObservedCall) if f.type is str)


def holds_nul(batch) -> bool:
    """Whether any string of the batch holds a NUL, which PostgreSQL text cannot store."""
    if "\x00" in batch.batch_id or "\x00" in batch.node:
        return True
    return any("\x00" in getattr(r, f) for r in batch.records for f in _STR_FIELDS)


_INT_FIELDS = ("window_start_us", "window_end_us", *COUNTERS)
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def ints_fit(batch) -> bool:
    """Whether every integer the store keeps fits a bigint (msgspec takes up to 2**64 - 1)."""
    return all(_I64_MIN <= getattr(r, f) <= _I64_MAX for r in batch.records for f in _INT_FIELDS)


class Folder:
    """Accumulates ``staging_agg`` rows over the payloads (and decoded records) of one group."""

    def __init__(self) -> None:
        self._groups: dict[tuple, list[int]] = {}
        self.records = 0

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, payload: bytes) -> tuple[str, str, int, int, bool] | None:
        try:
            batch = _codec.decode_batch(payload)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):
            return None
        if batch.flows or batch.compute or batch.capacity or holds_nul(batch) or not ints_fit(batch):
            # as the compiled fold (``compute``/``capacity`` are fields it does not know): the caller decodes it itself
            # (and sees the flows and compute samples, or refuses the NUL)
            return None
        self.add_records(batch.records)
        has_tokens = any(r.tokens_in or r.tokens_out or r.tokens_cached or r.tokens_reasoning for r in batch.records)
        return (batch.batch_id, batch.node, batch.seq, len(batch.records), has_tokens)

    def add_many(self, payloads: list[bytes]) -> list[tuple[str, str, int, int, bool] | None]:
        return [self.add(p) for p in payloads]

    def add_records(self, records: Iterable[ObservedCall]) -> None:
        """Raises ``OverflowError``, having added nothing, when an integer does not fit 64 bits (as the compiled
        fold: a bigint could not hold it)."""
        records = list(records)
        for r in records:
            for name in _INT_FIELDS:
                if not _I64_MIN <= getattr(r, name) <= _I64_MAX:
                    raise OverflowError(f"{name} does not fit 64 bits: {getattr(r, name)}")
        groups = self._groups
        dims = operator.attrgetter(*CONSUMPTION_KEY)
        for r in records:
            key = (
                minute_of(r.window_start_us),
                *dims(r),
                r.operation if r.protocol in QUEUE_PROTOCOLS else "",
            )
            acc = groups.get(key)
            w = r.window_start_us
            if acc is None:
                groups[key] = [*_values_of(r), w, w]
            else:
                for i, v in enumerate(_values_of(r)):
                    acc[i] += v
                acc[-2] = min(acc[-2], w)
                acc[-1] = max(acc[-1], w)
            self.records += 1

    def copy_data(self) -> bytes:
        """The rows as PostgreSQL binary COPY data (``b""`` when there are none)."""
        if not self._groups:
            return b""
        out = [b"PGCOPY\n\xff\r\n\x00", bytes(8)]
        int8 = struct.Struct(">iq").pack
        for row in self.rows():
            out.append(struct.pack(">h", len(row)))
            for v in row:
                if isinstance(v, str):
                    b = v.encode()
                    out.append(struct.pack(">i", len(b)) + b)
                else:
                    if not -(2**63) <= v < 2**63:
                        raise OverflowError(f"a sum does not fit a bigint: {v}")
                    out.append(int8(8, v))
        out.append(b"\xff\xff")
        return b"".join(out)

    def rows(self) -> list[tuple]:
        return [key + tuple(acc) for key, acc in self._groups.items()]
