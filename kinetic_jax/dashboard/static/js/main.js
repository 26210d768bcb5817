// kinetic_jax dashboard: the page. Talks to the JSON margin service of the same
// server (/api/...); no third-party code but plotly.js (served by the server,
// loaded after the first paint).
import { PAGE_ID, api, download } from "./api.js";
import { loadPlotly, renderHistogram, renderResult, renderSensitivities } from "./charts.js";
import { renderControlErrors, renderControls, renderTree, wireControls } from "./controls.js";
import {
  $, S, applyBook, buildBook, checkAll, clusterNames, el, hideBanner, hooks, locateServerError,
  setConfig, showBanner,
} from "./state.js";
import { renderPerps, renderViews, wirePerps } from "./perps.js";
import { addScenario, renderStress } from "./stress.js";
import { addRow, renderPositions, renderPositionsErrorsOnly } from "./table.js";
import { markApplied } from "./whatif.js";

const DEBOUNCE_MS = 300;
const BINS = 60;
const SENS_DELAY_MS = 250;

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
  if (!S.ui.auto) { $("footer").textContent = "Changed — press Re-run to recompute."; return; }
  S.scheduled = true;
  S.timer = setTimeout(compute, delay);
}
hooks.schedule = scheduleCompute;
hooks.renderTree = renderTree;

// While the server cannot be reached, ask its health every RECONNECT_MS; when it
// answers again (restarted, say), recompute the book on show without waiting
// for the next edit or Re-run.
const RECONNECT_MS = 3000;
let reconnect = null;
function watchServer() {
  if (reconnect !== null) return;
  reconnect = setInterval(async () => {
    const r = await api("GET", "/api/health");
    if (!r.ok) return;
    clearInterval(reconnect);
    reconnect = null;
    if (S.unreachable) compute();
  }, RECONNECT_MS);
}

// Says why a request failed: the server is gone, busy, or rejected the book.
function reportFailure(r, what) {
  if (r.unreachable) {
    S.unreachable = true;
    showBanner(`Cannot ${what}: ${r.error.message}. Showing the last result; retrying when it answers.`);
    $("footer").textContent = "The server cannot be reached — the figures shown are from the last successful computation.";
    watchServer();
    return;
  }
  if (r.busy) {  // 503: queue full, or still computing (a first compile); the server says which
    showBanner(`Server: ${r.error.message}. Retrying in ${r.retryAfter} s.`, true);
    return;
  }
  const where = locateServerError(r.error);
  if (r.status >= 500) showBanner(`Engine error: ${r.error.message}`);
  else if (where && (where.uid || where.uids)) showBanner(`The server rejected the book: ${r.error.message}`);
  else if (where && "stress" in where) showBanner(`The server rejected a stress scenario: ${r.error.message}`);
  else if (where && where.control) showBanner(`The server rejected the settings: ${r.error.message}`);
  else showBanner(`Error: ${r.error.message}`);
}

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
  const badSettings = Object.values(S.controlErrors);
  if (badSettings.length) {
    showBanner(`Invalid setting — ${badSettings.join("; ")}. Fix it to recompute.`);
    document.body.classList.add("stale");
    return;
  }
  const { book, rows, positions, stress } = buildBook();
  S.running = true; S.pending = false;
  const gen = ++S.gen;
  setBusy(true);
  // Whatever happens below (a chart or panel that throws included), the page
  // leaves the running state: a rejected promise here would otherwise keep it
  // "Computing…" for good and ignore every later change.
  try {
    const t0 = performance.now();
    const r = await api("POST", `/api/margin?sensitivities=false&bins=${BINS}`, book);
    const elapsed = performance.now() - t0;
    S.sentRows = rows; S.sentPositions = positions; S.sentStress = stress;
    if (r.ok) {
      S.serverError = null; S.unreachable = false;
      hideBanner();
      S.result = r.data;
      S.resultGen = gen;
      S.resultStress = stress;
      S.lastBook = book;
      markApplied();
      // The histogram comes with the report: one simulation, one request.
      S.hist = r.data.histogram; S.histGen = gen;
      renderTree();
      await renderResult(elapsed).catch((e) => showBanner(`Charts unavailable: ${e.message}`));
      await renderPerps();
      saveState(book);
      requestFollowUps(book, gen);
    } else if (r.superseded) {
      S.pending = true;
    } else if (r.busy) {
      reportFailure(r, "compute");
      setTimeout(compute, 1000 * r.retryAfter);  // the asked-for compute, auto-recompute or not
    } else if (r.unreachable) {
      reportFailure(r, "compute the margin");
      document.body.classList.add("stale");
    } else {
      S.serverError = r.error;
      reportFailure(r, "compute");
      document.body.classList.add("stale");
      $("footer").textContent = "Showing the last valid result: the current book was rejected (see the message above).";
    }
  } catch (e) {
    showBanner(`Display error: ${e.message}`);
  } finally {
    S.running = false;
    setBusy(false);
    renderPositions();
    renderStress();
    renderControlErrors();
  }
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
  if (gen === S.resultGen) {
    const t0 = performance.now();
    const r = await api("POST", "/api/sensitivities", book);
    if (r.busy && gen === S.resultGen) {  // 503: ask again (a computation that goes on is joined)
      S.followRunning = false;
      if (!S.follow) { S.follow = { book, gen }; S.followTimer = setTimeout(runFollowUps, 1000 * r.retryAfter); }
      return;
    }
    if (gen === S.resultGen && !r.superseded) {
      if (r.ok) { S.sens = r.data.sensitivities; S.sensMs = performance.now() - t0; S.sensError = null; }
      else { S.sens = null; S.sensError = r.error.message; }
      await renderSensitivities().catch((e) => { $("sens-hint").textContent = e.message; });
      S.sensGen = gen;
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
    else if (!r.superseded) reportFailure(r, "save the book");
  }, 150);
}
function saveUi() { if (S.result && !S.serverError && !Object.keys(S.rowErrors).length) saveState(buildBook().book); }

