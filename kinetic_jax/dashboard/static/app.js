// kinetic_jax dashboard: the page. Talks to the JSON margin service of the same
// server (/api/...); no third-party code but plotly.js (served by the server).
"use strict";

const CLUSTER_ORDER = ["BTC", "ETH", "SOL", "SPX", "OIL", "Election", "Sports", "Parlays"];
const TYPES = ["above", "below", "binary", "outcome", "parlay"];
const KEYS_OF_TYPE = {
  above: ["event", "threshold"], below: ["event", "threshold"], binary: [],
  outcome: ["event", "outcome"], parlay: ["legs"],
};
const CONFIDENCES = [0.9, 0.95, 0.975, 0.99, 0.995, 0.999];
const SCENARIOS = [8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576];
const BINDING_TEXT = {
  base: "joint expected shortfall of the book",
  floor: "top-2 cluster concentration floor",
  worst_case: "capped at the worst-case loss",
};
const DEBOUNCE_MS = 300;
const BINS = 60;
const SENS_DELAY_MS = 250;
const PLOT_CONFIG = { displaylogo: false, responsive: true,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] };
const FONT = { family: getComputedStyle(document.documentElement).fontFamily, size: 12, color: "#1c2430" };

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------
const S = {
  model: {}, addons: {}, hierarchy: null, clusters: null,   // book parts besides contracts
  rows: [],          // one per contract: {uid, id, cluster, type, event, threshold, outcome, legs, price, open_interest, probability, quantity}
  ui: { auto: true, logy: false, sens: "euler", filter: "All" },
  uid: 0,
  rowErrors: {},     // uid -> {key: message} (client checks)
  serverError: null, // {field, detail, message}
  sentRows: [],      // rows in the order of the last sent book (for error mapping)
  sentPositions: [], // uid of each position of the last sent book
  result: null, sens: null,
  gen: 0, running: false, pending: false, timer: null,
  follow: null, followRunning: false, followTimer: null,
  hist: null, histGen: 0, sensGen: 0,
  source: null, savedAt: null,
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
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
const money = (x) => x == null ? "–" : (x < 0 ? "−$" : "$") + Math.abs(x).toLocaleString("en-US", { maximumFractionDigits: 0 });
const money2 = (x) => x == null ? "–" : (x < 0 ? "−$" : "$") + Math.abs(x).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const pct = (x) => x == null ? "–" : (100 * x).toFixed(1) + "%";
const fmtNum = (x) => (x === null || x === undefined || x === "") ? "" : String(x);

// ---------------------------------------------------------------------------
// Book <-> rows
// ---------------------------------------------------------------------------
function applyBook(book) {
  S.model = { ...(book.model || {}) };
  S.addons = { ...(book.addons || {}) };
  S.hierarchy = book.hierarchy ? book.hierarchy.map((n) => ({ ...n })) : null;
  S.clusters = book.clusters ? book.clusters.map((c) => ({ ...c })) : null;
  const qty = {};
  for (const p of book.positions || []) qty[p.contract] = (qty[p.contract] || 0) + p.quantity;
  S.rows = (book.contracts || []).map((c) => ({
    uid: ++S.uid,
    id: c.id, cluster: c.cluster, type: c.type,
    event: fmtNum(c.event), threshold: fmtNum(c.threshold), outcome: fmtNum(c.outcome),
    legs: (c.legs || []).join(", "),
    price: fmtNum(c.price), open_interest: fmtNum(c.open_interest),
    probability: c.probability, quantity: fmtNum(qty[c.id] || 0),
  }));
  S.rowErrors = {};
  S.serverError = null;
}

function clusterNames() {
  if (S.clusters) return S.clusters.map((c) => c.name);
  return CLUSTER_ORDER.slice();
}

const parseNum = (s) => {
  if (typeof s === "number") return s;
  const t = String(s).trim().replace(/,/g, "").replace(/_/g, "");
  if (t === "" || !/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(t)) return NaN;
  return Number(t);
};

// Client-side checks of one row: {key: message}.
function checkRow(r, ids) {
  const err = {};
  const id = String(r.id).trim();
  if (!id) err.id = "contract id is empty";
  else if (ids.get(id) > 1) err.id = `duplicate contract id ${id}`;
  if (!clusterNames().includes(r.cluster)) err.cluster = `unknown cluster ${r.cluster}`;
  if (!TYPES.includes(r.type)) err.type = `unknown type ${r.type}`;
  const p = parseNum(r.price);
  if (!Number.isFinite(p)) err.price = "price must be a number";
  else if (!(p > 0 && p < 1)) err.price = `price ${p} is outside (0, 1)`;
  const q = parseNum(r.quantity === "" ? "0" : r.quantity);
  if (!Number.isFinite(q)) err.quantity = "quantity must be a finite number";
  if (String(r.open_interest).trim() !== "") {
    const oi = parseNum(r.open_interest);
    if (!Number.isFinite(oi) || oi <= 0) err.open_interest = "open interest must be a positive number";
  }
  if (r.type === "above" || r.type === "below") {
    const t = parseNum(r.threshold);
    if (String(r.threshold).trim() === "") err.threshold = `threshold is required for type ${r.type}`;
    else if (!Number.isFinite(t)) err.threshold = "threshold must be a number";
  }
  if (r.type === "outcome" && !String(r.outcome).trim()) err.outcome = "outcome name is required";
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
const splitLegs = (s) => String(s).split(/[,\s]+/).map((x) => x.trim()).filter(Boolean);

function checkAll() {
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

function rowContract(r) {
  const c = { id: String(r.id).trim(), cluster: r.cluster, type: r.type, price: parseNum(r.price) };
  const keys = KEYS_OF_TYPE[r.type] || [];
  if (keys.includes("event") && String(r.event).trim()) c.event = String(r.event).trim();
  if (keys.includes("threshold")) c.threshold = parseNum(r.threshold);
  if (keys.includes("outcome")) c.outcome = String(r.outcome).trim();
  if (keys.includes("legs")) c.legs = splitLegs(r.legs);
  if (String(r.open_interest).trim() !== "") c.open_interest = parseNum(r.open_interest);
  if (r.probability !== undefined && r.probability !== null && r.type !== "parlay") c.probability = r.probability;
  return c;
}

function buildBook() {
  const book = { model: { ...S.model }, addons: { ...S.addons } };
  if (S.hierarchy && S.clusters) { book.hierarchy = S.hierarchy; book.clusters = S.clusters; }
  book.contracts = S.rows.map(rowContract);
  book.positions = [];
  const posUids = [];
  for (const r of S.rows) {
    const q = parseNum(r.quantity === "" ? "0" : r.quantity);
    if (q !== 0) { book.positions.push({ contract: String(r.id).trim(), quantity: q }); posUids.push(r.uid); }
  }
  return { book, rows: S.rows.map((r) => r.uid), positions: posUids };
}

// The default hierarchy as a fallback when a book gives none (SPEC.md §2.1).
function hierarchyNodes() {
  if (S.hierarchy) return S.hierarchy;
  return (S.result && S.result.hierarchy) ? S.result.hierarchy.nodes : null;
}
function ensureExplicitHierarchy() {
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

// ---------------------------------------------------------------------------
// Server I/O
// ---------------------------------------------------------------------------
async function api(method, path, body, contentType = "application/json") {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.body = typeof body === "string" ? body : JSON.stringify(body);
    opts.headers["Content-Type"] = contentType;
  }
  let res;
  try { res = await fetch(path, opts); }
  catch (e) { return { ok: false, status: 0, error: { field: "", detail: "the server cannot be reached", message: "the server cannot be reached" } }; }
  const text = await res.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = text; }
  if (!res.ok) {
    const error = (data && data.error) || { field: "", detail: `HTTP ${res.status}`, message: `HTTP ${res.status}` };
    return { ok: false, status: res.status, error };
  }
  return { ok: true, status: res.status, data };
}

function setBusy(on) {
  $("progress").hidden = !on;
  document.body.dataset.busy = on ? "1" : "0";
  const b = $("rerun");
  b.classList.toggle("busy", on);
  b.querySelector(".label").textContent = on ? "Computing…" : "Re-run";
  document.body.classList.toggle("stale", on);
}

function scheduleCompute(delay = DEBOUNCE_MS) {
  clearTimeout(S.timer);
  renderPositionsErrorsOnly();
  if (!S.ui.auto) { markStale(); return; }
  S.scheduled = true;
  S.timer = setTimeout(compute, delay);
}
function markStale() { $("footer").textContent = "Changed — press Re-run to recompute."; }

async function compute() {
  clearTimeout(S.timer);
  S.scheduled = false;
  if (S.running) { S.pending = true; return; }
  const bad = checkAll();
  renderPositions();
  if (bad) {
    showBanner(`${bad} row${bad > 1 ? "s have" : " has"} invalid values — fix the highlighted cells to recompute.`);
    document.body.classList.add("stale");
    return;
  }
  const { book, rows, positions } = buildBook();
  S.running = true; S.pending = false;
  const gen = ++S.gen;
  setBusy(true);
  const t0 = performance.now();
  const r = await api("POST", `/api/margin?sensitivities=false&bins=${BINS}`, book);
  const elapsed = performance.now() - t0;
  S.running = false;
  setBusy(false);
  S.sentRows = rows; S.sentPositions = positions;
  if (r.ok) {
    S.serverError = null;
    hideBanner();
    S.result = r.data;
    S.resultGen = gen;
    S.lastBook = book;
    // The histogram comes with the report: one simulation, one request.
    S.hist = r.data.histogram; S.histError = null; S.histGen = gen;
    renderResult(elapsed);
    saveState(book);
    requestFollowUps(book, gen);
  } else {
    S.serverError = r.error;
    showServerError(r.error, r.status);
    document.body.classList.add("stale");
    $("footer").textContent = "Showing the last valid result: the current book was rejected (see the message above).";
  }
  renderPositions();
  renderControlErrors();
  if (S.pending) compute();
}

// After a margin result: the sensitivities for the same book; dropped when a
// newer book has been computed meanwhile.
function requestFollowUps(book, gen) {
  clearTimeout(S.followTimer);
  S.follow = { book, gen };
  $("sens-hint").textContent = "computing…";
  S.followTimer = setTimeout(runFollowUps, 0);
}

async function runFollowUps() {
  if (S.followRunning || !S.follow) return;
  if (S.running || S.pending || S.scheduled) { S.followTimer = setTimeout(runFollowUps, SENS_DELAY_MS); return; }
  const { book, gen } = S.follow;
  S.follow = null;
  S.followRunning = true;
  if (gen === S.resultGen && !S.follow) {
    const t0 = performance.now();
    const r = await api("POST", "/api/sensitivities", book);
    if (gen === S.resultGen) {
      if (r.ok) { S.sens = r.data.sensitivities; S.sensMs = performance.now() - t0; S.sensError = null; }
      else { S.sens = null; S.sensError = r.error.message; }
      S.sensGen = gen;
      renderSensitivities();
    }
  }
  S.followRunning = false;
  if (S.follow) runFollowUps();
}

let saveTimer = null;
function saveState(book) {
  clearTimeout(saveTimer);
  saveTimer = setTimeout(async () => {
    const r = await api("PUT", "/api/state", { book, ui: S.ui });
    if (r.ok) { S.savedAt = r.data.saved_at; renderSourceLine(); }
    else showBanner(`Not saved: ${r.error.message}`);
  }, 150);
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------
function showBanner(text, info = false) {
  const b = $("banner");
  b.textContent = text; b.hidden = false; b.classList.toggle("info", info);
}
function hideBanner() { $("banner").hidden = true; }

// Maps the server's field (e.g. "contracts[3] (id 'X').price") to a row and key.
function locateServerError(err) {
  if (!err || !err.field) return null;
  const f = err.field;
  let m = f.match(/^contracts\[(\d+)\][^.]*\.([a-z_]+)/);
  if (m) return { uid: S.sentRows[+m[1]], key: m[2] };
  m = f.match(/^positions\[(\d+)\][^.]*\.([a-z_]+)/);
  if (m) return { uid: S.sentPositions[+m[1]], key: m[2] === "contract" ? "id" : m[2] };
  m = f.match(/^contracts \((event|id) '(.*)'\)/);
  if (m) {
    // A ladder or outcome-sum error: every row named in the message.
    const named = [...err.detail.matchAll(/'([^']+)'|(\b[\w.-]+)=/g)].map((x) => x[1] || x[2]);
    const uids = S.rows.filter((r) => named.includes(String(r.id).trim())).map((r) => r.uid);
    return { uids: uids.length ? uids : S.rows.filter((r) => r.event === m[2]).map((r) => r.uid), key: "price" };
  }
  if (/^(hierarchy|rho)/.test(f)) return { control: "rho" };
  if (/^(clusters|loading)/.test(f)) return { control: "loading" };
  if (/^model\./.test(f)) return { control: "model" };
  if (/^addons\./.test(f)) return { control: "addons" };
  return null;
}

function showServerError(err, status) {
  const where = locateServerError(err);
  if (where && (where.uid || where.uids)) {
    showBanner(`The server rejected the book: ${err.message}`);
  } else if (where && where.control) {
    showBanner(`The server rejected the settings: ${err.message}`);
  } else {
    showBanner(status >= 500 ? `Engine error: ${err.message}` : `Error: ${err.message}`);
  }
}

function serverErrorFor(uid) {
  const where = locateServerError(S.serverError);
  if (!where) return null;
  if (where.uid === uid || (where.uids && where.uids.includes(uid))) return { key: where.key, message: S.serverError.message };
  return null;
}

function renderControlErrors() {
  for (const k of ["rho", "loading", "model", "addons"]) $(`err-${k}`).textContent = "";
  const where = locateServerError(S.serverError);
  if (where && where.control) $(`err-${where.control}`).textContent = S.serverError.message;
}

// ---------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------
function nodeOf(name) { return (S.hierarchy || []).find((n) => n.node === name); }
function childrenOf(name) {
  return {
    nodes: (S.hierarchy || []).filter((n) => n.parent === name),
    clusters: (S.clusters || []).filter((c) => c.parent === name),
  };
}
// Default-style hierarchy: rho_within is node "crypto", rho_cross node "risk".
function hasWithinCross() {
  const c = nodeOf("crypto"), r = nodeOf("risk");
  return !!(c && r && c.parent === "risk");
}

function slider({ label, sub, value, min = 0, max = 0.99, step = 0.01, oninput, id }) {
  const out = el("b", { text: Number(value).toFixed(2) });
  const input = el("input", { type: "range", min, max, step, value, id });
  input.addEventListener("input", () => { out.textContent = Number(input.value).toFixed(2); oninput(Number(input.value), input, out); });
  return { node: el("div", { class: "slider" }, el("div", { class: "top" }, el("span", {}, label, " ", el("small", { text: sub || "" })), out), input), input, out };
}

function renderControls() {
  ensureExplicitHierarchy();
  const box = $("rho-controls");
  box.replaceChildren();
  if (S.hierarchy && hasWithinCross()) {
    const within = nodeOf("crypto"), cross = nodeOf("risk");
    const w = slider({ id: "rho-within", label: "ρ within", sub: "(node crypto)", value: within.rho,
      oninput: (v, input, out) => {
        if (v < cross.rho) { v = cross.rho; input.value = v; out.textContent = v.toFixed(2); flash(w.node); }
        within.rho = v; renderTree(); scheduleCompute();
      } });
    const c = slider({ id: "rho-cross", label: "ρ cross", sub: "(node risk)", value: cross.rho,
      oninput: (v, input, out) => {
        if (v > within.rho) { v = within.rho; input.value = v; out.textContent = v.toFixed(2); flash(c.node); }
        const parent = nodeOf(cross.parent);
        if (parent && v < parent.rho) { v = parent.rho; input.value = v; out.textContent = v.toFixed(2); flash(c.node); }
        cross.rho = v;
        // Single-cluster children of "risk" (equity, macro): their rho has no
        // effect; keep them at rho_cross so rho never decreases downwards.
        for (const n of childrenOf("risk").nodes) {
          const ch = childrenOf(n.node);
          if (n.node !== "crypto" && ch.nodes.length === 0 && ch.clusters.length <= 1) n.rho = v;
        }
        renderTree(); scheduleCompute();
      } });
    box.append(w.node, c.node,
      el("div", { class: "hint", text: "ρ within ≥ ρ cross is enforced (a child's ρ never below its parent's)." }));
  } else if (S.hierarchy) {
    // Any other hierarchy: a slider per internal node whose rho matters.
    for (const n of S.hierarchy) {
      if (n.node === "root" && !childrenOf("root").clusters.length && childrenOf("root").nodes.length < 2) continue;
      // Keep rho non-decreasing from the root down: between the parent's rho
      // and the smallest of the children's.
      const s = slider({ label: `ρ ${n.node}`, value: n.rho, oninput: (v, input, out) => {
        const parent = nodeOf(n.parent);
        const kids = childrenOf(n.node).nodes.map((k) => k.rho);
        const lo = parent ? parent.rho : 0, hi = kids.length ? Math.min(...kids) : 0.99;
        if (v < lo || v > hi) { v = Math.min(Math.max(v, lo), hi); input.value = v; out.textContent = v.toFixed(2); flash(s.node); }
        n.rho = v; renderTree(); scheduleCompute();
      } });
      box.append(s.node);
    }
  }
  // Loadings.
  const lb = $("loading-controls");
  lb.replaceChildren();
  for (const c of S.clusters || []) {
    const out = el("b", { text: Number(c.loading).toFixed(2) });
    const input = el("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: c.loading, "data-cluster": c.name });
    input.addEventListener("input", () => { c.loading = Number(input.value); out.textContent = c.loading.toFixed(2); renderTree(); scheduleCompute(); });
    lb.append(el("div", { class: "loading" }, el("span", { text: c.name }), input, out));
  }
  // Model.
  const conf = $("confidence");
  const cv = S.model.confidence ?? 0.99;
  const confs = CONFIDENCES.includes(cv) ? CONFIDENCES : [...CONFIDENCES, cv].sort();
  conf.replaceChildren(...confs.map((x) => el("option", { value: x, text: String(x), selected: x === cv })));
  const sc = $("scenarios");
  const sv = S.model.scenarios ?? 131072;
  const scs = SCENARIOS.includes(sv) ? SCENARIOS : [...SCENARIOS, sv].sort((a, b) => a - b);
  sc.replaceChildren(...scs.map((x) => el("option", { value: x, text: x.toLocaleString("en-US"), selected: x === sv })));
  $("seed").value = S.model.seed ?? 0;
  $("mc_error").checked = S.addons.mc_error ?? true;
  $("mc_error_z").value = S.addons.mc_error_z ?? 2;
  $("liquidity").checked = S.addons.liquidity ?? true;
  $("liquidity_threshold").value = S.addons.liquidity_threshold ?? 0.1;
  $("liquidity_rate").value = S.addons.liquidity_rate ?? 1;
  $("auto").checked = !!S.ui.auto;
  $("logy").checked = !!S.ui.logy;
  $("sens-metric").value = S.ui.sens || "euler";
}

function flash(node) {
  node.classList.add("invalid");
  setTimeout(() => node.classList.remove("invalid"), 600);
}

function numberControl(id, target, key, { integer = false, min = -Infinity, max = Infinity } = {}) {
  const input = $(id);
  input.addEventListener("input", () => {
    const v = parseNum(input.value);
    const ok = Number.isFinite(v) && v >= min && v <= max && (!integer || Number.isInteger(v));
    input.classList.toggle("invalid", !ok);
    if (!ok) return;
    target()[key] = v;
    scheduleCompute();
  });
}

function wireControls() {
  $("confidence").addEventListener("change", (e) => { S.model.confidence = Number(e.target.value); scheduleCompute(0); });
  $("scenarios").addEventListener("change", (e) => { S.model.scenarios = Number(e.target.value); scheduleCompute(0); });
  numberControl("seed", () => S.model, "seed", { integer: true, min: 0, max: 2 ** 32 - 1 });
  numberControl("mc_error_z", () => S.addons, "mc_error_z", { min: 0, max: 10 });
  numberControl("liquidity_threshold", () => S.addons, "liquidity_threshold", { min: 0, max: 1 });
  numberControl("liquidity_rate", () => S.addons, "liquidity_rate", { min: 0, max: 10 });
  $("mc_error").addEventListener("change", (e) => { S.addons.mc_error = e.target.checked; scheduleCompute(0); });
  $("liquidity").addEventListener("change", (e) => { S.addons.liquidity = e.target.checked; scheduleCompute(0); });
  $("auto").addEventListener("change", (e) => { S.ui.auto = e.target.checked; if (S.ui.auto) compute(); });
  $("rerun").addEventListener("click", () => compute());
  $("logy").addEventListener("change", (e) => { S.ui.logy = e.target.checked; renderHistogram(); saveUi(); });
  $("sens-metric").addEventListener("change", (e) => { S.ui.sens = e.target.value; renderSensitivities(); saveUi(); });
  $("add-row").addEventListener("click", addRow);
  $("export").addEventListener("click", exportToml);
  $("import").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", importToml);
  $("reset").addEventListener("click", resetBook);
}
function saveUi() { if (S.result && !S.serverError && !Object.keys(S.rowErrors).length) saveState(buildBook().book); }

// ---------------------------------------------------------------------------
// Positions table
// ---------------------------------------------------------------------------
function grossOf(r) {
  const p = parseNum(r.price), q = parseNum(r.quantity === "" ? "0" : r.quantity);
  if (!Number.isFinite(p) || !Number.isFinite(q)) return null;
  return Math.max(q * p, -q * (1 - p));
}

function renderChips() {
  const counts = {};
  for (const r of S.rows) counts[r.cluster] = (counts[r.cluster] || 0) + 1;
  const names = ["All", ...clusterNames()];
  $("chips").replaceChildren(...names.map((n) => el("button", {
    type: "button", class: "chip" + (S.ui.filter === n ? " on" : ""), "data-cluster": n,
    onclick: () => { S.ui.filter = n; renderPositions(); },
  }, n, el("span", { class: "c", text: String(n === "All" ? S.rows.length : (counts[n] || 0)) }))));
}

function cellInput(r, key, { cls = "", disabled = false, placeholder = "" } = {}) {
  const input = el("input", { class: cls, value: r[key] ?? "", disabled, placeholder, "data-key": key, spellcheck: "false" });
  input.addEventListener("input", () => { r[key] = input.value; onRowEdit(r, input); });
  return input;
}
function cellSelect(r, key, options) {
  const s = el("select", { "data-key": key }, ...options.map((o) => el("option", { value: o, text: o, selected: o === r[key] })));
  s.addEventListener("change", () => { r[key] = s.value; onRowEdit(r, s, true); });
  return s;
}

function onRowEdit(r, input, rerender = false) {
  // Client-side check of this row (and duplicate ids) right away.
  if (S.serverError) { const w = locateServerError(S.serverError); if (w && (w.uid === r.uid || (w.uids || []).includes(r.uid))) S.serverError = null; }
  checkAll();
  if (rerender) renderPositions(); else renderPositionsErrorsOnly();
  const tr = input.closest("tr");
  const g = tr && tr.querySelector("td.gross");
  if (g) g.textContent = money(grossOf(r));
  if (tr) { const q = parseNum(r.quantity); tr.classList.toggle("long", q > 0); tr.classList.toggle("short", q < 0); }
  if (!Object.keys(S.rowErrors).length) scheduleCompute(); else { clearTimeout(S.timer); S.scheduled = false; }
}

function rowErrorsOf(r) {
  const errs = { ...(S.rowErrors[r.uid] || {}) };
  const se = serverErrorFor(r.uid);
  if (se && !errs[se.key]) errs[se.key] = se.message;
  return errs;
}

function renderPositions() {
  renderChips();
  const tbody = $("positions").querySelector("tbody");
  const focused = document.activeElement;
  const focusKey = focused && focused.closest && focused.closest("tr[data-uid]") ?
    [focused.closest("tr[data-uid]").dataset.uid, focused.dataset.key, focused.selectionStart] : null;
  tbody.replaceChildren();
  const names = clusterNames();
  for (const r of S.rows) {
    if (S.ui.filter !== "All" && r.cluster !== S.ui.filter) continue;
    const keys = KEYS_OF_TYPE[r.type] || [];
    const q = parseNum(r.quantity);
    const tr = el("tr", { "data-uid": r.uid, "data-id": r.id, class: q > 0 ? "long" : q < 0 ? "short" : "" },
      el("td", { class: "w-cluster" }, cellSelect(r, "cluster", names.includes(r.cluster) ? names : [...names, r.cluster])),
      el("td", { class: "w-id" }, cellInput(r, "id")),
      el("td", { class: "w-type" }, cellSelect(r, "type", TYPES)),
      el("td", { class: "w-event" }, cellInput(r, "event", { disabled: !keys.includes("event"), placeholder: keys.includes("event") ? r.id : "" })),
      el("td", { class: "w-thr" }, cellInput(r, "threshold", { cls: "num", disabled: !keys.includes("threshold") })),
      el("td", { class: "w-out" }, cellInput(r, "outcome", { disabled: !keys.includes("outcome") })),
      el("td", { class: "w-legs" }, cellInput(r, "legs", { disabled: !keys.includes("legs"), placeholder: keys.includes("legs") ? "LEG-A, LEG-B" : "" })),
      el("td", { class: "w-price" }, cellInput(r, "price", { cls: "num" })),
      el("td", { class: "w-oi" }, cellInput(r, "open_interest", { cls: "num" })),
      el("td", { class: "w-qty" }, cellInput(r, "quantity", { cls: "num qty" })),
      el("td", { class: "num gross", text: money(grossOf(r)) }),
      el("td", {}, el("button", { type: "button", class: "del", title: "Delete row", text: "×",
        onclick: () => deleteRow(r) })),
    );
    tbody.append(tr);
    tbody.append(el("tr", { class: "err-line", "data-err-for": r.uid, hidden: true }, el("td", { colspan: 12 })));
  }
  renderPositionsErrorsOnly();
  if (focusKey) {
    const inp = tbody.querySelector(`tr[data-uid="${focusKey[0]}"] [data-key="${focusKey[1]}"]`);
    if (inp) { inp.focus(); if (focusKey[2] != null && inp.setSelectionRange) try { inp.setSelectionRange(focusKey[2], focusKey[2]); } catch (e) { /* selects */ } }
  }
  const held = S.rows.filter((r) => parseNum(r.quantity) !== 0).length;
  $("pos-hint").textContent = `${S.rows.length} contracts, ${held} positions (q > 0 long YES, q < 0 short YES)`;
}

// Updates only the error marks (keeps focus and caret while typing).
function renderPositionsErrorsOnly() {
  const tbody = $("positions").querySelector("tbody");
  for (const tr of tbody.querySelectorAll("tr[data-uid]")) {
    const r = S.rows.find((x) => String(x.uid) === tr.dataset.uid);
    if (!r) continue;
    const errs = rowErrorsOf(r);
    for (const inp of tr.querySelectorAll("[data-key]")) inp.classList.toggle("invalid", !!errs[inp.dataset.key]);
    tr.classList.toggle("row-err", Object.keys(errs).length > 0);
    const line = tbody.querySelector(`tr[data-err-for="${r.uid}"]`);
    if (line) {
      const msgs = Object.values(errs);
      line.hidden = msgs.length === 0;
      line.firstChild.textContent = msgs.join(" · ");
    }
  }
  const bad = Object.keys(S.rowErrors).length;
  if (bad) showBanner(`${bad} row${bad > 1 ? "s have" : " has"} invalid values — fix the highlighted cells to recompute.`);
  else if (!S.serverError) hideBanner();
}

function addRow() {
  const cluster = S.ui.filter !== "All" ? S.ui.filter : clusterNames()[0];
  let n = 1;
  const ids = new Set(S.rows.map((r) => r.id));
  while (ids.has(`${cluster.toUpperCase()}-NEW-${n}`)) n++;
  const r = { uid: ++S.uid, id: `${cluster.toUpperCase()}-NEW-${n}`, cluster, type: "binary", event: "",
    threshold: "", outcome: "", legs: "", price: "0.5", open_interest: "", probability: undefined, quantity: "0" };
  // Insert after the last row of the same cluster.
  let at = -1;
  S.rows.forEach((x, i) => { if (x.cluster === cluster) at = i; });
  S.rows.splice(at + 1, 0, r);
  checkAll();
  renderPositions();
  const inp = document.querySelector(`tr[data-uid="${r.uid}"] [data-key="id"]`);
  if (inp) { inp.focus(); inp.select(); }
  scheduleCompute();
}

function deleteRow(r) {
  S.rows = S.rows.filter((x) => x !== r);
  S.serverError = null;
  checkAll();
  renderPositions();
  scheduleCompute();
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------
function renderResult(elapsed) {
  const res = S.result, rep = res.report;
  $("t-full").textContent = money(rep.full_collateral);
  $("t-worst").textContent = money(rep.worst_case_loss);
  $("t-worst-n").textContent = rep.worst_case_exact ? "exact netting of every outcome" : "upper bound (book too large to solve exactly)";
  $("t-margin").textContent = money(rep.margin);
  $("t-margin-n").textContent = `±${money(rep.standard_error)} s.e. · ES ${rep.confidence}`;
  $("t-released").textContent = pct(rep.capital_released);
  $("t-binding").textContent = rep.binding;
  $("t-binding-n").textContent = BINDING_TEXT[rep.binding] || "";
  renderWaterfall(); renderHeatmap(); renderClusters(); renderTree(); renderHistogram();
  const t = res.timing;
  $("footer").textContent = `Margin computed in ${Math.round(elapsed)} ms (engine ${Math.round(t.margin_ms)} ms) · ` +
    `${rep.scenarios.toLocaleString("en-US")} scenarios · seed ${rep.seed} · ES level ${rep.confidence} · ` +
    `base ${money2(rep.base)} ± ${money2(rep.base_standard_error)} · floor ${money2(rep.floor)} · sqrt(ESᵀRES) ${money2(rep.aggregate_diagnostic)}`;
}

const baseLayout = (extra = {}) => ({
  margin: { l: 60, r: 16, t: 8, b: 40 }, font: FONT, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  hoverlabel: { font: { family: FONT.family } }, ...extra,
});

function renderWaterfall() {
  const steps = S.result.waterfall;
  const labels = [], measure = [], y = [], text = [];
  for (const s of steps) {
    let name = s.step;
    if (name === "stressed loss") name = "max(base,<br>floor)";
    if (name === "cap") { if (Math.abs(s.amount) < 0.005) continue; name = "cap at<br>worst case"; }
    labels.push(name.replace("add-on: ", "+ ").replace("mc_error", "MC<br>error"));
    if (s.step === "base" || s.step === "floor" || s.step === "stressed loss") { measure.push("absolute"); y.push(s.amount); }
    else if (s.step === "margin") { measure.push("total"); y.push(0); }
    else { measure.push("relative"); y.push(s.amount); }
    text.push(money(s.step === "margin" ? s.total : s.amount));
  }
  Plotly.react("waterfall", [{
    type: "waterfall", x: labels, y, measure, text, textposition: "outside", cliponaxis: false,
    connector: { line: { color: "#c5cfdc", width: 1 } },
    increasing: { marker: { color: "#d9822b" } }, decreasing: { marker: { color: "#1d8a4e" } },
    totals: { marker: { color: "#2457c5" } }, hovertemplate: "%{x}: %{text}<extra></extra>",
  }], baseLayout({ yaxis: { tickprefix: "$", separatethousands: true, gridcolor: "#eef1f5", rangemode: "tozero" },
    xaxis: { tickfont: { size: 11 }, tickangle: 0 }, showlegend: false, margin: { l: 64, r: 10, t: 22, b: 44 } }), PLOT_CONFIG);
}

function renderHistogram() {
  if (!S.result) return;
  if (S.histError) { $("hist-hint").textContent = `error: ${S.histError}`; return; }
  if (!S.hist) return;
  // VaR and ES of the same draws come with the margin report.
  const rep = S.result.report;
  const h = { ...S.hist, var: rep.var, es: rep.base, confidence: rep.confidence };
  const centers = [], widths = [], colors = [];
  for (let i = 0; i < h.counts.length; i++) {
    centers.push((h.edges[i] + h.edges[i + 1]) / 2);
    widths.push(h.edges[i + 1] - h.edges[i]);
    colors.push(h.edges[i + 1] > h.var ? "#d9822b" : "#8fa8d8");
  }
  const ymax = Math.max(...h.probability, 1e-9);
  const line = (x, color, name) => ({ type: "line", x0: x, x1: x, yref: "paper", y0: 0, y1: 1, line: { color, width: 2, dash: name === "VaR" ? "dash" : "solid" } });
  const ann = (x, color, name, yfrac) => ({ x, y: yfrac, yref: "paper", text: `${name} ${money(x)}`, showarrow: false,
    xanchor: "left", xshift: 4, font: { color, size: 11 }, bgcolor: "rgba(255,255,255,.8)" });
  Plotly.react("histogram", [{
    type: "bar", x: centers, y: h.probability, width: widths, marker: { color: colors, line: { width: 0 } },
    customdata: h.counts, hovertemplate: "loss %{x:$,.0f}<br>probability %{y:.4f}<br>%{customdata} draws<extra></extra>",
  }], baseLayout({
    bargap: 0, showlegend: false,
    xaxis: { title: { text: "book loss ($, positive = loss)", font: { size: 11 } }, tickprefix: "$", separatethousands: true, gridcolor: "#eef1f5" },
    yaxis: { title: { text: "probability", font: { size: 11 } }, type: S.ui.logy ? "log" : "linear", gridcolor: "#eef1f5",
      range: S.ui.logy ? undefined : [0, ymax * 1.08] },
    shapes: [line(h.var, "#c27a0e", "VaR"), line(h.es, "#c62f2f", "ES")],
    annotations: [ann(h.var, "#c27a0e", "VaR", 0.97), ann(h.es, "#c62f2f", "ES", 0.86)],
    margin: { l: 56, r: 12, t: 8, b: 44 },
  }), PLOT_CONFIG);
  $("hist-hint").textContent = `${h.scenarios.toLocaleString("en-US")} draws · mean ${money(h.mean)} · tail beyond VaR ${(100 * (1 - h.confidence)).toFixed(1)}%`;
}

function renderHeatmap() {
  const c = S.result.report.correlation;
  const z = c.matrix;
  Plotly.react("heatmap", [{
    type: "heatmap", x: c.clusters, y: c.clusters, z, zmin: 0, zmax: 1,
    colorscale: [[0, "#f7f9fc"], [0.35, "#b7c9ee"], [0.7, "#4f7bd6"], [1, "#1b3f91"]],
    texttemplate: "%{z:.2f}", textfont: { size: 10 }, hovertemplate: "%{y} × %{x}: %{z:.3f}<extra></extra>",
    colorbar: { thickness: 10, len: 0.9, tickfont: { size: 10 } }, xgap: 1, ygap: 1,
  }], baseLayout({ yaxis: { autorange: "reversed", tickfont: { size: 11 } }, xaxis: { tickfont: { size: 11 }, side: "bottom" },
    margin: { l: 64, r: 8, t: 8, b: 48 } }), PLOT_CONFIG);
}

function renderClusters() {
  const rep = S.result.report;
  const maxGross = Math.max(1, ...rep.clusters.map((c) => c.gross));
  const top2 = [...rep.clusters].sort((a, b) => b.es - a.es).slice(0, 2).map((c) => c.name);
  const table = el("table", {},
    el("thead", {}, el("tr", {}, ...["Cluster", "Pos.", "Gross", "Stressed loss (ES)", "ES/gross", ""].map((h, i) =>
      el("th", { class: i >= 1 && i <= 4 ? "num" : "", text: h })))),
    el("tbody", {}, ...rep.clusters.map((c) => el("tr", { class: top2.includes(c.name) && c.es > 0 ? "top2" : "", "data-cluster": c.name },
      el("td", { text: c.name }),
      el("td", { class: "num", text: String(c.positions) }),
      el("td", { class: "num", text: money(c.gross) }),
      el("td", { class: "num", title: `±${money2(c.standard_error)} s.e.`, text: money(c.es) }),
      el("td", { class: "num", text: c.gross > 0 ? pct(c.es / c.gross) : "–" }),
      el("td", { class: "bar-cell" }, el("div", { class: "esbar", title: "grey: gross, blue: stressed loss" },
        el("div", { class: "g", style: `width:${(100 * c.gross / maxGross).toFixed(1)}%` }),
        el("div", { class: "e", style: `width:${(100 * Math.max(0, c.es) / maxGross).toFixed(1)}%` }))),
    ))),
  );
  const note = el("div", { class: "hint", style: "margin-top:6px" },
    `● top-2 clusters: floor = ${money(rep.floor)} · base (joint ES) = ${money(rep.base)} · sum of cluster ES = ${money(rep.clusters.reduce((a, c) => a + c.es, 0))}`);
  $("clusters").replaceChildren(table, note);
}

function renderTree() {
  const nodes = S.hierarchy || (S.result && S.result.hierarchy.nodes.map((n) => ({ node: n.name, parent: n.parent, rho: n.rho })));
  const clusters = S.clusters || (S.result && S.result.hierarchy.clusters);
  if (!nodes || !clusters) return;
  const es = {};
  if (S.result) for (const c of S.result.report.clusters) es[c.name] = c;
  const build = (name) => {
    const n = nodes.find((x) => x.node === name);
    const kids = nodes.filter((x) => x.parent === name);
    const leaves = clusters.filter((c) => c.parent === name);
    const ul = el("ul", {});
    for (const k of kids) ul.append(build(k.node));
    for (const c of leaves) {
      const e = es[c.name];
      ul.append(el("li", { "data-cluster": c.name }, el("span", { class: "leaf" }, el("span", { text: c.name }),
        el("span", { class: "meta", text: `a=${Number(c.loading).toFixed(2)}${e ? " · ES " + money(e.es) : ""}` }))));
    }
    const li = el("li", { "data-node": name }, el("span", { class: "node", text: name }),
      el("span", { class: "rho", text: `ρ=${Number(n ? n.rho : 0).toFixed(2)}` }));
    if (ul.children.length) li.append(ul);
    return li;
  };
  $("tree").replaceChildren(el("ul", {}, build("root")));
}

function renderSensitivities() {
  const hint = $("sens-hint");
  if (S.sensError) { hint.textContent = `error: ${S.sensError}`; return; }
  const s = S.sens;
  if (!s) { hint.textContent = "computing…"; return; }
  const metric = S.ui.sens || "euler";
  let items = [];
  if (metric === "rho") items = Object.entries(s.rho || {});
  else if (metric === "loading") items = Object.entries(s.loading || {});
  else if (metric === "clusters") items = Object.entries(s.clusters || {});
  else items = Object.entries(s.positions || {}).map(([k, v]) => [k, v[metric]]);
  items = items.filter(([, v]) => v !== null && v !== undefined && Number.isFinite(v));
  items.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  const shown = items.slice(0, 24).reverse();
  const money$ = metric !== "d_quantity";
  Plotly.react("sensitivities", [{
    type: "bar", orientation: "h", y: shown.map((x) => x[0]), x: shown.map((x) => x[1]),
    marker: { color: shown.map((x) => x[1] >= 0 ? "#d9822b" : "#1d8a4e") },
    text: shown.map((x) => money$ ? money(x[1]) : x[1].toFixed(3)), textposition: "outside", cliponaxis: false,
    hovertemplate: "%{y}: %{x:,.4f}<extra></extra>",
  }], baseLayout({ margin: { l: 150, r: 60, t: 4, b: 30 }, xaxis: { gridcolor: "#eef1f5", zerolinecolor: "#9aa6b6",
    tickprefix: money$ ? "$" : "", separatethousands: true }, yaxis: { tickfont: { size: 11 }, automargin: true }, showlegend: false }), PLOT_CONFIG);
  const more = items.length > shown.length ? ` (top ${shown.length} of ${items.length} by size)` : "";
  hint.textContent = `margin ${money(s.margin)} · Euler sum ${money(s.euler_total)}${more} · orange raises, green lowers the margin` +
    (S.sensMs ? ` · ${Math.round(S.sensMs)} ms` : "");
}

function renderSourceLine() {
  let src = S.source ? (S.source.path === "reference" ? "reference book" : S.source.path) : "";
  if (S.imported) src = `imported ${S.imported} (source: ${src})`;
  const saved = S.savedAt ? ` · saved ${new Date(S.savedAt).toLocaleString()}` : "";
  $("source-line").textContent = `${src}${saved}`;
}

// ---------------------------------------------------------------------------
// Import / export / reset
// ---------------------------------------------------------------------------
async function exportToml() {
  if (checkAll()) { renderPositions(); return; }
  const res = await fetch("/api/export", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(buildBook().book) });
  if (!res.ok) { let e; try { e = (await res.json()).error.message; } catch (x) { e = `HTTP ${res.status}`; } showBanner(`Export failed: ${e}`); return; }
  const blob = await res.blob();
  const a = el("a", { href: URL.createObjectURL(blob), download: "book.toml" });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
}

async function importToml(e) {
  const file = e.target.files && e.target.files[0];
  e.target.value = "";
  if (!file) return;
  const text = await file.text();
  const r = await api("POST", "/api/import", text, "application/toml");
  if (!r.ok) { showBanner(`Import of ${file.name} refused: ${r.error.message}`); return; }
  applyBook(r.data.book);
  S.imported = file.name;
  renderSourceLine();
  S.result = null;
  renderControls(); renderPositions();
  showBanner(`Imported ${file.name}.`, true);
  compute();
}

async function resetBook() {
  if (!confirm("Discard all edits and go back to the source book?")) return;
  const r = await api("POST", "/api/state/reset");
  if (!r.ok) { showBanner(`Reset failed: ${r.error.message}`); return; }
  applyBook(r.data.book);
  S.imported = null;
  renderSourceLine();
  S.ui = { ...S.ui, ...(r.data.ui || {}), filter: "All" };
  renderControls(); renderPositions();
  compute();
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------
async function start() {
  wireControls();
  const r = await api("GET", "/api/state");
  if (!r.ok) { showBanner(`Cannot load the dashboard state: ${r.error.message}`); return; }
  S.source = r.data.source; S.savedAt = r.data.saved_at;
  S.ui = { ...S.ui, ...(r.data.ui || {}) };
  if (S.ui.filter !== "All" && !clusterNames().includes(S.ui.filter)) S.ui.filter = "All";
  applyBook(r.data.book);
  renderSourceLine();
  renderControls();
  renderPositions();
  renderTree();
  await compute();
  window.__dashboardReady = true;
}

// Exposed for tests and the console.
window.dashboard = {
  state: S, compute, buildBook,
  idle: () => !S.running && !S.pending && !S.scheduled,
};
document.addEventListener("DOMContentLoaded", start);
