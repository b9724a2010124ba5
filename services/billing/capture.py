"""Consumption from capture files, through the same sensor code the live system runs.

Reads pcap/pcapng files; emits hourly consumption (``costmesh.common.usage.Consumption``). Billing does not parse
captures itself: the caller hands it ``observe`` (the CLI passes ``costmesh.sensor.replay.observe``, which runs a
capture through the sensor's parsing core exactly as a replaying sensor does). Records are summed per hour exactly as
the attributor's hourly rollups sum them (``usage.hourly_from_records``), so a report from a capture and the live
pipeline allocate the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from costmesh.common.config import Config
from costmesh.common.schemas import ObservedCall
from costmesh.common.usage import Consumption, hourly_from_records

#: Every record of one capture file, as the sensor parses it with this config.
Observe = Callable[[Path, Config], list[ObservedCall]]


def consumption_from_captures(paths: Sequence[Path], config: Config, observe: Observe | None) -> Consumption:
    """Hourly consumption of the captures; ``observe`` reads them (it may be None only when there are none)."""
    records: list[ObservedCall] = []
    for path in paths:
        if observe is None:
            raise ValueError(f"{path}: no capture reader given (billing reads captures through the sensor's observe)")
        records.extend(observe(Path(path), config))
    return hourly_from_records(records)
