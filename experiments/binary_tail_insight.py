"""The binary-tail insight, in numbers (docs/methodology.md, "The binary-tail insight").

A "paper hedge" of binary contracts on two co-moving assets — long 1,000 YES of
BTC-100K-DEC (price 0.55) and short 1,000 YES of ETH-5K-DEC (price 0.38), from the
reference book — gets no relief at 99% ES: the joint outcome "BTC misses, ETH
hits" has a probability far above 1% at any correlation the default hierarchy
allows, and in that outcome the two positions lose together. Contrast a call
spread on one event (nested strikes) and two shorts on mutually exclusive
outcomes, where the structure of the outcomes nets exactly.

Every figure is computed twice: in closed form (bivariate normal probabilities
from scipy, ES of the four-atom loss distribution) and with the engine through
the public API (one joint simulation, the same seed). Run:

    .venv/bin/python experiments/binary_tail_insight.py [--scenarios N] [--seed S]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from scipy import optimize, stats

import kinetic_jax as kj

Q = 1000.0  # contracts per position
ALPHA = 0.99


def joint_probabilities(p_x: float, p_y: float, rho: float) -> dict[tuple[int, int], float]:
    """P(YES_X = i, YES_Y = j) for two ``above`` contracts whose event latents are
    standard bivariate normal with correlation `rho`: YES iff X > Phi^-1(1 - p)."""
    a, b = stats.norm.ppf(1 - p_x), stats.norm.ppf(1 - p_y)
    if rho >= 1.0:  # one latent: nested intervals
        p00 = min(1 - p_x, 1 - p_y)
    else:
        p00 = stats.multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, rho], [rho, 1.0]]).cdf([a, b])
    p01 = (1 - p_x) - p00  # X misses, Y hits
    p10 = (1 - p_y) - p00  # X hits, Y misses
    p11 = 1 - p00 - p01 - p10
    return {(0, 0): p00, (0, 1): p01, (1, 0): p10, (1, 1): p11}


def pair_loss(q_x, p_x, q_y, p_y, x, y):
    """Loss q (p - YES) of the two positions in one joint outcome (dollars)."""
    return q_x * (p_x - x) + q_y * (p_y - y)


def exact_es(values, probabilities, alpha=ALPHA) -> float:
    return kj.exact_expected_shortfall(np.array(values), np.array(probabilities), alpha)


def standalone_es(q: float, p: float, alpha=ALPHA) -> float:
    """ES of one binary position: loss q (p - YES) with P(YES) = p."""
    return exact_es([q * p, q * (p - 1)], [1 - p, p], alpha)


def full_collateral(q: float, p: float) -> float:
    return q * p if q > 0 else -q * (1 - p)


def engine(contracts, positions, *, scenarios, seed, hierarchy=None) -> kj.MarginReport:
    book = kj.Book(
        tuple(contracts),
        tuple(kj.Position(c, q) for c, q in positions),
        hierarchy or kj.default_hierarchy(),
        kj.Settings(scenarios=scenarios, seed=seed),
    )
    return kj.portfolio_margin(book)


def engine_frequencies(contracts, ids, *, scenarios, seed) -> dict[tuple[int, int], float]:
    """Simulated frequencies of the four joint outcomes of contracts `ids`, from the
    same draws as the margin call."""
    book = kj.Book(tuple(contracts), (), kj.default_hierarchy(),
                   kj.Settings(scenarios=scenarios, seed=seed))
    arrays, layout, _ = kj.margin_inputs(book)
    yes = np.asarray(kj.outcomes(jax.random.key(seed), arrays, scenarios))
    i, j = (layout.contract_ids.index(c) for c in ids)
    return {(a, b): float(np.mean((yes[:, i] == a) & (yes[:, j] == b)))
            for a in (0, 1) for b in (0, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=131072)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n, seed = args.scenarios, args.seed

    h = kj.default_hierarchy()
    loading = dict(zip(h.cluster_names, h.loadings))
    r = kj.correlation_of(h)
    names = list(h.cluster_names)
    rho_factor = r[names.index("BTC"), names.index("ETH")]
    rho_event = loading["BTC"] * loading["ETH"] * rho_factor
    print(f"confidence {ALPHA}, {Q:,.0f} contracts per position, engine: {n:,} scenarios, "
          f"seed {seed}, float32")
    print(f"event-latent correlation BTC/ETH = a_BTC * a_ETH * rho(crypto) = "
          f"{loading['BTC']} * {loading['ETH']} * {rho_factor} = {rho_event:.4f}")

    # --- 1. long BTC-100K / short ETH-5K -------------------------------------------
    p_x, p_y = 0.55, 0.38
    q_x, q_y = Q, -Q
    btc = kj.Contract("BTC-100K-DEC", "BTC", "above", p_x, event="BTC-DEC", threshold=100000)
    eth = kj.Contract("ETH-5K-DEC", "ETH", "above", p_y, event="ETH-DEC", threshold=5000)
    print("\n1. long 1,000 BTC-100K-DEC @ 0.55 / short 1,000 ETH-5K-DEC @ 0.38 (separate events)")
    freq = engine_frequencies([btc, eth], ["BTC-100K-DEC", "ETH-5K-DEC"], scenarios=n, seed=seed)
    sa = standalone_es(q_x, p_x) + standalone_es(q_y, p_y)
    print(f"   {'joint outcome (BTC, ETH)':<28}{'loss $':>9}{'P indep.':>10}"
          f"{'P rho_e':>10}{'engine':>10}")
    cases = {"independent": 0.0, "rho_e": rho_event}
    probs = {k: joint_probabilities(p_x, p_y, v) for k, v in cases.items()}
    label = {0: "NO ", 1: "YES"}
    for x, y in ((0, 1), (0, 0), (1, 1), (1, 0)):
        loss = pair_loss(q_x, p_x, q_y, p_y, x, y)
        print(f"   {label[x] + ', ' + label[y]:<28}{loss:>9,.0f}"
              f"{probs['independent'][(x, y)]:>10.4f}{probs['rho_e'][(x, y)]:>10.4f}"
              f"{freq[(x, y)]:>10.4f}")
    for name, pr in probs.items():
        keys = list(pr)
        es = exact_es([pair_loss(q_x, p_x, q_y, p_y, *k) for k in keys], [pr[k] for k in keys])
        print(f"   closed form ({name}): ES(pair) = {es:,.2f}; ES(long) + ES(short) = "
              f"{standalone_es(q_x, p_x):,.2f} + {standalone_es(q_y, p_y):,.2f} = {sa:,.2f}; "
              f"offset = {1 - es / sa:.1%}")
    rep = engine([btc, eth], [("BTC-100K-DEC", q_x), ("ETH-5K-DEC", q_y)], scenarios=n, seed=seed)
    es_c = {c.name: c.es for c in rep.clusters}
    print(f"   engine: ES(pair) = base = {rep.base:,.2f} (s.e. {rep.base_standard_error:.2f}); "
          f"cluster ES BTC {es_c['BTC']:,.2f} + ETH {es_c['ETH']:,.2f}; "
          f"offset = {1 - rep.base / (es_c['BTC'] + es_c['ETH']):.1%}")
    print(f"   engine: full collateral {rep.full_collateral:,.2f}, worst case "
          f"{rep.worst_case_loss:,.2f}, margin {rep.margin:,.2f} (binding {rep.binding}), "
          f"capital released {rep.capital_released:.1%}")
    rho_star = optimize.brentq(
        lambda rho: joint_probabilities(p_x, p_y, rho)[(0, 1)] - (1 - ALPHA), 0.0, 0.999999
    )
    print(f"   P(BTC NO, ETH YES) falls below 1 - alpha = 1% only at event-latent "
          f"correlation {rho_star:.4f};")
    print("   with loadings 0.9 the largest reachable is 0.81 * rho(crypto) < 0.81: "
          "no offset for any rho(crypto) in [0.35, 1).")

    # --- 2. call spread on one event -------------------------------------------------
    p_lo, p_hi = 0.55, 0.33
    lo = kj.Contract("BTC-100K-DEC", "BTC", "above", p_lo, event="BTC-DEC", threshold=100000)
    hi = kj.Contract("BTC-110K-DEC", "BTC", "above", p_hi, event="BTC-DEC", threshold=110000)
    print("\n2. call spread: long 1,000 BTC-100K-DEC @ 0.55 / short 1,000 BTC-110K-DEC @ 0.33 "
          "(one event, nested)")
    pr = {(0, 0): 1 - p_lo, (1, 0): p_lo - p_hi, (1, 1): p_hi}  # (0, 1) impossible
    for (x, y), p in pr.items():
        print(f"   ({label[x]}, {label[y]}) loss {pair_loss(Q, p_lo, -Q, p_hi, x, y):>7,.0f}"
              f"  P {p:.2f}")
    es = exact_es([pair_loss(Q, p_lo, -Q, p_hi, *k) for k in pr], list(pr.values()))
    sa = standalone_es(Q, p_lo) + standalone_es(-Q, p_hi)
    print(f"   closed form: ES(spread) = {es:,.2f}; ES(long) + ES(short) = {sa:,.2f}; "
          f"offset = {1 - es / sa:.1%}; full collateral "
          f"{full_collateral(Q, p_lo) + full_collateral(-Q, p_hi):,.2f}")
    rep = engine([lo, hi], [("BTC-100K-DEC", Q), ("BTC-110K-DEC", -Q)], scenarios=n, seed=seed)
    print(f"   engine: ES = {rep.base:,.2f}, worst case {rep.worst_case_loss:,.2f}, margin "
          f"{rep.margin:,.2f} (binding {rep.binding}), full collateral "
          f"{rep.full_collateral:,.2f}, capital released {rep.capital_released:.1%}")
    # Same prices as case 1, one event: the rho -> 1 limit of the pair.
    pr1 = joint_probabilities(p_x, p_y, 1.0)
    es1 = exact_es([pair_loss(q_x, p_x, q_y, p_y, *k) for k in pr1], list(pr1.values()))
    sa1 = standalone_es(q_x, p_x) + standalone_es(q_y, p_y)
    print(f"   (the pair of case 1 on one event — its rho -> 1 limit: ES {es1:,.2f} vs "
          f"{sa1:,.2f}, offset {1 - es1 / sa1:.1%})")

    # --- 3. two shorts on mutually exclusive outcomes --------------------------------
    a = kj.Contract("ELECTION-A", "Election", "outcome", 0.40, event="PRES", outcome="A")
    b = kj.Contract("ELECTION-B", "Election", "outcome", 0.30, event="PRES", outcome="B")
    print("\n3. short 1,000 ELECTION-A @ 0.40 and short 1,000 ELECTION-B @ 0.30 "
          "(mutually exclusive)")
    outcomes = {"A wins": (1, 0, 0.40), "B wins": (0, 1, 0.30), "neither": (0, 0, 0.30)}
    losses = {k: pair_loss(-Q, 0.40, -Q, 0.30, x, y) for k, (x, y, _) in outcomes.items()}
    for k, (_, _, p) in outcomes.items():
        print(f"   {k:<8} loss {losses[k]:>7,.0f}  P {p:.2f}")
    es = exact_es(list(losses.values()), [v[2] for v in outcomes.values()])
    fc = full_collateral(-Q, 0.40) + full_collateral(-Q, 0.30)
    print(f"   closed form: worst case {max(losses.values()):,.2f} = 0.3 q; ES {es:,.2f}; "
          f"full collateral {fc:,.2f} = 1.3 q")
    rep = engine([a, b], [("ELECTION-A", -Q), ("ELECTION-B", -Q)], scenarios=n, seed=seed)
    print(f"   engine: worst case {rep.worst_case_loss:,.2f}, ES {rep.base:,.2f}, margin "
          f"{rep.margin:,.2f} (binding {rep.binding}), full collateral "
          f"{rep.full_collateral:,.2f}, capital released {rep.capital_released:.1%}")


if __name__ == "__main__":
    main()
