"""Exact worst-case loss: the largest loss over every joint outcome the model allows.

Each event's latent splits into regions between its cuts (in u = Phi(X), every
region has positive probability); distinct events move independently (every
loading is below 1, so each event keeps its own noise). Parlays tie the events of
their legs together. So the book splits into *components* — groups of events
connected through parlays — and

    worst case = sum over components of  max over the component's joint regions
                 of  sum_{contracts i in it} q_i (p_i - YES_i).

The joint regions of a component are enumerated into an :class:`OutcomeTable`
whose rows hold the YES pattern of the component's contracts. The table depends
on prices only through the order of the cuts, not on quantities, so the same
table gives the worst case — and its subgradient — for any quantities, inside
``jit`` (this is what lets the hedge optimiser keep the cap exact). A component
too large to enumerate is solved by branch and bound for the book's own
quantities (one row, exact at those quantities); if even that exceeds its
budget the component falls back to a conservative bound (parlays treated as free
of their legs) and the table says it is not exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax.numpy as jnp
import numpy as np
from jax import ops
from jaxtyping import Array, Float, Int

from ._book import Book

ENUMERATION_LIMIT = 4096
BRANCH_AND_BOUND_NODES = 2_000_000
_MERGE = 1e-9
# An event whose outcome probabilities sum to at least 1 - OUTCOME_FULL has no
# unlisted remainder (the simulation's atom_cuts uses the same rule).
OUTCOME_FULL = 1e-6


@dataclasses.dataclass(frozen=True)
class OutcomeTable:
    """Rows of joint YES patterns, grouped into components.

    - `component`: (rows,) component id of each row.
    - `index`: (rows, width) contract indices the row covers (padding: `pad`).
    - `yes`: (rows, width) 0/1 outcome of each covered contract.
    - `exact`: True when the table is exact for every quantity vector;
      `exact_at_book`: True when it is exact at the book's own quantities.
    """

    component: np.ndarray
    index: np.ndarray
    yes: np.ndarray
    exact: bool
    exact_at_book: bool

    def worst_case(self, quantity: np.ndarray, price: np.ndarray) -> float:
        """The worst-case loss in float64 NumPy (quantity/price per contract index)."""
        q = np.append(quantity, 0.0)
        p = np.append(price, 0.0)
        idx = np.where(self.index < 0, len(quantity), self.index)
        row = np.sum(q[idx] * (p[idx] - self.yes), axis=1)
        total = 0.0
        for comp in np.unique(self.component):
            total += float(np.max(row[self.component == comp]))
        return total

    def worst_outcome(self, quantity: np.ndarray, price: np.ndarray) -> np.ndarray:
        """A joint YES vector (per contract) that attains the worst case."""
        q = np.append(quantity, 0.0)
        p = np.append(price, 0.0)
        idx = np.where(self.index < 0, len(quantity), self.index)
        row = np.sum(q[idx] * (p[idx] - self.yes), axis=1)
        out = np.zeros(len(quantity))
        for comp in np.unique(self.component):
            rows = np.flatnonzero(self.component == comp)
            best = rows[np.argmax(row[rows])]
            sel = self.index[best] >= 0
            out[self.index[best][sel]] = self.yes[best][sel]
        return out


def _yes_intervals(book: Book, probs: np.ndarray, names: list[str], events: dict[str, list[int]]):
    """Every event's contracts as one flat list, event by event: ``(ev, lo,
    hi)``, the position of each one's event in `names` and the interval ``(lo,
    hi]`` of u = Phi(X) where it is YES."""
    sizes = np.array([len(events[e]) for e in names], dtype=np.int64)
    idx = np.concatenate([np.asarray(events[e], dtype=np.int64) for e in names])
    ev = np.repeat(np.arange(len(names)), sizes)
    p = probs[idx]
    kind = np.array([book.contracts[i].type for i in idx.tolist()])
    up = (kind == "above") | (kind == "binary")
    lo = np.where(up, 1.0 - p, 0.0)
    hi = np.where(up, 1.0, np.minimum(p, 1.0))
    start = np.concatenate([[0], np.cumsum(sizes)])
    for k, e in enumerate(names):
        if book.contracts[events[e][0]].type == "outcome":  # consecutive, in listing order
            a, b = start[k], start[k + 1]
            cum = np.cumsum(p[a:b])
            lo[a:b] = np.concatenate([[0.0], cum[:-1]])
            hi[a:b] = np.minimum(cum, 1.0)
            if cum[-1] >= 1.0 - OUTCOME_FULL:
                hi[b - 1] = 1.0  # as the simulation: no unlisted remainder (atom_cuts)
    return ev, lo, hi


def _edges(ev_count: int, ev: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Each event's region edges: its sorted cuts with 0 and 1, a cut within
    _MERGE above the last one kept merged into it, the last edge exactly 1.
    Returns ``(edge_ev, edge)``, sorted by event, then value."""
    e_all = np.concatenate([ev, ev, np.arange(ev_count), np.arange(ev_count)])
    v_all = np.concatenate([lo, hi, np.zeros(ev_count), np.ones(ev_count)])
    order = np.lexsort((v_all, e_all))
    e_s, v_s = e_all[order], v_all[order]
    new = np.ones(len(v_s), dtype=bool)
    new[1:] = (e_s[1:] != e_s[:-1]) | (v_s[1:] != v_s[:-1])
    e_u, v_u = e_s[new], v_s[new]  # each event's distinct points, ascending
    first = np.ones(len(v_u), dtype=bool)
    first[1:] = e_u[1:] != e_u[:-1]
    near = np.zeros(len(v_u), dtype=bool)
    near[1:] = ~first[1:] & (v_u[1:] - v_u[:-1] <= _MERGE)
    kept = ~near
    # A run of near points: whether each is kept depends on the last one kept
    # (not on its neighbour), so such events merge point by point.
    for e in np.unique(e_u[1:][near[1:] & near[:-1]]).tolist():
        at = np.flatnonzero(e_u == e)
        last = v_u[at[0]]
        for i in at[1:].tolist():
            kept[i] = v_u[i] - last > _MERGE
            last = v_u[i] if kept[i] else last
    # The last point of an event is 1; merged into the edge before it, that
    # edge becomes 1 unless it lies below 1 - _MERGE (then 1 is added).
    end = np.flatnonzero(np.append(first[1:], True))
    lost = end[~kept[end]]
    if len(lost):
        position = np.where(kept, np.arange(len(kept)), -1)
        before = np.maximum.accumulate(position)[lost]  # the edge 1 merged into
        kept[before[v_u[before] >= 1.0 - _MERGE]] = False
        kept[lost] = True
    return e_u[kept], v_u[kept]