function renderSourceLine() {
  let src = S.source ? (S.source.path === "reference" ? "reference book" : S.source.path) : "";
  if (S.imported) src = `imported ${S.imported} (source: ${src})`;
  const saved = S.savedAt ? ` · saved ${new Date(S.savedAt).toLocaleString()}` : "";
  $("source-line").textContent = `${src}${saved}`;
}

async function exportToml() {
  if (checkAll()) { renderPositions(); return; }
  const r = await download("/api/export", buildBook().book);
  if (!r.ok) { showBanner(`Export failed: ${r.message}`); return; }
  const a = el("a", { href: URL.createObjectURL(r.blob), download: "book.toml" });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
}

async function importToml(e) {
  const file = e.target.files && e.target.files[0];
  e.target.value = "";
  if (!file) return;
  const text = await file.text();
  const r = await api("POST", "/api/import", text, { contentType: "application/toml" });
  if (!r.ok) {
    if (r.unreachable) reportFailure(r, `import ${file.name}`);
    else showBanner(`Import of ${file.name} refused: ${r.error.message}`);
    return;
  }
  applyBook(r.data.book);
  S.imported = file.name;
  renderSourceLine();
  S.result = null;
  renderControls(); renderPositions(); renderStress(); renderViews();
  showBanner(`Imported ${file.name}.`, true);
  compute();
}

async function resetBook() {
  if (!confirm("Discard all edits and go back to the source book?")) return;
  const r = await api("POST", "/api/state/reset");
  if (!r.ok) { reportFailure(r, "reset"); return; }
  applyBook(r.data.book);
  S.imported = null;
  renderSourceLine();
  S.ui = { ...S.ui, ...(r.data.ui || {}), filter: "All" };
  renderControls(); renderPositions(); renderStress(); renderViews();
  compute();
}

async function start() {
  loadPlotly().catch(() => showBanner("plotly.js could not be loaded: the charts are unavailable."));
  const config = await api("GET", "/api/config");
  if (!config.ok) { reportFailure(config, "load the configuration"); return; }
  setConfig(config.data);
  wireControls({
    compute, addRow, addScenario, exportToml, importToml, reset: resetBook,
    logy: () => { renderHistogram(); saveUi(); },
    sens: () => { renderSensitivities(); saveUi(); },
  });
  wirePerps({ saveUi });
  const r = await api("GET", "/api/state");
  if (!r.ok) { reportFailure(r, "load the dashboard state"); return; }
  S.source = r.data.source; S.savedAt = r.data.saved_at;
  S.ui = { ...S.ui, ...(r.data.ui || {}) };
  applyBook(r.data.book);
  if (S.ui.filter !== "All" && !clusterNames().includes(S.ui.filter)) S.ui.filter = "All";
  renderSourceLine();
  renderControls();
  renderPositions();
  renderStress();
  renderTree();
  renderViews();
  await compute();
  window.__dashboardReady = true;
}

// Exposed for tests and the console.
window.dashboard = {
  state: S, compute, buildBook, pageId: PAGE_ID,
  idle: () => !S.running && !S.pending && !S.scheduled,
};
start();
