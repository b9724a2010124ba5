"""Pure-Python twin of ``_records.pxi``: aggregation per window and key, and the ``ObservedCall`` records.

Every call a parser completes goes to ``agg``: summed per window and key (source, destination, port, protocol,
operation, host, tenant/feature/agent with their rules, provider, model) in a dict kept in insertion order (the
compiled table keeps the same order). ``agg_take`` hands the closed windows on as row tuples; ``build`` makes the
records from them with what the caller's builder gives (the record class, per-record constants, endpoint naming).
"""

from __future__ import annotations

from .kinds import PROTOCOLS


def agg(eng, ts, fl, proto, op, host, ids, provider, model, vals) -> None:
    cs = fl.cside
    window = ts - ts % eng.window_us
    key = (
        window,
        fl.addr[cs],
        fl.addr[1 - cs],
        fl.port[1 - cs],
        proto,
        op,
        host,
        ids[0][0],
        ids[0][1],
        ids[1][0],
        ids[1][1],
        ids[2][0],
        ids[2][1],
        provider,
        model,
    )
    acc = eng.agg.get(key)
    if acc is None:
        eng.agg[key] = list(vals)
    else:
        for i, v in enumerate(vals):
            acc[i] += v


def agg_take(eng, now_us: int, final: bool) -> list[tuple]:
    """Row tuples of the closed windows (all when ``final``); entries of open windows stay."""
    out = []
    keep: dict[tuple, list[int]] = {}
    for key, acc in eng.agg.items():  # insertion order: the compiled engine keeps the same order
        if final or now_us < 0 or key[0] + eng.window_us <= now_us:
            out.append((*key, *acc))
        else:
            keep[key] = acc
    eng.agg = keep
    return out


def build(builder, rows: list[tuple], out: list) -> None:
    """``ObservedCall`` records (``builder.cls``) of the row tuples of ``agg_take``, appended to ``out``: the twin of
    ``_Calls`` (the same records, the same field order; the parser tests compare both builds)."""
    node, width, method_of, rule_of = builder.node, builder.width, builder.method_of, builder.rule_of
    cls = builder.cls
    texts = _Memo(lambda raw: raw.decode("utf-8", "replace"))  # ids, provider, model repeat within a drain
    srcs = _Memo(builder.src_name)
    dsts = _Memo(lambda key: builder.dst_name(*key))
    append = out.append
    for (
        window, src, dst, dport, proto, op, host, tv, tr, fv, _fr, av, _ar, provider, model,
        requests, errors, bytes_in, bytes_out, busy, tin, tout, tc, treason,
    ) in rows:  # fmt: skip
        # At most 15 keywords: msgspec (0.22) takes a much slower path for a call with 16 or more, so the fields
        # that usually keep their defaults (feature, agent, tokens, provider, model) are set only when they differ.
        call = cls(
            window_start_us=window,
            window_end_us=window + width,
            node=node,
            src_workload=srcs[src],
            dst=dsts[(dst, dport, host)],
            protocol=PROTOCOLS[proto],
            operation=op.decode("utf-8", "replace"),
            tenant=texts[tv],
            tenant_method=method_of[tr],
            tenant_rule=rule_of[tr],
            requests=requests,
            errors=errors,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            busy_us=busy,
        )
        if fv:
            call.feature = texts[fv]
        if av:
            call.agent = texts[av]
        if provider or model or tin or tout or tc or treason:
            call.tokens_in = tin
            call.tokens_out = tout
            call.tokens_cached = tc
            call.tokens_reasoning = treason
            call.provider = texts[provider]
            call.model = texts[model]
        append(call)


class _Memo(dict):
    """A dict that computes a missing value once (one lookup per hit, no ``get`` + store dance)."""

    def __init__(self, make) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key):
        value = self[key] = self._make(key)
        return value
