"""The exact worst-case loss (SPEC.md §2.3) against brute-force enumeration of
every joint outcome (tests/helpers.py, written from the spec alone)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    above,
    below,
    binary,
    books,
    brute_worst_case,
    enumerate_outcomes,
    exact_losses,
    full_collateral,
    make_book,
    outcome,
    parlay,
    prices_of,
    quantities_of,
)
from hypothesis import assume, given, settings, strategies as st

import kinetic_jax as kj
from kinetic_jax import _worst_case


def _table_worst(book, q=None):
    q = quantities_of(book) if q is None else q
    table = kj.build_outcome_table(book, q)
    return table, table.worst_case(q, prices_of(book))


@settings(max_examples=80, deadline=None)
@given(books(max_games=3), st.integers(0, 2**32 - 1))
def test_worst_case_equals_enumeration_for_any_quantities(book, seed):
    """For random books of every contract type, the outcome table's worst case
    equals brute force at the book's quantities and, since an enumerated table
    does not depend on quantities, at other random quantities too; it never
    exceeds full collateral, and the reported worst joint outcome is one the
    model allows and attains it."""
    table, worst = _table_worst(book)
    assert table.exact and table.exact_at_book
    assert worst == pytest.approx(brute_worst_case(book), abs=1e-9)
    assert worst <= full_collateral(book) + 1e-9
    yes, _ = enumerate_outcomes(book)
    q, p = quantities_of(book), prices_of(book)
    pattern = table.worst_outcome(q, p)
    assert any(np.array_equal(pattern, row) for row in yes)
    assert float((p - pattern) @ q) == pytest.approx(worst, abs=1e-9)
    rng = np.random.default_rng(seed)
    other = rng.normal(0, 500, len(q))
    losses = (p[None, :] - yes) @ other
    assert table.worst_case(other, p) == pytest.approx(losses.max(), abs=1e-9)
    # The table is exactly the set of joint outcomes: per component, its rows are
    # the distinct projections of the enumerated outcomes onto its contracts.
    for comp in np.unique(table.component):
        rows = np.flatnonzero(table.component == comp)
        cols = table.index[rows[0]][table.index[rows[0]] >= 0]
        got = {tuple(table.yes[r, : len(cols)].astype(int)) for r in rows}
        assert got == {tuple(r) for r in yes[:, cols].astype(int)}


def test_jax_table_worst_case_matches_numpy():
    """The padded JAX form used in the jitted core (table_worst_case on
    BookArrays) equals the float64 NumPy evaluation for several quantity vectors."""
    book = make_book(
        [above("A1", "E", 1, 0.6), above("A2", "E", 2, 0.4), below("B0", "E", 0, 0.2),
         binary("G0", 0.5), binary("G1", 0.3), parlay("P", ["A2", "G0"], 0.2),
         parlay("Q", ["G0", "G1"], 0.1)],
        {"A1": 10.0},
    )
    arrays, layout = kj.book_arrays(book)
    rng = np.random.default_rng(0)
    n = len(book.contracts)
    for _ in range(5):
        q = rng.normal(0, 100, n)
        qpad = jnp.zeros_like(arrays.quantity).at[:n].set(jnp.asarray(q, jnp.float32))
        got = jax.jit(_worst_case.table_worst_case)(qpad, arrays.price, arrays.wc_component,
                                                    arrays.wc_index, arrays.wc_yes)
        expected = layout.table.worst_case(q, prices_of(book))
        assert float(got) == pytest.approx(expected, rel=1e-5)
        losses = (prices_of(book)[None, :] - enumerate_outcomes(book)[0]) @ q
        assert expected == pytest.approx(losses.max(), abs=1e-9)
        # Its gradient in the quantities is p - YES of the worst joint outcome
        # (unique for continuous random quantities).
        grad = jax.jit(jax.grad(_worst_case.table_worst_case))(
            qpad, arrays.price, arrays.wc_component, arrays.wc_index, arrays.wc_yes)
        worst = enumerate_outcomes(book)[0][np.argmax(losses)]
        np.testing.assert_allclose(np.asarray(grad)[:n], prices_of(book) - worst, atol=1e-6)


def test_ladder_within_tolerance_keeps_each_cut():
    """Above 100k at 0.30 (YES iff u > 0.70) and above 110k at 0.31 (YES iff
    u > 0.69) violate nesting by 0.01, inside the 0.02 tolerance: each contract
    keeps its own cut, so the sliver 0.69 < u <= 0.70 (110k YES, 100k NO) is a
    possible outcome and the worst case must count it."""
    contracts = [above("X100", "E", 100, 0.30), above("X110", "E", 110, 0.31)]
    # Short 100k, long 110k: both NO or both YES lose 10; the sliver gains 990.
    book = make_book(contracts, {"X100": -1000, "X110": 1000})
    assert brute_worst_case(book) == pytest.approx(10.0)
    assert _table_worst(book)[1] == pytest.approx(10.0)
    # Long 100k, short 110k: the sliver loses 300 + 690 = 990.
    flipped = make_book(contracts, {"X100": 1000, "X110": -1000})
    assert brute_worst_case(flipped) == pytest.approx(990.0)
    assert _table_worst(flipped)[1] == pytest.approx(990.0)


def test_parlay_of_two_outcomes_of_one_event_never_pays():
    book = make_book(
        [kj.Contract("A", "Election", "outcome", 0.5, event="V", outcome="a"),
         kj.Contract("B", "Election", "outcome", 0.4, event="V", outcome="b"),
         parlay("AB", ["A", "B"], 0.05)],
        {"AB": 1000},
    )
    # A parlay on two exclusive outcomes is never YES: long 1000 loses 50 surely.
    assert brute_worst_case(book) == pytest.approx(50.0)
    assert _table_worst(book)[1] == pytest.approx(50.0)
    losses, prob = exact_losses(book)
    assert np.all(losses == pytest.approx(50.0)) and prob.sum() == pytest.approx(1.0)


# --- 15. components beyond the enumeration limit: branch and bound -------------------------


def big_parlay_book(seed: int, games: int = 13):
    """`games` games and a BTC ladder (three regions) chained by parlays into one
    component of 3 * 2^games joint regions (> ENUMERATION_LIMIT), with random
    quantities on every contract."""
    rng = np.random.default_rng(seed)
    contracts = [binary(f"G{i}", float(np.round(rng.uniform(0.2, 0.8), 3)))
                 for i in range(games)]
    contracts += [above("B1", "BTC-E", 1, 0.6), above("B2", "BTC-E", 2, 0.3)]
    legs = [(f"G{i}", f"G{i + 1}") for i in range(0, games - 1)]
    legs += [("G0", "G5", "G9"), (f"G{games - 1}", "B2"), ("B1", "G3")]
    contracts += [parlay(f"P{k}", lg, float(np.round(rng.uniform(0.05, 0.3), 3)))
                  for k, lg in enumerate(legs)]
    qty = {c.id: float(np.round(rng.normal(0, 400))) for c in contracts}
    return make_book(contracts, qty)


@pytest.mark.parametrize("seed", range(6))
def test_branch_and_bound_equals_brute_force(seed):
    book = big_parlay_book(seed)
    assert 3 * 2**13 > _worst_case.ENUMERATION_LIMIT
    table, worst = _table_worst(book)
    assert not table.exact and table.exact_at_book  # solved, not enumerated
    assert len(table.component) == 1  # one row: the optimum at these quantities
    assert worst == pytest.approx(brute_worst_case(book), abs=1e-6)


def test_branch_and_bound_in_the_margin_report():
    book = big_parlay_book(7)
    r = kj.portfolio_margin(book, scenarios=16384)
    assert r.worst_case_exact
    assert r.worst_case_loss == pytest.approx(brute_worst_case(book), rel=2e-6)
    assert r.worst_case_loss < r.full_collateral
    assert 0 <= r.margin <= r.worst_case_loss


def test_branch_and_bound_over_budget_falls_back_to_an_upper_bound(monkeypatch):
    """With a node budget too small to finish, the component is bounded by
    treating parlays as free of their legs: not exact, but never below the true
    worst case and never above full collateral."""
    book = big_parlay_book(3)
    monkeypatch.setattr(_worst_case, "BRANCH_AND_BOUND_NODES", 20)
    table, bound = _table_worst(book)
    assert not table.exact_at_book
    truth = brute_worst_case(book)
    assert truth - 1e-6 <= bound <= full_collateral(book) + 1e-6
    assert bound > truth + 1.0  # here the relaxation is strictly loose


# ---------------------------------------------------------------------------
# The regions of every event in O(n log n), and large events
# ---------------------------------------------------------------------------
def _merged_edges(cuts) -> list[float]:
    """An event's region edges by the definition, point by point: its distinct
    cuts with 0 and 1, ascending; a cut within _MERGE above the last edge kept
    joins it; the last edge is 1."""
    points = sorted({0.0, 1.0, *cuts})
    merged = [points[0]]
    for x in points[1:]:
        if x - merged[-1] > _worst_case._MERGE:
            merged.append(x)
    if merged[-1] < 1.0 - _worst_case._MERGE:
        merged.append(1.0)
    else:
        merged[-1] = 1.0
    return merged


def _pairwise_regions(book, probs, idx):
    """The definition, evaluated directly: every region between the merged
    cuts, each contract tested at the region's midpoint, distinct rows."""
    los, his, cum = [], [], 0.0
    for i in idx:
        c, p = book.contracts[i], probs[i]
        if c.type in ("above", "binary"):
            lo, hi = 1.0 - p, 1.0
        elif c.type == "below":
            lo, hi = 0.0, p
        else:
            lo, hi = cum, cum + p
            cum += p
        los.append(lo)
        his.append(min(hi, 1.0))
    if book.contracts[idx[0]].type == "outcome" and cum >= 1.0 - _worst_case.OUTCOME_FULL:
        his[-1] = 1.0
    merged = _merged_edges([*los, *his])
    mids = [(a + b) / 2 for a, b in zip(merged[:-1], merged[1:])]
    return {tuple(float(lo < m <= hi) for lo, hi in zip(los, his)) for m in mids}


