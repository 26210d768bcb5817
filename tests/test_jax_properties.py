"""Invariants of the margin rule (SPEC.md §2.5) over random books, and the JAX
contract of the core: no recompilation when only values change, vmap over books
sharing one simulation, and the float64 path."""

from __future__ import annotations

import dataclasses
import gc
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    above,
    assert_tree_allclose,
    binary,
    books,
    brute_worst_case,
    check_grad,
    full_collateral,
    make_book,
    outcome,
    parlay,
    parlay_book,
    tree_allclose,
)
from hypothesis import HealthCheck, given, settings, strategies as st

import kinetic_jax as kj
from kinetic_jax import _margin

# --- 11. invariants -------------------------------------------------------------------


def check_invariants(book: kj.Book, r: kj.MarginReport) -> None:
    scale = max(1.0, r.full_collateral)
    tol = 2e-6 * scale  # float32 rounding of dollar amounts
    # Exact parts.
    assert r.full_collateral == pytest.approx(full_collateral(book), rel=1e-6, abs=1e-6)
    assert r.worst_case_loss == pytest.approx(brute_worst_case(book), abs=tol)
    assert r.worst_case_loss <= r.full_collateral + tol
    # 0 <= margin <= worst case (a book that cannot lose needs nothing).
    assert 0.0 <= r.margin <= max(r.worst_case_loss, 0.0) + tol
    # Every simulated scenario is an outcome the model allows, so no ES exceeds
    # the worst case, and no cluster's ES exceeds its full collateral.
    assert r.base <= r.worst_case_loss + tol
    for c in r.clusters:
        assert c.es <= c.gross + tol
    assert sum(c.gross for c in r.clusters) == pytest.approx(r.full_collateral, abs=tol)
    # Floor: the two largest cluster ES (clusters ETH, SOL, OIL are always empty
    # in these books, so the second largest is >= 0 and floor >= max cluster ES).
    es = sorted((c.es for c in r.clusters), reverse=True)
    assert r.floor == pytest.approx(es[0] + es[1], abs=tol)
    assert r.floor >= es[0] - tol
    # Add-ons: non-negative; the MC buffer is z = 2 standard errors of the binding
    # stressed loss; no open interest, so no liquidity add-on.
    assert all(v >= 0 for v in r.addons.values())
    assert r.standard_error == (r.base_standard_error if r.base >= r.floor
                                else r.floor_standard_error)
    assert r.addons["mc_error"] == pytest.approx(2 * r.standard_error, rel=1e-5, abs=1e-6)
    assert r.addons["liquidity"] == 0.0
    # The margin rule and its binding component (SPEC.md §2.5).
    uncapped = max(r.base, r.floor) + sum(r.addons.values())
    assert r.margin == pytest.approx(max(0.0, min(r.worst_case_loss, uncapped)), abs=tol)
    expected = ("worst_case" if r.worst_case_loss <= uncapped
                else "base" if r.base >= r.floor else "floor")
    if abs(r.worst_case_loss - uncapped) > tol:
        assert r.binding == expected
    else:  # a tie up to float32 rounding: either side of it is right
        assert r.binding in ("worst_case", "base" if r.base >= r.floor else "floor")
    # Capital released.
    if r.full_collateral > 0:
        assert r.capital_released == pytest.approx(1 - r.margin / r.full_collateral,
                                                   abs=1e-6)
    else:
        assert r.capital_released == 0.0


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books(scenarios=8192))
def test_invariants_of_random_books(book):
    check_invariants(book, kj.portfolio_margin(book))


