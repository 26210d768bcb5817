// The page's state and the book <-> table-rows conversion. Enums, defaults
// and bounds come from the server (GET /api/config); nothing here copies them.

export const S = {
  model: {}, addons: {}, hierarchy: null, clusters: null,   // book parts besides contracts
  underlyings: [],   // the book's [[underlyings]] as given: {id, cluster, spot, vol, lot_size}
  stress: [],        // one per stress scenario: {uid, name, factors: [[node, value text]], resolve: [[contract, "YES"|"NO"]]}
  rows: [],          // one per contract: {uid, id, cluster, type, underlying, event, threshold, outcome, legs, resolves, price, open_interest, probability, quantity}
                     // (on an underlying, `threshold` holds the strike and `resolves` the expiry)
  ui: { auto: true, logy: false, sens: "euler", filter: "All", view: "portfolio", asset: "" },
  uid: 0,
  rowErrors: {},     // uid -> {key: message} (client checks)
  controlErrors: {}, // setting name -> message (client checks of the settings' inputs)
  serverError: null, // {field, detail, message, path, event?}
  sentRows: [],      // uid of each contract of the last sent book (for error mapping)
  sentPositions: [], // uid of each position of the last sent book
  sentStress: [],    // uid of each stress scenario of the last sent book
  result: null, sens: null,
  gen: 0, running: false, pending: false, scheduled: false, timer: null,
  follow: null, followRunning: false, followTimer: null,
  hist: null, histGen: 0, sensGen: 0, resultGen: 0,
  source: null, savedAt: null, imported: null,
};

// GET /api/config, set once at start.
export const CONFIG = { contract_types: [], linear_types: [], keys_of_type: {}, keys_on_underlying: {}, underlying_bounds: {},
  settings: {}, clusters: [], amounts: {}, limits: {} };
export function setConfig(config) { Object.assign(CONFIG, config); }
export const setting = (name) => CONFIG.settings[name] || {};
export const defaultOf = (name) => setting(name).default;

// Functions other modules call back into (set by main.js; no import cycles).
export const hooks = { schedule: () => {}, renderTree: () => {} };

export const $ = (id) => document.getElementById(id);
export const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
};
export const money = (x) => x == null ? "–" : (x < 0 ? "−$" : "$") + Math.abs(x).toLocaleString("en-US", { maximumFractionDigits: 0 });
export const money2 = (x) => x == null ? "–" : (x < 0 ? "−$" : "$") + Math.abs(x).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
export const pct = (x) => x == null ? "–" : (100 * x).toFixed(1) + "%";
const fmtNum = (x) => (x === null || x === undefined || x === "") ? "" : String(x);

export function showBanner(text, info = false) {
  const b = $("banner");
  b.textContent = text; b.hidden = false; b.classList.toggle("info", info);
}
export function hideBanner() { $("banner").hidden = true; }

export function applyBook(book) {
  S.model = { ...(book.model || {}) };
  S.underlyings = (book.underlyings || []).map((u) => ({ ...u }));
  S.addons = { ...(book.addons || {}) };
  S.hierarchy = book.hierarchy ? book.hierarchy.map((n) => ({ ...n })) : null;
  S.clusters = book.clusters ? book.clusters.map((c) => ({ ...c })) : null;
  const qty = {};
  for (const p of book.positions || []) qty[p.contract] = (qty[p.contract] || 0) + p.quantity;
  S.rows = (book.contracts || []).map((c) => ({
    uid: ++S.uid,
    id: c.id, type: c.type, underlying: c.underlying || "",
    // A contract on an underlying is in the underlying's cluster.
    cluster: c.underlying ? (underlyingOf(c.underlying) || {}).cluster ?? c.cluster : c.cluster,
    event: fmtNum(c.event), outcome: fmtNum(c.outcome),
    // One cell for the level: the threshold, or the strike on an underlying.
    threshold: fmtNum(c.threshold ?? c.strike),
    legs: (c.legs || []).join(", "),
    // One cell for the date: resolves (YYYY-MM-DD) or resolves_in (years); the
    // expiry (expiry or expiry_in) on an underlying.
    resolves: c.resolves != null ? String(c.resolves) : c.expiry != null ? String(c.expiry)
      : fmtNum(c.resolves_in ?? c.expiry_in),
    price: fmtNum(c.price), open_interest: fmtNum(c.open_interest),
    probability: c.probability, quantity: fmtNum(qty[c.id] || 0),
  }));
  S.stress = (book.stress || []).map((x) => ({
    uid: ++S.uid, name: x.name,
    factors: Object.entries(x.factors || {}).map(([k, v]) => [k, fmtNum(v)]),
    resolve: Object.entries(x.resolve || {}).map(([k, v]) => [k, v]),
  }));
  S.rowErrors = {};
  S.serverError = null;
}

