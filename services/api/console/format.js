// Display of the API's exact decimal strings, without floating point: amounts are rounded half away from zero to
// cents with BigInt arithmetic, so the page shows exactly the API's number rounded the way finance rounds.
// Every displayed amount also carries the API's exact string in data-amount (the browser tests compare both).

const SYMBOLS = { USD: "$", EUR: "€", GBP: "£", JPY: "¥" };

/** "1234.5678" → { neg: false, cents: 123457n } (rounded half away from zero). */
function toCents(text) {
  let s = String(text).trim();
  const neg = s.startsWith("-");
  if (neg || s.startsWith("+")) s = s.slice(1);
  const [whole, frac = ""] = s.split(".");
  const digits = (frac + "000").slice(0, 3);
  let cents = BigInt(whole || "0") * 100n + BigInt(digits.slice(0, 2));
  if (Number(digits[2]) >= 5) cents += 1n;
  return { neg: neg && cents !== 0n, cents };
}

function group(intText) {
  return intText.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** "1234.567", "USD" → "$1,234.57"; "-0.5" → "−$0.50". */
export function money(text, currency = "USD") {
  if (text === null || text === undefined) return "—";
  const { neg, cents } = toCents(text);
  const whole = group((cents / 100n).toString());
  const frac = (cents % 100n).toString().padStart(2, "0");
  const sym = SYMBOLS[currency];
  const body = sym ? `${sym}${whole}.${frac}` : `${whole}.${frac} ${currency}`;
  return neg ? `−${body}` : body;
}

/** A percentage string from the API ("12.34") → "12.34%"; null → "—". */
export function percent(text) {
  return text === null || text === undefined ? "—" : `${text}%`;
}

export function isNegative(text) {
  return toCents(text).neg;
}

/** Amount → number, for drawing only (never shown as text). */
export function magnitude(text) {
  return Number(text);
}

export function integer(n) {
  return group(String(n));
}

/** Micro-seconds of server time → "1.23 s" / "456 ms". */
export function duration(us) {
  if (us >= 1e6) return `${(us / 1e6).toFixed(2)} s`;
  return `${Math.round(us / 1e3)} ms`;
}

export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

/** Escape text for HTML: every API string goes through this before it is put in a template. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** An amount as HTML: formatted text, the exact value in data-amount. */
export function amount(text, currency, extraClass = "") {
  const cls = [extraClass, isNegative(text) ? "neg" : ""].filter(Boolean).join(" ");
  return `<span class="amount ${cls}" data-amount="${esc(text)}" data-currency="${esc(currency)}">${esc(
    money(text, currency),
  )}</span>`;
}

/** "" (a tenant/feature/agent the call did not carry) shown as a readable placeholder. */
export function label(value, none = "(none)") {
  return value ? esc(value) : `<span class="muted">${esc(none)}</span>`;
}
