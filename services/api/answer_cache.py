"""Answers built from the allocation summaries, kept while those summaries stay the ones of the same allocation runs.

Allocations change only when an allocation run completes, and ``allocation_summary.SummaryState.version`` names the
runs the summaries were built from; an answer computed under one version is the answer for as long as the version
holds, so it is computed once per version instead of once per request. The first lookup under a new version drops
everything kept. One cache per app (so per database): two stores may well hold the same periods and run times.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from costmesh.common.allocation_summary import SummaryState


class AnswerCache:
    """At most ``size`` answers of one summary version, least recently used dropped first (the largest, a period's
    cost by tenant, is a few hundred kB of objects for 600 customers)."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self.version: Any = None
        self.answers: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def get(self, state: SummaryState, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        """The answer for ``key`` under ``state``, computed by ``compute`` when not kept. Callers must not change
        what they get: the same object answers the next caller."""
        if state.version != self.version:
            self.version, self.answers = state.version, OrderedDict()
        if key in self.answers:
            self.hits += 1
            self.answers.move_to_end(key)
            return self.answers[key]
        self.misses += 1
        answer = await compute()
        if state.version == self.version:  # a newer version may have been seen while this one was computed
            self.answers[key] = answer
            if len(self.answers) > self.size:
                self.answers.popitem(last=False)
        return answer