export const underlyingOf = (id) => S.underlyings.find((u) => u.id === id) || null;
// A row written on an underlying: it names one, or it is a perp or a future.
export const onUnderlying = (r) => !!String(r.underlying || "").trim() || CONFIG.linear_types.includes(r.type);
export const isLinear = (r) => CONFIG.linear_types.includes(r.type);

export function clusterNames() {
  if (S.clusters) return S.clusters.map((c) => c.name);
  return CONFIG.clusters.slice();
}

export const parseNum = (s) => {
  if (typeof s === "number") return s;
  const t = String(s).trim().replace(/,/g, "").replace(/_/g, "");
  if (t === "" || !/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t)) return NaN;
  return Number(t);
};
export const ISO_DATE = /^\d{4}-\d{2}-\d{2}$/;
export const splitLegs = (s) => String(s).split(/[,\s]+/).map((x) => x.trim()).filter(Boolean);
export const keysOf = (type) => CONFIG.keys_of_type[type] || [];
// The event a row belongs to (as the server keys events): its event, else its id.
// A binary on an underlying resolves on (underlying, expiry), as the server keys
// it ("BTC@2026-08-28"); a perp on none.
export const eventOf = (r) => {
  if (r.type === "parlay" || r.type === "perp") return null;
  if (onUnderlying(r)) {
    const when = String(r.resolves ?? "").trim();
    return `${String(r.underlying).trim()}@${ISO_DATE.test(when) ? when : `${parseNum(when)}y`}`;
  }
  return r.type === "binary" ? String(r.id).trim() : (String(r.event).trim() || String(r.id).trim());
};

// Client-side checks of one row: {key: message}. Bounds from /api/config.
function checkRow(r, ids) {
  const err = {};
  const a = CONFIG.amounts;
  const id = String(r.id).trim();
  if (!id) err.id = "contract id is empty";
  else if (ids.get(id) > 1) err.id = `duplicate contract id ${id}`;
  if (!CONFIG.contract_types.includes(r.type)) err.type = `unknown type ${r.type}`;
  if (onUnderlying(r)) Object.assign(err, checkOnUnderlying(r));
  else {
    if (!clusterNames().includes(r.cluster)) err.cluster = `unknown cluster ${r.cluster}`;
    const p = parseNum(r.price);
    if (!Number.isFinite(p)) err.price = "price must be a number";
    else if (!(p >= a.min_price && p <= a.max_price)) err.price = `price ${p} is outside [${a.min_price}, ${a.max_price}]`;
  }
  const q = parseNum(r.quantity === "" ? "0" : r.quantity);
  if (!Number.isFinite(q)) err.quantity = "quantity must be a finite number";
  else if (Math.abs(q) > a.max_quantity) err.quantity = `|quantity| must be at most ${a.max_quantity.toExponential()}`;
  if (String(r.open_interest).trim() !== "") {
    const oi = parseNum(r.open_interest);
    if (!Number.isFinite(oi) || oi <= 0) err.open_interest = "open interest must be a positive number";
    else if (oi < a.min_open_interest || oi > a.max_open_interest) err.open_interest = `open interest must be within [${a.min_open_interest}, ${a.max_open_interest.toExponential()}]`;
  }
  if ((r.type === "above" || r.type === "below") && !onUnderlying(r)) {
    const t = parseNum(r.threshold);
    if (String(r.threshold).trim() === "") err.threshold = `threshold is required for type ${r.type}`;
    else if (!Number.isFinite(t)) err.threshold = "threshold must be a number";
  }
  if (r.type === "outcome" && !String(r.outcome).trim()) err.outcome = "outcome name is required";
  const when = String(r.resolves ?? "").trim();
  if (r.type !== "parlay" && when && !ISO_DATE.test(when) && !(parseNum(when) > 0)) {
    const what = onUnderlying(r) ? "expiry" : "resolves";
    err.resolves = `${what} ${when} is neither a date (YYYY-MM-DD) nor years to ${what === "expiry" ? "expiry" : "resolution"} (> 0)`;
  }
  if (r.type === "parlay") {
    const legs = splitLegs(r.legs);
    if (legs.length < 2) err.legs = "a parlay needs at least 2 legs (comma-separated contract ids)";
    else {
      const known = new Set(S.rows.map((x) => String(x.id).trim()));
      const bad = legs.find((l) => !known.has(l));
      if (bad) err.legs = `unknown leg ${bad}`;
      else if (new Set(legs).size !== legs.length) err.legs = "a leg is listed twice";
    }
  }
  return err;
}

