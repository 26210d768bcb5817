// The "Perps × binaries" view (SPEC-horizon.md §6.7), beside the portfolio view
// when the book has underlyings: per underlying, its spot, net delta, the value
// of its binaries, the perp lots that flatten the delta, the margin of the
// combined book; the PnL at the horizon across spot split by leg (binaries,
// perps and futures, total) with a spot slider and its readout; implied against
// model probability per strike; the positions split by leg. Every figure comes
// from the last /api/margin result: `report` (kinetic-jax margin --json) and the
// response's per-underlying `underlyings` (the curve by leg).
import { loadPlotly, plotText } from "./charts.js";
import { $, S, el, horizonText, money, money2 } from "./state.js";

const PORTFOLIO_CHARTS = ["waterfall", "histogram", "heatmap", "sensitivities"];
const SLIDER_STEPS = 200;
const PLOT_CONFIG = { displaylogo: false, responsive: true,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] };
const spotAt = {}; // underlying id -> the spot the slider is at

let on = { saveUi: () => {} };
export const hasUnderlyings = () => S.underlyings.length > 0;
const visible = () => !$("perps").hidden;

// A price: whole dollars from $1,000, else up to 4 significant digits.
function price(x) {
  if (x === null || x === undefined) return "–";
  const digits = Math.abs(x) >= 1000 ? { maximumFractionDigits: 0 } : { maximumSignificantDigits: 4 };
  return (x < 0 ? "−$" : "$") + Math.abs(x).toLocaleString("en-US", digits);
}
const signed = (x, digits = 4) => x === null || x === undefined ? "–" : (x < 0 ? "−" : "+") + Math.abs(x).toFixed(digits);
const level = (x) => Math.abs(x) >= 1000 ? `${+(x / 1000).toFixed(2)}K` : String(+x.toPrecision(6));

// Linear interpolation of the curve (xs increasing) at x, clamped to its ends.
export function interpolate(xs, ys, x) {
  const n = xs.length;
  if (!n) return null;
  if (x <= xs[0]) return ys[0];
  if (x >= xs[n - 1]) return ys[n - 1];
  let lo = 0, hi = n - 1;
  while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (xs[mid] <= x) lo = mid; else hi = mid; }
  const w = (x - xs[lo]) / (xs[hi] - xs[lo]);
  return ys[lo] + w * (ys[hi] - ys[lo]);
}

// The figures of the selected underlying in the result on show (null if none).
function selected() {
  const res = S.result;
  if (!res || !res.report || !Array.isArray(res.report.underlyings)) return null;
  const id = S.ui.asset;
  const rep = res.report.underlyings.find((u) => u.id === id);
  const view = (res.underlyings || []).find((u) => u.id === id);
  return rep && view ? { rep, view, report: res.report } : null;
}

// The tabs (shown when the book has underlyings) and the view on show.
export function renderViews() {
  const any = hasUnderlyings();
  $("views").hidden = !any;
  if (!any || !S.underlyings.some((u) => u.id === S.ui.asset)) S.ui.asset = any ? S.underlyings[0].id : "";
  const view = any && S.ui.view === "perps" ? "perps" : "portfolio";
  document.body.classList.toggle("view-perps", view === "perps");
  $("perps").hidden = view !== "perps";
  for (const b of $("views").querySelectorAll("[data-view]")) {
    b.setAttribute("aria-selected", b.dataset.view === view ? "true" : "false");
    b.classList.toggle("on", b.dataset.view === view);
  }
  const select = $("perp-asset");
  select.replaceChildren(...S.underlyings.map((u) => el("option", { value: u.id, text: u.id, selected: u.id === S.ui.asset })));
}

function setView(view) {
  if (S.ui.view === view) return;
  S.ui.view = view;
  renderViews();
  if (view === "perps") renderPerps();
  else resizeCharts(PORTFOLIO_CHARTS); // drawn while hidden: fit them to their panels
  on.saveUi();
}

async function resizeCharts(ids) {
  const P = await loadPlotly().catch(() => null);
  if (!P) return;
  for (const id of ids) { const div = $(id); if (div && div.data) P.Plots.resize(div); }
}

