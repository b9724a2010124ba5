// The costmesh console: one page per question (which customers lose money, what drives one customer's cost, what the
// architecture looks like, how much of the bill is explained, what AI costs, what is alerting), each read from the
// API with the user's bearer token. Hash routes (#/customers, #/customer/<id>, #/graph, #/coverage, #/ai, #/alerts).

import { dependencyGraph, kindLegend, stackedColumns } from "./charts.js";
import { amount, bytes, duration, esc, integer, isNegative, label, magnitude, percent, when } from "./format.js";

const METHODS = ["direct", "trace", "propagated", "platform", "idle", "unallocated"];
const METHOD_NAMES = {
  direct: "measured",
  trace: "trace-joined",
  propagated: "propagated",
  platform: "modeled (platform)",
  idle: "idle (node capacity)",
  unallocated: "unallocated",
};
const TOKEN_KEY = "costmesh.token";
const main = document.getElementById("main");
const state = { period: null, periods: [], role: null, authRequired: false };

class ApiError extends Error {
  constructor(status, body) {
    super(body.error || `HTTP ${status}`);
    this.status = status;
    this.role = body.required_role;
  }
}

// -- the API, with the token prompt --------------------------------------------------------------------------------

let tokenWaiters = null;

function askToken(message) {
  const dialog = document.getElementById("token-dialog");
  const error = document.getElementById("token-error");
  error.hidden = !message;
  error.textContent = message || "";
  if (!tokenWaiters) {
    tokenWaiters = [];
    document.getElementById("token-input").value = "";
    dialog.showModal();
  }
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

document.getElementById("token-form").addEventListener("submit", () => {
  const token = document.getElementById("token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  const waiters = tokenWaiters || [];
  tokenWaiters = null;
  waiters.forEach((w) => w());
});

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  window.location.reload();
});

async function api(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) url.searchParams.append(k, one);
  }
  const token = sessionStorage.getItem(TOKEN_KEY);
  const resp = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  const body = await resp.json();
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

/** Who we are (a public route, so asking never provokes a refusal); asks for a token until one is accepted. */
async function signIn() {
  let me = await api("/v1/me");
  while (me.auth_required && !me.role) {
    await askToken(sessionStorage.getItem(TOKEN_KEY) ? "That token was not accepted." : "");
    me = await api("/v1/me");
  }
  document.getElementById("token-dialog").close();
  return me;
}

const RANK = { viewer: 0, finance: 1, admin: 2 };

function may(role) {
  return RANK[state.role] >= RANK[role];
}

// -- pieces of page ------------------------------------------------------------------------------------------------

function kpi(name, valueHtml, hint = "", id = "") {
  return `<div class="kpi"${id ? ` data-kpi="${id}"` : ""}><div class="label">${esc(name)}</div>
    <div class="value">${valueHtml}</div>${hint ? `<div class="hint">${hint}</div>` : ""}</div>`;
}

function methodStack(byMethod, tall = false) {
  const total = METHODS.reduce((s, m) => s + Math.max(0, magnitude(byMethod[m] || "0")), 0);
  if (total <= 0) return `<div class="stack${tall ? " tall" : ""}"></div>`;
  const parts = METHODS.filter((m) => magnitude(byMethod[m] || "0") > 0)
    .map((m) => {
      const share = (100 * magnitude(byMethod[m])) / total;
      return `<span class="m-${m}" style="width:${share.toFixed(3)}%" title="${METHOD_NAMES[m]}"></span>`;
    })
    .join("");
  return `<div class="stack${tall ? " tall" : ""}">${parts}</div>`;
}

function methodLegend() {
  return `<div class="legend">${METHODS.map((m) => `<span><i class="m-${m}"></i>${METHOD_NAMES[m]}</span>`).join("")}</div>`;
}

