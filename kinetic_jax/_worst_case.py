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


def event_intervals(book: Book, probs: list[float], idx: list[int]):
    """The regions of one event and where each contract is YES, in O(n log n).

    In u = Phi(X) every contract is YES on one interval ``(lo, hi]``; the
    event's regions are the intervals between its sorted (merged) cuts. Returns
    ``(mids, first, stop)``: the midpoint of each region, and per contract the
    range ``first <= r < stop`` of regions where it is YES.
    """
    contracts = [book.contracts[i] for i in idx]
    p = np.array([probs[i] for i in idx], dtype=np.float64)
    kind = np.array([c.type for c in contracts])
    if contracts[0].type == "outcome":  # consecutive intervals in listing order
        cum = np.cumsum(p)
        lo = np.concatenate([[0.0], cum[:-1]])
        hi = np.minimum(cum, 1.0)
        if cum[-1] >= 1.0 - OUTCOME_FULL:
            hi[-1] = 1.0  # as the simulation: no unlisted remainder (atom_cuts)
    else:
        up = (kind == "above") | (kind == "binary")
        lo = np.where(up, 1.0 - p, 0.0)
        hi = np.where(up, 1.0, np.minimum(p, 1.0))
    points = np.unique(np.concatenate([[0.0, 1.0], lo, hi]))
    merged = [float(points[0])]
    for x in points[1:].tolist():
        if x - merged[-1] > _MERGE:
            merged.append(x)
    if merged[-1] < 1.0 - _MERGE:
        merged.append(1.0)
    else:
        merged[-1] = 1.0
    edges = np.array(merged)
    mids = (edges[:-1] + edges[1:]) / 2
    # lo < m  <=>  r >= first;   m <= hi  <=>  r < stop.
    first = np.searchsorted(mids, lo, side="right")
    stop = np.searchsorted(mids, hi, side="right")
    return mids, first, stop


def event_regions(book: Book, probs: list[float], idx: list[int]) -> np.ndarray:
    """YES patterns (regions x contracts of the event) of one event's distinct
    regions. The regions come from the sorted cuts in O(n log n); a region's
    pattern differs from the previous one's only where a contract's interval
    starts or ends, so the distinct patterns are found without comparing rows
    (the output itself has one row per distinct region)."""
    mids, first, stop = event_intervals(book, probs, idx)
    live = first < stop
    change = np.zeros(len(mids), dtype=bool)
    change[0] = True
    for bound in (first[live], stop[live]):
        bound = bound[bound < len(mids)]
        change[bound] = True
    keep = np.flatnonzero(change)
    r = keep[:, None]
    pats = ((r >= first[None, :]) & (r < stop[None, :])).astype(np.float64)
    # Regions that no contract covers all have the empty pattern: keep one.
    empty = ~pats.any(axis=1)
    if empty.sum() > 1:
        drop = np.flatnonzero(empty)[1:]
        pats = np.delete(pats, drop, axis=0)
    return pats


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

    regions = {e: event_regions(book, probs, events[e]) for e in names}
    q = np.zeros(n) if quantity is None else np.asarray(quantity, dtype=np.float64)
    rows: list[tuple[int, list[int], np.ndarray]] = []
    exact = exact_at_book = True
    comp_id = 0
    for root, evs in groups.items():
        pls = parlays_of.get(root, [])
        cidx = np.array([i for e in evs for i in events[e]] + pls, dtype=np.int32)
        if not pls and len(evs) == 1:  # one event alone: its regions are the rows
            rows.extend((comp_id, cidx, r) for r in regions[evs[0]])
            comp_id += 1
            continue
        combos = math.prod(len(regions[e]) for e in evs)
        masks = _leg_masks(book, ids, events, regions, evs, pls)
        if combos <= ENUMERATION_LIMIT:
            for choice in itertools.product(*(range(len(regions[e])) for e in evs)):
                rows.append((comp_id, cidx, _pattern(regions, evs, choice, masks)))
            comp_id += 1
            continue
        exact = False
        choice = _branch_and_bound(events, regions, evs, pls, masks, q)
        if choice is not None:
            rows.append((comp_id, cidx, _pattern(regions, evs, choice, masks)))
            comp_id += 1
            continue
        exact_at_book = False  # conservative: events and parlays as free components
        for e in evs:
            for r in regions[e]:
                rows.append((comp_id, events[e], r))
            comp_id += 1
        for i in pls:
            rows.append((comp_id, [i], np.zeros(1)))
            rows.append((comp_id, [i], np.ones(1)))
            comp_id += 1
    width = max([len(r[1]) for r in rows], default=1)
    comp = np.array([r[0] for r in rows], dtype=np.int32)
    index = np.full((len(rows), width), -1, dtype=np.int32)
    yes = np.zeros((len(rows), width))
    for k, (_, cidx, pat) in enumerate(rows):
        index[k, : len(cidx)] = cidx
        yes[k, : len(cidx)] = pat
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
