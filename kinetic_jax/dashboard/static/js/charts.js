// Tiles, charts and the cluster table. plotly.js (served by this server) is
// loaded after the first paint; every label taken from the book is escaped,
// so a contract id is shown as text, never rendered as markup.
import { $, S, el, horizonText, money, money2, pct } from "./state.js";

const BINDING_TEXT = {
  base: "joint expected shortfall of the book",
  floor: "top-2 cluster concentration floor",
  worst_case: "capped at the worst-case loss",
};
const PLOT_CONFIG = { displaylogo: false, responsive: true,
  modeBarButtonsToRemove: ["lasso2d", "select2d", "autoScale2d"] };

let plotly = null;
// Loads /vendor/plotly.min.js once (a classic script, added asynchronously).
export function loadPlotly() {
  if (!plotly) {
    plotly = new Promise((resolve, reject) => {
      if (window.Plotly) { resolve(window.Plotly); return; }
      const s = document.createElement("script");
      s.src = "/vendor/plotly.min.js";
      s.async = true;
      s.onload = () => resolve(window.Plotly);
      s.onerror = () => { plotly = null; reject(new Error("plotly.js could not be loaded")); };
      document.head.append(s);
    });
  }
  return plotly;
}

// Plotly reads its strings as pseudo-HTML (<b>, <a href>, <br>): escape the
// markup characters so that the string is shown exactly as given.
export const plotText = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

async function plot(id, data, layout) {
  const P = await loadPlotly();
  return P.react(id, data, layout, PLOT_CONFIG);
}

const font = () => ({ family: getComputedStyle(document.documentElement).fontFamily, size: 12, color: "#1c2430" });
const baseLayout = (extra = {}) => ({
  margin: { l: 60, r: 16, t: 8, b: 40 }, font: font(), paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
  hoverlabel: { font: { family: font().family } }, ...extra,
});

export function renderResult(elapsed) {
  const res = S.result, rep = res.report;
  $("t-full").textContent = money(rep.full_collateral);
  // No cap (SPEC-horizon §6.6): a book net short an underlying can lose without bound.
  const capped = rep.capped !== false && rep.worst_case_loss !== null && rep.worst_case_loss !== undefined;
  $("t-worst").textContent = capped ? money(rep.worst_case_loss) : "no cap";
  $("t-worst").dataset.capped = capped ? "true" : "false";
  $("t-worst-n").textContent = !capped ? "net short an underlying: the loss is unbounded"
    : rep.worst_case_exact ? "exact netting of every outcome" : "upper bound (book too large to solve exactly)";
  $("t-margin").textContent = money(rep.margin);
  $("t-margin-n").textContent = `±${money(rep.standard_error)} s.e. · ES ${rep.confidence}`;
  // The horizon in force: the one this result was computed at.
  const horizon = horizonText(rep);
  $("t-horizon").textContent = horizon;
  $("t-horizon").dataset.horizon = rep.horizon_days === null || rep.horizon_days === undefined ? "resolution" : String(rep.horizon_days);
  $("t-released").textContent = pct(rep.capital_released);
  $("t-binding").textContent = rep.binding;
  $("t-binding-n").textContent = BINDING_TEXT[rep.binding] || "";
  renderClusters();
  const t = res.timing;
  $("footer").textContent = `Margin computed in ${Math.round(elapsed)} ms (engine ${Math.round(t.margin_ms)} ms) · ` +
    `${horizon} · ${rep.scenarios.toLocaleString("en-US")} scenarios · seed ${rep.seed} · ES level ${rep.confidence} · ` +
    `base ${money2(rep.base)} ± ${money2(rep.base_standard_error)} · floor ${money2(rep.floor)} · sqrt(ESᵀRES) ${money2(rep.aggregate_diagnostic)}`;
  return Promise.all([renderWaterfall(), renderHeatmap(), renderHistogram()]);
}

