"""Vectorised allocation for large bills: numpy over integer units, same method as ``Allocator`` line by line.

Reads a FOCUS CSV into columns (``read_focus_columns``, pyarrow's C++ CSV reader) or cost line objects into columns
(``columns_from_lines``, the product path: ``pipeline.run`` on large bills) and consumption rows; emits
allocation columns (line index, key index, units) that sum exactly to every line's amount. The split is grouped:
lines of the same mapped resource whose charge windows see the same consumption rows get the same shares, so the
per-line Python work of the row engine becomes one ``Allocator.weights`` call per (resource, consumption epoch), and
the largest-remainder splits of all groups with the same number of keys are one numpy array operation
(``_split_groups``: per group, numpy's own overhead cost more than the arithmetic). ``split_rows`` equals
``money.largest_remainder`` row for row (tested); it falls back to Python integers (object arrays) when
``amount × Σweights`` would not fit in int64, so it is never inexact. ``read_focus_columns`` holds amounts in one
quantum per file, the finest any of its lines needs (the row engine uses each line's own, at least micro-units: both
are exact, the parts of a line may differ in the last digits); ``columns_from_lines`` holds each line in its own
quantum (``Columns.line_scale``), as ``allocate.split`` does, so its rows are the row engine's exactly
(``to_line_allocations``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from costmesh.common.money import MICRO_SCALE, from_units, scale_of, to_units
from costmesh.common.usage import QueueUse

from .allocate import Allocator, Target
from .mapping import Mapper, Unmatched
from .model import Allocation, CostLine, Usage, Window

_INT64_MAX = 2**63 - 1
#: FOCUS columns that say which token kind a line meters → ``CostLine`` fields (``tokenkind``).
_TOKEN_COLUMNS = {
    "SkuId": "sku",
    "SkuMeter": "sku_meter",
    "ChargeDescription": "description",
    "ConsumedUnit": "unit",
    "PricingUnit": "pricing_unit",
}
_Key = tuple[str, str, str, str]


class FastPathUnavailable(Exception):
    """The file cannot take the columnar path (a value pyarrow will not parse, amounts beyond int64): use the rows."""


def split_rows(units: np.ndarray, weights: Sequence[int]) -> np.ndarray:
    """Split each of ``units`` (n,) by ``weights`` (k,) with largest remainders → (n, k); each row sums exactly.

    Ties go to the lower index, a negative amount is split as its magnitude and negated: ``largest_remainder`` per row.
    """
    w = [int(x) for x in weights]
    total = sum(w)
    if total <= 0 or any(x < 0 for x in w):
        raise ValueError("weights must be non-negative with a positive sum")
    n, k = len(units), len(w)
    negative = units < 0
    wide = units.dtype == object or int(np.abs(units).max(initial=0)) * total > _INT64_MAX
    if wide:
        mag = np.array([abs(int(x)) for x in units], dtype=object)
        wv = np.array(w, dtype=object)
    else:
        mag = np.abs(units).astype(np.int64)
        wv = np.array(w, dtype=np.int64)
    num = mag[:, None] * wv[None, :]
    q = num // total
    r = num - q * total
    left = mag - q.sum(axis=1)
    # Remainders are < total: below 2**53 float64 holds them exactly, and its sort is the fastest numpy has.
    ranked = r.astype(np.float64) if not wide and total <= 2**53 else r
    order = np.argsort(-ranked, axis=1, kind="stable")
    rank = np.empty((n, k), dtype=np.int64)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(k), (n, k)), axis=1)
    q = q + (rank < np.asarray(left, dtype=q.dtype)[:, None])
    parts = np.where(negative[:, None], -q, q)
    # each part is at most its line's units: wide weights never make the parts wider than the input
    return parts.astype(np.int64) if units.dtype != object else parts


class Columns(msgspec.Struct):
    """Cost lines as columns. ``units`` are integer multiples of ``10**-scale``, or, when ``line_scale`` is given, line
    i's of ``10**-line_scale[i]`` (``scale`` is then the finest); ``desc`` indexes ``descriptors`` (the fields mapping
    looks at), ``tags`` indexes ``tag_texts``. A split never mixes lines, so it needs no common quantum."""

    units: np.ndarray
    scale: int
    start_us: np.ndarray
    end_us: np.ndarray
    currency: str
    billing_period: list[str]
    desc: np.ndarray
    descriptors: list[CostLine]
    tags: np.ndarray
    tag_texts: list[str]
    problems: list[str]
    line_scale: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.units)


def _decimal_units(arr: Any) -> tuple[np.ndarray, int]:
    """Integer units and scale of a decimal128 column: the smallest scale ≥ micro that holds every value exactly."""
    import pyarrow as pa

    for scale in (MICRO_SCALE, 9, 12):
        try:
            exact = arr.cast(pa.decimal128(38, scale), safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        words = np.frombuffer(exact.buffers()[1], dtype=np.int64)[exact.offset * 2 : (exact.offset + len(exact)) * 2]
        low, high = words[0::2], words[1::2]
        if not np.array_equal(high, low >> 63):
            raise FastPathUnavailable("an amount does not fit in 64-bit units")
        return low.copy(), scale
    raise FastPathUnavailable("amounts finer than 1e-12")


def read_focus_columns(path: str | Path, data: bytes | None = None, cost_column: str = "BilledCost") -> Columns:
    """A FOCUS CSV (plain or gzip) as ``Columns``; rows with a missing required value are reported and dropped.

    Raises ``FastPathUnavailable`` for anything the row reader would report cell by cell (unparseable values): the
    caller then uses ``focus.read_focus``, which locates every problem.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    data = Path(path).read_bytes() if data is None else data
    if data[:2] == b"\x1f\x8b":
        import gzip

        data = gzip.decompress(data)
    strings = ["ResourceId", "ResourceName", "ServiceName", "x_UsageType", "Tags", "BillingCurrency", *_TOKEN_COLUMNS]
    types = {
        cost_column: pa.decimal128(38, 12),
        "ChargePeriodStart": pa.timestamp("us"),
        "ChargePeriodEnd": pa.timestamp("us"),
        "BillingPeriodStart": pa.timestamp("us"),
        **dict.fromkeys(strings, pa.string()),
    }
    head = next(csv.reader([data.split(b"\n", 1)[0].decode("utf-8-sig", "replace")]), [])
    wanted = [
        c for c in (cost_column, "ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart", *strings) if c in head
    ]
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            convert_options=pacsv.ConvertOptions(
                column_types={c: types[c] for c in wanted},
                include_columns=wanted,
                null_values=["", "NULL", "null"],
                strings_can_be_null=True,
                timestamp_parsers=[pacsv.ISO8601],
            ),
        )
    except (pa.ArrowInvalid, KeyError) as exc:
        raise FastPathUnavailable(f"{path}: {exc}") from None
    required = [cost_column, "ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart", "BillingCurrency"]
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise FastPathUnavailable(f"{path}: missing column(s) {', '.join(missing)}")
    problems = []
    ok = np.ones(table.num_rows, dtype=bool)
    for c in required:
        nulls = table[c].is_null().to_numpy(zero_copy_only=False)
        for i in np.nonzero(nulls & ok)[0][:100]:
            problems.append(f"{path}: row {i + 2}: column {c}: required value is missing")
        ok &= ~nulls
    start = table["ChargePeriodStart"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    end = table["ChargePeriodEnd"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    backwards = ok & (end < start)
    for i in np.nonzero(backwards)[0][:100]:
        problems.append(f"{path}: row {i + 2}: column ChargePeriodEnd: ends before ChargePeriodStart")
    ok &= ~backwards
    table = table.filter(pa.array(ok))
    currencies = pc.unique(table["BillingCurrency"]).to_pylist()
    if len(currencies) > 1 or any(not (len(c) == 3 and c.isalpha() and c.isupper()) for c in currencies):
        raise FastPathUnavailable(f"{path}: currencies {currencies}: the columnar path takes one valid currency")
    units, scale = _decimal_units(table[cost_column].combine_chunks())

    def dictionary(name: str) -> tuple[np.ndarray, list[str]]:
        if name not in table.column_names:
            return np.zeros(table.num_rows, dtype=np.int32), [""]
        enc = pc.dictionary_encode(table[name].fill_null("")).combine_chunks()
        return enc.indices.to_numpy(zero_copy_only=False).astype(np.int32), enc.dictionary.to_pylist()

    # the mapping looks at (resource id, name, usage type, service), the token kind at the SKU, description and
    # units: one descriptor per distinct combination
    names = ("ResourceId", "ResourceName", "x_UsageType", "ServiceName", *_TOKEN_COLUMNS)
    fields = ("resource_id", "resource_name", "usage_type", "service", *_TOKEN_COLUMNS.values())
    parts = [dictionary(c) for c in names]
    stacked = np.stack([p[0] for p in parts], axis=1)
    combos, desc = np.unique(stacked, axis=0, return_inverse=True)
    descriptors = [
        CostLine(
            line_id=f"desc:{i}",
            source="focus",
            billing_period="",
            window=Window(0, 0),
            amount=Decimal(0),
            currency=currencies[0] if currencies else "USD",
            **{f: parts[j][1][v] for j, (f, v) in enumerate(zip(fields, combo, strict=True))},
        )
        for i, combo in enumerate(combos.tolist())
    ]
    tags, tag_texts = dictionary("Tags")
    period_start = table["BillingPeriodStart"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    months = pc.strftime(pa.array(np.unique(period_start), pa.timestamp("us")), format="%Y-%m").to_pylist()
    return Columns(
        units=units,
        scale=scale,
        start_us=start[ok],
        end_us=end[ok],
        currency=currencies[0] if currencies else "USD",
        billing_period=sorted(set(months)),
        desc=desc.astype(np.int32).reshape(-1),
        descriptors=descriptors,
        tags=tags,
        tag_texts=tag_texts,
        problems=problems,
    )


#: The fields ``Mapper.map`` reads (rules, usage-type shortcuts, ids, kind inference) and those ``tokenkind`` reads
#: (which token kind and model an AI line meters): lines equal in them map and split alike.
_DESCRIPTOR_FIELDS = (
    "resource_id",
    "resource_name",
    "resource_type",
    "usage_type",
    "service",
    "sku",
    "sku_meter",
    "description",
    "unit",
    "pricing_unit",
)


def _own_units(amount: Decimal) -> tuple[int, int]:
    """``amount`` in integer units of its own quantum (``money.scale_of``), as ``allocate.split`` holds it."""
    micros = amount.scaleb(MICRO_SCALE)
    if micros == micros.to_integral_value():  # the common case, three times faster than scale_of + to_units
        return int(micros), MICRO_SCALE
    scale = scale_of(amount)
    return to_units(amount, scale), scale


def columns_from_lines(lines: Sequence[CostLine]) -> Columns:
    """``lines`` (one currency) as ``Columns``, for ``allocate_columns``.

    Lines with the same descriptor (the fields mapping reads) share one ``descriptors`` entry and lines with the same
    tags one ``tag_texts`` entry (JSON, key order kept: the first tag key found wins). Each amount is held in integer
    units of its own quantum (``line_scale``), so each line is split exactly as the row engine splits it; units beyond
    int64 make an object column (Python integers: slower, still exact). Raises ``FastPathUnavailable`` for several
    currencies (the caller splits by currency) and for no lines.
    """
    if not lines:
        raise FastPathUnavailable("no lines")
    currencies = {line.currency for line in lines}
    if len(currencies) > 1:
        raise FastPathUnavailable(f"currencies {sorted(currencies)}: one Columns holds one currency")
    n = len(lines)
    units: list[int] = [0] * n
    scales, start, end, desc, tags = [0] * n, [0] * n, [0] * n, [0] * n, [0] * n
    desc_ids: dict[tuple[str, ...], int] = {}
    tag_ids: dict[tuple[tuple[str, str], ...], int] = {(): 0}
    firsts: list[CostLine] = []
    periods: set[str] = set()
    own_units = _own_units
    for i, line in enumerate(lines):
        units[i], scales[i] = own_units(line.amount)
        window = line.window
        start[i] = window.start_us
        end[i] = window.end_us
        key = (
            line.resource_id,
            line.resource_name,
            line.resource_type,
            line.usage_type,
            line.service,
            line.sku,
            line.sku_meter,
            line.description,
            line.unit,
            line.pricing_unit,
        )
        d = desc_ids.get(key)
        if d is None:
            d = desc_ids[key] = len(firsts)
            firsts.append(line)
        desc[i] = d
        if line.tags:
            tag_key = tuple(line.tags.items())
            t = tag_ids.get(tag_key)
            if t is None:
                t = tag_ids[tag_key] = len(tag_ids)
            tags[i] = t
        periods.add(line.billing_period)
    try:
        unit_column = np.array(units, dtype=np.int64)
    except OverflowError:
        unit_column = np.array(units, dtype=object)
    line_scale = np.array(scales, dtype=np.int16)
    currency = currencies.pop()
    descriptors = [
        CostLine(
            line_id=f"desc:{i}",
            source=first.source,
            billing_period="",
            window=Window(0, 0),
            amount=Decimal(0),
            currency=currency,
            **{f: getattr(first, f) for f in _DESCRIPTOR_FIELDS},
        )
        for i, first in enumerate(firsts)
    ]
    return Columns(
        units=unit_column,
        scale=int(line_scale.max()),
        start_us=np.array(start, dtype=np.int64),
        end_us=np.array(end, dtype=np.int64),
        currency=currency,
        billing_period=sorted(periods),
        desc=np.array(desc, dtype=np.int32),
        descriptors=descriptors,
        tags=np.array(tags, dtype=np.int32),
        tag_texts=[json.dumps(dict(t)) if t else "" for t in tag_ids],
        problems=[],
        line_scale=line_scale,
    )


class ColumnAllocations(msgspec.Struct):
    """Allocation rows as columns: ``line`` indexes the input lines, ``key`` indexes ``keys`` (tenant, feature, agent,
    method); ``units`` in the input's scale. ``group_basis``/``group_resource`` describe each row's group;
    ``group_whole`` says the group's lines went whole to one key (tag, unmatched, nothing observed)."""

    line: np.ndarray
    key: np.ndarray
    units: np.ndarray
    group: np.ndarray
    keys: list[_Key]
    group_basis: list[str]
    group_resource: list[str]
    unmatched_descriptors: list[Unmatched]
    group_whole: list[bool] = []


def _epochs(
    start: np.ndarray, end: np.ndarray, usage: Sequence[Usage], probe: Allocator
) -> tuple[np.ndarray, list[tuple[list[int], list[QueueUse], list[Usage] | None]]]:
    """Per line, the id of the consumption its window sees: the call rows it overlaps, the queue rows that feed it
    and the AI rows it overlaps (lines sharing all three share shares)."""
    us = np.array([u.start_us for u in usage], dtype=np.int64)
    ue = np.array([u.end_us for u in usage], dtype=np.int64)
    pairs = np.stack([start, end], axis=1)
    windows, inverse = np.unique(pairs, axis=0, return_inverse=True)
    ids: dict[tuple[bytes, tuple[int, ...], tuple[int, ...]], int] = {}
    members: list[tuple[list[int], list[QueueUse], list[Usage] | None]] = []
    window_epoch = np.empty(len(windows), dtype=np.int64)
    for i, (s, e) in enumerate(windows.tolist()):
        rows = np.nonzero((us < e) & (ue > s))[0]
        window = Window(s, e)
        queues = probe.queues_for(window)
        ai = None if probe.ai is None else [u for u in probe.ai if window.overlaps(u.start_us, u.end_us)]
        key = (rows.tobytes(), tuple(map(id, queues)), tuple(map(id, ai or ())))
        if key not in ids:
            ids[key] = len(members)
            members.append((rows.tolist(), queues, ai))
        window_epoch[i] = ids[key]
    return window_epoch[inverse.reshape(-1)], members


#: Cells of one batch of ``_split_groups`` (lines × keys): bounds its temporary arrays to some hundred MB.
_BATCH_CELLS = 1 << 22


def _split_groups(
    units: np.ndarray,
    order: np.ndarray,
    bounds: np.ndarray,
    group_keys: list[np.ndarray],
    group_weights: list[list[int]],
    unallocated: int,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Every group's lines split by its weights (``split_rows``, row for row), batched: the lines of all groups with
    the same number of keys are one (lines × keys) array, so the numpy work is per batch, not per group. A group
    given whole keeps one row per line (its key, the line's units); a line of amount 0 split by weights keeps one
    unallocated row, as ``allocate.split`` does. Groups whose products would not fit in int64 go one by one through
    ``split_rows``' exact wide path."""
    sizes = np.diff(bounds)
    out_line: list[np.ndarray] = []
    out_key: list[np.ndarray] = []
    out_units: list[np.ndarray] = []
    out_group: list[np.ndarray] = []

    def emit(lines: np.ndarray, key: np.ndarray, parts: np.ndarray, group: np.ndarray) -> None:
        out_line.append(lines)
        out_key.append(key)
        out_units.append(parts)
        out_group.append(group)

    by_k: dict[int, list[int]] = {}
    whole = [g for g, w in enumerate(group_weights) if not w]
    if whole:
        wg = np.array(whole, dtype=np.int64)
        lines = np.concatenate([order[bounds[g] : bounds[g + 1]] for g in whole])
        group = np.repeat(wg, sizes[wg]).astype(np.int32)
        first_key = np.array([group_keys[g][0] for g in whole], dtype=np.int32)
        emit(lines, np.repeat(first_key, sizes[wg]), units[lines], group)
    narrow = units.dtype != object
    for g, w in enumerate(group_weights):
        if not w:
            continue
        total = sum(w)
        idx = order[bounds[g] : bounds[g + 1]]
        if not narrow or total > _INT64_MAX or int(np.abs(units[idx]).max()) * total > _INT64_MAX:
            parts = split_rows(units[idx], w)
            _emit_parts(emit, idx, parts, group_keys[g], np.full(len(idx), g, dtype=np.int32), unallocated)
        else:
            by_k.setdefault(len(w), []).append(g)
    for k, groups in by_k.items():
        weights = np.array([group_weights[g] for g in groups], dtype=np.int64)
        keys = np.stack([group_keys[g] for g in groups])
        gs = np.array(groups, dtype=np.int64)
        member = np.repeat(np.arange(len(groups)), sizes[gs])
        lines = np.concatenate([order[bounds[g] : bounds[g + 1]] for g in groups])
        step = max(_BATCH_CELLS // k, 1)
        for lo in range(0, len(lines), step):
            m, li = member[lo : lo + step], lines[lo : lo + step]
            parts = _split_batch(units[li], weights[m])
            _emit_parts(emit, li, parts, keys[m], gs[m].astype(np.int32), unallocated)
    return out_line, out_key, out_units, out_group


def _split_batch(units: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``split_rows`` with a weight row per line: (n,) units, (n, k) int64 weights → (n, k) parts; the caller has
    checked that |units| × Σweights fits in int64."""
    n, k = w.shape
    total = w.sum(axis=1)
    negative = units < 0
    mag = np.abs(units)
    num = mag[:, None] * w
    q = num // total[:, None]
    r = num - q * total[:, None]
    left = mag - q.sum(axis=1)
    ranked = r.astype(np.float64) if int(total.max(initial=0)) <= 2**53 else r
    order = np.argsort(-ranked, axis=1, kind="stable")
    rank = np.empty((n, k), dtype=np.int64)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(k), (n, k)), axis=1)
    q += rank < left[:, None]
    return np.where(negative[:, None], -q, q)


def _emit_parts(emit: Any, lines: np.ndarray, parts: np.ndarray, keys: np.ndarray, group: np.ndarray, unallocated: int):
    """The non-zero parts of split lines as rows; a line whose parts are all zero (amount 0) keeps one unallocated
    row of 0, so that it stays visible. ``keys`` is one row of key ids for all lines, or one row per line."""
    nz = parts != 0
    zero_lines = ~nz.any(axis=1)
    if zero_lines.any():
        count = int(zero_lines.sum())
        emit(lines[zero_lines], np.full(count, unallocated, dtype=np.int32), np.zeros(count, parts.dtype),
             group[zero_lines])  # fmt: skip
    rows, cols_ = np.nonzero(nz)
    key = keys[cols_] if keys.ndim == 1 else keys[rows, cols_]
    emit(lines[rows], key, parts[rows, cols_], group[rows])


def allocate_columns(
    cols: Columns,
    usage: Sequence[Usage],
    mapper: Mapper,
    *,
    targets: Sequence[Target | Unmatched] | None = None,
    timings: dict[str, float] | None = None,
    **allocator_kwargs: Any,
) -> ColumnAllocations:
    """Allocate every line of ``cols``; for each line the rows' units sum to the line's units exactly.

    ``targets`` (one per descriptor) may be given when mapped already; ``timings`` receives seconds spent computing
    shares (``shares``) and splitting amounts (``split``).
    """
    clock = time.perf_counter
    spent = {"shares": 0.0, "split": 0.0}
    probe = Allocator([], **allocator_kwargs)  # tags, queue and AI rows: what does not depend on the epoch
    tag_tenant: list[tuple[str, str] | None] = []
    for text in cols.tag_texts:
        try:
            tags = json.loads(text) if text else {}
        except ValueError:
            tags = {}
        line = cols.descriptors[0] if cols.descriptors else None
        tag_tenant.append(
            probe.tag_tenant(msgspec.structs.replace(line, tags={str(k): str(v) for k, v in tags.items()}))
            if line is not None and isinstance(tags, dict)
            else None
        )
    t0 = clock()
    if targets is None:
        targets = [mapper.map(d) for d in cols.descriptors]
    epoch, members = _epochs(cols.start_us, cols.end_us, usage, probe)
    n_epochs = max(len(members), 1)
    tagged = np.array([t is not None for t in tag_tenant], dtype=bool)[cols.tags]
    # a tagged line's group is (descriptor, tag): the tag gives the tenant, the descriptor the resource it names
    base = len(cols.descriptors) * n_epochs
    n_tags = max(len(cols.tag_texts), 1)
    group_code = np.where(
        tagged,
        base + cols.desc.astype(np.int64) * n_tags + cols.tags.astype(np.int64),
        cols.desc.astype(np.int64) * n_epochs + epoch,
    )
    codes, group_of_line = np.unique(group_code, return_inverse=True)
    group_of_line = group_of_line.reshape(-1)
    allocators: dict[int, Allocator] = {}
    keys: dict[_Key, int] = {}
    basis: list[str] = []
    resources: list[str] = []
    whole: list[bool] = []
    order = np.argsort(group_of_line, kind="stable")
    bounds = np.searchsorted(group_of_line[order], np.arange(len(codes) + 1))
    group_keys: list[np.ndarray] = []  # per group: its keys' ids, sorted keys first
    group_weights: list[list[int]] = []  # per group: integer weights, [] for a group given whole to its one key
    for g, code in enumerate(codes.tolist()):
        first = int(order[bounds[g]])
        shares: dict[_Key, int]
        if code >= base:
            key, tenant = tag_tenant[int(cols.tags[first])]  # type: ignore[misc]
            shares, metric, resource = {(tenant, "", "", "direct"): 1}, f"tag:{key}", ""
            target = targets[int(cols.desc[first])]
            if isinstance(target, Target):
                resource = target.resource
        else:
            target = targets[code // n_epochs]
            e = code % n_epochs
            if isinstance(target, Unmatched):
                shares, metric, resource = {}, "unmatched", ""
            else:
                alloc = allocators.get(e)
                if alloc is None:
                    rows, queues, ai = members[e]
                    kwargs = {**allocator_kwargs, "queues": queues, "ai": ai}
                    alloc = allocators[e] = Allocator([usage[i] for i in rows], **kwargs)
                window = Window(int(cols.start_us[first]), int(cols.end_us[first]))
                metric, shares = alloc.weights(target, window, cols.descriptors[int(cols.desc[first])])
                resource = target.resource
                if not shares:
                    metric = f"no {metric} observed"
        ordered = sorted(shares)
        whole.append(code >= base or not ordered)
        if not ordered:
            ordered = [("", "", "", "unallocated")]
        basis.append(metric)
        resources.append(resource)
        group_keys.append(np.array([keys.setdefault(k, len(keys)) for k in ordered], dtype=np.int32))
        group_weights.append([] if whole[-1] else [shares[k] for k in ordered])
    t1 = clock()
    spent["shares"] = t1 - t0
    unallocated = keys.setdefault(("", "", "", "unallocated"), len(keys))
    out_line, out_key, out_units, out_group = _split_groups(
        cols.units, order, bounds, group_keys, group_weights, unallocated
    )
    spent["split"] = clock() - t1
    if timings is not None:
        timings.update(spent)
    wide = any(u.dtype == object for u in out_units)
    units = np.concatenate([u.astype(object) if wide else u for u in out_units]) if out_units else np.zeros(0, np.int64)
    return ColumnAllocations(
        line=np.concatenate(out_line) if out_line else np.zeros(0, np.int64),
        key=np.concatenate(out_key) if out_key else np.zeros(0, np.int32),
        units=units,
        group=np.concatenate(out_group) if out_group else np.zeros(0, np.int32),
        keys=list(keys),
        group_basis=basis,
        group_resource=resources,
        unmatched_descriptors=[t for t in targets if isinstance(t, Unmatched)],
        group_whole=whole,
    )


def to_allocations(cols: Columns, result: ColumnAllocations, line_ids: Sequence[str]) -> list[Allocation]:
    """Row objects (for small results and tests); ``line_ids`` names the input lines in order."""
    out = []
    for li, ki, u, g in zip(
        result.line.tolist(), result.key.tolist(), result.units.tolist(), result.group.tolist(), strict=True
    ):
        tenant, feature, agent, method = result.keys[ki]
        out.append(
            Allocation(
                line_id=line_ids[li],
                tenant=tenant,
                method=method,  # type: ignore[arg-type]
                amount=from_units(int(u), cols.scale) if u else Decimal(0),
                currency=cols.currency,
                feature=feature,
                agent=agent,
                resource=result.group_resource[g],
                basis=result.group_basis[g],
            )
        )
    return out


def line_order(result: ColumnAllocations) -> np.ndarray:
    """The permutation putting ``result``'s rows in the row engine's order: by line, then by key as split.

    A line's rows come from one group, in sorted key order (``np.nonzero`` walks the split row by row), so a stable
    sort by line is enough.
    """
    return np.argsort(result.line, kind="stable")


def to_line_allocations(
    lines: Sequence[CostLine], cols: Columns, result: ColumnAllocations, *, chunk: int = 1 << 20
) -> list[Allocation]:
    """``Allocator.allocate_all(lines, ...)`` row for row, from the columnar result of ``columns_from_lines(lines)``.

    Same order (``line_order``), same values and the same ``Decimal`` forms: a part is ``from_units`` in the line's own
    quantum; a line given whole (tag, unmatched, nothing observed, amount 0) carries its own ``amount`` object, as
    ``allocate._whole`` does. Rows are converted ``chunk`` at a time to bound the temporary Python lists.
    """
    if cols.line_scale is None:
        raise ValueError("to_line_allocations needs Columns from columns_from_lines (one quantum per line)")
    order = line_order(result)
    whole_group = np.asarray(result.group_whole, dtype=bool)
    keys = result.keys
    basis, resource = result.group_basis, result.group_resource
    make = Allocation
    out: list[Allocation] = []
    append = out.append
    # units × 10**-scale by one multiplication: exact (a line's units have at most ``money.MAX_DIGITS`` digits, the
    # context's precision), the same value and exponent as ``from_units``' scaleb, at a quarter of its cost
    quantum = {int(sc): Decimal(1).scaleb(-int(sc)) for sc in np.unique(cols.line_scale).tolist()}
    currency = cols.currency
    for lo in range(0, len(order), chunk):
        rows = order[lo : lo + chunk]
        line_idx = result.line[rows]
        units = result.units[rows]
        group = result.group[rows]
        whole = whole_group[group] | (units == 0)
        for li, ki, u, g, w, sc in zip(
            line_idx.tolist(),
            result.key[rows].tolist(),
            units.tolist(),
            group.tolist(),
            whole.tolist(),
            cols.line_scale[line_idx].tolist(),
            strict=True,
        ):
            line = lines[li]
            tenant, feature, agent, method = keys[ki]
            append(
                make(
                    line_id=line.line_id,
                    tenant=tenant,
                    method=method,  # type: ignore[arg-type]
                    amount=line.amount if w else Decimal(u) * quantum[sc],
                    currency=currency,
                    feature=feature,
                    agent=agent,
                    resource=resource[g],
                    basis=basis[g],
                )
            )
    return out
