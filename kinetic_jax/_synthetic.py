"""Random but well-formed books, for benchmarks, certificates and property tests."""

from __future__ import annotations

import numpy as np

from ._book import Book, Contract, Position, Settings
from ._hierarchy import default_hierarchy

_RISK = ("BTC", "ETH", "SOL", "SPX", "OIL")


def random_book(
    n_contracts: int = 64,
    *,
    seed: int = 0,
    held_fraction: float = 0.6,
    size: float = 1000.0,
    settings: Settings | None = None,
) -> Book:
    """A book on the default hierarchy with about `n_contracts` contracts:
    strike ladders on the five risk clusters, a three-outcome election, sports
    games, and two-leg parlays on the games; a random `held_fraction` of them
    held with quantities of order `size` and random signs."""
    rng = np.random.default_rng(seed)
    contracts: list[Contract] = []
    n_ladder = max(1, int(0.5 * n_contracts))
    per_event = 4
    for i in range(n_ladder):
        cluster = _RISK[(i // per_event) % len(_RISK)]
        event = f"{cluster}-E{i // per_event}"
        rank = i % per_event
        if rank == 0:
            probs = np.sort(rng.uniform(0.08, 0.92, per_event))[::-1]
        price = float(round(probs[rank], 3))
        contracts.append(Contract(f"{event}-K{rank}", cluster, "above", price, event=event,
                                  threshold=float(100 * (rank + 1))))
    outcome_probs = rng.dirichlet(np.ones(4))[:3] * 0.98
    for j, p in enumerate(outcome_probs):
        contracts.append(Contract(f"ELECTION-{j}", "Election", "outcome",
                                  float(max(round(p, 3), 0.01)), event="ELECTION",
                                  outcome=chr(65 + j)))
    n_games = max(2, (n_contracts - len(contracts)) * 2 // 3)
    for g in range(n_games):
        contracts.append(Contract(f"GAME-{g}", "Sports", "binary",
                                  float(round(rng.uniform(0.25, 0.75), 2))))
    g = 0
    while len(contracts) < n_contracts and g + 1 < n_games:
        legs = (f"GAME-{g}", f"GAME-{g + 1}")
        contracts.append(Contract(f"PARLAY-{g}", "Parlays", "parlay",
                                  float(round(rng.uniform(0.1, 0.4), 2)), legs=legs))
        g += 2
    held = rng.random(len(contracts)) < held_fraction
    positions = tuple(
        Position(c.id, float(np.round(rng.choice([-1, 1]) * rng.uniform(0.2, 1.0) * size)))
        for c, h in zip(contracts, held) if h
    )
    return Book(tuple(contracts), positions, default_hierarchy(), settings or Settings())


def ladder_book(
    n_events: int = 1000,
    strikes: int = 10,
    *,
    seed: int = 0,
    size: float = 1000.0,
    settings: Settings | None = None,
) -> Book:
    """A large book of strike ladders: `n_events` events spread over the five
    risk clusters, each with `strikes` nested ``above`` contracts, every contract
    held with a random signed quantity of order `size` (streaming and memory
    benchmarks)."""
    rng = np.random.default_rng(seed)
    contracts, positions = [], []
    for e in range(n_events):
        cluster = _RISK[e % len(_RISK)]
        event = f"{cluster}-L{e}"
        probs = np.sort(rng.uniform(0.03, 0.97, strikes))[::-1]
        for k, p in enumerate(probs):
            cid = f"{event}-K{k}"
            contracts.append(Contract(cid, cluster, "above", float(round(p, 4)), event=event,
                                      threshold=float(k)))
            positions.append(Position(cid, float(np.round(rng.choice([-1, 1])
                                                          * rng.uniform(0.2, 1.0) * size))))
    return Book(tuple(contracts), tuple(positions), default_hierarchy(), settings or Settings())