function renderWaterfall() {
  const labels = [], measure = [], y = [], text = [];
  for (const s of S.result.waterfall) {
    let name = s.step;
    if (name === "stressed loss") name = "max(base,<br>floor)";
    if (name === "cap") { if (Math.abs(s.amount) < 0.005) continue; name = "cap at<br>worst case"; }
    // Two lines at most, each short: "+ liquidity" and "+ stress" on one line
    // overlapped at 1280 px.
    labels.push(name.replace("add-on: mc_error", "+ MC<br>error").replace("add-on: ", "+<br>"));
    if (s.step === "base" || s.step === "floor" || s.step === "stressed loss") { measure.push("absolute"); y.push(s.amount); }
    else if (s.step === "margin") { measure.push("total"); y.push(0); }
    else { measure.push("relative"); y.push(s.amount); }
    text.push(money(s.step === "margin" ? s.total : s.amount));
  }
  // Under 400 px (a phone, or a window just over 1100 px) seven labels do not
  // fit side by side.
  const narrow = $("waterfall").clientWidth < 400;
  return plot("waterfall", [{
    type: "waterfall", x: labels, y, measure, text, textposition: "outside", cliponaxis: false,
    connector: { line: { color: "#c5cfdc", width: 1 } },
    increasing: { marker: { color: "#d9822b" } }, decreasing: { marker: { color: "#1d8a4e" } },
    totals: { marker: { color: "#2457c5" } }, hovertemplate: "%{x}: %{text}<extra></extra>",
  }], baseLayout({ yaxis: { tickprefix: "$", separatethousands: true, gridcolor: "#eef1f5", rangemode: "tozero" },
    xaxis: { tickfont: { size: 11 }, tickangle: narrow ? -50 : 0 }, showlegend: false,
    margin: { l: 64, r: 10, t: 22, b: narrow ? 84 : 44 } }));
}

export function renderHistogram() {
  if (!S.result || !S.hist) return Promise.resolve();
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
  $("hist-hint").textContent = `${h.scenarios.toLocaleString("en-US")} draws · mean ${money(h.mean)} · tail beyond VaR ${(100 * (1 - h.confidence)).toFixed(1)}%`;
  return plot("histogram", [{
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
  }));
}

function renderHeatmap() {
  const c = S.result.report.correlation;
  const names = c.clusters.map(plotText);
  return plot("heatmap", [{
    type: "heatmap", x: names, y: names, z: c.matrix, zmin: 0, zmax: 1,
    colorscale: [[0, "#f7f9fc"], [0.35, "#b7c9ee"], [0.7, "#4f7bd6"], [1, "#1b3f91"]],
    texttemplate: "%{z:.2f}", textfont: { size: 10 }, hovertemplate: "%{y} × %{x}: %{z:.3f}<extra></extra>",
    colorbar: { thickness: 10, len: 0.9, tickfont: { size: 10 } }, xgap: 1, ygap: 1,
  }], baseLayout({ yaxis: { autorange: "reversed", tickfont: { size: 11 } }, xaxis: { tickfont: { size: 11 }, side: "bottom" },
    margin: { l: 64, r: 8, t: 8, b: 48 } }));
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

export function renderSensitivities() {
  const hint = $("sens-hint");
  if (S.sensError) { hint.textContent = `error: ${S.sensError}`; return Promise.resolve(); }
  const s = S.sens;
  if (!s) { hint.textContent = "computing…"; return Promise.resolve(); }
  const metric = S.ui.sens || "euler";
  let items = [];
  if (metric === "rho") items = Object.entries(s.rho || {});
  else if (metric === "loading") items = Object.entries(s.loading || {});
  else if (metric === "clusters") items = Object.entries(s.clusters || {});
  else items = Object.entries(s.positions || {}).map(([k, v]) => [k, v[metric]]);
  items = items.filter(([, v]) => v !== null && v !== undefined && Number.isFinite(v));
  items.sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  const shown = items.slice(0, 24).reverse();
  const dollars = !metric.startsWith("d_quantity");
  const more = items.length > shown.length ? ` (top ${shown.length} of ${items.length} by size)` : "";
  const sum = metric === "allocation" ? `allocation sum ${money(s.allocation_total)}` : `Euler sum ${money(s.euler_total)}`;
  const perDay = s.horizon_days === null || s.horizon_days === undefined ? ""
    : ` · ∂M/∂horizon ${money2(s.horizon_days)} per day`;
  hint.textContent = `margin ${money(s.margin)} · ${sum}${perDay}${more} · orange raises, green lowers the margin` +
    (S.sensMs ? ` · ${Math.round(S.sensMs)} ms` : "");
  return plot("sensitivities", [{
    type: "bar", orientation: "h", y: shown.map((x) => plotText(x[0])), x: shown.map((x) => x[1]),
    marker: { color: shown.map((x) => x[1] >= 0 ? "#d9822b" : "#1d8a4e") },
    text: shown.map((x) => dollars ? money(x[1]) : x[1].toFixed(3)), textposition: "outside", cliponaxis: false,
    hovertemplate: "%{y}: %{x:,.4f}<extra></extra>",
  }], baseLayout({ margin: { l: 150, r: 60, t: 4, b: 30 }, xaxis: { gridcolor: "#eef1f5", zerolinecolor: "#9aa6b6",
    tickprefix: dollars ? "$" : "", separatethousands: true }, yaxis: { tickfont: { size: 11 }, automargin: true }, showlegend: false }));
}
