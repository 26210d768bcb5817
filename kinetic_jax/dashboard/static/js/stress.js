// The stress-scenario panel: the book's [[stress]] tables (name, factor values
// per hierarchy node or cluster, resolutions YES/NO per contract), edited in
// place, with each scenario's exact loss and largest cluster losses from the
// last /api/margin result. The server validates: its field error (path
// ["stress", i, ...]) is shown at the scenario, like the positions table.
import { $, S, el, hooks, locateServerError, money, money2 } from "./state.js";

const TOP_CLUSTERS = 3;

function factorNames() {
  return [...(S.hierarchy || []).map((n) => n.node), ...(S.clusters || []).map((c) => c.name)];
}
function resolvableIds() {
  return S.rows.filter((r) => r.type !== "parlay").map((r) => String(r.id).trim()).filter(Boolean);
}

// The figures of scenario `uid` in the result on show (matched by position in
// the book that was computed), or null when it has been edited since.
function resultOf(uid) {
  if (!S.result || !S.result.report || !S.result.report.stress) return null;
  const i = (S.resultStress || []).indexOf(uid);
  return i < 0 ? null : S.result.report.stress[i] || null;
}

function serverErrorFor(uid) {
  const where = locateServerError(S.serverError);
  if (!where || !("stress" in where)) return null;
  if (where.stress !== uid && where.stress !== null) return null;
  return { key: where.key, message: S.serverError.message };
}

function edited(x, rerender = false) {
  if (serverErrorFor(x.uid)) S.serverError = null;
  S.resultStress = (S.resultStress || []).map((u) => (u === x.uid ? null : u));
  if (rerender) renderStress(); else renderStressErrorsOnly();
  hooks.schedule();
}

function input(x, key, value, set, attrs = {}) {
  const i = el("input", { value, "data-key": key, spellcheck: "false", ...attrs });
  i.addEventListener("input", () => { set(i.value); edited(x); });
  return i;
}

function adder(label, options, onpick) {
  const s = el("select", { class: "small", title: label },
    el("option", { value: "", text: label }), ...options.map((o) => el("option", { value: o, text: o })));
  s.addEventListener("change", () => { if (s.value) onpick(s.value); });
  return s;
}

function factorCell(x) {
  const td = el("td", { class: "w-factors" });
  for (const pair of x.factors) {
    td.append(el("span", { class: "pair", "data-factor": pair[0] }, el("span", { text: pair[0] }), " = ",
      input(x, `factors:${pair[0]}`, pair[1], (v) => { pair[1] = v; }, { class: "num" }), " σ",
      el("button", { type: "button", class: "del", title: `Remove ${pair[0]}`, text: "×",
        onclick: () => { x.factors = x.factors.filter((p) => p !== pair); edited(x, true); } })));
  }
  const used = new Set(x.factors.map((p) => p[0]));
  td.append(adder("+ factor", factorNames().filter((n) => !used.has(n)),
    (n) => { x.factors.push([n, "-1"]); edited(x, true); }));
  if (!x.factors.length) td.prepend(el("span", { class: "hint", text: "every factor at 0 " }));
  return td;
}

function resolveCell(x) {
  const td = el("td", { class: "w-resolve" });
  for (const pair of x.resolve) {
    const s = el("select", { "data-key": `resolve:${pair[0]}` },
      ...["YES", "NO"].map((v) => el("option", { value: v, text: v, selected: v === pair[1] })));
    s.addEventListener("change", () => { pair[1] = s.value; edited(x); });
    td.append(el("span", { class: "pair", "data-resolve": pair[0] }, el("span", { text: pair[0] }), " ", s,
      el("button", { type: "button", class: "del", title: `Remove ${pair[0]}`, text: "×",
        onclick: () => { x.resolve = x.resolve.filter((p) => p !== pair); edited(x, true); } })));
  }
  const used = new Set(x.resolve.map((p) => p[0]));
  td.append(adder("+ resolve", resolvableIds().filter((id) => !used.has(id)),
    (id) => { x.resolve.push([id, "YES"]); edited(x, true); }));
  return td;
}

