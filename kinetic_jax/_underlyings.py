"""Underlyings, binaries written on them and linear instruments (SPEC-horizon.md
§6.3, §6.4, §6.7).

An underlying u (spot S0, annualised lognormal vol sigma, in a cluster) has the
loaded latent of its cluster as its return over the horizon h,

    Z_u = a F^Z_c + s eta^Z_u,     S_h = S0 exp(sigma sqrt(h) Z_u - sigma^2 h / 2),

and one Brownian path B_u (B_u(h) = sqrt(h) Z_u) shared by every contract on it.
A binary on u with expiry T and price p is YES iff X = B_u(T) / sqrt(T) passes
its price's cut (above: X > Phi^-1(1 - p)); equivalently S_T > K*, the
*effective strike* K* = S0 exp(sigma sqrt(T) Phi^-1(1 - p) - sigma^2 T / 2), so
the price, not the strike, fixes the cut and marks at h = 0 reproduce prices.
Perpetuals and futures lose -q (F0 / S0)(S_h - S0) (q in units of the
underlying; a future with expiry T <= h settles at S_T).

This module holds the host side: the [`Underlying`][] record, the validation
of §6.10 for underlyings and the contracts on them, and the per-underlying
figures of §6.7 (net delta, hedge lots, the PnL curve across spot) and per
binary (model probability, effective strike), in float64.
"""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np

from ._checks import check_number
from ._dates import iso_date, time_to
from ._errors import BookError

LINEAR = ("perp", "future")
MAX_VOL = 5.0
# Lower bounds well inside float32's normal range: below them deltas and lots
# (1 / (spot vol sqrt t), delta / lot_size) leave even float64's.
MIN_SPOT = 1e-8
MIN_VOL = 1e-4
MIN_LOT = 1e-8
MAX_PNL_MULTIPLE = 1e3  # model.pnl_range's hi, in multiples of spot
MAX_PNL_POINTS = 10001
DEFAULT_PNL_RANGE = (0.5, 1.5)
DEFAULT_PNL_POINTS = 101
_N = NormalDist()


@dataclasses.dataclass(frozen=True)
class Underlying:
    """An asset that binaries and linear instruments are written on (the
    ``[[underlyings]]`` tables): `spot` S0 > 0, annualised lognormal `vol` in
    [0.0001, 5], its `cluster` (whose loaded latent is its return over the horizon) and
    the `lot_size` hedges are counted in (default 1)."""

    id: str
    cluster: str
    spot: float
    vol: float
    lot_size: float = 1.0


def _field(i: int, c, key: str) -> str:
    return f"contracts[{i}] (id {c.id!r}).{key}"


def validate_underlyings(book) -> None:
    """The ``[[underlyings]]`` tables: ids unique, clusters known, spot, vol and
    lot size in range."""
    clusters = set(book.hierarchy.cluster_names)
    seen: dict[str, int] = {}
    for j, u in enumerate(book.underlyings):
        if not isinstance(u, Underlying):
            raise BookError(f"underlyings[{j}]", f"{u!r} is not an Underlying")
        if not isinstance(u.id, str) or not u.id:
            raise BookError(f"underlyings[{j}].id", f"{u.id!r} is not a non-empty string")
        if u.id in seen:
            raise BookError(f"underlyings[{j}].id", f"duplicate underlying id {u.id!r} "
                                                    f"(first at underlyings[{seen[u.id]}])")
        seen[u.id] = j
        where = f"underlyings[{j}] (id {u.id!r})"
        if u.cluster not in clusters:
            raise BookError(f"{where}.cluster", f"unknown cluster {u.cluster!r}")
        check_number(f"{where}.spot", u.spot, low=MIN_SPOT, high=1e12)
        check_number(f"{where}.vol", u.vol, low=MIN_VOL, high=MAX_VOL)
        check_number(f"{where}.lot_size", u.lot_size, low=MIN_LOT, high=1e12)


PLAIN_KEYS = ("event", "threshold", "resolves", "resolves_in", "outcome", "probability")


