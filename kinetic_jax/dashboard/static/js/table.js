// The positions table: one row per contract, edited in place.
import {
  $, CONFIG, S, checkAll, clusterNames, el, eventOf, hideBanner, hooks, horizonText, isLinear, keysOf,
  locateServerError, money, onUnderlying, parseNum, showBanner, underlyingOf,
} from "./state.js";
import { previewRow } from "./whatif.js";

// A binary's full collateral q·p (long) or |q|·(1 − p) (short); a perp's or a
// future's |q|·F0 (1× notional, F0 the future's price or the spot).
function grossOf(r) {
  const q = parseNum(r.quantity === "" ? "0" : r.quantity);
  if (isLinear(r)) {
    const u = underlyingOf(String(r.underlying || "").trim());
    const f0 = String(r.price ?? "").trim() ? parseNum(r.price) : u && u.spot;
    return Number.isFinite(f0) && Number.isFinite(q) ? Math.abs(q) * f0 : null;
  }
  const p = parseNum(r.price);
  if (!Number.isFinite(p) || !Number.isFinite(q)) return null;
  return Math.max(q * p, -q * (1 - p));
}

// Per contract id, its figures at the horizon (report.contracts) from the result
// on show; null in resolution mode, where tau is 1 and the marks are the 0/1
// indicators, so the two columns are hidden.
function horizonFigures() {
  const rep = S.result && S.result.report;
  if (!rep || rep.horizon_days === null || rep.horizon_days === undefined) return null;
  return new Map((rep.contracts || []).map((c) => [c.id, c]));
}
const mark = (x) => x.toFixed(3);
function tauCell(h) {
  if (!h || h.tau === null || h.tau === undefined) return el("td", { class: "num hz tau", text: "–", title: h ? "a perp or future: marked at the spot" : "" });
  const text = h.resolved_by_horizon ? "resolved" : h.tau.toPrecision(3);
  return el("td", { class: "num hz tau" + (h.resolved_by_horizon ? " resolved" : ""), "data-tau": String(h.tau), text,
    title: h.resolved_by_horizon ? "resolves by the horizon (τ = 1): marked at its outcome"
      : `τ = ${h.tau}: ${(100 * h.tau).toFixed(2)}% of the event's information is revealed by the horizon` });
}
function marksCell(h) {
  const m = h && h.stressed_marks;
  if (!m) return el("td", { class: "num hz marks", text: "–", title: !h ? "" : h.tau === null ? "a perp or future: its value moves with the spot" : "a parlay: its mark depends on several events" });
  return el("td", { class: "num hz marks", "data-marks": JSON.stringify(m), text: `${mark(m[0])} / ${mark(m[1])}`,
    title: `implied probability ${mark(h.implied_probability)}; mark at the horizon ${mark(m[0])} (Z at its 1% quantile) … ${mark(m[1])} (Z at 99%)` });
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
  input.addEventListener("input", () => {
    r[key] = input.value;
    if (key === "resolves") sameDateOnEvent(r);
    onRowEdit(r, input); previewRow(r);
  });
  return input;
}

// One date per event (SPEC-horizon §6.10): a date typed on one row is set on
// every other contract of its event too.
function sameDateOnEvent(r) {
  // On an underlying the expiry names the (underlying, expiry) point: a row moves alone.
  if (onUnderlying(r)) return;
  const event = eventOf(r);
  if (event === null) return;
  for (const x of S.rows) {
    if (x === r || x.type === "parlay" || onUnderlying(x) || eventOf(x) !== event) continue;
    x.resolves = r.resolves;
    const cell = document.querySelector(`#positions tr[data-uid="${x.uid}"] [data-key="resolves"]`);
    if (cell) cell.value = x.resolves;
  }
}
function cellSelect(r, key, options, { disabled = false, labels = {} } = {}) {
  const s = el("select", { "data-key": key, disabled }, ...options.map((o) => el("option", { value: o, text: labels[o] ?? o, selected: o === r[key] })));
  s.addEventListener("change", () => {
    r[key] = s.value;
    // A contract on an underlying is in the underlying's cluster.
    if (key === "underlying" && underlyingOf(s.value)) r.cluster = underlyingOf(s.value).cluster;
    onRowEdit(r, s, true);
  });
  return s;
}

function serverErrorFor(uid) {
  const where = locateServerError(S.serverError);
  if (!where) return null;
  if (where.uid === uid || (where.uids && where.uids.includes(uid))) return { key: where.key, message: S.serverError.message };
  return null;
}

function onRowEdit(r, input, rerender = false) {
  // An edit of the row the server complained about clears that complaint.
  if (serverErrorFor(r.uid)) S.serverError = null;
  checkAll();
  if (rerender) renderPositions(); else renderPositionsErrorsOnly();
  const tr = input.closest("tr");
  const g = tr && tr.querySelector("td.gross");
  if (g) g.textContent = money(grossOf(r));
  if (tr) { const q = parseNum(r.quantity); tr.classList.toggle("long", q > 0); tr.classList.toggle("short", q < 0); }
  if (!Object.keys(S.rowErrors).length) hooks.schedule(); else { clearTimeout(S.timer); S.scheduled = false; }
}

function rowErrorsOf(r) {
  const errs = { ...(S.rowErrors[r.uid] || {}) };
  const se = serverErrorFor(r.uid);
  if (se && !errs[se.key]) errs[se.key] = se.message;
  return errs;
}

