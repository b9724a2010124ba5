// Charts drawn as plain SVG (no library): stacked columns over time, and the dependency graph laid out in layers.
// Numbers are only drawn here; the amounts people read are in the tables and labels, formatted by format.js.

import { esc, money } from "./format.js";

export const PALETTE = ["#4f46e5", "#0891b2", "#d97706", "#db2777", "#059669", "#7c3aed", "#64748b", "#ea580c"];

/** A round tick step (1, 2 or 5 × 10^k) giving at most five ticks up to ``v``, and the axis top. */
function niceTicks(v) {
  if (v <= 0) return { step: 1, top: 4 };
  const raw = v / 4;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
  return { step, top: Math.ceil(v / step) * step };
}

function tickLabel(v, currency) {
  const sym = currency === "USD" ? "$" : "";
  if (v >= 1e6) return `${sym}${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e4) return `${sym}${Math.round(v / 1e3)}k`;
  if (v >= 1) return `${sym}${Math.round(v * 100) / 100}`;
  return `${sym}${Number(v.toPrecision(2))}`;
}

function bucketLabel(iso, step) {
  const d = new Date(iso);
  const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  if (step === "month") return `${months[d.getUTCMonth()]} ${d.getUTCFullYear()}`;
  if (step === "day") return `${months[d.getUTCMonth()]} ${d.getUTCDate()}`;
  return `${String(d.getUTCHours()).padStart(2, "0")}:00`;
}

/**
 * Stacked columns: buckets (ISO starts) × series [{key, values: [decimal strings]}]; a tooltip per column part.
 * Returns an SVG string and the legend's HTML.
 */
export function stackedColumns(buckets, series, { step = "day", currency = "USD", height = 240 } = {}) {
  const width = 760;
  const pad = { l: 52, r: 12, t: 12, b: 28 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const totals = buckets.map((_, i) => series.reduce((s, x) => s + Math.max(0, Number(x.values[i])), 0));
  const { step: tick, top: max } = niceTicks(Math.max(0, ...totals));
  const slot = w / Math.max(1, buckets.length);
  const bw = Math.max(2, Math.min(48, slot * 0.72));
  const y = (v) => pad.t + h - (v / max) * h;
  let out = `<svg class="chart" viewBox="0 0 ${width} ${height}" role="img" aria-label="cost over time">`;
  for (let v = 0; v <= max + tick / 2; v += tick) {
    out += `<line x1="${pad.l}" x2="${width - pad.r}" y1="${y(v)}" y2="${y(v)}" stroke="#eef2f7"/>`;
    out += `<text x="${pad.l - 8}" y="${y(v) + 4}" text-anchor="end">${tickLabel(v, currency)}</text>`;
  }
  const every = Math.ceil(buckets.length / 12);
  buckets.forEach((b, i) => {
    const x = pad.l + slot * i + (slot - bw) / 2;
    let base = 0;
    series.forEach((s, k) => {
      const v = Math.max(0, Number(s.values[i]));
      if (v <= 0) return;
      const top = y(base + v);
      const tip = `${s.key || "(none)"} · ${bucketLabel(b, step)}: ${money(s.values[i], currency)}`;
      out += `<rect x="${x}" y="${top}" width="${bw}" height="${y(base) - top}" fill="${PALETTE[k % PALETTE.length]}"`;
      out += ` rx="1.5"><title>${esc(tip)}</title></rect>`;
      base += v;
    });
    if (i % every === 0) {
      out += `<text x="${x + bw / 2}" y="${height - 8}" text-anchor="middle">${bucketLabel(b, step)}</text>`;
    }
  });
  out += `<line x1="${pad.l}" x2="${width - pad.r}" y1="${y(0)}" y2="${y(0)}" stroke="#cbd5e1"/></svg>`;
  const legend = `<div class="legend">${series
    .map((s, k) => `<span><i style="background:${PALETTE[k % PALETTE.length]}"></i>${esc(s.key || "(none)")}</span>`)
    .join("")}</div>`;
  return out + legend;
}

const KIND_COLORS = {
  workload: "#4f46e5",
  service: "#4f46e5",
  database: "#0891b2",
  topic: "#d97706",
  queue: "#d97706",
  external: "#db2777",
  ai: "#7c3aed",
};

/**
 * The dependency graph in layers: a node's column is the longest path to it from a node nobody calls (cycles are
 * broken by visiting order), rows spread evenly; edges are curves whose width grows with the calls they carry.
 */
export function dependencyGraph(nodes, edges) {
  const names = nodes.map((n) => n.name);
  const incoming = new Map(names.map((n) => [n, 0]));
  const out = new Map(names.map((n) => [n, []]));
  for (const e of edges) {
    if (!out.has(e.src) || !incoming.has(e.dst) || e.src === e.dst) continue;
    out.get(e.src).push(e.dst);
    incoming.set(e.dst, incoming.get(e.dst) + 1);
  }
  const layer = new Map();
  const visiting = new Set();
  function depth(n) {
    if (layer.has(n)) return layer.get(n);
    if (visiting.has(n)) return 0;
    visiting.add(n);
    let d = 0;
    for (const e of edges) if (e.dst === n && e.src !== n && out.has(e.src)) d = Math.max(d, depth(e.src) + 1);
    visiting.delete(n);
    layer.set(n, d);
    return d;
  }
  names.forEach(depth);
  const columns = [];
  for (const n of names) {
    const d = layer.get(n);
    (columns[d] ||= []).push(n);
  }
  // Order each column by the mean row of its callers (barycenter), which removes most crossings.
  const row = new Map();
  columns.forEach((col, ci) => {
    if (ci > 0) {
      const mean = (n) => {
        const ys = edges.filter((e) => e.dst === n && row.has(e.src)).map((e) => row.get(e.src));
        return ys.length ? ys.reduce((s, v) => s + v, 0) / ys.length : Infinity;
      };
      col.sort((p, q) => mean(p) - mean(q) || p.localeCompare(q));
    }
    col.forEach((n, ri) => row.set(n, (ri + 1) / (col.length + 1)));
  });
  const colW = 230;
  const rowH = 86;
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const width = Math.max(640, columns.length * colW + 40);
  const height = Math.max(260, rows * rowH + 90);
  const pos = new Map();
  columns.forEach((col, ci) => {
    const gap = height / (col.length + 1);
    col.forEach((n, ri) => pos.set(n, { x: 40 + ci * colW + 70, y: gap * (ri + 1) }));
  });
  const maxCalls = Math.max(1, ...edges.map((e) => e.calls));
  let svg = `<svg class="graph chart" viewBox="0 0 ${width} ${height}" role="img" aria-label="dependency graph">`;
  svg += `<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" markerHeight="9"`;
  svg += ` markerUnits="userSpaceOnUse"`;
  svg += ` orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#94a3b8"/></marker></defs>`;
  for (const e of edges) {
    const a = pos.get(e.src);
    const b = pos.get(e.dst);
    if (!a || !b) continue;
    const sw = 1.2 + 5 * Math.sqrt(e.calls / maxCalls);
    const x1 = a.x + 64;
    const x2 = b.x - 66;
    const mx = (x1 + x2) / 2;
    // An edge that skips columns bows below the nodes in between instead of running through them.
    const span = Math.round((b.x - a.x) / colW);
    const bow = span > 1 ? 34 + 22 * (span - 1) : 0;
    const d =
      e.src === e.dst
        ? `M${a.x + 40},${a.y - 18} C${a.x + 90},${a.y - 70} ${a.x - 90},${a.y - 70} ${a.x - 40},${a.y - 18}`
        : span > 1
          ? `M${a.x},${a.y + 20} C${a.x + 40},${a.y + 20 + bow * 1.6} ${b.x - 40},${b.y + 20 + bow * 1.6} ${b.x},${b.y + 22}`
          : `M${x1},${a.y} C${mx},${a.y} ${mx},${b.y} ${x2},${b.y}`;
    const cls = e.errors > 0 ? "edge err" : "edge";
    const tip = `${e.src} → ${e.dst} (${e.protocol}): ${e.calls} calls, ${e.errors} errors`;
    svg += `<path class="${cls}" d="${d}" stroke-width="${sw.toFixed(1)}" marker-end="url(#arrow)"`;
    svg += ` data-src="${esc(e.src)}" data-dst="${esc(e.dst)}"><title>${esc(tip)}</title></path>`;
    const lx = span > 1 ? (a.x + b.x) / 2 : x1 + (x2 - x1) * 0.5;
    const ly = span > 1 ? (a.y + b.y) / 2 + 20 + bow * 1.2 + 4 : a.y + (b.y - a.y) * 0.5 - 6;
    svg += `<text class="elabel" x="${lx}" y="${ly}" text-anchor="middle">${esc(e.protocol)}</text>`;
  }
  for (const n of nodes) {
    const p = pos.get(n.name);
    const color = KIND_COLORS[n.kind] || "#64748b";
    const text = n.name.length > 24 ? `${n.name.slice(0, 22)}…` : n.name;
    svg += `<g class="node" data-name="${esc(n.name)}" data-kind="${esc(n.kind)}"><title>${esc(n.name)} (${esc(
      n.kind,
    )})</title>`;
    svg += `<rect x="${p.x - 66}" y="${p.y - 20}" width="132" height="40" rx="8" fill="#fff" stroke="${color}"`;
    svg += ` stroke-width="1.6"/><rect x="${p.x - 66}" y="${p.y - 20}" width="6" height="40" rx="3" fill="${color}"/>`;
    svg += `<text x="${p.x + 3}" y="${p.y - 2}" text-anchor="middle">${esc(text)}</text>`;
    svg += `<text x="${p.x + 3}" y="${p.y + 13}" text-anchor="middle" class="elabel">${esc(n.kind)}</text></g>`;
  }
  return `${svg}</svg>`;
}

export function kindLegend(nodes) {
  const kinds = [...new Set(nodes.map((n) => n.kind))].sort();
  return `<div class="legend">${kinds
    .map((k) => `<span><i style="background:${KIND_COLORS[k] || "#64748b"}"></i>${esc(k)}</span>`)
    .join("")}</div>`;
}