export function wirePerps(callbacks) {
  on = { ...on, ...callbacks };
  for (const b of $("views").querySelectorAll("[data-view]")) b.addEventListener("click", () => setView(b.dataset.view));
  $("perp-asset").addEventListener("change", (e) => { S.ui.asset = e.target.value; renderPerps(); on.saveUi(); });
  $("perp-spot").addEventListener("input", (e) => {
    if (!S.ui.asset) return;
    spotAt[S.ui.asset] = Number(e.target.value);
    renderReadout();
    renderPnlChart();
  });
}

function setTile(id, text, value, title) {
  const t = $(id);
  t.textContent = text;
  if (value === null || value === undefined) delete t.dataset.value; else t.dataset.value = String(value);
  if (title) t.title = title; else t.removeAttribute("title");
}

// The whole view: tiles, slider, charts and the legs table of the selected underlying.
export function renderPerps() {
  renderViews();
  if (!visible()) return Promise.resolve();
  const sel = selected();
  renderTiles(sel);
  renderSlider(sel);
  renderLegs(sel);
  return Promise.all([renderPnlChart(), renderProbChart()]).catch((e) => {
    $("perp-curve-hint").textContent = `charts unavailable: ${e.message}`;
  });
}

function renderTiles(sel) {
  if (!sel) {
    for (const id of ["p-spot", "p-delta", "p-value", "p-lots", "p-margin"]) setTile(id, "–", null);
    $("perp-hint").textContent = S.result ? "no figures for this underlying in the last result" : "computing…";
    return;
  }
  const { rep, view, report } = sel;
  setTile("p-spot", price(rep.spot), rep.spot);
  $("p-spot-n").textContent = `σ ${(100 * rep.vol).toFixed(1)}% · cluster ${rep.cluster}`;
  setTile("p-delta", signed(rep.net_delta), rep.net_delta, `net delta ${rep.net_delta} ${rep.id}`);
  setTile("p-value", money(view.portfolio_value), view.portfolio_value);
  const lots = rep.hedge_lots;
  setTile("p-lots", `${lots.rounded < 0 ? "−" : lots.rounded > 0 ? "+" : ""}${Math.abs(lots.rounded).toLocaleString("en-US")} lots`,
    lots.rounded, `unrounded ${lots.unrounded} lots of ${rep.lot_size} ${rep.id} (hedge quantity ${rep.hedge_quantity} ${rep.id})`);
  $("p-lots").dataset.unrounded = String(lots.unrounded);
  const verb = lots.rounded < 0 ? "sell" : lots.rounded > 0 ? "buy" : "hold";
  $("p-lots-n").textContent = `${verb} ${Math.abs(lots.rounded).toLocaleString("en-US")} × ${rep.lot_size} ${rep.id} perp`;
  setTile("p-margin", money(report.margin), report.margin);
  $("p-margin-n").textContent = `binding ${report.binding} · ${report.capped === false ? "no cap (net short an underlying)" : "capped at the worst case"}`;
  $("perp-hint").textContent = `${horizonText(report)} · linear exposure ${signed(rep.linear_exposure)} ${rep.id} · ` +
    `${view.linear.length} perp/future, ${view.binaries.length} binar${view.binaries.length === 1 ? "y" : "ies"} on ${rep.id}`;
}

function renderSlider(sel) {
  const input = $("perp-spot");
  if (!sel) { input.disabled = true; $("perp-readout").textContent = "–"; return; }
  const xs = sel.rep.pnl_curve.spot;
  const lo = xs[0], hi = xs[xs.length - 1];
  input.disabled = false;
  input.min = lo; input.max = hi; input.step = (hi - lo) / SLIDER_STEPS;
  const at = spotAt[sel.rep.id];
  const spot = at === undefined || at < lo || at > hi ? sel.rep.spot : at;
  spotAt[sel.rep.id] = spot;
  input.value = spot;
  renderReadout();
}

