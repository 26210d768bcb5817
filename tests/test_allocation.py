"""The allocation of the margin to positions (kinetic_jax._allocation): it adds up
to the reported margin in every regime — base or floor binding with every add-on
on, the worst-case cap binding, the max(0, .) case — and each add-on goes to the
positions that cause it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import above, binary, make_book, outcome, sensitivity_result

import kinetic_jax as kj
from kinetic_jax._allocation import pro_rata

N = 8192


def parts_of(report: kj.SensitivityReport, part: str) -> dict[str, float]:
    return report.allocation_parts[part]


def assert_adds_up(report: kj.SensitivityReport) -> None:
    total = sum(p["allocation"] for p in report.positions.values())
    assert total == pytest.approx(report.margin, abs=1e-9 * max(1.0, report.margin))
    assert report.allocation_total == pytest.approx(report.margin, abs=1e-9 * report.margin)
    for cid, p in report.positions.items():
        parts = sum(v[cid] for v in report.allocation_parts.values())
        assert p["allocation"] == pytest.approx(parts, abs=1e-9)
    assert set(report.allocation_parts) == {"base", "floor", "mc_error", "liquidity", "stress",
                                            "worst_case"}


def every_addon_book() -> kj.Book:
    """Crypto ladders, an election and eight games; open interest on two
    positions (one over the liquidity threshold, one under); a stress scenario
    (crypto down 3 sigma, A wins, every game lost) above max(base, floor)."""
    contracts = [
        above("B90", "BTC-DEC", 90_000, 0.78), above("B110", "BTC-DEC", 110_000, 0.33,
                                                      open_interest=4000.0),
        above("E3", "ETH-DEC", 3000, 0.5, "ETH", open_interest=1e6),
        outcome("A", "PRES", "A", 0.48), outcome("B", "PRES", "B", 0.37),
        *(binary(f"G{i}", 0.5) for i in range(8)),
    ]
    qty = {"B90": -800, "B110": 3000, "E3": 1000, "A": -2000, "B": 900,
           **{f"G{i}": 300 for i in range(8)}}
    book = make_book(contracts, qty, scenarios=N, confidence=0.9, stress_addon=True)
    stress = kj.Stress("crash", {"crypto": -3.0},
                       {"A": "YES", **{f"G{i}": "NO" for i in range(8)}})
    return dataclasses.replace(book, stress=(stress,))


def test_every_addon_adds_up_and_goes_to_its_causes():
    book = every_addon_book()
    m = kj.portfolio_margin(book, sampler="plain")  # the margin sensitivities divide
    assert m.binding in ("base", "floor")
    assert all(m.addons[k] > 0 for k in ("mc_error", "liquidity", "stress"))
    r = kj.sensitivities(book, estimator="hard")
    assert r.margin == pytest.approx(m.margin, rel=1e-6)
    assert_adds_up(r)
    tol = 1e-6 * m.margin
    # Each part adds up to its own figure.
    for name in ("mc_error", "liquidity", "stress"):
        assert sum(parts_of(r, name).values()) == pytest.approx(m.addons[name], abs=tol)
    x = max(m.base, m.floor)
    binding = "base" if m.base >= m.floor else "floor"
    assert sum(parts_of(r, binding).values()) == pytest.approx(x, abs=1e-5 * x)
    # Liquidity: only B110 is over its threshold (3000 / 4000 > 0.1; E3: 0.001):
    # its own term, rate * gross * (ratio - threshold), capped at its gross.
    gross = 3000 * 0.33
    assert parts_of(r, "liquidity") == pytest.approx(
        {cid: (min(gross, gross * (0.75 - 0.1)) if cid == "B110" else 0.0)
         for cid in r.positions}, rel=1e-6, abs=1e-6)  # float32: 643.5 to an ulp
    # MC error: pro rata to the Euler allocation of the binding part.
    euler = parts_of(r, binding)
    total = sum(euler.values())
    assert parts_of(r, "mc_error") == pytest.approx(
        {cid: m.addons["mc_error"] * e / total for cid, e in euler.items()}, rel=1e-5)
    # Stress: pro rata to each position's loss in the scenario (exact, from the
    # stress matrix).
    (scenario,) = kj.stress_losses(book)
    pm = kj.stress_matrix(book)[0]
    q = book.net_quantities()
    loss = {c.id: q[c.id] * (c.price - pm[i]) for i, c in enumerate(book.contracts)}
    assert sum(loss.values()) == pytest.approx(scenario.loss, rel=1e-9)
    assert parts_of(r, "stress") == pytest.approx(
        {cid: m.addons["stress"] * loss[cid] / scenario.loss for cid in r.positions},
        rel=1e-6, abs=1e-9)
    # The pure Euler figure is still there, under its own name: q times the
    # additive derivative of the margin.
    additive = np.asarray(sensitivity_result(book, "hard").additive[0], np.float64)
    for i, c in enumerate(book.contracts):
        if c.id in r.positions:
            assert r.positions[c.id]["euler"] == pytest.approx(q[c.id] * additive[i])
    # No add-on goes to a position that does not cause it.
    assert parts_of(r, "worst_case") == {cid: 0.0 for cid in r.positions}


def test_floor_binding_allocates_to_the_two_largest_clusters():
    # Long a BTC ladder, short an ETH ladder (correlated: the base nets them),
    # and eight small games (they lift the worst case above the floor).
    ladder = ((90, 0.8), (100, 0.6), (110, 0.4), (120, 0.2))
    contracts = [*(above(f"B{k}", "BTC-DEC", k, p) for k, p in ladder),
                 *(above(f"E{k}", "ETH-DEC", k, p, "ETH") for k, p in ladder),
                 *(binary(f"G{i}", 0.5) for i in range(8))]
    qty = {**{f"B{k}": 1000 for k, _ in ladder}, **{f"E{k}": -1000 for k, _ in ladder},
           **{f"G{i}": 100 for i in range(8)}}
    book = make_book(contracts, qty, scenarios=N, mc_error=False, confidence=0.95)
    r = kj.sensitivities(book, estimator="hard")
    m = kj.portfolio_margin(book)
    assert m.binding == "floor"
    assert_adds_up(r)
    es = {c.name: c.es for c in m.clusters}
    two = sorted(es, key=es.get)[-2:]
    clusters = {c.id: c.cluster for c in book.contracts}
    assert set(two) == {"BTC", "ETH"}
    for cid, p in r.positions.items():
        if clusters[cid] not in two:
            assert p["allocation"] == 0.0  # outside the floor's clusters: nothing
    # Each ladder's ES is homogeneous: its positions' allocations add up to it.
    for name in two:
        got = sum(p["allocation"] for cid, p in r.positions.items() if clusters[cid] == name)
        assert got == pytest.approx(es[name], rel=1e-5)


def test_cap_binding_allocates_the_worst_outcome_loss():
    # Shorts of 1000 on exclusive outcomes at 0.40 and 0.30 (SPEC.md §2.3): the
    # worst outcome is A winning: A loses 1000 * 0.6, B gains 1000 * 0.3.
    book = make_book([outcome("A", "E", "A", 0.4), outcome("B", "E", "B", 0.3)],
                     {"A": -1000, "B": -1000}, scenarios=N)
    r = kj.sensitivities(book, estimator="hard")
    assert r.binding == "worst_case" and r.margin == pytest.approx(300.0, rel=1e-6)
    assert_adds_up(r)
    assert {cid: p["allocation"] for cid, p in r.positions.items()} == pytest.approx(
        {"A": 600.0, "B": -300.0}, rel=1e-6)
    assert parts_of(r, "worst_case") == pytest.approx({"A": 600.0, "B": -300.0}, rel=1e-6)


def test_a_book_that_cannot_lose_gets_nothing():
    # Short every outcome of an event whose prices sum to 1.04 (an overround):
    # whatever wins, the book gains 40.
    book = make_book([outcome("A", "E", "A", 0.5), outcome("B", "E", "B", 0.54)],
                     {"A": -1000, "B": -1000}, scenarios=N)
    r = kj.sensitivities(book, estimator="hard")
    assert r.margin == 0.0
    assert {cid: p["allocation"] for cid, p in r.positions.items()} == {"A": 0.0, "B": 0.0}
    assert r.allocation_total == 0.0


def test_reference_book_allocation_adds_up():
    from test_whatif import REFERENCE

    # 4,096 scenarios: the count at which the sensitivity and sweep tests use the
    # reference book (one compiled program in the suite); adding up is exact at any.
    r = kj.sensitivities(kj.load_book(REFERENCE).with_settings(scenarios=4096))
    assert_adds_up(r)
    assert abs(r.euler_total - r.margin) > 1.0  # the pure Euler figure does not


@pytest.mark.parametrize("amount, weights, expected", [
    (10.0, [1.0, 3.0], [2.5, 7.5]),
    (10.0, [-1.0, 0.0, -3.0], [2.5, 0.0, 7.5]),  # no positive total: by size
    (10.0, [1.0, -1.0], [5.0, 5.0]),
    (9.0, [0.0, 0.0, 0.0], [3.0, 3.0, 3.0]),  # nothing to go by: equal shares
    (0.0, [1.0, 2.0], [0.0, 0.0]),
])
def test_pro_rata(amount, weights, expected):
    out = pro_rata(amount, np.array(weights))
    np.testing.assert_allclose(out, expected)
    assert out.sum() == pytest.approx(amount)