@st.composite
def reshaped_books(draw):
    """One fixed structure (a ladder, an outcome event, games, parlays), random
    values: prices (ladder kept nested), quantities, confidence and seed. The
    shapes stay in one bucket, so this explores values without recompiling."""
    u = sorted(draw(st.lists(st.floats(0.05, 0.95), min_size=2, max_size=2)))
    ps = [round(draw(st.floats(0.05, 0.95)), 3) for _ in range(3)]
    a, b = sorted(draw(st.lists(st.floats(0.05, 0.45), min_size=2, max_size=2)))
    contracts = [
        above("L1", "LAD", 1, round(1 - u[0], 3), "BTC"),
        above("L2", "LAD", 2, round(1 - u[1], 3), "BTC"),
        outcome("OA", "VOTE", "a", round(a, 3)),
        outcome("OB", "VOTE", "b", round(b, 3)),
        *(binary(f"G{i}", p) for i, p in enumerate(ps)),
        parlay("P1", ["G0", "G1"], round(draw(st.floats(0.02, 0.5)), 3)),
        parlay("P2", ["G2", "L2"], round(draw(st.floats(0.02, 0.5)), 3)),
    ]
    qty = {c.id: draw(st.sampled_from([-1.0, 0.0, 1.0])) * draw(st.integers(1, 40)) * 25.0
           for c in contracts}
    return make_book(contracts, qty, scenarios=8192,
                     confidence=draw(st.sampled_from([0.99, 0.985, 0.975])),
                     seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reshaped_books())
def test_invariants_over_values(book):
    check_invariants(book, kj.portfolio_margin(book))


def test_neither_position_nor_contract_order_changes_the_report():
    """Positions are summed into net quantities: their order changes nothing.
    Each event's draws are keyed by a hash of its name, not its place in the
    book, so reversing the contracts changes no figure either, under the default
    (these games' exact law) and under plain draws alike."""
    book = make_book(
        [binary(f"G{i}", p) for i, p in enumerate([0.3, 0.45, 0.6, 0.2, 0.7, 0.55])],
        {"G0": 500, "G1": -800, "G2": 300, "G3": -400, "G4": 900, "G5": -250},
        scenarios=4096,
    )
    r = kj.portfolio_margin(book)
    swapped = dataclasses.replace(book, positions=book.positions[::-1])
    assert kj.portfolio_margin(swapped).to_dict() == r.to_dict()
    permuted = dataclasses.replace(book, contracts=book.contracts[::-1])
    assert r.exact_positions == 6 and r.base_standard_error == 0.0
    for sampler in (None, "plain"):
        a, b = (kj.portfolio_margin(x, sampler=sampler) for x in (book, permuted))
        assert (a.margin, a.base, a.base_standard_error, a.var, a.worst_case_loss,
                a.full_collateral) == (b.margin, b.base, b.base_standard_error, b.var,
                                       b.worst_case_loss, b.full_collateral)
        assert [c.es for c in a.clusters] == [c.es for c in b.clusters]


# --- 12. no recompilation when only values change ---------------------------------------


CompileCounter = kj.CompileCounter


def five_contract_book(shift: float = 0.0, q: float = 1.0, **settings):
    contracts = [
        above("B1", "BTC-E", 1, round(0.6 + shift, 3), "BTC"),
        above("B2", "BTC-E", 2, round(0.3 + shift, 3), "BTC"),
        above("E1", "ETH-E", 1, round(0.5 - shift, 3), "ETH"),
        binary("G0", round(0.4 + shift, 3)),
        binary("G1", round(0.55 - shift, 3)),
    ]
    qty = {"B1": 1000 * q, "B2": -700 * q, "E1": -500 * q, "G0": 300 * q, "G1": -200 * q}
    return make_book(contracts, qty, **settings)


def test_portfolio_margin_does_not_recompile_for_new_values():
    """Second call: other prices, quantities, rho, loading, confidence (same tail
    bucket) and seed — zero traces and zero compilations. Then one more held
    contract inside the padding bucket (5 -> 6 contracts of 8 slots): still zero.
    A book that leaves the bucket (8 contracts -> 16 slots) must compile, which
    shows the counter counts."""
    first = five_contract_book(scenarios=16384)
    kj.portfolio_margin(first)
    assert kj.tail_size(16384, 0.99) == kj.tail_size(16384, 0.9905)
    h = first.hierarchy.replace(rho={"crypto": 0.8, "risk": 0.2}, loading={"BTC": 0.7})
    other = five_contract_book(0.05, -2.5, scenarios=16384, confidence=0.9905, seed=9)
    other = other.with_hierarchy(h)
    with CompileCounter() as counter:
        r = kj.portfolio_margin(other)
    assert (counter.traces, counter.compiles) == (0, 0)
    assert r.correlation[0][1] == pytest.approx(0.8) and r.seed == 9

    grown = make_book([*first.contracts, binary("G2", 0.35)],
                      {**first.net_quantities(), "G2": 400.0}, scenarios=16384)
    assert len(kj.book_arrays(grown)[0].quantity) == len(kj.book_arrays(first)[0].quantity)
    with CompileCounter() as counter:
        kj.portfolio_margin(grown)
    assert (counter.traces, counter.compiles) == (0, 0)

    big = make_book([*grown.contracts, binary("G3", 0.5), binary("G4", 0.5)],
                    grown.net_quantities(), scenarios=16384)
    with CompileCounter() as counter:
        kj.portfolio_margin(big)
    assert counter.compiles >= 1