# Near-equal cuts: one pair within _MERGE, and runs of three or four whose
# neighbours are within _MERGE but whose ends are not (merged point by point).
_NEAR = [0.3, 0.3 + 1e-10, 0.3 + 6e-10, 0.3 + 1.2e-9, 0.3 + 1.8e-9]
_CUTS = st.one_of(st.floats(0.01, 0.99), st.sampled_from([*_NEAR, 0.7, 0.5]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["above", "below"]), _CUTS), min_size=1,
                max_size=12),
       st.lists(st.floats(0.01, 0.99), min_size=1, max_size=8), st.booleans())
def test_event_regions_equal_the_pairwise_definition(ladder, outcomes, full):
    """Ladders (above and below mixed, near-equal cuts merged) and outcome
    events (summing below 1, or to 1 within the no-remainder slack): the
    regions found from the sorted cuts are exactly the distinct midpoint
    patterns, each once."""
    # Thresholds in the order of the cuts (a nested ladder; ties and near-ties merge).
    ordered = sorted(ladder, key=lambda t: t[1])
    contracts = [(above(f"L{i}", "E", float(i), 1.0 - u) if kind == "above"
                  else below(f"L{i}", "E", float(i), u)) for i, (kind, u) in enumerate(ordered)]
    # One outcome summing to 1 - 1e-9 would be priced above 1 - 1e-6 (refused).
    assume(len(outcomes) > 1 or not full)
    total = sum(outcomes)
    target = 1.0 - 1e-9 if full else min(total, 0.9)
    contracts += [outcome(f"O{i}", "F", f"o{i}", p * target / total)
                  for i, p in enumerate(outcomes)]
    book = make_book(contracts, ladder_tolerance=0.5, outcome_overround=1.05)
    probs = book.simulation_probabilities()
    events = book.events()
    together = _worst_case.events_regions(book, probs, events)  # one sort of every event's cuts
    for e, idx in events.items():
        rows = _worst_case.events_regions(book, probs, {e: idx})[e]  # the event alone
        np.testing.assert_array_equal(together[e], rows)
        got = [tuple(r) for r in rows.tolist()]
        assert len(got) == len(set(got))
        assert set(got) == _pairwise_regions(book, probs, idx)