// The PnL at the slider's spot, interpolated on the report's pnl_curve (and its split by leg).
function renderReadout() {
  const sel = selected();
  const out = $("perp-readout");
  if (!sel) { out.textContent = "–"; return; }
  const xs = sel.rep.pnl_curve.spot;
  const s = spotAt[sel.rep.id] ?? sel.rep.spot;
  const total = interpolate(xs, sel.rep.pnl_curve.pnl, s);
  const bin = interpolate(xs, sel.view.pnl_binaries, s), lin = interpolate(xs, sel.view.pnl_linear, s);
  out.dataset.spot = String(s);
  out.dataset.pnl = String(total);
  out.replaceChildren(
    el("span", { text: `${sel.rep.id} at ${price(s)} (${signed(100 * (s / sel.rep.spot - 1), 1)}%): ` }),
    el("b", { class: total < 0 ? "neg" : "pos", text: `PnL ${money2(total)}` }),
    el("span", { class: "hint", text: ` · binaries ${money(bin)} · perp/future ${money(lin)}` }));
}

async function plot(id, data, layout) {
  const P = await loadPlotly();
  return P.react(id, data, layout, PLOT_CONFIG);
}
const layoutOf = (extra) => ({
  margin: { l: 70, r: 16, t: 8, b: 44 }, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  font: { family: getComputedStyle(document.documentElement).fontFamily, size: 12, color: "#1c2430" }, ...extra,
});

function renderPnlChart() {
  const sel = selected();
  if (!sel || !visible()) return Promise.resolve();
  const { rep, view, report } = sel;
  const xs = rep.pnl_curve.spot;
  const s = spotAt[rep.id] ?? rep.spot;
  const pnl = interpolate(xs, rep.pnl_curve.pnl, s);
  const line = (y, name, color, extra = {}) => ({ type: "scatter", mode: "lines", x: xs, y, name,
    line: { color, width: 2, ...extra }, hovertemplate: `${name}: %{y:$,.0f} at %{x:$,.0f}<extra></extra>` });
  const vline = (x, color, dash) => ({ type: "line", x0: x, x1: x, yref: "paper", y0: 0, y1: 1, line: { color, width: 1, dash } });
  $("perp-curve-hint").textContent = `${horizonText(report)} · ${xs.length} spots, ${price(xs[0])} … ${price(xs[xs.length - 1])}`;
  return plot("perp-pnl-chart", [
    line(view.pnl_binaries, "Binaries", "#d9822b"),
    line(view.pnl_linear, "Perp / future", "#8fa8d8", { dash: "dash" }),
    line(rep.pnl_curve.pnl, "Total", "#2457c5", { width: 3 }),
    { type: "scatter", mode: "markers", x: [s], y: [pnl], name: "at the slider", showlegend: false,
      marker: { size: 11, color: "#c62f2f", line: { color: "#fff", width: 1.5 } },
      hovertemplate: "PnL %{y:$,.2f} at %{x:$,.0f}<extra></extra>" },
  ], layoutOf({
    xaxis: { title: { text: `${plotText(rep.id)} spot at the horizon`, font: { size: 11 } }, tickprefix: "$", separatethousands: true, gridcolor: "#eef1f5" },
    yaxis: { title: { text: "PnL ($)", font: { size: 11 } }, tickprefix: "$", separatethousands: true, gridcolor: "#eef1f5", zerolinecolor: "#9aa6b6" },
    shapes: [vline(rep.spot, "#9aa6b6", "dot"), vline(s, "#c62f2f", "solid")],
    legend: { orientation: "h", x: 0, y: 1.08 },
  }));
}

// The binaries on the underlying (book order), with their figures from report.contracts.
function binaries(sel) {
  const book = S.lastBook;
  if (!sel || !book) return [];
  const figures = new Map((sel.report.contracts || []).map((c) => [c.id, c]));
  const qty = quantities(book);
  return sel.view.binaries.map((id) => ({ c: book.contracts.find((x) => x.id === id), f: figures.get(id) || {}, q: qty[id] || 0 }))
    .filter((x) => x.c);
}
function quantities(book) {
  const q = {};
  for (const p of book.positions) q[p.contract] = (q[p.contract] || 0) + p.quantity;
  return q;
}
const when = (c) => c.expiry ?? (c.expiry_in !== undefined ? `${c.expiry_in} y` : "");
const strikeLabel = (c) => `${c.type === "above" ? ">" : "<"}${level(c.strike)} ${when(c)}`;

