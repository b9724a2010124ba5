"""Sliding windows of AI spend per scope, in memory: the detector leader's view of ``spend`` buckets.

Each scope holds a ring of bucket totals (cost and calls) wide enough for the longest window; a bucket is *set* to
its total as read from the store (never incremented), so reading it again changes nothing. A rate over a window of
``w`` seconds at ``now`` sums the buckets that start inside ``[now - w, now]`` and divides by the time they span
(between ``w - BUCKET_S`` and ``w`` seconds): integer micro-dollars per hour, exact for those buckets.

Pure: no I/O, no clock (``now`` is given), so tests drive it directly.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from .spend import BUCKET_S, Scope

_US = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """Spend over one window: the rate, the calls, and the span the buckets cover."""

    window_s: int
    micros_per_hour: int
    requests: int
    span_us: int


class Ring:
    """Bucket totals of one scope for the last ``slots`` buckets up to ``head`` (a bucket index, ``at_s // B``)."""

    __slots__ = ("cost", "head", "reqs")

    def __init__(self, slots: int) -> None:
        self.head = -1
        self.cost = array("q", bytes(8 * slots))
        self.reqs = array("q", bytes(8 * slots))

    def advance(self, k: int) -> None:
        n = len(self.cost)
        if k - self.head >= n:
            self.cost = array("q", bytes(8 * n))
            self.reqs = array("q", bytes(8 * n))
        else:
            for j in range(self.head + 1, k + 1):
                self.cost[j % n] = 0
                self.reqs[j % n] = 0
        self.head = k

    def set(self, k: int, cost_micros: int, requests: int) -> None:
        n = len(self.cost)
        if k <= self.head - n:
            return  # older than any window
        if k > self.head:
            self.advance(k)
        self.cost[k % n] = cost_micros
        self.reqs[k % n] = requests

    def totals(self, k0: int, k1: int) -> tuple[int, int]:
        """Cost and calls of buckets ``k0..k1`` (inclusive); the caller has advanced the ring to ``k1``. At most two
        slices of the ring, summed in C: the detector judges thousands of scopes a second."""
        n = len(self.cost)
        k0 = max(k0, self.head - n + 1)
        if k0 > k1:
            return 0, 0
        a, b = k0 % n, k1 % n + 1
        if a < b:
            return sum(self.cost[a:b]), sum(self.reqs[a:b])
        return sum(self.cost[a:]) + sum(self.cost[:b]), sum(self.reqs[a:]) + sum(self.reqs[:b])

    def empty_since(self, k: int) -> bool:
        """True when no bucket at or after ``k`` holds anything."""
        n = len(self.cost)
        return self.head < k or not any(
            self.cost[j % n] or self.reqs[j % n] for j in range(max(k, self.head - n + 1), self.head + 1)
        )


class SpendWindows:
    """Rings for every scope seen within the longest window."""

    def __init__(self, longest_s: int) -> None:
        self.longest_s = longest_s
        self.slots = -(-longest_s // BUCKET_S) + 2
        self.rings: dict[Scope, Ring] = {}

    def set(self, scope: Scope, at_s: int, cost_micros: int, requests: int) -> None:
        ring = self.rings.get(scope)
        if ring is None:
            ring = self.rings[scope] = Ring(self.slots)
        ring.set(at_s // BUCKET_S, cost_micros, requests)

    def rates(self, scope: Scope, now_us: int, windows: list[int]) -> list[Rate]:
        """The rate over each window at ``now_us`` (0 for a scope not seen)."""
        ring = self.rings.get(scope)
        k_now = now_us // _US // BUCKET_S
        out = []
        for w in windows:
            start_us = now_us - w * _US
            k0 = -(-start_us // (BUCKET_S * _US))  # first bucket starting inside the window
            span_us = now_us - k0 * BUCKET_S * _US
            if ring is None:
                cost = reqs = 0
            else:
                if k_now > ring.head:
                    ring.advance(k_now)
                cost, reqs = ring.totals(k0, k_now)
            out.append(Rate(w, cost * 3600 * _US // span_us if span_us > 0 else 0, reqs, span_us))
        return out

    def prune(self, now_us: int, keep: set[Scope]) -> int:
        """Forget scopes with nothing left in the longest window (except ``keep``); returns how many."""
        k = (now_us // _US - self.longest_s) // BUCKET_S
        gone = [s for s, ring in self.rings.items() if s not in keep and ring.empty_since(k)]
        for s in gone:
            del self.rings[s]
        return len(gone)