def _intervals(ev_count: int, ev: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """The regions of every event and where each contract is YES, in O(n log n).

    In u = Phi(X) every contract is YES on one interval ``(lo, hi]``; an event's
    regions are the intervals between its edges (`_edges`). Returns ``(count,
    first, stop)``: the number of regions of each event, and per contract the
    range ``first <= r < stop`` of its event's regions where it is YES (region r
    is YES where lo < its midpoint <= hi)."""
    edge_ev, edge = _edges(ev_count, ev, lo, hi)
    inner = edge_ev[1:] == edge_ev[:-1]
    mid_ev = edge_ev[1:][inner]
    mids = ((edge[:-1] + edge[1:]) / 2)[inner]
    count = np.bincount(mid_ev, minlength=ev_count)
    before = np.concatenate([[0], np.cumsum(count)[:-1]])
    # Per query, the midpoints of its event at or below it (searchsorted's
    # side="right"): one sort of midpoints and queries, a midpoint first on a tie.
    n = len(lo)
    keys_ev = np.concatenate([mid_ev, ev, ev])
    keys = np.concatenate([mids, lo, hi])
    tag = np.concatenate([np.zeros(len(mids), np.int8), np.ones(2 * n, np.int8)])
    order = np.lexsort((tag, keys, keys_ev))
    at_or_below = np.cumsum(tag[order] == 0)
    found = np.empty(len(keys), dtype=np.int64)
    found[order] = at_or_below - before[keys_ev[order]]
    return count, found[len(mids):len(mids) + n], found[len(mids) + n:]


# Events of up to this many contracts get their patterns together, from index
# arrays of (rows x contracts) entries; a wider event gets its own by
# broadcasting, so its patterns take no more memory than its rows in the table.
_FLAT_WIDTH = 64


def events_regions(book: Book, probs, events: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Every event's YES patterns (its distinct regions x its contracts, in the
    order of ``events[e]``), from one sort of all the events' cuts.

    A region's pattern differs from the previous one's only where a contract's
    interval starts or ends, so the distinct patterns are found without
    comparing rows; regions that no contract covers all have the empty pattern,
    kept once. The output has one row per distinct region of each event."""
    names = list(events)
    if not names:
        return {}
    probs = np.asarray(probs, dtype=np.float64)
    ev, lo, hi = _yes_intervals(book, probs, names, events)
    E = len(names)
    count, first, stop = _intervals(E, ev, lo, hi)
    offset = np.concatenate([[0], np.cumsum(count)[:-1]])
    change = np.zeros(int(count.sum()), dtype=bool)
    change[offset] = True
    live = first < stop
    for bound in (first[live], stop[live]):
        at = ev[live]
        inside = bound < count[at]
        change[offset[at[inside]] + bound[inside]] = True
    rows = np.flatnonzero(change)
    row_ev = np.searchsorted(offset, rows, side="right") - 1
    k = rows - offset[row_ev]  # region of each row within its event
    sizes = np.bincount(ev, minlength=E)
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out: dict[int, np.ndarray] = {}
    wide = sizes > _FLAT_WIDTH
    for i in np.flatnonzero(wide).tolist():
        region = k[row_ev == i][:, None]
        c = slice(start[i], start[i] + sizes[i])
        pats = (region >= first[None, c]) & (region < stop[None, c])
        empty = np.flatnonzero(~pats.any(axis=1))
        out[i] = np.delete(pats, empty[1:], axis=0).astype(np.float64)
    narrow = ~wide[row_ev]
    if narrow.any():
        r_ev, r_k = row_ev[narrow], k[narrow]
        width = sizes[r_ev]
        row_start = np.concatenate([[0], np.cumsum(width)[:-1]])
        row = np.repeat(np.arange(len(r_k)), width)
        j = start[r_ev][row] + np.arange(len(row)) - row_start[row]
        pattern = (r_k[row] >= first[j]) & (r_k[row] < stop[j])
        blank = np.flatnonzero(np.logical_or.reduceat(pattern, row_start) == 0)
        keep = np.ones(len(r_k), dtype=bool)
        keep[blank[1:][r_ev[blank[1:]] == r_ev[blank[:-1]]]] = False  # a second empty row
        pattern = pattern[keep[row]].astype(np.float64)
        n_rows = np.bincount(r_ev[keep], minlength=E)
        blocks = np.split(pattern, np.cumsum(n_rows * sizes)[:-1])
        for i in np.flatnonzero(~wide).tolist():
            out[i] = blocks[i].reshape(int(n_rows[i]), int(sizes[i]))
    return {e: out[i] for i, e in enumerate(names)}


def build_outcome_table(book: Book, quantity: np.ndarray | None = None) -> OutcomeTable:
    """Enumerates the joint regions of every component of `book` (see module doc)."""
    n = len(book.contracts)
    probs = book.simulation_probabilities()
    events = book.events()
    names = list(events)
    ev_of = {}
    for e, idx in events.items():
        for i in idx:
            ev_of[i] = e
    # Union-find over events, joined by parlays.
    parent = {e: e for e in names}

    def find(e):
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    parlays = [i for i, c in enumerate(book.contracts) if c.type == "parlay"]
    ids = {c.id: i for i, c in enumerate(book.contracts)}
    for i in parlays:
        legs = [ev_of[ids[leg]] for leg in book.contracts[i].legs]
        for e in legs[1:]:
            parent[find(e)] = find(legs[0])
    groups: dict[str, list[str]] = {}
    for e in names:
        groups.setdefault(find(e), []).append(e)
    parlays_of: dict[str, list[int]] = {}
    for i in parlays:
        parlays_of.setdefault(find(ev_of[ids[book.contracts[i].legs[0]]]), []).append(i)

    regions = events_regions(book, probs, events)
    q = np.zeros(n) if quantity is None else np.asarray(quantity, dtype=np.float64)
    # Blocks of rows: (component, its contracts, YES patterns: rows x contracts).
    blocks: list[tuple[int, np.ndarray, np.ndarray]] = []
    exact = exact_at_book = True
    comp_id = 0
    for root, evs in groups.items():
        pls = parlays_of.get(root, [])
        cidx = np.array([i for e in evs for i in events[e]] + pls, dtype=np.int32)
        if not pls and len(evs) == 1:  # one event alone: its regions are the rows
            blocks.append((comp_id, cidx, regions[evs[0]]))
            comp_id += 1
            continue
        combos = math.prod(len(regions[e]) for e in evs)
        masks = _leg_masks(book, ids, events, regions, evs, pls)
        if combos <= ENUMERATION_LIMIT:
            pats = [_pattern(regions, evs, choice, masks)
                    for choice in itertools.product(*(range(len(regions[e])) for e in evs))]
            blocks.append((comp_id, cidx, np.array(pats)))
            comp_id += 1
            continue
        exact = False
        choice = _branch_and_bound(events, regions, evs, pls, masks, q)
        if choice is not None:
            blocks.append((comp_id, cidx, _pattern(regions, evs, choice, masks)[None, :]))
            comp_id += 1
            continue
        exact_at_book = False  # conservative: events and parlays as free components
        for e in evs:
            blocks.append((comp_id, np.asarray(events[e], dtype=np.int32), regions[e]))
            comp_id += 1
        for i in pls:
            blocks.append((comp_id, np.array([i], dtype=np.int32), np.array([[0.0], [1.0]])))
            comp_id += 1
    counts = [len(pats) for _, _, pats in blocks]
    width = max([len(cidx) for _, cidx, _ in blocks], default=1)
    comp = np.repeat(np.array([c for c, _, _ in blocks], dtype=np.int32), counts)
    index = np.full((len(comp), width), -1, dtype=np.int32)
    yes = np.zeros((len(comp), width))
    at = 0
    for (_, cidx, pats), rows in zip(blocks, counts, strict=True):
        index[at:at + rows, : len(cidx)] = cidx
        yes[at:at + rows, : len(cidx)] = pats
        at += rows
    return OutcomeTable(comp, index, yes, exact, exact_at_book)


def _leg_masks(book, ids, events, regions, evs, pls):
    """Per parlay: {event position: bool mask over that event's regions}."""
    pos = {e: k for k, e in enumerate(evs)}
    where = {j: (e, col) for e in evs for col, j in enumerate(events[e])}
    out = []
    for i in pls:
        masks: dict[int, np.ndarray] = {}
        for leg in book.contracts[i].legs:
            e, col = where[ids[leg]]
            m = regions[e][:, col] > 0.5
            masks[pos[e]] = masks.get(pos[e], True) & m
        out.append(masks)
    return out


def _pattern(regions, evs, choice, masks) -> np.ndarray:
    base = [regions[e][r] for e, r in zip(evs, choice)]
    par = [float(all(m[choice[k]] for k, m in leg.items())) for leg in masks]
    return np.concatenate([*base, np.array(par)])


def _branch_and_bound(events, regions, evs, pls, masks, q):
    """Minimises sum_i q_i YES_i over the component's joint regions (which
    maximises its loss) by depth-first branch and bound; None if over budget."""
    cost = [regions[e] @ q[events[e]] for e in evs]
    qp = np.array([q[i] for i in pls])
    order = sorted(range(len(evs)), key=lambda k: -sum(k in m for m in masks))
    rank = {k: r for r, k in enumerate(order)}
    min_rest = np.append(np.cumsum([cost[k].min() for k in order][::-1])[::-1], 0.0)
    last = [max(rank[k] for k in m) for m in masks]
    best = [math.inf, None]
    nodes = [0]
    choice = [0] * len(evs)

    def bound(depth):
        total = 0.0
        for p, m in enumerate(masks):
            alive = all(m[k][choice[k]] for k in m if rank[k] < depth)
            if alive:
                total += qp[p] if last[p] < depth else min(0.0, qp[p])
        return total

    def visit(depth, fixed):
        nodes[0] += 1
        if nodes[0] > BRANCH_AND_BOUND_NODES:
            raise _Budget
        if depth == len(order):
            val = fixed + bound(depth)
            if val < best[0]:
                best[0], best[1] = val, list(choice)
            return
        k = order[depth]
        for r in np.argsort(cost[k]):
            choice[k] = int(r)
            f = fixed + cost[k][r]
            if f + min_rest[depth + 1] + bound(depth + 1) < best[0] - 1e-12:
                visit(depth + 1, f)

    try:
        visit(0, 0.0)
    except _Budget:
        return None
    return tuple(best[1])


class _Budget(Exception):
    pass


def table_worst_case(
    quantity: Float[Array, " contracts"],
    price: Float[Array, " contracts"],
    component: Int[Array, " rows"],
    index: Int[Array, "rows width"],
    yes: Float[Array, "rows width"],
) -> Float[Array, ""]:
    """The worst-case loss from an outcome table, in JAX (differentiable in
    quantity and price; a subgradient where two joint outcomes tie). Padding
    rows point at a contract slot with zero quantity and have their own
    component."""
    row = jnp.sum(quantity[index] * (price[index] - yes), axis=1)
    best = ops.segment_max(row, component, num_segments=component.shape[0])
    return jnp.sum(jnp.where(jnp.isfinite(best), best, 0.0))
