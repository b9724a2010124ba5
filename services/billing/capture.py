"""Consumption from capture files, through the same sensor code the live system runs.

Reads ``ObservedCall`` records of pcap/pcapng files; emits ``Usage`` rows. Billing does not parse captures itself:
the caller hands it ``observe`` (the CLI passes ``costmesh.sensor.replay.observe``, which runs a capture through the
sensor's parsing core exactly as a replaying sensor does). Records are summed per minute keyed like the attributor's
``consumption_minute`` (``per_minute``), so a report from a capture and the live pipeline see the same numbers.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from costmesh.common.config import Config
from costmesh.common.schemas import CONSUMPTION_KEY, COUNTERS, ObservedCall

from .model import Usage

_MINUTE_US = 60_000_000

#: Every record of one capture file, as the sensor parses it with this config.
Observe = Callable[[Path, Config], list[ObservedCall]]


def per_minute(records: Iterable[ObservedCall]) -> list[tuple]:
    """Sum records into per-minute rows keyed like ``consumption_minute``'s primary key, measures in its order."""
    acc: dict[tuple, list[int]] = {}
    dims = operator.attrgetter(*CONSUMPTION_KEY)
    measures = operator.attrgetter(*COUNTERS)
    for r in records:
        key = (r.window_start_us - r.window_start_us % _MINUTE_US, *dims(r))
        s = acc.get(key)
        if s is None:
            s = acc[key] = [0] * len(COUNTERS)
        for i, v in enumerate(measures(r)):
            s[i] += v
    return [(*k, *v) for k, v in sorted(acc.items())]


def usage_from_records(records: Iterable[ObservedCall]) -> list[Usage]:
    """Per-minute ``Usage`` rows, keyed and summed like ``consumption_minute`` (``Usage`` carries every counter but
    ``errors``)."""
    out = []
    for row in per_minute(records):
        minute, *key = row[: 1 + len(CONSUMPTION_KEY)]
        measures = dict(zip(COUNTERS, row[1 + len(CONSUMPTION_KEY) :], strict=True))
        del measures["errors"]
        out.append(
            Usage(
                **dict(zip(CONSUMPTION_KEY, key, strict=True)), start_us=minute, end_us=minute + _MINUTE_US, **measures
            )
        )
    return out


def usage_from_captures(paths: Sequence[Path], config: Config, observe: Observe | None) -> list[Usage]:
    """Per-minute ``Usage`` of the captures; ``observe`` reads them (it may be None only when there are none)."""
    records: list[ObservedCall] = []
    for path in paths:
        if observe is None:
            raise ValueError(f"{path}: no capture reader given (billing reads captures through the sensor's observe)")
        records.extend(observe(Path(path), config))
    return usage_from_records(records)