def validate_contract(book, i: int, c, underlyings: dict) -> None:
    """One contract on an underlying (a binary with ``underlying``, or a perp or
    future): its keys, its underlying, strike, expiry and price."""
    if c.type not in ("above", "below", *LINEAR):
        raise BookError(_field(i, c, "underlying"),
                        f"{c.underlying!r} given, but a contract of type {c.type!r} cannot be "
                        f"written on an underlying (above, below, perp or future)")
    if c.underlying is None:
        raise BookError(_field(i, c, "underlying"), f"missing: a {c.type} needs its underlying")
    if c.underlying not in underlyings:
        raise BookError(_field(i, c, "underlying"), f"unknown underlying {c.underlying!r}")
    u = underlyings[c.underlying]
    for key in PLAIN_KEYS:
        if getattr(c, key) is not None:
            raise BookError(_field(i, c, key), f"{getattr(c, key)!r} given, but {key!r} does "
                                               f"not belong to a contract on an underlying")
    if c.legs:
        raise BookError(_field(i, c, "legs"), f"{list(c.legs)!r} given, but 'legs' does not "
                                              f"belong to a contract of type {c.type!r}")
    if c.cluster not in (None, "", u.cluster):
        raise BookError(_field(i, c, "cluster"), f"{c.cluster!r} contradicts the cluster "
                                                 f"{u.cluster!r} of underlying {u.id!r}")
    if c.type == "perp":
        if c.price is not None:
            raise BookError(_field(i, c, "price"), f"{c.price!r} given, but a perp has no "
                                                   f"price of its own (it trades at spot)")
        for key in ("strike", "expiry", "expiry_in"):
            if getattr(c, key) is not None:
                raise BookError(_field(i, c, key), f"{getattr(c, key)!r} given, but {key!r} "
                                                   f"does not belong to a perp")
        return
    if c.type == "future":
        if c.strike is not None:
            raise BookError(_field(i, c, "strike"), f"{c.strike!r} given, but 'strike' does "
                                                    f"not belong to a future")
        if c.price is not None:
            check_number(_field(i, c, "price"), c.price, low=0, low_open=True, high=1e12)
    else:
        if c.strike is None:
            raise BookError(_field(i, c, "strike"), f"missing: a binary on underlying "
                                                    f"{u.id!r} needs its strike")
        check_number(_field(i, c, "strike"), c.strike, low=0, low_open=True, high=1e15)
        check_number(_field(i, c, "price"), c.price, low=0, high=1, low_open=True,
                     high_open=True)
    if c.expiry is None and c.expiry_in is None:
        raise BookError(_field(i, c, "expiry"), f"missing: a {c.type} on an underlying needs "
                                                f"its expiry (expiry or expiry_in)")


def expiry_years(book, i: int, c) -> float | None:
    """T in years of a contract on an underlying (None for a perp)."""
    as_of = None if book.settings.as_of is None else iso_date("model.as_of",
                                                               book.settings.as_of)
    return time_to(f"contracts[{i}] (id {c.id!r})", c.expiry, c.expiry_in, as_of, "expiry")


# ---- figures (§6.3, §6.7) --------------------------------------------------------------
def _inv(u: float) -> float:
    return _N.inv_cdf(min(max(u, 1e-300), 1 - 1e-16))


def effective_strike(kind: str, price: float, spot: float, vol: float, t: float) -> float:
    """K*: the strike at which the lognormal model's digital is worth the price
    (above: S_T > K* with probability p; below: S_T <= K*)."""
    z = _inv(1 - price) if kind == "above" else _inv(price)
    return spot * math.exp(vol * math.sqrt(t) * z - vol * vol * t / 2)


def model_probability(kind: str, strike: float, spot: float, vol: float, t: float) -> float:
    """Phi(+-d2): the lognormal model's probability of YES at the quoted strike."""
    d2 = (math.log(spot / strike) - vol * vol * t / 2) / (vol * math.sqrt(t))
    return _N.cdf(d2) if kind == "above" else _N.cdf(-d2)