function bars(slices, { link = null, limit = 8, names = {} } = {}) {
  if (!slices.length) return `<div class="empty">Nothing here.</div>`;
  const shown = slices.slice(0, limit);
  const max = Math.max(...shown.map((s) => Math.abs(magnitude(s.amount))), 1e-12);
  const rows = shown
    .map((s) => {
      const name = link && s.key ? `<a href="${link(s.key)}">${esc(s.key)}</a>` : label(names[s.key] || s.key);
      const width = (100 * Math.abs(magnitude(s.amount))) / max;
      return `<div class="bar" data-key="${esc(s.key)}"><div class="name">${name}</div>
        <div class="track"><div class="fill" style="width:${width.toFixed(2)}%"></div></div>
        <div class="amt">${amount(s.amount, s.currency)} <span class="muted">${percent(s.share_pct)}</span></div></div>`;
    })
    .join("");
  const more = slices.length > limit ? `<div class="muted">and ${slices.length - limit} more</div>` : "";
  return `<div class="bars">${rows}</div>${more}`;
}

function page(title, subtitle, body, crumbs = "") {
  main.innerHTML = `${crumbs ? `<div class="crumbs">${crumbs}</div>` : ""}<h1>${esc(title)}</h1>
    <p class="subtitle">${subtitle}</p>${body}`;
}

function periodLine() {
  return state.period ? `Billing period <b>${esc(state.period)}</b>` : "No billing period has been allocated yet";
}

function noPeriods() {
  page(
    "Nothing allocated yet",
    "Import a bill (billing.sources in the config) and let the billing service run once.",
    `<div class="card empty">The console reads allocated cost; there is none yet. Usage is collected meanwhile.</div>`,
  );
}

// -- pages -----------------------------------------------------------------------------------------------------------

async function customersPage() {
  if (!state.period) return noPeriods();
  const [trend, pnlOrNull] = await Promise.all([
    api("/v1/cost", { group_by: "tenant", period: state.period, step: "day", limit: 6 }),
    may("finance") ? api("/v1/pnl", { period: state.period, currency: currencyOf() }) : null,
  ]);
  const cur = currencyOf();
  let table;
  let kpis;
  let notice = "";
  if (pnlOrNull) {
    const p = pnlOrNull;
    const losing = p.customers.filter((c) => isNegative(c.margin)).length;
    kpis = [
      kpi("Billed", amount(p.billed, cur), "the whole bill of the period", "billed"),
      kpi("Revenue", amount(p.revenue, cur), `${p.customers.length} customers`, "revenue"),
      kpi(
        "Customers losing money",
        `<span class="${losing ? "neg" : ""}" data-count="${losing}">${losing}</span>`,
        "margin below zero",
        "losing",
      ),
      kpi("Not allocated", amount(p.unallocated, cur), "platform + unallocated", "unallocated"),
    ].join("");
    const rows = p.customers
      .map(
        (c) => `<tr class="clickable" data-customer="${esc(c.customer)}">
          <td><a href="#/customer/${encodeURIComponent(c.customer)}">${esc(c.customer)}</a></td>
          <td class="num" data-col="revenue">${amount(c.revenue, cur)}</td>
          <td class="num" data-col="cost">${amount(c.cost, cur)}</td>
          <td>${methodStack(c.by_category)}</td>
          <td class="num" data-col="margin">${amount(c.margin, cur)}</td>
          <td class="num ${c.margin_pct !== null && isNegative(c.margin_pct) ? "neg" : ""}" data-col="margin_pct">${percent(
            c.margin_pct,
          )}</td></tr>`,
      )
      .join("");
    table = `<table id="customers"><thead><tr><th>Customer</th><th class="num">Revenue</th><th class="num">Cost</th>
      <th>How the cost was obtained</th><th class="num">Margin</th><th class="num">Margin %</th></tr></thead>
      <tbody>${rows}</tbody></table>${methodLegend()}`;
  } else {
    notice = `<div class="notice">Revenue and margin need the <b>finance</b> role; this token shows cost only.</div>`;
    const cost = await api("/v1/cost", { group_by: "tenant", period: state.period });
    const rows = cost.rows
      .filter((r) => r.tenant)
      .map(
        (r) => `<tr class="clickable" data-customer="${esc(r.tenant)}">
          <td><a href="#/customer/${encodeURIComponent(r.tenant)}">${esc(r.tenant)}</a></td>
          <td class="num" data-col="cost">${amount(r.cost, r.currency)}</td><td>${methodStack(r.by_method)}</td></tr>`,
      )
      .join("");
    kpis = cost.totals.map((t) => kpi(`Billed (${t.currency})`, amount(t.cost, t.currency), "", "billed")).join("");
    table = `<table id="customers"><thead><tr><th>Customer</th><th class="num">Cost</th>
      <th>How the cost was obtained</th></tr></thead><tbody>${rows}</tbody></table>${methodLegend()}`;
  }
  const series = trend.rows.map((r) => ({ key: r.tenant || "(unallocated)", values: r.series }));
  if (trend.rows_left_out > 0) {
    const total = trend.totals.find((t) => t.currency === cur);
    if (total) {
      const rest = total.series.map((v, i) =>
        String(magnitude(v) - trend.rows.reduce((s, r) => s + (r.currency === cur ? magnitude(r.series[i]) : 0), 0)),
      );
      series.push({ key: `${trend.rows_left_out} more`, values: rest });
    }
  }
  page(
    "Customers",
    `${periodLine()} · ranked by margin, money-losing customers first`,
    `${notice}<div class="kpis">${kpis}</div>
     <div class="card"><div class="head"><h2>Cost per customer over time</h2><span class="note">per day, ${esc(
       cur,
     )}</span></div>${stackedColumns(trend.buckets || [], series, { step: "day", currency: cur })}</div>
     <div class="card">${table}</div>`,
  );
  main.querySelectorAll("tr[data-customer]").forEach((tr) =>
    tr.addEventListener("click", () => {
      window.location.hash = `#/customer/${encodeURIComponent(tr.dataset.customer)}`;
    }),
  );
}