_EDGE_CUTS = st.one_of(st.floats(0.0, 1.0),
                       st.sampled_from([*_NEAR, 5e-10, 1.0 - 5e-10, 1.0 - 1.5e-9, 1.0 - 2e-9]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_EDGE_CUTS, min_size=1, max_size=10), min_size=1, max_size=6))
def test_every_events_edges_at_once_equal_the_point_by_point_merge(events):
    """`_edges` merges the cuts of every event in one sort; per event that is
    the point-by-point rule, with runs of near cuts (each within _MERGE of the
    next, the run wider) and cuts within _MERGE of 0 or 1, which no validated
    price reaches (prices lie in [1e-6, 1 - 1e-6])."""
    ev = np.concatenate([np.full(len(c), k) for k, c in enumerate(events)])
    cuts = np.concatenate([np.asarray(c, dtype=np.float64) for c in events])
    back = np.arange(len(cuts))[::-1]  # not grouped by event, nor sorted
    edge_ev, edge = _worst_case._edges(len(events), ev[back], cuts[back], cuts[back])
    assert np.all(np.diff(edge_ev) >= 0)
    for k, c in enumerate(events):
        assert edge[edge_ev == k].tolist() == _merged_edges(c)


def test_large_events_build_fast():
    """A 2,000-strike ladder and a 2,000-outcome event: the regions come from
    one sort (the table itself has one row per region, as wide as the event),
    and the worst case still equals the direct evaluation over every region."""
    import time

    n = 2000
    ladder = [above(f"L{i}", "E", 1000.0 + i, 0.99 - 0.98 * i / n) for i in range(n)]
    outcomes = [outcome(f"O{i}", "F", f"o{i}", 1.0 / (n + 1)) for i in range(n)]
    rng = np.random.default_rng(0)
    for contracts in (ladder, outcomes):
        t0 = time.perf_counter()
        book = make_book(contracts, {c.id: float(rng.integers(-50, 50)) for c in contracts})
        q = quantities_of(book)
        table = kj.build_outcome_table(book, q)
        elapsed = time.perf_counter() - t0
        assert elapsed < 10.0, elapsed  # pairwise: minutes
        assert table.exact and len(table.component) == n + 1
        p = prices_of(book)
        direct = max((p - np.array(r)) @ q for r in _pairwise_regions(
            book, book.simulation_probabilities(), list(range(n))))
        assert table.worst_case(q, p) == pytest.approx(direct, abs=1e-6)


def test_ladder_check_is_not_pairwise():
    """20,000 strikes validate in seconds (the pairwise check took 7.8 s for
    5,000), and the largest violation is the one named."""
    import time

    n = 20_000
    contracts = [above(f"L{i}", "E", 1000.0 + i, 0.99 - 0.98 * i / n) for i in range(n)]
    t0 = time.perf_counter()
    make_book(contracts)
    assert time.perf_counter() - t0 < 5.0
    bad = contracts[:10] + [above("X", "E", 1004.5, 0.2)]  # cut 0.8: far above its neighbours
    with pytest.raises(kj.BookError, match="inconsistent ladder") as info:
        make_book(bad)
    assert "'L4'" in str(info.value) or "'X'" in str(info.value)
    assert info.value.field == "contracts (event 'E')"
