// Pre-trade what-if preview (POST /api/what-if): while a quantity is being
// edited, the incremental margin of the edited row against the last computed
// book, from the server's session for that book (one simulation per book, no
// recompute), shown above the table before the edit is applied.
import { api } from "./api.js";
import { $, S, buildBook, money, money2, parseNum, rowContract } from "./state.js";

const PREVIEW_MS = 120;
let timer = null;
let shown = null; // {uid, gen, expected}: the row, result generation and book of the preview shown

// A book up to the order of its contracts and positions: its settings, its
// contracts, and each contract's net quantity (zero left out).
function canonical(book) {
  const { contracts, positions, ...rest } = book;
  const net = {};
  for (const p of positions) net[p.contract] = (net[p.contract] || 0) + p.quantity;
  return JSON.stringify([rest, contracts.map((c) => JSON.stringify(c)).sort(),
    Object.entries(net).filter(([, q]) => q !== 0).sort()]);
}

// The last computed book with trade `t` made: what the preview is of.
const afterTrade = (book, t) => ({ ...book, contracts: [...book.contracts, ...(t.new_contracts || [])],
  positions: [...book.positions, ...t.trades] });

// The trade an edited row makes against the last computed book: a change of the
// quantity of one of its contracts, or a contract new to it; null for any other
// edit (a price, type or key change is not a trade: it needs the full recompute),
// and null unless the table is the last computed book with this one trade made
// (a renamed contract is not a new one; two edited rows are not one trade).
export function tradeOf(r) {
  const t = rowTrade(r);
  return t && canonical(afterTrade(S.lastBook, t)) === canonical(buildBook().book) ? t : null;
}

function rowTrade(r) {
  const book = S.lastBook;
  if (!book) return null;
  const id = String(r.id).trim();
  const q = parseNum(r.quantity === "" ? "0" : r.quantity);
  if (!id || !Number.isFinite(q)) return null;
  const old = book.contracts.find((c) => c.id === id);
  if (!old) return { trades: [{ contract: id, quantity: q }], new_contracts: [rowContract(r)] };
  if (JSON.stringify(old) !== JSON.stringify(rowContract(r))) return null;
  const held = book.positions.filter((p) => p.contract === id).reduce((a, p) => a + p.quantity, 0);
  return q === held ? null : { trades: [{ contract: id, quantity: q - held }] };
}

function render(text, cls) {
  const box = $("whatif");
  box.textContent = text;
  box.className = "whatif " + cls;
  box.hidden = false;
}

export function hidePreview() {
  clearTimeout(timer);
  shown = null;
  $("whatif").hidden = true;
}

// Schedules the preview of row `r` (debounced); hides it when the edit is not a trade.
export function previewRow(r) {
  clearTimeout(timer);
  const t = S.rowErrors[r.uid] ? null : tradeOf(r);
  if (!t) { hidePreview(); return; }
  const gen = S.resultGen;
  const ask = async () => {
    render(`What-if ${t.trades[0].contract}: computing…`, "pending");
    const res = await api("POST", "/api/what-if", { book: S.lastBook, ...t });
    if (gen !== S.resultGen || res.superseded) return; // a newer book, or a newer preview
    if (res.busy) { timer = setTimeout(ask, 1000 * res.retryAfter); return; } // 503: ask again
    if (!res.ok) { render(`What-if ${t.trades[0].contract}: ${res.error.message}`, "bad"); return; }
    const w = res.data.what_if;
    const d = w.incremental;
    const verb = t.new_contracts ? "new contract" : `trade ${t.trades[0].quantity > 0 ? "+" : ""}${t.trades[0].quantity.toLocaleString("en-US")}`;
    render(`What-if ${t.trades[0].contract} (${verb}): margin ${money(w.margin_before)} → ${money(w.margin_after)} ` +
      `(${d >= 0 ? "+" : "−"}${money2(Math.abs(d))}), binding ${w.binding_before} → ${w.binding_after}`,
      d > 0 ? "up" : d < 0 ? "down" : "same");
    $("whatif").dataset.incremental = String(d);
    shown = { uid: r.uid, gen, expected: canonical(afterTrade(S.lastBook, t)) };
  };
  timer = setTimeout(ask, PREVIEW_MS);
}

// A new result was computed: the preview shown, if any, has been applied if the
// computed book is the one it previewed; otherwise it is out of date and hidden.
export function markApplied() {
  if (!shown || shown.gen === S.resultGen) return;
  if (shown.expected !== canonical(S.lastBook)) { hidePreview(); return; }
  const box = $("whatif");
  if (!box.hidden && !box.textContent.endsWith("(applied)")) box.textContent += " (applied)";
  shown = null;
}
