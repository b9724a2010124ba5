"""Consumption from capture files, through the same sensor code the live system runs.

Reads pcap/pcapng files; emits hourly consumption (``costmesh.common.usage.Consumption``). ``observe`` is the one
seam to the sensor: it runs ``costmesh.sensor.service.replay`` with the sensor's parsing core, exactly as a
replaying sensor does. Records are summed per hour exactly as the attributor's hourly rollups sum them
(``usage.hourly_from_records``), so a report from a capture and the live pipeline allocate the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from costmesh.common.config import Config
from costmesh.common.schemas import ObservedCall
from costmesh.common.usage import Consumption, hourly_from_records


def observe(path: Path, config: Config) -> list[ObservedCall]:
    """Run one capture through the sensor's parsing and tenant extraction; returns its call records."""
    from costmesh.native.sensor import Sensor
    from costmesh.sensor.service import replay

    return replay(path, Sensor(config, config.node_name()))


def consumption_from_captures(paths: Sequence[Path], config: Config) -> Consumption:
    records: list[ObservedCall] = []
    for path in paths:
        records.extend(observe(Path(path), config))
    return hourly_from_records(records)