def mark_at_spot(kind: str, price: float, t: float, h: float, spot: float, vol: float,
                 s: np.ndarray) -> np.ndarray:
    """The binary's mark at the horizon h as a function of the spot there (§6.7):
    the §6.3 mark at Z_u = (ln(S/S0) + sigma^2 h / 2) / (sigma sqrt(h)); at h = 0
    Black's digital with the effective strike; for T <= h, P(YES | S_h) on the
    Brownian bridge."""
    s = np.asarray(s, np.float64)
    lo, hi = ((_inv(1 - price), math.inf) if kind == "above" else (-math.inf, _inv(price)))
    if h <= 0:  # instant revaluation: B(0+) = ln(S/S0) / sigma, X = B(T) / sqrt(T)
        mean = np.log(s / spot) / (vol * math.sqrt(t))
        sd = 1.0
    else:
        z = (np.log(s / spot) + vol * vol * h / 2) / (vol * math.sqrt(h))
        if t > h:
            mean, sd = math.sqrt(h / t) * z, math.sqrt(1 - h / t)
        else:
            mean, sd = math.sqrt(t / h) * z, math.sqrt(1 - t / h)
    if sd == 0.0:
        return ((mean > lo) & (mean <= hi)).astype(np.float64)
    cdf = np.vectorize(_N.cdf)
    upper = 1.0 if hi == math.inf else cdf((hi - mean) / sd)
    lower = 0.0 if lo == -math.inf else cdf((lo - mean) / sd)
    return np.asarray(upper - lower, np.float64)


@dataclasses.dataclass(frozen=True)
class UnderlyingReport:
    """Per underlying (§6.7, §6.9): spot, vol, the net delta of the book's
    positions on it (units of the underlying, dPV/dS at S0 and t = 0), the perp
    quantity and lots that flatten it, and the PnL curve at the horizon across
    spot (binaries on it and its linear positions)."""

    id: str
    cluster: str
    spot: float
    vol: float
    lot_size: float
    net_delta: float
    hedge_quantity: float
    hedge_lots: float
    hedge_lots_rounded: int
    linear_exposure: float
    pnl_spot: tuple[float, ...]
    pnl: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"id": self.id, "cluster": self.cluster, "spot": self.spot, "vol": self.vol,
                "lot_size": self.lot_size, "net_delta": self.net_delta,
                "hedge_quantity": self.hedge_quantity,
                "hedge_lots": {"unrounded": self.hedge_lots,
                               "rounded": self.hedge_lots_rounded},
                "linear_exposure": self.linear_exposure,
                "pnl_curve": {"spot": list(self.pnl_spot), "pnl": list(self.pnl)}}


def underlying_reports(book) -> tuple[UnderlyingReport, ...]:
    """Every underlying's [`UnderlyingReport`][] (module doc), in book order."""
    if not book.underlyings:
        return ()
    qty = book.net_quantities()
    times = book.maturities()
    h = book.horizon_years or 0.0
    lo, hi = book.settings.pnl_range or DEFAULT_PNL_RANGE
    points = book.settings.pnl_points or DEFAULT_PNL_POINTS
    out = []
    for u in book.underlyings:
        spots = np.linspace(lo * u.spot, hi * u.spot, points)
        pnl = np.zeros(points)
        delta = exposure = 0.0
        for i, c in enumerate(book.contracts):
            if c.underlying != u.id or qty[c.id] == 0:
                continue
            q = qty[c.id]
            if c.type in LINEAR:
                ratio = book.forward_price(c) / u.spot
                exposure += q * ratio
                continue
            t = times[i]
            sign = 1.0 if c.type == "above" else -1.0
            delta += sign * q * _N.pdf(_inv(c.price)) / (u.spot * u.vol * math.sqrt(t))
            pnl += q * (mark_at_spot(c.type, c.price, t, h, u.spot, u.vol, spots) - c.price)
        pnl += exposure * (spots - u.spot)
        delta += exposure
        lots = -delta / u.lot_size
        out.append(UnderlyingReport(
            id=u.id, cluster=u.cluster, spot=u.spot, vol=u.vol, lot_size=u.lot_size,
            net_delta=delta, hedge_quantity=-delta, hedge_lots=lots,
            hedge_lots_rounded=int(round(lots)), linear_exposure=exposure,
            pnl_spot=tuple(float(x) for x in spots), pnl=tuple(float(x) for x in pnl)))
    return tuple(out)


def binary_figures(book, c, t: float) -> dict:
    """A binary on an underlying with expiry `t` (years): model probability at its
    strike and effective strike (§6.3)."""
    u = book.underlying(c.underlying)
    return {"model_probability": model_probability(c.type, c.strike, u.spot, u.vol, t),
            "effective_strike": effective_strike(c.type, c.price, u.spot, u.vol, t)}