function currencyOf() {
  const p = state.periods.find((x) => x.period === state.period);
  return (p && p.currencies[0]) || "USD";
}

async function customerPage(id) {
  const params = { period: state.period, step: "day" };
  let c;
  try {
    c = await api(`/v1/customers/${encodeURIComponent(id)}`, params);
  } catch (e) {
    if (e.status === 404) {
      page(id, periodLine(), `<div class="card empty">No allocated cost for this customer in this period.</div>`);
      return;
    }
    throw e;
  }
  const pnl =
    state.period && may("finance")
      ? await api("/v1/pnl", { period: state.period, currency: currencyOf(), tenant: id })
      : null;
  const mine = pnl && pnl.customers.find((x) => x.customer === id);
  const total = c.totals[0];
  const kpis = [
    kpi("Cost", amount(total.cost, total.currency), c.totals.length > 1 ? "first currency shown" : "", "cost"),
    mine ? kpi("Revenue", amount(mine.revenue, total.currency), "", "revenue") : "",
    mine ? kpi("Margin", amount(mine.margin, total.currency), percent(mine.margin_pct), "margin") : "",
    kpi(
      "Measured on the call",
      `${percent(c.by_method.find((s) => s.key === "direct")?.share_pct ?? "0.00")}`,
      "of this customer's cost",
      "measured",
    ),
  ].join("");
  const drivers = c.drivers
    .map(
      (d) => `<tr><td><a href="#/resource/${encodeURIComponent(d.resource)}">${label(d.resource, "(no resource)")}</a></td>
      <td>${label(d.feature)}</td><td>${label(d.agent)}</td>
      <td><span class="badge method">${esc(METHOD_NAMES[d.method] || d.method)}</span></td>
      <td class="muted">${esc(d.basis)}</td><td class="num">${amount(d.amount, d.currency)}</td>
      <td class="num">${percent(d.share_pct)}</td></tr>`,
    )
    .join("");
  const shared = c.shared_resources
    .map(
      (s) => `<tr><td>${esc(s.resource)}</td><td class="num">${amount(s.amount, s.currency)}</td>
      <td class="num">${amount(s.resource_cost, s.currency)}</td><td class="num">${percent(s.share_pct)}</td>
      <td class="num">${s.tenants}</td></tr>`,
    )
    .join("");
  const ops = c.operations
    .map(
      (o) => `<tr><td class="mono">${esc(o.src_workload || "?")} → ${esc(o.dst)}</td><td>${esc(o.protocol)}</td>
      <td class="num">${integer(o.requests)}</td><td class="num">${integer(o.errors)}</td>
      <td class="num">${duration(o.busy_us)}</td><td class="num">${bytes(o.bytes_in + o.bytes_out)}</td>
      <td class="num">${integer(o.tokens_in + o.tokens_out)}</td></tr>`,
    )
    .join("");
  page(
    id,
    `${periodLine()} · what this customer costs to serve, and why`,
    `<div class="kpis">${kpis}</div>
     <div class="card"><div class="head"><h2>Cost over time by resource</h2><span class="note">per ${esc(c.step)}</span></div>
       ${stackedColumns(c.buckets, c.series, { step: c.step, currency: total.currency })}</div>
     <div class="grid three">
       <div class="card" id="by-resource"><h2>By resource</h2>${bars(c.by_resource, {
         link: (k) => `#/resource/${encodeURIComponent(k)}`,
       })}</div>
       <div class="card" id="by-feature"><h2>By feature</h2>${bars(c.by_feature)}</div>
       <div class="card" id="by-agent"><h2>By AI agent</h2>${bars(c.by_agent)}</div>
     </div>
     <div class="card" id="drivers"><div class="head"><h2>What drives it</h2><span class="note">largest parts first</span></div>
       <table><thead><tr><th>Resource</th><th>Feature</th><th>Agent</th><th>Method</th><th>Basis</th>
       <th class="num">Cost</th><th class="num">Share</th></tr></thead><tbody>${drivers}</tbody></table></div>
     <div class="grid">
       <div class="card" id="shared"><h2>Share of shared resources</h2>${
         shared
           ? `<table><thead><tr><th>Resource</th><th class="num">This customer</th><th class="num">Resource cost</th>
              <th class="num">Share</th><th class="num">Customers</th></tr></thead><tbody>${shared}</tbody></table>`
           : `<div class="empty">No resource of this customer is shared with another.</div>`
       }</div>
       <div class="card" id="by-method"><h2>How the cost was obtained</h2>${bars(c.by_method, { names: METHOD_NAMES })}</div>
     </div>
     <div class="card" id="operations"><div class="head"><h2>Busiest calls</h2><span class="note">observed, by server time</span></div>
       <table><thead><tr><th>Call</th><th>Protocol</th><th class="num">Requests</th><th class="num">Errors</th>
       <th class="num">Server time</th><th class="num">Bytes</th><th class="num">Tokens</th></tr></thead>
       <tbody>${ops || `<tr><td colspan="7" class="muted">No calls observed in this range.</td></tr>`}</tbody></table></div>`,
    `<a href="#/customers">Customers</a> /`,
  );
}

async function resourcePage(id) {
  const r = await api(`/v1/resources/${encodeURIComponent(id)}`, { period: state.period, limit: 15 });
  const total = r.totals[0];
  const consumers = r.consumers
    .map(
      (x) => `<tr><td>${x.tenant ? `<a href="#/customer/${encodeURIComponent(x.tenant)}">${esc(x.tenant)}</a>` : label("")}</td>
      <td>${label(x.feature)}</td><td>${label(x.agent)}</td><td><span class="badge method">${esc(
        METHOD_NAMES[x.method] || x.method,
      )}</span></td><td class="muted">${esc(x.basis)}</td>
      <td class="num">${amount(x.amount, x.currency)}</td><td class="num">${percent(x.share_pct)}</td></tr>`,
    )
    .join("");
  const lines = r.lines
    .map(
      (l) => `<tr><td class="mono">${esc(l.line_id)}</td><td>${esc(l.service)}</td><td>${esc(l.usage_type)}</td>
      <td class="muted">${esc(l.description)}</td><td class="num">${amount(l.amount, l.currency)}</td></tr>`,
    )
    .join("");
  page(
    id,
    `${periodLine()} · who consumes this resource`,
    `<div class="kpis">${kpi("Cost", amount(total.cost, total.currency), "", "cost")}${kpi(
      "Consumers",
      String(r.by_tenant.filter((s) => s.key).length),
    )}</div>
     <div class="grid"><div class="card"><h2>By customer</h2>${bars(r.by_tenant, {
       link: (k) => `#/customer/${encodeURIComponent(k)}`,
     })}</div><div class="card"><h2>How it was split</h2>${methodStack(total.by_method, true)}${methodLegend()}</div></div>
     <div class="card"><h2>Consumers</h2><table><thead><tr><th>Customer</th><th>Feature</th><th>Agent</th><th>Method</th>
       <th>Basis</th><th class="num">Cost</th><th class="num">Share</th></tr></thead><tbody>${consumers}</tbody></table></div>
     <div class="card"><h2>Bill lines</h2><table><thead><tr><th>Line</th><th>Service</th><th>Usage type</th>
       <th>Description</th><th class="num">Amount</th></tr></thead><tbody>${lines}</tbody></table></div>`,
    `<a href="#/customers">Customers</a> / resource`,
  );
}

async function graphPage() {
  const g = await api("/v1/graph", { window_s: 3600 });
  const edges = g.edges
    .slice()
    .sort((a, b) => b.calls - a.calls)
    .map(
      (e) => `<tr data-edge="${esc(e.src)}→${esc(e.dst)}"><td class="mono">${esc(e.src)}</td><td class="mono">${esc(
        e.dst,
      )}</td><td>${esc(e.protocol)}</td><td class="num">${integer(e.calls)}</td>
      <td class="num ${e.errors ? "neg" : ""}">${integer(e.errors)}</td><td class="num">${duration(e.busy_us)}</td>
      <td class="num">${bytes(e.bytes_in + e.bytes_out)}</td></tr>`,
    )
    .join("");
  page(
    "Dependency graph",
    `Live, as observed on the wire: ${g.nodes.length} nodes, ${g.edges.length} edges, traffic ${when(g.from)} – ${when(
      g.to,
    )}`,
    g.nodes.length
      ? `<div class="card">${dependencyGraph(g.nodes, g.edges)}${kindLegend(g.nodes)}</div>
         <div class="card"><h2>Edges</h2><table id="edges"><thead><tr><th>From</th><th>To</th><th>Protocol</th>
         <th class="num">Calls</th><th class="num">Errors</th><th class="num">Server time</th><th class="num">Bytes</th>
         </tr></thead><tbody>${edges}</tbody></table></div>`
      : `<div class="card empty">No traffic observed in the last hour.</div>`,
  );
}

async function coveragePage() {
  const c = await api("/v1/coverage", { limit: 15 });
  const cards = c.periods
    .map(
      (p) => `<div class="card" data-period="${esc(p.period)}" data-currency="${esc(p.currency)}">
      <div class="head"><h2>${esc(p.period)} · ${esc(p.currency)}</h2><span class="note">${integer(p.lines)} bill lines,
        ${integer(p.unmatched_lines)} unmatched</span></div>
      <div class="kpis">
        ${kpi("Billed", amount(p.billed, p.currency), "", "billed")}
        ${kpi("Attributed", amount(p.attributed, p.currency), `${percent(p.attributed_pct)} measured or trace-joined`, "attributed")}
        ${kpi("Propagated", amount(p.propagated, p.currency), `${percent(p.propagated_pct)} through the graph`, "propagated")}
        ${kpi("Modeled", amount(p.modeled, p.currency), `${percent(p.modeled_pct)} platform work`, "modeled")}
        ${kpi("Unallocated", amount(p.unallocated, p.currency), `${percent(p.unallocated_pct)} of the bill`, "unallocated")}
      </div>
      ${methodStack(
        { direct: p.attributed, propagated: p.propagated, platform: p.modeled, unallocated: p.unallocated },
        true,
      )}
      <div class="legend"><span><i class="m-direct"></i>attributed</span><span><i class="m-propagated"></i>propagated</span>
        <span><i class="m-platform"></i>modeled</span><span><i class="m-unallocated"></i>unallocated</span></div></div>`,
    )
    .join("");
  const lines = c.unallocated_lines
    .map(
      (l) => `<tr data-line="${esc(l.line_id)}"><td class="nowrap">${esc(l.period)}</td><td>${esc(l.service)}</td>
      <td class="mono">${esc(l.resource_id || l.usage_type)}</td>
      <td>${l.matched ? esc(l.resource) : `<span class="badge firing">unmatched</span>`}</td>
      <td class="muted">${esc(l.reason)}</td><td class="num">${amount(l.unallocated, l.currency)}</td>
      <td class="num">${amount(l.amount, l.currency)}</td></tr>`,
    )
    .join("");
  page(
    "Coverage",
    "How much of each bill is explained by observed consumption — and what is not",
    c.periods.length
      ? `${cards}<div class="card"><div class="head"><h2>Lines carrying unallocated cost</h2>
         <span class="note">largest first</span></div><table id="unallocated"><thead><tr><th>Period</th><th>Service</th>
         <th>Billed resource</th><th>Observed as</th><th>Why</th><th class="num">Unallocated</th><th class="num">Line</th>
         </tr></thead><tbody>${lines || `<tr><td colspan="7" class="muted">Every line is allocated.</td></tr>`}</tbody></table></div>`
      : `<div class="card empty">No bill has been allocated yet.</div>`,
  );
}

async function aiPage() {
  const [models, agents, tenants] = await Promise.all(
    ["model", "agent", "tenant"].map((g) => api("/v1/ai-cost", { group_by: g })),
  );
  const totalMicros = models.rows.reduce((s, r) => s + r.cost_micros, 0);
  const tokens = models.rows.reduce((s, r) => s + r.tokens_in + r.tokens_out, 0);
  const requests = models.rows.reduce((s, r) => s + r.requests, 0);
  const asSlices = (ans, key) =>
    ans.rows.map((r) => ({
      key: r[key],
      currency: r.currency,
      amount: r.cost,
      share_pct: totalMicros ? ((100 * r.cost_micros) / totalMicros).toFixed(2) : "0.00",
    }));
  const modelRows = models.rows
    .map(
      (r) => `<tr data-model="${esc(r.model)}"><td>${esc(r.model)}</td><td class="num">${integer(r.requests)}</td>
      <td class="num">${integer(r.tokens_in)}</td><td class="num">${integer(r.tokens_out)}</td>
      <td class="num">${integer(r.tokens_cached)}</td><td class="num">${amount(r.cost, r.currency)}</td></tr>`,
    )
    .join("");
  const total = models.rows.length ? models.rows.reduce((s, r) => s + BigInt(r.cost_micros), 0n) : 0n;
  const totalText = `${total / 1000000n}.${String(total % 1000000n).padStart(6, "0")}`;
  page(
    "AI cost",
    "Token spend priced in real time, before any invoice arrives",
    `<div class="kpis">${kpi("AI cost", amount(totalText, "USD"), "all data held", "ai-total")}${kpi(
      "Requests",
      integer(requests),
    )}${kpi("Tokens", integer(tokens), "input + output")}${kpi("Models", String(models.rows.length))}</div>
     <div class="grid three"><div class="card" id="ai-model"><h2>By model</h2>${bars(asSlices(models, "model"))}</div>
       <div class="card" id="ai-agent"><h2>By agent</h2>${bars(asSlices(agents, "agent"))}</div>
       <div class="card" id="ai-tenant"><h2>By customer</h2>${bars(asSlices(tenants, "tenant"), {
         link: (k) => `#/customer/${encodeURIComponent(k)}`,
       })}</div></div>
     <div class="card"><h2>Models</h2><table id="models"><thead><tr><th>Model</th><th class="num">Requests</th>
       <th class="num">Input tokens</th><th class="num">Output tokens</th><th class="num">Cached</th>
       <th class="num">Cost</th></tr></thead><tbody>${
         modelRows || `<tr><td colspan="6" class="muted">No AI calls observed.</td></tr>`
       }</tbody></table></div>`,
  );
}

async function alertsPage() {
  const a = await api("/v1/alerts");
  const rows = a.alerts
    .map(
      (x) => `<tr data-alert="${esc(x.alert_id)}"><td><span class="badge ${x.state}">${esc(x.state)}</span></td>
      <td>${x.tenant ? `<a href="#/customer/${encodeURIComponent(x.tenant)}">${esc(x.tenant)}</a>` : label("", "any")}</td>
      <td>${label(x.feature, "any")}</td><td>${label(x.agent, "any")}</td><td>${esc(x.reason)}</td>
      <td class="num">${x.window_s} s</td><td>${when(x.started_at)}</td><td>${when(x.resolved_at)}</td></tr>`,
    )
    .join("");
  page(
    "Alerts",
    "Runaway AI cost: a scope over its budget, or spiking against its own baseline",
    `<div class="kpis">${kpi("Firing", `<span class="${a.firing ? "neg" : ""}">${a.firing}</span>`, "", "firing")}${kpi(
      "Resolved",
      String(a.resolved),
      "",
      "resolved",
    )}</div>
     <div class="card"><table id="alerts"><thead><tr><th>State</th><th>Customer</th><th>Feature</th><th>Agent</th>
       <th>Reason</th><th class="num">Window</th><th>Started</th><th>Resolved</th></tr></thead>
       <tbody>${rows || `<tr><td colspan="8" class="muted">No alert has fired.</td></tr>`}</tbody></table></div>`,
  );
}

// -- routing ---------------------------------------------------------------------------------------------------------

const PAGES = {
  customers: customersPage,
  customer: customerPage,
  resource: resourcePage,
  graph: graphPage,
  coverage: coveragePage,
  ai: aiPage,
  alerts: alertsPage,
};

async function render() {
  const [, name = "customers", ...rest] = (window.location.hash || "#/customers").split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : undefined;
  const nav = name === "customer" || name === "resource" ? "customers" : name;
  document.querySelectorAll(".sidebar nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === nav));
  const show = PAGES[name] || customersPage;
  main.dataset.page = name;
  main.dataset.ready = "false";
  main.innerHTML = `<div class="loading">Loading…</div>`;
  try {
    await show(arg);
  } catch (e) {
    const role = e.role ? ` This page needs the <b>${esc(e.role)}</b> role.` : "";
    main.innerHTML = `<div class="notice bad">${esc(e.message)}.${role}</div>`;
  }
  main.dataset.ready = "true";
}

async function start() {
  const me = await signIn();
  state.role = me.role;
  state.authRequired = me.auth_required;
  const periods = await api("/v1/periods");
  state.periods = periods.periods;
  state.period = state.periods.length ? state.periods[0].period : null;
  const select = document.getElementById("period");
  select.innerHTML = state.periods.map((p) => `<option value="${esc(p.period)}">${esc(p.period)}</option>`).join("");
  select.addEventListener("change", () => {
    state.period = select.value;
    render();
  });
  document.getElementById("sign-out").hidden = !state.authRequired;
  document.getElementById("who").textContent = state.authRequired
    ? `Signed in as ${state.role}`
    : "Open API (loopback only)";
  api("/v1/alerts", { state: "firing", limit: 1 })
    .then((a) => {
      const badge = document.getElementById("alert-count");
      badge.hidden = !a.firing;
      badge.textContent = String(a.firing);
    })
    .catch(() => {});
  window.addEventListener("hashchange", render);
  await render();
}

start().catch((e) => {
  main.innerHTML = `<div class="notice bad">${esc(e.message)}</div>`;
  main.dataset.ready = "true";
});
