"""A book: contracts, positions, hierarchy and model settings, validated.

Everything here is host-side Python: a [`Book`][] is checked completely when it
is built, so the numerical core only ever sees consistent input. Field names in
error messages follow the book-file layout of SPEC.md §3 (``contracts[3]``,
``positions[0].quantity``, ``model.confidence``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping

from ._checks import check_number, check_size, plain, plain_fields
from ._dates import DAYS_PER_YEAR, check_horizon_days, date_text, iso_date, time_to
from ._errors import BookError
from ._hierarchy import Hierarchy, default_hierarchy
from ._underlyings import (
    LINEAR,
    MAX_PNL_MULTIPLE,
    MAX_PNL_POINTS,
    Underlying,
    expiry_years,
    validate_contract,
    validate_underlyings,
)

CONTRACT_TYPES = ("above", "below", "binary", "outcome", "parlay", "perp", "future")
# Sum of outcome prices accepted without renormalising (numerical slack).
OUTCOME_SUM_SLACK = 1e-6
MAX_SCENARIOS = 1 << 24
SAMPLERS = ("plain", "importance", "exact_block")
# The sampler a tool uses where ``[model] sampler`` is unset (docs/methodology.md,
# "Which sampler, where"): margin calls and what-if sessions margin one book,
# so they take the lowest-variance one; a sweep's points and a batch's accounts
# share one set of plain draws (the sweep's fast vmapped and multi-device path,
# its sensitivities; one simulation for every account).
DEFAULT_SAMPLERS = {"margin": "exact_block", "what_if": "exact_block", "sweep": "plain",
                    "batch": "plain"}
# Largest |quantity| of a position, open interest, and sum of |quantity| over the
# book (contracts, so dollars at most): every q*p, sum and square the float32
# engine forms stays finite (float32 max ~3.4e38; (1e15)^2 * 2^24 scenarios ~ 1.7e37).
MAX_AMOUNT = 1e15
# Smallest open interest: |q| / open_interest stays finite in float32.
MIN_OPEN_INTEREST = 1e-6
# Prices and probabilities are resolved to within 1e-6 of 0 and 1: the exact
# worst case merges region cut points closer than 1e-9, so a price of 1e-9
# dropped its YES region (a short position's worst case came out as a gain), and
# float32 holds 1 - 1e-6 apart from 1. SPEC.md §3 says (0, 1).
MIN_PRICE = 1e-6
MAX_STRESS_FACTOR = 100.0  # standard deviations (probabilities are 0 or 1 long before)


# Settings that only the simulation and the estimator read: no check of a book
# (its contracts, dates, stress scenarios, underlyings) depends on them, so
# `Book.with_settings` changes them without checking the book again.
RUN_SETTINGS = frozenset({"scenarios", "seed", "confidence", "sampler"})


def resolved_sampler(settings: Settings, tool: str = "margin") -> str:
    """The sampler `tool` (``"margin"``, ``"what_if"``, ``"sweep"`` or
    ``"batch"``) uses under `settings`: ``[model] sampler`` where set, else the
    tool's default (`DEFAULT_SAMPLERS`)."""
    if tool not in DEFAULT_SAMPLERS:
        raise ValueError(f"tool: {tool!r} is not one of {', '.join(DEFAULT_SAMPLERS)}")
    return DEFAULT_SAMPLERS[tool] if settings.sampler is None else settings.sampler