const within = (v, b) => (b.min_open ? v > b.min : v >= b.min) && (b.max_open ? v < b.max : v <= b.max);
const interval = (b) => `${b.min_open ? "(" : "["}${b.min}, ${b.max}${b.max_open ? ")" : "]"}`;

// A contract on an underlying (SPEC-horizon §6.3-6.4): its underlying, type,
// price (none on a perp), strike and expiry. Bounds from /api/config.
function checkOnUnderlying(r) {
  const err = {};
  const name = String(r.underlying || "").trim();
  const keys = CONFIG.keys_on_underlying[r.type];
  if (!keys) err.type = `a contract of type ${r.type} cannot be written on an underlying (${Object.keys(CONFIG.keys_on_underlying).join(", ")})`;
  if (!name) err.underlying = `a ${r.type} needs its underlying`;
  else if (!underlyingOf(name)) err.underlying = `unknown underlying ${name}`;
  const price = String(r.price ?? "").trim(), p = parseNum(price);
  if (r.type === "perp") { if (price) err.price = "a perp has no price of its own (it trades at spot)"; }
  else if (r.type === "future") {
    const b = CONFIG.underlying_bounds.future_price;
    if (price && (!Number.isFinite(p) || (b && !within(p, b)))) err.price = `a future's price ${price} is outside ${b ? interval(b) : "(0, ∞)"}`;
  } else if (!Number.isFinite(p)) err.price = "price must be a number";
  else if (!(p > 0 && p < 1)) err.price = `price ${p} is outside (0, 1)`;
  if (r.type === "above" || r.type === "below") {
    const k = parseNum(r.threshold), b = CONFIG.underlying_bounds.strike;
    if (String(r.threshold).trim() === "") err.threshold = `strike is required for a binary on an underlying`;
    else if (!Number.isFinite(k) || (b && !within(k, b))) err.threshold = `strike ${r.threshold} is outside ${b ? interval(b) : "(0, ∞)"}`;
  }
  if (r.type !== "perp" && keys && !String(r.resolves ?? "").trim()) err.resolves = `expiry is required (YYYY-MM-DD or years)`;
  return err;
}

export function checkAll() {
  const ids = new Map();
  for (const r of S.rows) { const k = String(r.id).trim(); ids.set(k, (ids.get(k) || 0) + 1); }
  S.rowErrors = {};
  let n = 0;
  for (const r of S.rows) {
    const e = checkRow(r, ids);
    if (Object.keys(e).length) { S.rowErrors[r.uid] = e; n++; }
  }
  return n;
}

// One contract on an underlying: no cluster (the underlying's), strike and expiry.
function underlyingContract(r) {
  const c = { id: String(r.id).trim(), type: r.type, underlying: String(r.underlying || "").trim() };
  const price = String(r.price ?? "").trim();
  if (price) c.price = Number.isFinite(parseNum(price)) ? parseNum(price) : price;
  if (r.type === "above" || r.type === "below") c.strike = parseNum(r.threshold);
  const when = String(r.resolves ?? "").trim();
  if (r.type !== "perp" && when) {
    if (!ISO_DATE.test(when) && Number.isFinite(parseNum(when))) c.expiry_in = parseNum(when);
    else c.expiry = when;
  }
  if (String(r.open_interest).trim() !== "") c.open_interest = parseNum(r.open_interest);
  return c;
}

export function rowContract(r) {
  if (onUnderlying(r)) return underlyingContract(r);
  const c = { id: String(r.id).trim(), cluster: r.cluster, type: r.type, price: parseNum(r.price) };
  const keys = keysOf(r.type);
  if (keys.includes("event") && String(r.event).trim()) c.event = String(r.event).trim();
  if (keys.includes("threshold")) c.threshold = parseNum(r.threshold);
  if (keys.includes("outcome")) c.outcome = String(r.outcome).trim();
  if (keys.includes("legs")) c.legs = splitLegs(r.legs);
  const when = String(r.resolves ?? "").trim();
  if (r.type !== "parlay" && when) {
    // A date is `resolves`, a number `resolves_in` (years); anything else is sent
    // as typed, so the server names it.
    if (!ISO_DATE.test(when) && Number.isFinite(parseNum(when))) c.resolves_in = parseNum(when);
    else c.resolves = when;
  }
  if (String(r.open_interest).trim() !== "") c.open_interest = parseNum(r.open_interest);
  if (r.probability !== undefined && r.probability !== null && r.type !== "parlay") c.probability = r.probability;
  return c;
}