def test_margin_core_traces_once():
    """The jitted core itself, under eqx.debug.assert_max_traces(max_traces=1):
    two calls with different values of one bucket size trace once; a third call
    outside the bucket would be a second trace and raises."""
    core = eqx.filter_jit(eqx.debug.assert_max_traces(_margin.margin_arrays, max_traces=1))

    def call(book):
        arrays, _, params = kj.margin_inputs(book)
        s = book.settings
        return core(arrays, params, jax.random.key(s.seed), s.scenarios,
                    kj.tail_size(s.scenarios, s.confidence))

    call(five_contract_book(scenarios=4096))
    call(five_contract_book(-0.1, 3.0, scenarios=4096, seed=4, confidence=0.985))
    wide = make_book([binary(f"G{i}", 0.5) for i in range(9)], {"G0": 1.0}, scenarios=4096)
    with pytest.raises(RuntimeError):
        call(wide)


# --- 13. vmap over books sharing one simulation --------------------------------------------


def test_vmap_over_quantities_equals_per_book_results():
    """Several accounts on one set of contracts share one simulation: vmapping
    margin_from_outcomes over their quantity vectors equals margining each alone
    on the same outcomes, and equals portfolio_margin of each (same seed, same
    draws). The enumerated worst-case table is exact for every quantity vector."""
    structure = make_book(
        [binary(f"G{i}", p) for i, p in enumerate([0.3, 0.45, 0.6, 0.2, 0.7])]
        + [parlay("P", ["G0", "G1"], 0.12), above("B", "BTC-E", 1, 0.4, "BTC")],
        {"G0": 1.0}, scenarios=16384,
    )
    n = len(structure.contracts)
    arrays, _, params = kj.margin_inputs(structure)
    s = structure.settings
    top = kj.tail_size(s.scenarios, s.confidence)
    yes = eqx.filter_jit(kj.outcomes)(jax.random.key(s.seed), arrays, s.scenarios)
    rng = np.random.default_rng(0)
    q = np.round(rng.normal(0, 500, (4, n)))
    qpad = jnp.zeros((4, arrays.quantity.shape[0]), jnp.float32).at[:, :n].set(
        jnp.asarray(q, jnp.float32))

    def one(quantity, arrays, params, yes):
        book = eqx.tree_at(lambda a: a.quantity, arrays, quantity)
        return kj.margin_from_outcomes(book, params, yes, top)

    batched = jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))(qpad, arrays, params, yes)
    single = jax.jit(one)
    for b in range(4):
        alone = single(qpad[b], arrays, params, yes)
        row = jax.tree.map(lambda x: x[b], batched)
        # Batched and single reductions round differently in float32 (~1e-6 rel).
        assert_tree_allclose(eqx.tree_at(lambda r: r.binding, row, alone.binding), alone,
                             rtol=1e-5, atol=1e-3)
        uncapped = max(float(alone.base), float(alone.floor)) + float(jnp.sum(alone.addons))
        if abs(float(alone.worst_case_loss) - uncapped) > 1e-5 * float(alone.full_collateral):
            assert int(row.binding) == int(alone.binding)
        book = structure.with_positions(dict(zip(structure.contract_ids, q[b])))
        report = kj.portfolio_margin(book, sampler="plain")  # the outcomes' draws
        for field in ("base", "floor", "margin", "worst_case_loss", "full_collateral"):
            assert float(getattr(alone, field)) == pytest.approx(getattr(report, field),
                                                                 rel=1e-5, abs=1e-3)
        assert float(alone.worst_case_loss) == pytest.approx(brute_worst_case(book), rel=1e-5)