@dataclasses.dataclass(frozen=True)
class Settings:
    """Model and add-on settings (the ``[model]`` and ``[addons]`` tables).

    - `confidence`: ES level alpha, in (0, 1).
    - `scenarios`: Monte-Carlo draws, 1 .. 2**24.
    - `seed`: PRNG seed, 0 .. 2**32 - 1.
    - `ladder_tolerance`: largest accepted violation, in probability, of the
      nesting of prices on one above/below event (SPEC.md §2.2).
    - `outcome_overround`: largest accepted sum of outcome prices on one event;
      above 1 the probabilities are prices / sum.
    - `mc_error`, `mc_error_z`: Monte-Carlo error buffer, z times the standard
      error of the binding stressed loss.
    - `liquidity`, `liquidity_threshold`, `liquidity_rate`: liquidity add-on,
      `rate * gross * max(0, |q| / open_interest - threshold)` per position with a
      given open interest, at most its gross.
    - `stress_addon`: add the stress add-on, max(0, worst stress-scenario loss -
      max(base, floor)) (SPEC.md §5.2; default off).
    - `sampler`: scenario sampler, ``"plain"`` Monte Carlo, ``"importance"``
      (defensive-mixture importance sampling) or ``"exact_block"`` (importance
      sampling, with the positions no factor touches margined by their exact
      law; margin calls, what-if sessions and sweeps without sensitivities);
      None (default): each tool's own, [`resolved_sampler`][] (``"exact_block"``
      for margin calls and what-if sessions, ``"plain"`` for sweeps and account
      batches, whose points and accounts share one set of draws);
      docs/methodology.md.
    - `horizon_days`: the liquidation horizon in calendar days, in (0, 365]
      (SPEC-horizon.md §6); None (default) margins to resolution, exactly as v1.
    - `as_of`: the ISO date (``YYYY-MM-DD``) that contract dates count from.
    - `pnl_range`, `pnl_points`: the spots of each underlying's PnL curve,
      ``pnl_points`` from ``lo * spot`` to ``hi * spot`` (default (0.5, 1.5), 101).
    """

    confidence: float = 0.99
    scenarios: int = 131072
    seed: int = 0
    ladder_tolerance: float = 0.02
    outcome_overround: float = 1.05
    mc_error: bool = True
    mc_error_z: float = 2.0
    liquidity: bool = True
    liquidity_threshold: float = 0.1
    liquidity_rate: float = 1.0
    stress_addon: bool = False
    sampler: str | None = None
    horizon_days: float | None = None
    as_of: str | None = None
    pnl_range: tuple[float, float] | None = None
    pnl_points: int | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, plain(getattr(self, f.name)))
        if self.pnl_range is not None:
            r = self.pnl_range
            if not isinstance(r, (list, tuple)) or len(r) != 2:
                raise BookError("model.pnl_range", f"{r!r} is not [lo, hi]")
            lo = check_number("model.pnl_range[0]", r[0])
            hi = check_number("model.pnl_range[1]", r[1])
            if not 0 < lo < hi <= MAX_PNL_MULTIPLE:
                raise BookError("model.pnl_range", f"{list(r)!r}: need 0 < lo < hi <= "
                                                   f"{MAX_PNL_MULTIPLE:g} (multiples of spot)")
            object.__setattr__(self, "pnl_range", (lo, hi))
        if self.pnl_points is not None:
            n = self.pnl_points
            check_size("model.pnl_points", n)
            if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_PNL_POINTS:
                raise BookError("model.pnl_points", f"{n!r} is not an integer in "
                                                    f"[2, {MAX_PNL_POINTS}]")
        if self.horizon_days is not None:
            check_horizon_days(self.horizon_days)
        if self.as_of is not None:
            object.__setattr__(self, "as_of", iso_date("model.as_of", self.as_of).isoformat())
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise BookError("model.sampler",
                            f"{self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        check_number("model.confidence", self.confidence, low=0, high=1, low_open=True,
                     high_open=True)
        for name, value, hi in (("scenarios", self.scenarios, MAX_SCENARIOS),
                                ("seed", self.seed, 2**32 - 1)):
            check_size(f"model.{name}", value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise BookError(f"model.{name}", f"{value!r} is not an integer")
            lo = 1 if name == "scenarios" else 0
            if not lo <= value <= hi:
                raise BookError(f"model.{name}", f"{value!r} is outside [{lo}, {hi}]")
        check_number("model.ladder_tolerance", self.ladder_tolerance, low=0, high=0.5)
        check_number("model.outcome_overround", self.outcome_overround, low=1, high=1.05)
        for name in ("mc_error", "liquidity"):
            if not isinstance(getattr(self, name), bool):
                raise BookError(f"addons.{name}", f"{getattr(self, name)!r} is not true/false")
        if not isinstance(self.stress_addon, bool):
            raise BookError("model.stress_addon", f"{self.stress_addon!r} is not true/false")
        check_number("addons.mc_error_z", self.mc_error_z, low=0, high=10)
        check_number("addons.liquidity_threshold", self.liquidity_threshold, low=0, high=1)
        check_number("addons.liquidity_rate", self.liquidity_rate, low=0, high=10)
        if self.scenarios * (1 - self.confidence) < 1:
            raise BookError(
                "model.scenarios",
                f"{self.scenarios} draws leave no tail at confidence {self.confidence}: "
                f"need scenarios * (1 - confidence) >= 1",
            )


@dataclasses.dataclass(frozen=True)
class Contract:
    """One contract. Keys that do not belong to the type must be None (or empty)."""

    id: str
    cluster: str | None  # None (or "") on an underlying's contracts: the underlying's
    type: str
    price: float | None  # None for a perp, and a future at spot
    event: str | None = None
    threshold: float | None = None
    outcome: str | None = None
    legs: tuple[str, ...] = ()
    open_interest: float | None = None
    probability: float | None = None
    resolves: str | None = None  # ISO date of the event's resolution (SPEC-horizon §6.1)
    resolves_in: float | None = None  # or the same in years from model.as_of
    underlying: str | None = None  # SPEC-horizon §6.3-6.4: binaries, perps and futures
    strike: float | None = None
    expiry: str | None = None  # ISO date (binaries on an underlying, futures)
    expiry_in: float | None = None

    @property
    def is_linear(self) -> bool:
        """A perp or future: its loss is linear in the underlying's price."""
        return self.type in LINEAR

    @property
    def has_event(self) -> bool:
        """True for contracts whose YES is an interval of one event's latent
        (every type but parlays and linear instruments)."""
        return self.type != "parlay" and self.type not in LINEAR

    @property
    def loss_price(self) -> float:
        """The p of its loss q (p - mark): the price, 0 for a linear instrument
        (whose mark is its value change)."""
        return 0.0 if self.type in LINEAR else self.price

    @property
    def sim_probability(self) -> float:
        """The probability used to simulate (before outcome renormalisation)."""
        return self.price if self.probability is None else self.probability

    @property
    def event_key(self) -> str | None:
        """The event the contract resolves on: binaries on an underlying resolve on
        (underlying, expiry); parlays and linear instruments on none."""
        if not self.has_event:
            return None
        if self.underlying is not None:
            when = self.expiry if self.expiry is not None else f"{self.expiry_in!r}y"
            return f"{self.underlying}@{when}"
        if self.type == "binary":
            return self.id
        return self.event if self.event is not None else self.id


@dataclasses.dataclass(frozen=True)
class Position:
    contract: str
    quantity: float


@dataclasses.dataclass(frozen=True)
class Stress:
    """A deterministic stress scenario (SPEC.md §5.2, the ``[[stress]]`` tables).

    - `name`: unique within the book.
    - `factors`: hierarchy node or cluster name -> factor value in standard
      deviations (a node's value applies to every cluster below it); the other
      factors take their conditional mean. Empty: every factor at 0.
    - `resolve`: non-parlay contract id -> ``"YES"`` or ``"NO"``.

    Mappings are stored as tuples of ``(key, value)`` pairs, in the given order.
    Checked against the book by [`Book`][].
    """

    name: str
    factors: tuple[tuple[str, float], ...] = ()
    resolve: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        for key in ("factors", "resolve"):
            value = getattr(self, key)
            if isinstance(value, Mapping):
                object.__setattr__(self, key, tuple(value.items()))
            elif isinstance(value, (list, tuple)):
                object.__setattr__(self, key, tuple(
                    tuple(pair) if isinstance(pair, (list, tuple)) else pair for pair in value
                ))
            if isinstance(getattr(self, key), tuple):  # numpy values as Python's
                object.__setattr__(self, key, tuple(
                    (pair[0], plain(pair[1])) if isinstance(pair, tuple) and len(pair) == 2
                    else pair for pair in getattr(self, key)))


def check_book(book: object, field: str = "book") -> Book:
    """`book` itself if it is a [`Book`][], else a BookError naming `field`: what
    every entry point takes first (a dict or None failed deep inside, as an
    AttributeError)."""
    if not isinstance(book, Book):
        raise BookError(field, f"expected a kinetic_jax.Book (kj.load_book, kj.parse_book), "
                               f"got {type(book).__name__}")
    return book


def _contract_field(i: int, c: Contract, key: str) -> str:
    return f"contracts[{i}] (id {c.id!r})" + (f".{key}" if key else "")


_KEYS_OF_TYPE = {
    "above": {"event", "threshold"},
    "below": {"event", "threshold"},
    "binary": set(),
    "outcome": {"event", "outcome"},
    "parlay": {"legs"},
}


@dataclasses.dataclass(frozen=True)
class Book:
    """A validated book.

    **Arguments:**

    - `contracts`: every contract the book refers to, held or not (parlay legs,
      outcomes of an event, instruments for hedging).
    - `positions`: signed quantities; several on one contract add up.
    - `hierarchy`: the asset hierarchy (default: the reference design's).
    - `settings`: model and add-on settings.
    - `stress`: deterministic stress scenarios ([`Stress`][]).

    Raises [`BookError`][] naming the field and value on any inconsistency.
    """

    contracts: tuple[Contract, ...]
    positions: tuple[Position, ...] = ()
    hierarchy: Hierarchy = dataclasses.field(default_factory=default_hierarchy)
    settings: Settings = dataclasses.field(default_factory=Settings)
    stress: tuple[Stress, ...] = ()
    underlyings: tuple[Underlying, ...] = ()

    def __post_init__(self):
        for key in ("contracts", "positions", "stress", "underlyings"):
            object.__setattr__(self, key, tuple(
                plain_fields(x) if dataclasses.is_dataclass(x) else x
                for x in getattr(self, key)))
        validate_underlyings(self)
        _validate(self)
        _validate_dates(self)
        _validate_stress(self)

    # ---- derived structure -------------------------------------------------
    @property
    def contract_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.contracts)

    def contract(self, cid: str) -> Contract:
        return self.contracts[self.contract_ids.index(cid)]

    def underlying(self, uid: str) -> Underlying:
        return next(u for u in self.underlyings if u.id == uid)

    def forward_price(self, c: Contract) -> float:
        """F0 of a linear instrument: a future's given price, else the spot."""
        return c.price if c.price is not None else self.underlying(c.underlying).spot

    def net_quantities(self) -> dict[str, float]:
        """Net signed quantity per contract id, for every contract (0 if not held)."""
        q = {c.id: 0.0 for c in self.contracts}
        for p in self.positions:
            q[p.contract] += float(p.quantity)
        return q

    def events(self) -> dict[str, list[int]]:
        """Event key -> indices of the (non-parlay) contracts on it, in book order."""
        out: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(self.contracts):
            if c.has_event:
                out[c.event_key].append(i)  # type: ignore[index]
        return dict(out)

    def simulation_probabilities(self) -> list[float]:
        """Per contract: the probability its atom is simulated with (outcome
        probabilities renormalised when their event sums above 1; parlays: nan)."""
        probs = [c.sim_probability if c.has_event else math.nan for c in self.contracts]
        for idx in self.events().values():
            if self.contracts[idx[0]].type == "outcome":
                total = sum(probs[i] for i in idx)
                if total > 1.0:
                    for i in idx:
                        probs[i] /= total
        return probs

    def with_positions(self, quantities: Mapping[str, float]) -> Book:
        """A copy whose positions are exactly `quantities` (contract id -> q)."""
        if not isinstance(quantities, Mapping):
            raise BookError("positions", f"expected a mapping of contract id to quantity "
                                         f"(e.g. book.net_quantities()), got "
                                         f"{type(quantities).__name__}")
        return dataclasses.replace(
            self, positions=tuple(Position(k, v) for k, v in quantities.items() if v != 0)
        )

    def with_settings(self, **changes) -> Book:
        """A copy with these ``[model]`` / ``[addons]`` settings changed (validated).

        The settings are checked; the book's own checks (contracts, dates,
        stress, underlyings) run again unless only ``RUN_SETTINGS`` (scenarios,
        seed, confidence, sampler) change, which none of them reads
        (tests/test_validation.py checks that). Every entry point applies its
        ``scenarios=`` / ``seed=`` / ... overrides this way, so a margin call no
        longer checks every contract again (docs/benchmarks.md, "The host
        layer of a margin call")."""
        known = {f.name for f in dataclasses.fields(Settings)}
        for key in changes:
            if key not in known:
                raise BookError(f"settings.{key}",
                                f"unknown setting (allowed: {', '.join(sorted(known))})")
        settings = dataclasses.replace(self.settings, **changes)
        if changes.keys() <= RUN_SETTINGS:
            book = copy.copy(self)  # no __post_init__: the checks above still hold
            object.__setattr__(book, "settings", settings)
            return book
        return dataclasses.replace(self, settings=settings)

    def with_sampler_for(self, tool: str) -> Book:
        """The book with ``[model] sampler`` set to what `tool` uses when it is
        unset ([`resolved_sampler`][])."""
        sampler = resolved_sampler(self.settings, tool)
        return self if sampler == self.settings.sampler else self.with_settings(sampler=sampler)

    def with_overrides(self, **changes) -> Book:
        """[`with_settings`][] for the values given (not None): how every entry point
        applies its ``scenarios=``, ``seed=``, ... keyword overrides."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return self.with_settings(**changes) if changes else self

    def with_hierarchy(self, hierarchy: Hierarchy) -> Book:
        return dataclasses.replace(self, hierarchy=hierarchy)

    # ---- time (SPEC-horizon.md §6.1) ---------------------------------------
    @property
    def horizon_years(self) -> float | None:
        """The liquidation horizon h in years (None: resolution mode)."""
        h = self.settings.horizon_days
        return None if h is None else float(h) / DAYS_PER_YEAR

    @property
    def model_horizon_years(self) -> float | None:
        """The h the marks are computed at: the horizon; in resolution mode, for a
        book with underlyings, its latest date (every mark an indicator, binaries
        on underlyings on their paths; SPEC-horizon.md §6.3); else None (v1)."""
        if self.horizon_years is not None or not self.underlyings:
            return self.horizon_years
        return max((t for t in self.maturities() if t is not None), default=None)

    def maturities(self) -> tuple[float | None, ...]:
        """Per contract, its time to resolution T in years: its event's date, a
        binary on an underlying's or a future's expiry (None where undated, for
        perps and for parlays, which have no date of their own)."""
        as_of = None if self.settings.as_of is None else iso_date("model.as_of",
                                                                    self.settings.as_of)
        out = []
        for i, c in enumerate(self.contracts):
            if c.underlying is not None and c.type != "perp":
                out.append(expiry_years(self, i, c))
            elif c.has_event:
                out.append(time_to(_contract_field(i, c, ""), c.resolves, c.resolves_in,
                                   as_of, "resolves"))
            else:
                out.append(None)
        return tuple(out)

    def taus(self) -> tuple[float | None, ...]:
        """Per contract, tau = min(1, h / T): the fraction of its event's information
        revealed by the horizon (1 in resolution mode; None for parlays and
        linear instruments)."""
        h = self.model_horizon_years
        return tuple(None if not c.has_event else
                     1.0 if h is None or t is None or h >= t else h / t
                     for c, t in zip(self.contracts, self.maturities()))


def _check_open_interest(i: int, c: Contract) -> None:
    if c.open_interest is not None:
        oi = check_number(_contract_field(i, c, "open_interest"), c.open_interest, low=0,
                          low_open=True)
        if not MIN_OPEN_INTEREST <= oi <= MAX_AMOUNT:
            raise BookError(_contract_field(i, c, "open_interest"),
                            f"{oi!r} is outside the engine's range "
                            f"[{MIN_OPEN_INTEREST:g}, {MAX_AMOUNT:g}] contracts")


def _validate(book: Book) -> None:
    clusters = set(book.hierarchy.cluster_names)
    underlyings = {u.id: u for u in book.underlyings}
    ids: dict[str, int] = {}
    for i, c in enumerate(book.contracts):
        if not isinstance(c.id, str) or not c.id:
            raise BookError(f"contracts[{i}].id", f"{c.id!r} is not a non-empty string")
        if c.id in ids:
            raise BookError(f"contracts[{i}].id", f"duplicate contract id {c.id!r} "
                            f"(first at contracts[{ids[c.id]}])")
        ids[c.id] = i
        if c.type not in CONTRACT_TYPES:
            raise BookError(_contract_field(i, c, "type"),
                            f"{c.type!r} is not one of {', '.join(CONTRACT_TYPES)}")
        if c.underlying is not None or c.is_linear:
            validate_contract(book, i, c, underlyings)
            object.__setattr__(c, "cluster", underlyings[c.underlying].cluster)
            if c.expiry is not None:
                object.__setattr__(c, "expiry", date_text(c.expiry))
            _check_open_interest(i, c)
            continue
        for key in ("strike", "expiry", "expiry_in"):
            if getattr(c, key) is not None:
                raise BookError(_contract_field(i, c, key),
                                f"{getattr(c, key)!r} given, but {key!r} belongs only to a "
                                f"contract on an underlying")
        if c.cluster not in clusters:
            raise BookError(_contract_field(i, c, "cluster"), f"unknown cluster {c.cluster!r}")
        check_number(_contract_field(i, c, "price"), c.price, low=MIN_PRICE,
                     high=1 - MIN_PRICE)
        allowed = _KEYS_OF_TYPE[c.type]
        present = {
            "event": c.event is not None,
            "threshold": c.threshold is not None,
            "outcome": c.outcome is not None,
            "legs": bool(c.legs),
        }
        for key, here in present.items():
            if here and key not in allowed:
                value = list(c.legs) if key == "legs" else getattr(c, key)
                raise BookError(_contract_field(i, c, key),
                                f"{value!r} given, but {key!r} does not belong to a "
                                f"contract of type {c.type!r}")
        if c.type in ("above", "below"):
            if c.threshold is None:
                raise BookError(_contract_field(i, c, "threshold"),
                                f"required for type {c.type!r}")
            check_number(_contract_field(i, c, "threshold"), c.threshold)
        if c.type == "outcome" and (not isinstance(c.outcome, str) or not c.outcome):
            raise BookError(_contract_field(i, c, "outcome"),
                            f"required for type 'outcome' (a non-empty name), got {c.outcome!r}")
        if c.event is not None and (not isinstance(c.event, str) or not c.event):
            raise BookError(_contract_field(i, c, "event"),
                            f"{c.event!r} is not a non-empty string")
        if c.probability is not None:
            if c.type == "parlay":
                raise BookError(_contract_field(i, c, "probability"),
                                "does not belong to a parlay (its probability comes from its legs)")
            check_number(_contract_field(i, c, "probability"), c.probability, low=MIN_PRICE,
                         high=1 - MIN_PRICE)
        _check_open_interest(i, c)
    # Parlay legs.
    for i, c in enumerate(book.contracts):
        if c.type != "parlay":
            continue
        if len(c.legs) < 2:
            raise BookError(_contract_field(i, c, "legs"),
                            f"a parlay needs at least 2 legs, got {list(c.legs)!r}")
        seen: set[str] = set()
        for j, leg in enumerate(c.legs):
            field = _contract_field(i, c, f"legs[{j}]")
            if leg not in ids:
                raise BookError(field, f"unknown contract {leg!r}")
            if book.contracts[ids[leg]].type == "parlay":
                raise BookError(field, f"{leg!r} is a parlay; legs must not be parlays")
            if book.contracts[ids[leg]].underlying is not None:
                raise BookError(field, f"{leg!r} is written on underlying "
                                       f"{book.contracts[ids[leg]].underlying!r}; parlay legs "
                                       f"on underlyings are not supported")
            if leg in seen:
                raise BookError(field, f"leg {leg!r} is listed twice")
            seen.add(leg)
    # Events: one cluster, one family, consistent prices.
    tol = book.settings.ladder_tolerance
    for event, idx in book.events().items():
        first = book.contracts[idx[0]]
        family = {"above": "ladder", "below": "ladder"}.get(first.type, first.type)
        for i in idx[1:]:
            c = book.contracts[i]
            fam = {"above": "ladder", "below": "ladder"}.get(c.type, c.type)
            if fam != family or family == "binary":
                raise BookError(_contract_field(i, c, "event"),
                                f"event {event!r} mixes contract {c.id!r} ({c.type}) with "
                                f"{first.id!r} ({first.type})")
            if c.cluster != first.cluster:
                raise BookError(_contract_field(i, c, "cluster"),
                                f"{c.cluster!r} differs from {first.cluster!r} of contract "
                                f"{first.id!r} on the same event {event!r}")
        if family == "ladder":
            _check_ladder(book, event, idx, tol)
        elif family == "outcome":
            labels: dict[str, int] = {}
            for i in idx:
                c = book.contracts[i]
                if c.outcome in labels:
                    raise BookError(_contract_field(i, c, "outcome"),
                                    f"outcome {c.outcome!r} of event {event!r} is listed twice")
                labels[c.outcome] = i  # type: ignore[index]
            # Prices must satisfy the rule; so must separately given probabilities.
            for what, value in (("prices", lambda c: c.price),
                                ("probabilities", lambda c: c.sim_probability)):
                total = sum(value(book.contracts[i]) for i in idx)
                limit = max(1.0 + OUTCOME_SUM_SLACK, book.settings.outcome_overround)
                if total > limit:
                    names = ", ".join(f"{book.contracts[i].id}={value(book.contracts[i]):g}"
                                      for i in idx)
                    raise BookError(f"contracts (event {event!r})",
                                    f"outcome {what} sum to {total:.6g} > {limit:g} ({names})")
    # Positions.
    total = 0.0
    for j, p in enumerate(book.positions):
        if p.contract not in ids:
            raise BookError(f"positions[{j}].contract", f"unknown contract {p.contract!r}")
        field = f"positions[{j}] (contract {p.contract!r}).quantity"
        q = check_number(field, p.quantity, low=-MAX_AMOUNT, high=MAX_AMOUNT)
        c = book.contracts[ids[p.contract]]
        if c.is_linear and q != 0 and book.settings.horizon_days is None:
            raise BookError(f"positions[{j}] (contract {p.contract!r})",
                            f"a {c.type} position needs a liquidation horizon (model."
                            f"horizon_days or --horizon): its loss to resolution is undefined")
        total += abs(q)
        if total > MAX_AMOUNT:
            raise BookError(field, f"the book's positions add up to {total:.4g} contracts "
                                   f"(sum of |quantity|), over the limit of {MAX_AMOUNT:g}")


MAX_PARLAY_FACTORS = 3  # loaded clusters of a parlay's live legs (SPEC-horizon §6.5)


def _validate_dates(book: Book) -> None:
    """SPEC-horizon.md §6.10 for v1 contracts: one date per event, no date on a
    parlay, every binary dated under a horizon, at most 3 loaded clusters among a
    parlay's live legs."""
    for i, c in enumerate(book.contracts):
        if not c.has_event:
            for key in ("resolves", "resolves_in"):
                if getattr(c, key) is not None:
                    value = getattr(c, key)
                    shown = date_text(value) if key == "resolves" else value
                    raise BookError(_contract_field(i, c, key),
                                    f"{shown!r} given, but a {c.type} has no resolution date "
                                    f"of its own" + (" (its legs' dates apply)"
                                                     if c.type == "parlay" else ""))
        elif c.resolves is not None:
            object.__setattr__(c, "resolves", date_text(c.resolves))
    times = book.maturities()
    for event, idx in book.events().items():
        first = idx[0]
        for i in idx[1:]:
            a, b = times[first], times[i]
            if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-12):
                c, f = book.contracts[i], book.contracts[first]
                raise BookError(_contract_field(i, c, "resolves"),
                                f"{_when(c)} differs from {_when(f)} of contract {f.id!r} on "
                                f"the same event {event!r} (one date per event)")
    if book.settings.horizon_days is None:
        return
    for i, (c, t) in enumerate(zip(book.contracts, times)):
        if c.has_event and t is None:
            raise BookError(_contract_field(i, c, "resolves"),
                            f"missing: model.horizon_days = {book.settings.horizon_days!r} "
                            f"needs every binary's resolution date (resolves or resolves_in)")
    h = book.horizon_years
    ids = {c.id: i for i, c in enumerate(book.contracts)}
    loading = dict(zip(book.hierarchy.cluster_names, book.hierarchy.loadings))
    for i, c in enumerate(book.contracts):
        if c.type != "parlay":
            continue
        live = {book.contracts[ids[leg]].cluster for leg in c.legs
                if times[ids[leg]] > h and loading[book.contracts[ids[leg]].cluster] > 0}
        if len(live) > MAX_PARLAY_FACTORS:
            raise BookError(_contract_field(i, c, "legs"),
                            f"its legs live at the horizon span {len(live)} loaded clusters "
                            f"({', '.join(sorted(live))}); at most {MAX_PARLAY_FACTORS} are "
                            f"supported (the mark integrates over their factors)")