function renderProbChart() {
  const sel = selected();
  if (!sel || !visible()) return Promise.resolve();
  const rows = binaries(sel).sort((a, b) => String(when(a.c)).localeCompare(String(when(b.c))) || a.c.strike - b.c.strike);
  const x = rows.map((r) => plotText(strikeLabel(r.c)));
  const ids = rows.map((r) => plotText(r.c.id));
  const bar = (name, y, color) => ({ type: "bar", name, x, y, marker: { color }, customdata: ids,
    text: y.map((v) => v === null || v === undefined ? "" : v.toFixed(3)), textposition: "outside", cliponaxis: false,
    hovertemplate: `%{customdata}<br>${name} %{y:.4f}<extra></extra>` });
  return plot("perp-prob-chart", [
    bar("Implied (price)", rows.map((r) => r.f.implied_probability ?? r.c.price), "#8fa8d8"),
    bar("Model Φ(±d₂) at the strike", rows.map((r) => r.f.model_probability ?? null), "#2457c5"),
  ], layoutOf({ barmode: "group", margin: { l: 50, r: 10, t: 8, b: 60 },
    yaxis: { title: { text: "probability of YES", font: { size: 11 } }, range: [0, 1.08], gridcolor: "#eef1f5" },
    xaxis: { tickfont: { size: 11 } }, legend: { orientation: "h", x: 0, y: 1.1 } }));
}

// The positions on the underlying, split by leg: perps and futures, then each binary.
function renderLegs(sel) {
  const box = $("perp-legs");
  const book = S.lastBook;
  if (!sel || !book) { box.replaceChildren(); $("perp-legs-hint").textContent = ""; return; }
  const { rep, view } = sel;
  const qty = quantities(book);
  const num = (text, attrs = {}) => el("td", { class: "num", ...attrs, text });
  const head = (...names) => el("tr", {}, ...names.map((n, i) => el("th", { class: i > 2 ? "num" : "", text: n })));
  const linear = view.linear.map((id) => book.contracts.find((c) => c.id === id)).filter(Boolean).map((c) => {
    const q = qty[c.id] || 0, f0 = c.price ?? rep.spot;
    return el("tr", { "data-leg": "linear", "data-id": c.id },
      el("td", { text: c.id }), el("td", { text: c.type }), el("td", { text: c.type === "perp" ? "—" : when(c) }),
      num(signed(q, 4), { "data-quantity": String(q) }), num(price(f0)), num(money(Math.abs(q) * f0)),
      num(signed(q * f0 / rep.spot, 4)));
  });
  const bins = binaries(sel).map(({ c, f, q }) => el("tr", { "data-leg": "binary", "data-id": c.id, class: q > 0 ? "long" : q < 0 ? "short" : "" },
    el("td", { text: c.id }), el("td", { text: c.type }), el("td", { text: when(c) }),
    num(price(c.strike)), num(q.toLocaleString("en-US"), { "data-quantity": String(q) }), num(c.price.toFixed(3)),
    num(f.model_probability === null || f.model_probability === undefined ? "–" : f.model_probability.toFixed(4),
      { "data-model": String(f.model_probability) }),
    num(price(f.effective_strike), { "data-effective": String(f.effective_strike),
      title: "K*: the strike at which the lognormal model's digital is worth the price" }),
    num(money(q * c.price))));
  const table = el("table", {},
    el("thead", {}, el("tr", { class: "leg-title" }, el("th", { colspan: 7, text: "Perps and futures" }))),
    el("tbody", { class: "leg-linear" }, head("Contract", "Type", "Expiry", "Quantity", "Price F0", "Notional |q|·F0", "Delta q·F0/S0"),
      ...(linear.length ? linear : [el("tr", {}, el("td", { colspan: 7, class: "hint", text: "none" }))])),
    el("thead", {}, el("tr", { class: "leg-title" }, el("th", { colspan: 9, text: "Binaries" }))),
    el("tbody", { class: "leg-binaries" }, head("Contract", "Type", "Expiry", "Strike", "Quantity", "Price", "Model prob.", "Effective strike", "Value q·p"),
      ...(bins.length ? bins : [el("tr", {}, el("td", { colspan: 9, class: "hint", text: "none" }))])));
  box.replaceChildren(table);
  $("perp-legs-hint").textContent = `${linear.length + bins.length} contracts on ${rep.id}`;
}