# --- 14. float64 -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["parlays", "reference"])
def test_float64_agrees_with_float32(which):
    """The draws are the same in both precisions (normals drawn in float32 and
    cast), so the two agree to float32 rounding. A scenario whose latent lies
    within ~1e-7 of a cut could resolve differently in the two precisions and
    move an ES by one draw's share (about |q| / 41 at 4,096 draws); none does for
    these books and seed, so the tolerance is float32's (rel 1e-5). The claim
    holds at any scenario count, so 4,096 (the CLI tests' count) keeps the
    float64 run cheap; x64 is switched on only around the float64 run."""
    book = kj.load_book("examples/reference_book.toml") if which == "reference" else parlay_book()
    # The plain sampler, the core's default (`margin_jit` below); the default
    # sampler's float64 run is checked in tests/test_block.py.
    book = book.with_settings(scenarios=4096, sampler="plain")
    r32 = kj.portfolio_margin(book)
    with jax.enable_x64(True):
        r64 = kj.portfolio_margin(book, dtype="float64")
        # The same cached core, called directly: every float it returns is float64.
        s = book.settings
        arrays, _, params = kj.margin_inputs(book, dtype="float64")
        assert arrays.price.dtype == jnp.float64 and arrays.rho.dtype == jnp.float64
        result = _margin.margin_jit(arrays, params, jax.random.key(s.seed), s.scenarios,
                                    kj.tail_size(s.scenarios, s.confidence))
        floats = [x for x in jax.tree.leaves(result) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == jnp.float64 for x in floats)
        assert float(result.base) == r64.base
    for field in ("margin", "base", "floor", "worst_case_loss", "full_collateral",
                  "base_standard_error", "aggregate_diagnostic", "capital_released"):
        assert getattr(r64, field) == pytest.approx(getattr(r32, field), rel=1e-5, abs=1e-4)
    for c32, c64 in zip(r32.clusters, r64.clusters):
        assert c64.es == pytest.approx(c32.es, rel=1e-5, abs=1e-4)
    assert r64.binding == r32.binding
    # The exact parts are exact in float64.
    assert r64.full_collateral == pytest.approx(full_collateral(book), rel=1e-12)
    if which == "parlays":  # (the reference book has too many outcomes to enumerate)
        assert r64.worst_case_loss == pytest.approx(brute_worst_case(book), rel=1e-12)


# --- the helpers other tests rely on --------------------------------------------------------


def test_gradient_checker_accepts_right_and_rejects_wrong_gradients(x64):
    def fn(tree):
        return jnp.sum(jnp.sin(tree["a"])) * jnp.sum(tree["b"]) + jnp.prod(tree["b"]) ** 2

    x = {"a": jnp.asarray([0.3, -1.2, 2.0]), "b": jnp.asarray([1.5, -0.7])}
    grad = check_grad(fn, x, rtol=1e-7, atol=1e-9)
    check_grad(fn, x, directions=3, rtol=1e-7, atol=1e-9)
    wrong = {"a": grad["a"], "b": grad["b"].at[1].add(1e-3)}
    with pytest.raises(AssertionError):
        check_grad(fn, x, grad=wrong, rtol=1e-7, atol=1e-9)
    with pytest.raises(AssertionError):
        check_grad(fn, x, grad=wrong, directions=3, rtol=1e-7, atol=1e-9)


def test_tree_allclose():
    a = {"x": jnp.ones(3), "n": 2}
    assert tree_allclose(a, {"x": jnp.ones(3) + 1e-7, "n": 2})
    assert not tree_allclose(a, {"x": jnp.ones(3) + 1e-3, "n": 2})
    assert not tree_allclose(a, {"x": jnp.ones(3), "n": 3})
    assert not tree_allclose(a, {"x": jnp.ones(4), "n": 2})
    assert not tree_allclose(a, {"x": jnp.ones(3, jnp.int32), "n": 2})


# --- memory maps (last: it clears the worker's caches) ----------------------------------