export function buildBook() {
  const book = { model: { ...S.model }, addons: { ...S.addons } };
  if (S.hierarchy && S.clusters) { book.hierarchy = S.hierarchy; book.clusters = S.clusters; }
  if (S.underlyings.length) book.underlyings = S.underlyings.map((u) => ({ ...u }));
  book.contracts = S.rows.map(rowContract);
  book.positions = [];
  const posUids = [];
  for (const r of S.rows) {
    const q = parseNum(r.quantity === "" ? "0" : r.quantity);
    if (q !== 0) { book.positions.push({ contract: String(r.id).trim(), quantity: q }); posUids.push(r.uid); }
  }
  if (S.stress.length) book.stress = S.stress.map(stressEntry);
  return { book, rows: S.rows.map((r) => r.uid), positions: posUids, stress: S.stress.map((x) => x.uid) };
}

// One [[stress]] table of the book. A factor value that is not a number is
// sent as typed, so the server names it (stress[i] (name ...).factors.KEY).
export function stressEntry(x) {
  const factors = {}, resolve = {};
  for (const [k, v] of x.factors) { const n = parseNum(v); factors[k] = Number.isFinite(n) ? n : String(v); }
  for (const [k, v] of x.resolve) resolve[k] = v;
  return { name: String(x.name).trim(), factors, resolve };
}

// A book that gives no hierarchy gets the server's default one (from a result).
export function ensureExplicitHierarchy() {
  if (S.hierarchy && S.clusters) return true;
  if (!S.result || !S.result.hierarchy) return false;
  S.hierarchy = S.result.hierarchy.nodes.map((n) => {
    const o = { node: n.name, rho: n.rho };
    if (n.parent) o.parent = n.parent;
    return o;
  });
  S.clusters = S.result.hierarchy.clusters.map((c) => ({ ...c }));
  return true;
}

// Where a server error points, from its structured path (never its message):
// {uid, key} for a cell, {uids, key} for a whole event, {control} for a panel.
export function locateServerError(err) {
  if (!err || !Array.isArray(err.path) || !err.path.length) return null;
  const [head, index, key] = err.path;
  if (head === "contracts" && Number.isInteger(index)) {
    // On an underlying the threshold cell holds the strike and the date cell the expiry.
    const cells = { resolves_in: "resolves", expiry: "resolves", expiry_in: "resolves", strike: "threshold" };
    const cell = typeof key !== "string" ? "id" : cells[key] || key;
    return { uid: S.sentRows[index], key: cell };
  }
  if (head === "positions" && Number.isInteger(index)) return { uid: S.sentPositions[index], key: key === "contract" || typeof key !== "string" ? "id" : key };
  if (head === "contracts" && err.event) {
    const uids = S.rows.filter((r) => eventOf(r) === err.event).map((r) => r.uid);
    return { uids, key: "price" };
  }
  if (head === "stress" && Number.isInteger(index)) {
    // key: "name", or ["factors", NODE] / ["resolve", CONTRACT] (an id may hold dots).
    const rest = err.path.slice(3).join(".");
    return { stress: S.sentStress[index], key: key === "factors" || key === "resolve" ? `${key}:${rest}` : (key || "name") };
  }
  if (head === "stress") return { stress: null, key: "name" };
  if (head === "underlyings") return { underlying: Number.isInteger(index) ? index : null, key: typeof key === "string" ? key : "id" };
  if (head === "hierarchy") return { control: "rho" };
  if (head === "clusters") return { control: "loading" };
  if (head === "model") return { control: "model" };
  if (head === "addons") return { control: "addons" };
  return null;
}

// The horizon a report was computed at, in words: "to resolution" or
// "2-day horizon, as of 2026-06-01".
export function horizonText(report) {
  if (!report || report.horizon_days === null || report.horizon_days === undefined) return "to resolution";
  const h = `${report.horizon_days}-day horizon`;
  return report.as_of ? `${h}, as of ${report.as_of}` : h;
}
