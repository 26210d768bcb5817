// The model panel: correlation sliders, loadings, settings, add-ons, and the
// hierarchy tree. Choices and bounds come from /api/config.
import {
  $, ISO_DATE, S, defaultOf, el, ensureExplicitHierarchy, hooks, locateServerError, money, parseNum,
  setting,
} from "./state.js";

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

function flash(node) {
  node.classList.add("invalid");
  setTimeout(() => node.classList.remove("invalid"), 600);
}

function slider({ label, sub, value, min = 0, max = 0.99, step = 0.01, oninput, id }) {
  const out = el("b", { text: Number(value).toFixed(2) });
  const input = el("input", { type: "range", min, max, step, value, id });
  input.addEventListener("input", () => { out.textContent = Number(input.value).toFixed(2); oninput(Number(input.value), input, out); });
  return { node: el("div", { class: "slider" }, el("div", { class: "top" }, el("span", {}, label, " ", el("small", { text: sub || "" })), out), input), input, out };
}

function choices(select, values, current, label = String) {
  const all = values.includes(current) ? values : [...values, current].sort((a, b) => a - b);
  select.replaceChildren(...all.map((x) => el("option", { value: x, text: label(x), selected: x === current })));
}

export function renderControls() {
  ensureExplicitHierarchy();
  const box = $("rho-controls");
  box.replaceChildren();
  if (S.hierarchy && hasWithinCross()) {
    const within = nodeOf("crypto"), cross = nodeOf("risk");
    const w = slider({ id: "rho-within", label: "ρ within", sub: "(node crypto)", value: within.rho,
      oninput: (v, input, out) => {
        if (v < cross.rho) { v = cross.rho; input.value = v; out.textContent = v.toFixed(2); flash(w.node); }
        within.rho = v; hooks.renderTree(); hooks.schedule();
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
        hooks.renderTree(); hooks.schedule();
      } });
    box.append(w.node, c.node,
      el("div", { class: "hint", text: "ρ within ≥ ρ cross is enforced (a child's ρ never below its parent's)." }));
  } else if (S.hierarchy) {
    // Any other hierarchy: a slider per internal node whose rho matters, kept
    // between the parent's rho and the smallest of the children's.
    for (const n of S.hierarchy) {
      if (n.node === "root" && !childrenOf("root").clusters.length && childrenOf("root").nodes.length < 2) continue;
      const s = slider({ label: `ρ ${n.node}`, value: n.rho, oninput: (v, input, out) => {
        const parent = nodeOf(n.parent);
        const kids = childrenOf(n.node).nodes.map((k) => k.rho);
        const lo = parent ? parent.rho : 0, hi = kids.length ? Math.min(...kids) : 0.99;
        if (v < lo || v > hi) { v = Math.min(Math.max(v, lo), hi); input.value = v; out.textContent = v.toFixed(2); flash(s.node); }
        n.rho = v; hooks.renderTree(); hooks.schedule();
      } });
      box.append(s.node);
    }
  }
  const lb = $("loading-controls");
  lb.replaceChildren();
  for (const c of S.clusters || []) {
    const out = el("b", { text: Number(c.loading).toFixed(2) });
    const input = el("input", { type: "range", min: 0, max: 0.99, step: 0.01, value: c.loading, "data-cluster": c.name });
    input.addEventListener("input", () => { c.loading = Number(input.value); out.textContent = c.loading.toFixed(2); hooks.renderTree(); hooks.schedule(); });
    lb.append(el("div", { class: "loading" }, el("span", { text: c.name }), input, out));
  }
  choices($("confidence"), setting("confidence").choices || [], S.model.confidence ?? defaultOf("confidence"));
  choices($("scenarios"), setting("scenarios").choices || [], S.model.scenarios ?? defaultOf("scenarios"),
    (x) => x.toLocaleString("en-US"));
  $("seed").value = S.model.seed ?? defaultOf("seed");
  $("as_of").value = S.model.as_of ?? "";
  // The inputs now show the book's values: no setting is invalid.
  for (const name of ["seed", "as_of", ...Object.keys(S.controlErrors)]) {
    $(name).classList.remove("invalid");
    $(name).title = "";
  }
  S.controlErrors = {};
  renderHorizon();
  for (const name of ["mc_error", "liquidity"]) $(name).checked = S.addons[name] ?? defaultOf(name);
  $("stress_addon").checked = S.model.stress_addon ?? defaultOf("stress_addon");
  for (const name of ["mc_error_z", "liquidity_threshold", "liquidity_rate"]) $(name).value = S.addons[name] ?? defaultOf(name);
  $("auto").checked = !!S.ui.auto;
  $("logy").checked = !!S.ui.logy;
  $("sens-metric").value = S.ui.sens || "euler";
}