def test_compiled_programs_hold_memory_maps_until_the_caches_are_cleared():
    """kj.memory_maps: the mappings of this process (the lines of /proc/self/maps)
    and the kernel's limit on them. Each new XLA program adds mappings of its own
    (about 30 for these small ones; a margin call's hundreds), kj.clear_caches
    gives them back, and near_map_limit compares the count with the limit: a
    process at the limit dies with a segmentation fault, so the dashboard and the
    test session clear before it."""
    maps = kj.memory_maps()
    if not Path("/proc/self/maps").exists():  # not Linux: nothing to count
        assert maps is None and not kj.near_map_limit()
        return
    count, limit = maps
    with open("/proc/self/maps") as f:
        assert abs(count - sum(1 for _ in f)) < 50
    assert limit == int(Path("/proc/sys/vm/max_map_count").read_text()) and 0 < count < limit
    assert kj.near_map_limit(min(0.99, 0.5 * count / limit)) and not kj.near_map_limit(0.99)
    for bad in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="fraction"):
            kj.near_map_limit(bad)

    f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x)) @ x)
    before = kj.memory_maps()[0]
    for n in range(10):  # ten shapes no other test compiles: ten programs
        f(jnp.ones(1_009 + n, jnp.float32)).block_until_ready()
    grown = kj.memory_maps()[0]
    assert grown - before >= 100, (before, grown)
    kj.clear_caches()
    gc.collect()
    assert grown - kj.memory_maps()[0] >= (grown - before) / 2


def test_a_compile_past_three_quarters_of_the_map_limit_warns_once(monkeypatch):
    """The listener kinetic_jax registers on JAX's compile events: a compile while
    the process holds more than 3/4 of the kernel's memory maps warns (naming the
    count, the limit and the way out) once; kj.clear_caches re-arms it. Below
    that, or where the maps are unknown, compiles are silent. (The watch reads
    the maps on every compile here: see the next test for how often it reads.)"""
    from kinetic_jax import _compile

    maps = [(1_000, 65_530)]
    monkeypatch.setattr(_compile, "memory_maps", lambda: maps[0])
    # The process's watch, its state restored after the test whatever happens.
    for name, value in (("per_program", 10**9), ("warned", False), ("countdown", 0)):
        monkeypatch.setattr(_compile._map_watch, name, value)
    f = jax.jit(lambda x: jnp.cos(x) * 3.0)
    new = iter(range(2_017, 2_100))  # shapes no other test compiles: a compile each

    def compile_one():
        f(jnp.ones(next(new), jnp.float32)).block_until_ready()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_one()  # 1.5 % of the limit
    maps[0] = (50_000, 65_530)
    with pytest.warns(RuntimeWarning, match=r"50,000 memory maps of the 65,530.*clear_caches"):
        compile_one()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_one()  # warned already
    monkeypatch.setattr(_compile, "clear_layouts", lambda: None)
    monkeypatch.setattr(_compile, "clear_laws", lambda: None)
    monkeypatch.setattr(jax, "clear_caches", lambda: None)
    kj.clear_caches()
    with pytest.warns(RuntimeWarning, match="segmentation fault"):
        compile_one()
    _compile._map_watch.rearm()
    maps[0] = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_one()  # not Linux
        compile_one()


def test_the_map_watch_reads_the_maps_less_often_far_from_the_limit(monkeypatch):
    """Reading /proc/self/maps costs about 1 ms per 1,000 maps, so after a reading
    the watch waits (threshold - count) / per_program compiles: 1,000 maps of a
    65,530 limit, 48 compiles (0.75 * 65,530 - 1,000 = 48,147, over 1,000 a
    compile), then 48,500 maps, 1 compile; other events are not compiles."""
    from kinetic_jax import _compile

    reads, maps = [], [(1_000, 65_530)]
    monkeypatch.setattr(_compile, "memory_maps", lambda: reads.append(1) or maps[0])
    watch = _compile.MapWatch(0.75, per_program=1_000)
    compile_event = _compile.CompileCounter.COMPILE
    watch(compile_event, 0.1)
    assert (len(reads), watch.countdown) == (1, 48)
    for _ in range(10):
        watch(_compile.CompileCounter.TRACE, 0.1)
    for _ in range(47):
        watch(compile_event, 0.1)
    assert len(reads) == 1
    maps[0] = (48_500, 65_530)
    watch(compile_event, 0.1)
    assert (len(reads), watch.countdown, watch.warned) == (2, 1, False)
    maps[0] = (49_148, 65_530)  # just above 0.75 * 65,530 = 49,147.5
    with pytest.warns(RuntimeWarning, match="49,148"):
        watch(compile_event, 0.1)
    assert len(reads) == 3 and watch.warned