export function renderPositions() {
  renderChips();
  const tbody = $("positions").querySelector("tbody");
  const focused = document.activeElement;
  const focusKey = focused && focused.closest && focused.closest("tr[data-uid]") ?
    [focused.closest("tr[data-uid]").dataset.uid, focused.dataset.key, focused.selectionStart] : null;
  tbody.replaceChildren();
  const names = clusterNames();
  const types = CONFIG.contract_types;
  const horizon = horizonFigures();
  $("positions").classList.toggle("hz-off", !horizon);
  const underlyings = ["", ...S.underlyings.map((u) => u.id)];
  for (const r of S.rows) {
    if (S.ui.filter !== "All" && r.cluster !== S.ui.filter) continue;
    // On an underlying: the threshold cell is the strike, the date cell the expiry.
    const on = onUnderlying(r);
    const keys = on ? (CONFIG.keys_on_underlying[r.type] || []) : keysOf(r.type);
    const level = on ? keys.includes("strike") : keys.includes("threshold");
    const dated = on ? keys.includes("expiry") : r.type !== "parlay";
    const q = parseNum(r.quantity);
    const tr = el("tr", { "data-uid": r.uid, "data-id": r.id, "data-underlying": r.underlying || "", class: q > 0 ? "long" : q < 0 ? "short" : "" },
      el("td", { class: "w-cluster" }, cellSelect(r, "cluster", names.includes(r.cluster) ? names : [...names, r.cluster], { disabled: on })),
      el("td", { class: "w-id" }, cellInput(r, "id")),
      el("td", { class: "w-type" }, cellSelect(r, "type", types)),
      el("td", { class: "w-und" }, cellSelect(r, "underlying", underlyings.includes(r.underlying || "") ? underlyings : [...underlyings, r.underlying],
        { disabled: underlyings.length < 2 && !r.underlying, labels: { "": "–" } })),
      el("td", { class: "w-event" }, cellInput(r, "event", { disabled: on || !keys.includes("event"), placeholder: !on && keys.includes("event") ? r.id : "" })),
      el("td", { class: "w-thr" }, cellInput(r, "threshold", { cls: "num", disabled: !level, placeholder: on && level ? "strike" : "" })),
      el("td", { class: "w-out" }, cellInput(r, "outcome", { disabled: on || !keys.includes("outcome") })),
      el("td", { class: "w-legs" }, cellInput(r, "legs", { disabled: on || !keys.includes("legs"), placeholder: !on && keys.includes("legs") ? "LEG-A, LEG-B" : "" })),
      el("td", { class: "w-res" }, cellInput(r, "resolves", { disabled: !dated, placeholder: dated ? "YYYY-MM-DD" : "" })),
      el("td", { class: "w-price" }, cellInput(r, "price", { cls: "num", disabled: r.type === "perp", placeholder: isLinear(r) ? "spot" : "" })),
      el("td", { class: "w-oi" }, cellInput(r, "open_interest", { cls: "num" })),
      el("td", { class: "w-qty" }, cellInput(r, "quantity", { cls: "num qty" })),
      el("td", { class: "num gross", text: money(grossOf(r)) }),
      tauCell(horizon && horizon.get(String(r.id).trim())),
      marksCell(horizon && horizon.get(String(r.id).trim())),
      el("td", {}, el("button", { type: "button", class: "del", title: "Delete row", text: "×",
        onclick: () => deleteRow(r) })),
    );
    tbody.append(tr);
    tbody.append(el("tr", { class: "err-line", "data-err-for": r.uid, hidden: true }, el("td", { colspan: 16 })));
  }
  renderPositionsErrorsOnly();
  if (focusKey) {
    const inp = tbody.querySelector(`tr[data-uid="${focusKey[0]}"] [data-key="${focusKey[1]}"]`);
    if (inp) { inp.focus(); if (focusKey[2] != null && inp.setSelectionRange) try { inp.setSelectionRange(focusKey[2], focusKey[2]); } catch (e) { /* selects */ } }
  }
  const held = S.rows.filter((r) => parseNum(r.quantity) !== 0).length;
  $("pos-hint").textContent = `${S.rows.length} contracts, ${held} positions (q > 0 long YES, q < 0 short YES)` +
    (horizon ? ` · τ and marks at the ${horizonText(S.result.report)}` : "");
}

// Updates only the error marks (keeps focus and caret while typing).
export function renderPositionsErrorsOnly() {
  const tbody = $("positions").querySelector("tbody");
  const byUid = new Map(S.rows.map((r) => [String(r.uid), r]));
  for (const tr of tbody.querySelectorAll("tr[data-uid]")) {
    const r = byUid.get(tr.dataset.uid);
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
  else if (!S.serverError && !S.unreachable) hideBanner();
}

export function addRow() {
  const cluster = S.ui.filter !== "All" ? S.ui.filter : clusterNames()[0];
  let n = 1;
  const ids = new Set(S.rows.map((r) => r.id));
  while (ids.has(`${cluster.toUpperCase()}-NEW-${n}`)) n++;
  const r = { uid: ++S.uid, id: `${cluster.toUpperCase()}-NEW-${n}`, cluster, type: "binary", underlying: "", event: "",
    threshold: "", outcome: "", legs: "", resolves: "", price: "0.5", open_interest: "", probability: undefined, quantity: "0" };
  // Insert after the last row of the same cluster.
  let at = -1;
  S.rows.forEach((x, i) => { if (x.cluster === cluster) at = i; });
  S.rows.splice(at + 1, 0, r);
  checkAll();
  renderPositions();
  const inp = document.querySelector(`tr[data-uid="${r.uid}"] [data-key="id"]`);
  if (inp) { inp.focus(); inp.select(); }
  hooks.schedule();
}

function deleteRow(r) {
  S.rows = S.rows.filter((x) => x !== r);
  S.serverError = null;
  checkAll();
  renderPositions();
  hooks.schedule();
}
