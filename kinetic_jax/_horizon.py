"""Per-contract figures of the liquidation horizon (SPEC-horizon.md §6.7, §6.9).

For the report: each contract's implied probability (its price; outcomes after
overround normalisation), its tau = min(1, h / T), whether it resolves by the
horizon, and its stressed marks, the marks at the 1% and 99% quantiles of its
event's revealed latent Z (so the spread of values the horizon can reveal). In
resolution mode (tau = 1) these are the indicators. Parlays carry their legs'
dates: they report the tau of their latest-resolving leg and no stressed marks
(their mark depends on several latents).
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

from ._book import Book
from ._underlyings import binary_figures

STRESS_QUANTILES = (0.01, 0.99)
_N = NormalDist()


@dataclasses.dataclass(frozen=True)
class ContractHorizon:
    """One contract at the liquidation horizon: its implied probability, tau,
    whether it resolves by the horizon, and its marks at the 1% and 99%
    quantiles of its event's revealed latent (None for parlays)."""

    id: str
    implied_probability: float | None  # None for perps and futures
    tau: float | None  # None for perps and futures
    resolved_by_horizon: bool
    stressed_marks: tuple[float, float] | None
    model_probability: float | None = None  # binaries on underlyings (SPEC-horizon §6.3)
    effective_strike: float | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "implied_probability": self.implied_probability,
                "model_probability": self.model_probability,
                "effective_strike": self.effective_strike,
                "tau": self.tau, "resolved_by_horizon": self.resolved_by_horizon,
                "stressed_marks": (None if self.stressed_marks is None
                                   else list(self.stressed_marks))}


def _cut(u: float) -> float:
    return -math.inf if u <= 0 else math.inf if u >= 1 else _N.inv_cdf(u)


def interval_mark(z: float, tau: float, lo: float, hi: float) -> float:
    """P(lo < X <= hi | Z = z) for X = sqrt(tau) Z + sqrt(1 - tau) W (float64)."""
    if tau >= 1:
        return float(lo < z <= hi)
    s, r = math.sqrt(tau), math.sqrt(1 - tau)
    cdf = lambda c: 0.0 if c == -math.inf else 1.0 if c == math.inf else _N.cdf((c - s * z) / r)  # noqa: E731
    return max(0.0, cdf(hi) - cdf(lo))


def intervals(book: Book) -> list[tuple[float, float] | None]:
    """Each non-parlay contract's YES interval (lo, hi] of its event latent
    (SPEC.md §2.2), in float64; None for parlays."""
    probs = book.simulation_probabilities()
    out: list[tuple[float, float] | None] = [None] * len(book.contracts)
    for idx in book.events().values():
        before = 0.0
        for i in idx:
            c, p = book.contracts[i], probs[i]
            if c.type in ("above", "binary"):
                out[i] = (_cut(1 - p), math.inf)
            elif c.type == "below":
                out[i] = (-math.inf, _cut(p))
            else:
                last = i == idx[-1] and before + p >= 1 - 1e-9
                out[i] = (_cut(before), math.inf if last else _cut(before + p))
                before += p
    return out


def contract_horizon(book: Book) -> tuple[ContractHorizon, ...]:
    """Every contract's [`ContractHorizon`][] (module doc), in book order."""
    probs = book.simulation_probabilities()
    taus = book.taus()
    times = book.maturities()
    h = book.model_horizon_years
    ids = {c.id: i for i, c in enumerate(book.contracts)}
    cuts = intervals(book)
    zs = [_N.inv_cdf(q) for q in STRESS_QUANTILES]
    out = []
    for i, c in enumerate(book.contracts):
        if c.is_linear:
            resolved = c.type == "future" and h is not None and times[i] <= h
            out.append(ContractHorizon(c.id, None, None, resolved, None))
            continue
        if c.underlying is not None:
            # On the underlying's path: Z_u revealed; expiring by h, on the bridge,
            # P(YES | Z_u) is the interval mark with tau' = T / h.
            lo, hi = cuts[i]
            t = times[i]
            frac = h / t if t > h else t / h
            marks = tuple(interval_mark(z, frac, lo, hi) for z in zs)
            out.append(ContractHorizon(c.id, c.price, taus[i], taus[i] >= 1, marks,
                                       **binary_figures(book, c, t)))
            continue
        if c.type == "parlay":
            tau = min(taus[ids[leg]] for leg in c.legs)
            out.append(ContractHorizon(c.id, c.price, tau, tau >= 1, None))
            continue
        lo, hi = cuts[i]
        marks = tuple(interval_mark(z, taus[i], lo, hi) for z in zs)
        out.append(ContractHorizon(c.id, probs[i], taus[i], taus[i] >= 1, marks))
    return tuple(out)