def _when(c: Contract) -> str:
    if c.resolves is not None:
        return f"resolves {c.resolves}"
    if c.resolves_in is not None:
        return f"resolves_in {c.resolves_in!r}"
    return "no date"


def _validate_stress(book: Book) -> None:
    """SPEC.md §5.2: names, factor keys and values, resolutions (fields
    ``stress[i] (name ...).factors.KEY`` and ``.resolve.ID``)."""
    # Imported here: _stress reads the worst-case tolerances, and _worst_case
    # imports this module.
    from ._stress import clusters_below, event_restrictions

    h = book.hierarchy
    names = set(h.node_names) | set(h.cluster_names)
    index = {c.id: i for i, c in enumerate(book.contracts)}
    seen: dict[str, int] = {}
    for i, s in enumerate(book.stress):
        if not isinstance(s, Stress):
            raise BookError(f"stress[{i}]", f"{s!r} is not a Stress scenario")
        if not isinstance(s.name, str) or not s.name:
            raise BookError(f"stress[{i}].name", f"{s.name!r} is not a non-empty string")
        if s.name in seen:
            raise BookError(f"stress[{i}].name", f"duplicate scenario name {s.name!r} "
                                                 f"(first at stress[{seen[s.name]}])")
        seen[s.name] = i
        where = f"stress[{i}] (name {s.name!r})"
        covered: dict[int, str] = {}
        for key, pairs in (("factors", s.factors), ("resolve", s.resolve)):
            if not isinstance(pairs, tuple) or not all(
                isinstance(p, tuple) and len(p) == 2 for p in pairs
            ):
                raise BookError(f"{where}.{key}", f"{pairs!r} is not a table")
            keys = [k for k, _ in pairs]
            for j, k in enumerate(keys):
                if k in keys[:j]:
                    raise BookError(f"{where}.{key}.{k}", "given twice")
        for name, value in s.factors:
            field = f"{where}.factors.{name}"
            if name not in names:
                raise BookError(field, f"unknown hierarchy node or cluster {name!r}")
            check_number(field, value, low=-MAX_STRESS_FACTOR, high=MAX_STRESS_FACTOR)
            for k in clusters_below(h, name):
                if k in covered:
                    other = covered[k]
                    chain = [h.cluster_names[k], *h.ancestors(h.cluster_names[k])]
                    lower, upper = sorted((other, name), key=chain.index)
                    raise BookError(field, f"{lower!r} is below {upper!r}, and both are "
                                           f"given (give one value per factor)")
                covered[k] = name
        for cid, value in s.resolve:
            field = f"{where}.resolve.{cid}"
            if cid not in index:
                raise BookError(field, f"unknown contract {cid!r}")
            if book.contracts[index[cid]].type == "parlay":
                raise BookError(field, f"{cid!r} is a parlay; resolve its legs instead")
            if not book.contracts[index[cid]].has_event:
                raise BookError(field, f"{cid!r} is a {book.contracts[index[cid]].type}; it "
                                       f"does not resolve YES or NO")
            if value not in ("YES", "NO"):
                raise BookError(field, f"{value!r} is not 'YES' or 'NO'")
        event_restrictions(book, i, s)