function numberControl(name, target) {
  const input = $(name);
  const b = setting(name);
  if (b.min !== null && b.min !== undefined) input.min = b.min;
  if (b.max !== null && b.max !== undefined) input.max = b.max;
  input.addEventListener("input", () => {
    const v = parseNum(input.value);
    const ok = Number.isFinite(v) && (b.min == null || (b.min_open ? v > b.min : v >= b.min))
      && (b.max == null || (b.max_open ? v < b.max : v <= b.max)) && (b.type !== "integer" || Number.isInteger(v));
    input.classList.toggle("invalid", !ok);
    // A bad value is named (banner and tooltip) and stops recomputing until it
    // is fixed: the figures never belong to a setting other than the one shown.
    if (!ok) {
      const range = `${b.min == null ? "(-∞" : (b.min_open ? "(" : "[") + b.min}, ${b.max == null ? "∞)" : b.max + (b.max_open ? ")" : "]")}`;
      S.controlErrors[name] = `${name}: ${JSON.stringify(input.value)} is not ${b.type === "integer" ? "an integer" : "a number"} in ${range}`;
      input.title = S.controlErrors[name];
      hooks.schedule();
      return;
    }
    delete S.controlErrors[name];
    input.title = "";
    target()[name] = v;
    hooks.schedule();
  });
}

// The horizon control: Resolution (no model.horizon_days: v1) and the choices of
// /api/config, plus the book's own value when it is another one.
export function renderHorizon() {
  const current = S.model.horizon_days ?? null;
  const choices = (setting("horizon_days").choices || []).slice();
  if (current !== null && !choices.includes(current)) choices.push(current);
  choices.sort((a, b) => a - b);
  const button = (value, text, title) => el("button", {
    type: "button", class: "seg-b" + (value === current ? " on" : ""), "data-horizon": value === null ? "resolution" : String(value),
    "aria-pressed": value === current ? "true" : "false", title, text,
    onclick: () => setHorizon(value),
  });
  $("horizon").replaceChildren(
    button(null, "Resolution", "Margin every contract to its resolution (v1)"),
    ...choices.map((d) => button(d, `${d} d`, `Margin the loss over a ${d}-day liquidation horizon`)));
}

function setHorizon(value) {
  if ((S.model.horizon_days ?? null) === value) return;
  if (value === null) delete S.model.horizon_days; else S.model.horizon_days = value;
  renderHorizon();
  hooks.schedule(0);
}

// `on`: {compute, rerun, logy, sens, addRow, addScenario, exportToml, importToml, reset}.
export function wireControls(on) {
  $("confidence").addEventListener("change", (e) => { S.model.confidence = Number(e.target.value); hooks.schedule(0); });
  $("scenarios").addEventListener("change", (e) => { S.model.scenarios = Number(e.target.value); hooks.schedule(0); });
  numberControl("seed", () => S.model);
  $("as_of").addEventListener("input", (e) => {
    const v = e.target.value.trim();
    const ok = v === "" || ISO_DATE.test(v);
    e.target.classList.toggle("invalid", !ok);
    if (!ok) {
      S.controlErrors.as_of = `as_of: ${JSON.stringify(v)} is not a date YYYY-MM-DD`;
      e.target.title = S.controlErrors.as_of;
      hooks.schedule();
      return;
    }
    delete S.controlErrors.as_of;
    e.target.title = "";
    if (v === "") delete S.model.as_of; else S.model.as_of = v;
    hooks.schedule();
  });
  for (const name of ["mc_error_z", "liquidity_threshold", "liquidity_rate"]) numberControl(name, () => S.addons);
  for (const name of ["mc_error", "liquidity"]) {
    $(name).addEventListener("change", (e) => { S.addons[name] = e.target.checked; hooks.schedule(0); });
  }
  // The stress add-on is a [model] setting (kinetic_jax.Settings.stress_addon).
  $("stress_addon").addEventListener("change", (e) => { S.model.stress_addon = e.target.checked; hooks.schedule(0); });
  $("add-stress").addEventListener("click", on.addScenario);
  $("auto").addEventListener("change", (e) => { S.ui.auto = e.target.checked; if (S.ui.auto) on.compute(); });
  $("rerun").addEventListener("click", () => on.compute());
  $("logy").addEventListener("change", (e) => { S.ui.logy = e.target.checked; on.logy(); });
  $("sens-metric").addEventListener("change", (e) => { S.ui.sens = e.target.value; on.sens(); });
  $("add-row").addEventListener("click", on.addRow);
  $("export").addEventListener("click", on.exportToml);
  $("import").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", on.importToml);
  $("reset").addEventListener("click", on.reset);
}

export function renderControlErrors() {
  for (const k of ["rho", "loading", "model", "addons"]) $(`err-${k}`).textContent = "";
  const where = locateServerError(S.serverError);
  if (where && where.control) $(`err-${where.control}`).textContent = S.serverError.message;
}

export function renderTree() {
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