function lossCells(x) {
  const r = resultOf(x.uid);
  if (!r) return [el("td", { class: "num loss", text: "–" }), el("td", { class: "w-top", text: "" })];
  const top = Object.entries(r.clusters).filter(([, v]) => v > 0.005).sort((a, b) => b[1] - a[1]).slice(0, TOP_CLUSTERS);
  return [
    el("td", { class: "num loss", "data-loss": r.loss, text: money2(r.loss) }),
    el("td", { class: "w-top", text: top.length ? top.map(([k, v]) => `${k} ${money(v)}`).join(" · ") : "no cluster loses" }),
  ];
}

export function renderStress() {
  const tbody = $("stress").querySelector("tbody");
  const focused = document.activeElement;
  const focusKey = focused && focused.closest && focused.closest("tr[data-stress]") ?
    [focused.closest("tr[data-stress]").dataset.stress, focused.dataset.key, focused.selectionStart] : null;
  tbody.replaceChildren();
  for (const x of S.stress) {
    tbody.append(el("tr", { "data-stress": x.uid, "data-name": x.name },
      el("td", { class: "w-name" }, input(x, "name", x.name, (v) => { x.name = v; })),
      factorCell(x), resolveCell(x), ...lossCells(x),
      el("td", {}, el("button", { type: "button", class: "del", title: "Remove scenario", text: "×",
        onclick: () => { S.stress = S.stress.filter((y) => y !== x); S.serverError = null; renderStress(); hooks.schedule(); } }))));
    tbody.append(el("tr", { class: "err-line", "data-err-for": x.uid, hidden: true }, el("td", { colspan: 6 })));
  }
  renderStressErrorsOnly();
  if (focusKey) {
    const inp = tbody.querySelector(`tr[data-stress="${focusKey[0]}"] [data-key="${CSS.escape(focusKey[1] || "")}"]`);
    if (inp) { inp.focus(); if (focusKey[2] != null && inp.setSelectionRange) try { inp.setSelectionRange(focusKey[2], focusKey[2]); } catch (e) { /* selects */ } }
  }
  const worst = S.result && S.result.report && S.result.report.stress && S.result.report.stress.length ?
    Math.max(...S.result.report.stress.map((r) => r.loss)) : null;
  const on = S.model.stress_addon ? "add-on on" : "add-on off";
  $("stress-hint").textContent = `${S.stress.length} scenario${S.stress.length === 1 ? "" : "s"}` +
    (worst === null ? "" : ` · worst ${money2(worst)}`) + ` · ${on} · exact losses, no simulation`;
}

// Only the error marks (keeps focus and caret while typing).
export function renderStressErrorsOnly() {
  const tbody = $("stress").querySelector("tbody");
  for (const tr of tbody.querySelectorAll("tr[data-stress]")) {
    const uid = Number(tr.dataset.stress);
    const e = serverErrorFor(uid);
    const key = e ? e.key : null;
    let marked = false;
    for (const inp of tr.querySelectorAll("[data-key]")) {
      const hit = !!key && inp.dataset.key === key;
      inp.classList.toggle("invalid", hit);
      marked = marked || hit;
    }
    tr.classList.toggle("row-err", !!e);
    tr.classList.toggle("err-whole", !!e && !marked);
    const line = tbody.querySelector(`tr[data-err-for="${uid}"]`);
    if (line) { line.hidden = !e; line.firstChild.textContent = e ? e.message : ""; }
  }
}

export function addScenario() {
  const names = new Set(S.stress.map((x) => x.name));
  let n = 1;
  while (names.has(`scenario ${n}`)) n++;
  const x = { uid: ++S.uid, name: `scenario ${n}`, factors: [], resolve: [] };
  S.stress.push(x);
  renderStress();
  const inp = document.querySelector(`tr[data-stress="${x.uid}"] [data-key="name"]`);
  if (inp) { inp.focus(); inp.select(); }
  hooks.schedule();
}