def _latent_cut(c: Contract, p: float) -> float:
    """The cut of an above/below contract in probability space u = Phi(X):
    above is YES iff u > 1 - p, below iff u < p."""
    return 1.0 - p if c.type == "above" else p


def _check_ladder(book: Book, event: str, idx: list[int], tol: float) -> None:
    """Prices must nest (SPEC.md §2.2); so must separately given probabilities."""
    _check_cuts(book, event, idx, tol, lambda c: c.price, "prices")
    if any(book.contracts[i].probability is not None for i in idx):
        _check_cuts(book, event, idx, tol, lambda c: c.sim_probability, "probabilities")


def _check_cuts(book, event, idx, tol, prob, what) -> None:
    """The cuts must not decrease with the threshold (equal thresholds: equal
    cuts), within `tol`. One sweep over the sorted thresholds, O(n log n): the
    largest violation is the largest cut below each threshold minus the
    smallest cut at it, or the spread of the cuts at one threshold."""
    level = lambda c: c.threshold if c.threshold is not None else c.strike  # noqa: E731
    cs = sorted(((level(book.contracts[i]), i) for i in idx), key=lambda t: t[0])
    cut = {i: _latent_cut(book.contracts[i], prob(book.contracts[i])) for i in idx}
    worst, pair = tol + 1e-12, None
    below: int | None = None  # the contract with the largest cut at a lower threshold
    k = 0
    while k < len(cs):
        j = k
        while j < len(cs) and cs[j][0] == cs[k][0]:
            j += 1
        group = [i for _, i in cs[k:j]]
        lowest = min(group, key=cut.__getitem__)
        highest = max(group, key=cut.__getitem__)
        if below is not None and cut[below] - cut[lowest] > worst:
            worst, pair = cut[below] - cut[lowest], (below, lowest)
        if cut[highest] - cut[lowest] > worst:
            worst, pair = cut[highest] - cut[lowest], tuple(sorted((lowest, highest)))
        if below is None or cut[highest] > cut[below]:
            below = highest
        k = j
    if pair is not None:
        ca, cb = book.contracts[pair[0]], book.contracts[pair[1]]
        raise BookError(
            f"contracts (event {event!r})",
            f"inconsistent ladder: {ca.id!r} ({ca.type} {level(ca)!r} at {prob(ca)!r}) and "
            f"{cb.id!r} ({cb.type} {level(cb)!r} at {prob(cb)!r}) imply cuts that violate "
            f"nesting by {worst:.4f} in probability (tolerance {tol:g}; {what})",
        )
