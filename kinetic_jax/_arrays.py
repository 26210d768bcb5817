"""A book in array form: the padded, jit-ready pytree the numerical core consumes.

[`BookArrays`][] holds everything as arrays (values and integer structure), so
calling the core on another book of the same *bucket* sizes never recompiles.
Sizes are padded to powers of two: contracts (always at least one padding slot,
which has zero quantity and serves as the null index), events, rows of the
worst-case table and the width of parlays.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._book import RUN_SETTINGS, Book, Settings
from ._errors import BookError
from ._hierarchy import correlation_of
from ._stress import stress_matrix
from ._worst_case import OutcomeTable, build_outcome_table

PAD, ABOVE, BELOW, OUTCOME, PARLAY, LINEAR = 0, 1, 2, 3, 4, 5
_KIND = {"above": ABOVE, "binary": ABOVE, "below": BELOW, "outcome": OUTCOME, "parlay": PARLAY,
         "perp": LINEAR, "future": LINEAR}


def row_membership(arrays: BookArrays, cluster=None) -> Float[Array, "C K+1"]:
    """1.0 where a contract slot's loss counts in a loss row: its cluster's row
    (one-hot over the K clusters), and the last row, the whole book. `cluster`
    overrides ``arrays.cluster`` (e.g. a gathered subset of slots)."""
    cluster = arrays.cluster if cluster is None else cluster
    k = arrays.loading.shape[0]
    dtype = arrays.price.dtype
    onehot = jax.nn.one_hot(cluster, k, dtype=dtype)
    return jnp.concatenate([onehot, jnp.ones((*cluster.shape, 1), dtype)], axis=-1)


def without_padding(arrays: BookArrays) -> BookArrays:
    """`arrays` with quantity 0 in the padding slots, whatever was passed there.
    A padding slot is an always-YES contract (kind `PAD`), so a quantity put
    there by a transformation (a gradient step on ``arrays.quantity``) would be
    a position earning p - 1 a unit; through this, every figure's derivative
    with respect to a padding slot's quantity (and price) is exactly 0. The
    differentiable entry points call it; it changes no value (the slots hold 0)."""
    q = arrays.quantity
    return eqx.tree_at(lambda a: a.quantity, arrays,
                       jnp.where(arrays.kind == PAD, jnp.zeros_like(q), q))


def event_hash(name: str) -> tuple[int, int]:
    """Two 32-bit words of BLAKE2b of the event's name: its draws are keyed by
    them, so an event's scenarios depend on neither its position in the book nor
    the other events (adding a contract on a new event leaves every other draw
    unchanged)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def bucket(n: int, minimum: int = 8) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(0, int(n - 1).bit_length()))


# The exact worst-case table is padded to at least 64 rows of width 8: its work is
# one gather per row and call, nothing beside the scenarios', and books whose
# tables differ in size below that share their compiled programs (the test suite
# compiled 110 distinct margin programs, 96 with these minimums).
TABLE_MIN_ROWS, TABLE_MIN_WIDTH = 64, 8


def padded_table_shape(table: OutcomeTable) -> tuple[int, int]:
    """``(rows, width)`` of the padded worst-case arrays of `table`."""
    return bucket(len(table.component), TABLE_MIN_ROWS), bucket(table.index.shape[1],
                                                                TABLE_MIN_WIDTH)


class BookArrays(eqx.Module):
    """A book as arrays (see module doc). Float leaves are the differentiable
    parameters: `quantity`, `price`, `probability`, `rho`, `loading`.

    Shapes: C contracts (padded), E events, K clusters, M hierarchy nodes, L legs
    per contract, R worst-case rows of width W, S stress scenarios (padded).
    """

    quantity: Float[Array, " C"]
    price: Float[Array, " C"]
    probability: Float[Array, " C"]  # simulation probability where given separately
    probability_given: Bool[Array, " C"]  # else the probability is the price
    open_interest: Float[Array, " C"]  # 0 where not given
    kind: Int[Array, " C"]
    event: Int[Array, " C"]
    cluster: Int[Array, " C"]
    legs: Int[Array, "C L"]  # contract indices; C means "always YES"
    outcome_order: Int[Array, " C"]  # permutation grouping each event's outcomes
    outcome_start: Int[Array, " C"]  # in that order: position of the event's first
    outcome_last: Bool[Array, " C"]  # last listed outcome of its event
    event_cluster: Int[Array, " E"]
    event_seed: Int[Array, "E 2"]  # 64-bit hash of the event's name: keys its draws
    rho: Float[Array, " M"]
    loading: Float[Array, " K"]
    lca: Int[Array, "K K"]
    wc_component: Int[Array, " R"]
    wc_index: Int[Array, "R W"]
    wc_yes: Float[Array, "R W"]
    stress_yes: Float[Array, "S C"]  # P(YES) per stress scenario (SPEC.md §5.2)
    stress_valid: Bool[Array, " S"]  # False on padding rows (at least one row)
    touch_parlay: Int[Array, "C P"]  # parlays with a leg on slot i's event (null-padded)
    # Liquidation horizon (SPEC-horizon.md §6; see _marks.py).
    maturity: Float[Array, " C"]  # years to the event's resolution (inf: undated)
    horizon: Float[Array, ""]  # years (inf in resolution mode)
    parlays: Int[Array, " P"]  # parlay slots (null-padded; empty without a horizon)
    quad_parlay: Int[Array, " Q"]  # parlays whose mark needs the factor integral
    quad_cluster: Int[Array, "Q D"]  # their loaded clusters (one quadrature dimension each)
    quad_valid: Bool[Array, "Q D"]
    # Underlyings (SPEC-horizon.md §6.3-6.4; empty without): U underlyings, G
    # (underlying, expiry) bridge points, sorted by expiry within an underlying.
    event_raw: Bool[Array, " E"]  # bridge noise: the latent is the raw normal
    on_path: Bool[Array, " C"]  # a binary, perp or future on an underlying
    linear: Bool[Array, " C"]  # perps and futures
    ratio: Float[Array, " C"]  # F0 / S0 of a linear instrument
    under: Int[Array, " C"]  # its underlying
    slot_group: Int[Array, " C"]  # its (underlying, expiry) bridge point
    spot: Float[Array, " U"]
    vol: Float[Array, " U"]
    under_latent: Int[Array, " U"]  # event index of Z_u
    under_hnoise: Int[Array, " U"]  # event index of the bridge noise at h
    group_event: Int[Array, " G"]  # event index of the point's noise
    group_under: Int[Array, " G"]
    group_time: Float[Array, " G"]
    group_prev: Float[Array, " G"]  # the previous expiry on the underlying (0 for none)
    group_next: Float[Array, " G"]  # the next one (inf for none)
    group_chain: Float[Array, "G G"]  # 1 where point j is at or before point g on g's path
    dynamic: bool = eqx.field(static=True, default=False)  # marks at a horizon (else v1)
    quad_closed: bool = eqx.field(static=True, default=True)  # last dimension in closed form
    quad_width: int = eqx.field(static=True, default=1)  # legs of the widest such parlay
    quad_nodes: int = eqx.field(static=True, default=64)  # Gauss–Hermite nodes per dimension
    quad_one_sided: bool = eqx.field(static=True, default=False)  # legs all above or all below


@dataclasses.dataclass(frozen=True)
class BookLayout:
    """Host-side names that go with a [`BookArrays`][]: which slot is which."""

    contract_ids: tuple[str, ...]
    cluster_names: tuple[str, ...]
    node_names: tuple[str, ...]
    event_names: tuple[str, ...]
    table: OutcomeTable

    @property
    def n_contracts(self) -> int:
        return len(self.contract_ids)


def float_dtype(dtype) -> np.dtype:
    """`dtype` (default float32) checked: float32, or float64 with
    ``jax_enable_x64`` on (without it JAX would silently compute in float32)."""
    try:
        resolved = jnp.dtype(dtype or jnp.float32)
    except TypeError:
        raise BookError("dtype", f"{dtype!r} is not a dtype (float32 or float64)") from None
    if resolved not in (jnp.float32, jnp.float64):
        raise BookError("dtype", f"{resolved.name} is not float32 or float64")
    if resolved == jnp.float64 and not jax.config.jax_enable_x64:
        raise BookError("dtype", "float64 needs 64-bit JAX: jax.config.update("
                                 "'jax_enable_x64', True), or run inside jax.enable_x64()")
    return resolved


# Books laid out recently, by equality (see book_arrays).
LAYOUT_CACHE_SIZE = 4


def book_arrays(book: Book, dtype=None) -> tuple[BookArrays, BookLayout]:
    """Lays `book` out as padded arrays.

    **Arguments:**

    - `book`: a validated [`Book`][].
    - `dtype`: float dtype of the values (default float32; float64 needs
      ``jax_enable_x64``).

    **Returns:** ``(arrays, layout)``. The layout's NumPy arrays are read-only.

    The last `LAYOUT_CACHE_SIZE` books laid out are kept: a book equal to one
    of them but for its run settings (``scenarios``, ``seed``, ``confidence``,
    ``sampler``, which the layout does not read) gets the same ``(arrays,
    layout)`` back without the host work (the exact worst-case table and the
    layout; docs/benchmarks.md, "The host layer of a margin call"). A
    dashboard request lays its book out for its limits and again for its
    margin; every margin call of a sweep of seeds or scenario counts lays out
    the same book. The worst-case table's module limits
    (``_worst_case.ENUMERATION_LIMIT``, ``BRANCH_AND_BOUND_NODES``) are read when
    a book is laid out: after changing one, [`clear_caches`][] lays every book
    out anew.
    """
    dtype = float_dtype(dtype)
    try:
        key = book.with_settings(**{k: getattr(Settings(), k) for k in RUN_SETTINGS})
        hash(key)
    except TypeError:  # an unhashable field (a user's subclass): no cache
        return _book_arrays(book, dtype)
    return _laid_out(key, dtype.name, jax.config.jax_enable_x64)


def clear_layouts() -> None:
    """Forgets the books [`book_arrays`][] keeps (see [`clear_caches`][])."""
    _laid_out.cache_clear()


@functools.lru_cache(maxsize=LAYOUT_CACHE_SIZE)
def _laid_out(book: Book, dtype: str, x64: bool) -> tuple[BookArrays, BookLayout]:
    del x64  # part of the cache's key: arrays made with and without 64-bit JAX differ
    arrays, layout = _book_arrays(book, np.dtype(dtype))
    for a in (layout.table.component, layout.table.index, layout.table.yes):
        a.setflags(write=False)  # shared by every caller of the cache
    return arrays, layout


def _book_arrays(book: Book, dtype: np.dtype) -> tuple[BookArrays, BookLayout]:
    """[`book_arrays`][], uncached."""
    n = len(book.contracts)
    cpad = bucket(n + 1)
    events = book.events()
    # Underlyings add latents (their return over h), Brownian-bridge noise per
    # (underlying, expiry) and per underlying at the horizon (see _marks.py).
    paths = _PathNames(book)
    event_names = tuple(events) + paths.extra
    epad = bucket(len(event_names))
    clusters = book.hierarchy.cluster_names
    cl_index = {c: k for k, c in enumerate(clusters)}
    ids = {c.id: i for i, c in enumerate(book.contracts)}
    ev_index = {e: k for k, e in enumerate(event_names)}
    qty = book.net_quantities()

    quantity = np.zeros(cpad)
    price = np.full(cpad, 0.5)
    prob = np.full(cpad, 0.5)
    given = np.zeros(cpad, bool)
    oi = np.zeros(cpad)
    kind = np.zeros(cpad, np.int32)
    event = np.zeros(cpad, np.int32)
    cluster = np.zeros(cpad, np.int32)
    max_legs = max([len(c.legs) for c in book.contracts if c.type == "parlay"], default=1)
    legs = np.full((cpad, bucket(max_legs, 1)), cpad, np.int32)
    for i, c in enumerate(book.contracts):
        quantity[i] = qty[c.id]
        price[i] = c.loss_price
        prob[i] = c.sim_probability if c.has_event else 0.5
        given[i] = c.probability is not None
        oi[i] = c.open_interest or 0.0
        kind[i] = _KIND[c.type]
        cluster[i] = cl_index[c.cluster]
        if c.type == "parlay":
            legs[i, : len(c.legs)] = [ids[x] for x in c.legs]
        elif c.underlying is not None:
            event[i] = ev_index[paths.latent(c.underlying)]
            legs[i, 0] = i
        else:
            event[i] = ev_index[c.event_key]
            legs[i, 0] = i
    # Outcome cumulation: a permutation putting each event's outcomes together,
    # in listing order.
    order, start, last = [], np.zeros(cpad, np.int32), np.zeros(cpad, bool)
    for e, idx in events.items():
        if book.contracts[idx[0]].type == "outcome":
            first = len(order)
            for i in idx:
                start[len(order)] = first
                order.append(i)
            last[idx[-1]] = True
    rest = [i for i in range(cpad) if i not in set(order)]
    for i in rest:
        start[len(order)] = len(order)
        order.append(i)
    event_seed = np.zeros((epad, 2), np.uint32)
    for e, name in enumerate(event_names):
        event_seed[e] = event_hash(name)
    event_cluster = np.zeros(epad, np.int32)
    for e, idx in events.items():
        event_cluster[ev_index[e]] = cl_index[book.contracts[idx[0]].cluster]
    for u in book.underlyings:
        event_cluster[ev_index[paths.latent(u.id)]] = cl_index[u.cluster]
    path = paths.arrays(book, ev_index, cpad, epad)

    table = build_outcome_table(book, quantity[:n])
    rows, width = padded_table_shape(table)
    n_real = len(table.component)
    ncomp = int(table.component.max()) + 1 if n_real else 0
    # Padding rows get components of their own, so they add max(0) = 0.
    wc_component = np.concatenate(
        [table.component, np.arange(ncomp, ncomp + rows - n_real)]
    ).astype(np.int32)
    wc_index = np.full((rows, width), cpad - 1, np.int32)
    sub = table.index
    wc_index[: sub.shape[0], : sub.shape[1]] = np.where(sub < 0, cpad - 1, sub)
    wc_yes = np.zeros((rows, width))
    wc_yes[: sub.shape[0], : sub.shape[1]] = table.yes

    n_stress = len(book.stress)
    stress_yes = np.zeros((bucket(n_stress, 1), cpad))
    stress_yes[:n_stress, :n] = stress_matrix(book)
    stress_valid = np.arange(stress_yes.shape[0]) < n_stress

    touch_parlay = _parlays_on_event(book, ids, cpad)
    dynamic = book.model_horizon_years is not None
    maturity = np.full(cpad, np.inf)
    for i, t in enumerate(book.maturities()):
        if t is not None:
            maturity[i] = t
        elif book.contracts[i].has_event and book.horizon_years is None:
            maturity[i] = 0.0  # resolution mode beside underlyings: resolved, as in v1
    horizon = np.inf if not dynamic else book.model_horizon_years
    parlays, quad_parlay, quad_cluster, quad_closed = _parlay_structure(book, ids, cpad,
                                                                        dynamic)
    quad_valid = quad_cluster >= 0

    # Host arrays first, then one device_put of the whole tree (a transfer per
    # leaf from C++, not a jnp.asarray dispatch per field).
    f = lambda x: np.asarray(x, dtype)  # noqa: E731
    i32 = lambda x: np.asarray(x, np.int32)  # noqa: E731
    arrays = BookArrays(
        quantity=f(quantity),
        price=f(price),
        probability=f(prob),
        probability_given=np.asarray(given),
        open_interest=f(oi),
        kind=i32(kind),
        event=i32(event),
        cluster=i32(cluster),
        legs=i32(legs),
        outcome_order=i32(order),
        outcome_start=i32(start),
        outcome_last=np.asarray(last),
        event_cluster=i32(event_cluster),
        event_seed=np.asarray(event_seed),
        rho=f(book.hierarchy.rho),
        loading=f(book.hierarchy.loadings),
        lca=i32(np.where(book.hierarchy.lca_table() < 0, 0, book.hierarchy.lca_table())),
        wc_component=i32(wc_component),
        wc_index=i32(wc_index),
        wc_yes=f(wc_yes),
        stress_yes=f(stress_yes),
        stress_valid=np.asarray(stress_valid),
        touch_parlay=i32(touch_parlay),
        maturity=f(maturity),
        horizon=f(horizon),
        parlays=i32(parlays),
        quad_parlay=i32(quad_parlay),
        quad_cluster=i32(np.maximum(quad_cluster, 0)),
        quad_valid=np.asarray(quad_valid),
        dynamic=dynamic,
        quad_closed=quad_closed,
        quad_width=bucket(max([len(book.contracts[int(i)].legs)
                               for i in np.asarray(quad_parlay) if i < n] or [1]), 1),
        quad_nodes=quadrature_nodes(max([book.hierarchy.loadings[k] for k in
                                         quad_cluster[quad_valid]] or [0.0])),
        quad_one_sided=_one_sided(book, ids, quad_parlay[quad_parlay < n]),
        **{k: (f(v) if v.dtype.kind == "f" else np.asarray(v) if v.dtype == bool else i32(v))
           for k, v in path.items()},
    )
    arrays = jax.device_put(arrays)
    layout = BookLayout(
        contract_ids=book.contract_ids,
        cluster_names=clusters,
        node_names=book.hierarchy.node_names,
        event_names=event_names,
        table=table,
    )
    return arrays, layout


class _PathNames:
    """The extra event slots of a book's underlyings: per underlying its latent
    (``underlying:ID``) and its bridge noise at h (``ID@h``), and the bridge
    points of futures whose expiry no binary shares (``ID@EXPIRY``); bridge
    points of binaries are their events (``Contract.event_key``)."""

    def __init__(self, book: Book):
        events = book.events()
        self.points: dict[str, list[tuple[float, str]]] = {u.id: [] for u in book.underlyings}
        times = book.maturities()
        seen: set[str] = set()
        extra = []
        for i, c in enumerate(book.contracts):
            if c.underlying is None or c.type == "perp":
                continue
            key = point_key(c)
            if key not in seen:
                seen.add(key)
                self.points[c.underlying].append((times[i], key))
                if key not in events:
                    extra.append(key)
        for u in book.underlyings:
            self.points[u.id].sort()
            extra += [self.latent(u.id), f"{u.id}@h"]
        self.extra = tuple(extra)

    @staticmethod
    def latent(uid: str) -> str:
        return f"underlying:{uid}"

    def arrays(self, book: Book, ev_index: dict, cpad: int, epad: int) -> dict:
        us = book.underlyings
        upad = bucket(len(us), 1) if us else 0
        order = [key for u in us for _, key in self.points[u.id]]
        # At least one group with underlyings, real or padding (a book whose
        # underlyings have no dated contract still gathers from the groups).
        gpad = bucket(len(order), 1) if us else 0
        g_index = {key: g for g, key in enumerate(order)}
        u_index = {u.id: k for k, u in enumerate(us)}
        out = {
            "event_raw": np.zeros(epad, bool), "on_path": np.zeros(cpad, bool),
            "linear": np.zeros(cpad, bool), "ratio": np.zeros(cpad),
            "under": np.zeros(cpad, np.int32), "slot_group": np.zeros(cpad, np.int32),
            "spot": np.ones(upad), "vol": np.full(upad, 0.2),
            "under_latent": np.zeros(upad, np.int32), "under_hnoise": np.zeros(upad, np.int32),
            "group_event": np.zeros(gpad, np.int32), "group_under": np.zeros(gpad, np.int32),
            "group_time": np.ones(gpad), "group_prev": np.zeros(gpad),
            "group_next": np.full(gpad, np.inf), "group_chain": np.zeros((gpad, gpad)),
        }
        for k, u in enumerate(us):
            out["spot"][k], out["vol"][k] = u.spot, u.vol
            out["under_latent"][k] = ev_index[self.latent(u.id)]
            out["under_hnoise"][k] = ev_index[f"{u.id}@h"]
            out["event_raw"][ev_index[f"{u.id}@h"]] = True
            pts = self.points[u.id]
            for j, (t, key) in enumerate(pts):
                g = g_index[key]
                out["event_raw"][ev_index[key]] = True
                out["group_event"][g] = ev_index[key]
                out["group_under"][g] = k
                out["group_time"][g] = t
                out["group_prev"][g] = pts[j - 1][0] if j else 0.0
                out["group_next"][g] = pts[j + 1][0] if j + 1 < len(pts) else np.inf
                for earlier in pts[: j + 1]:
                    out["group_chain"][g, g_index[earlier[1]]] = 1.0
        for i, c in enumerate(book.contracts):
            if c.underlying is None:
                continue
            out["on_path"][i] = True
            out["under"][i] = u_index[c.underlying]
            if c.is_linear:
                out["linear"][i] = True
                out["ratio"][i] = book.forward_price(c) / book.underlying(c.underlying).spot
            if c.type != "perp":
                out["slot_group"][i] = g_index[point_key(c)]
        return out


def _one_sided(book: Book, ids: dict, parlays) -> bool:
    """True when every leg of these parlays is one-sided once legs on one event
    are intersected: above/binary or below, one direction per event."""
    for i in parlays:
        side: dict[str, set] = {}
        for leg in book.contracts[int(i)].legs:
            c = book.contracts[ids[leg]]
            if c.type == "outcome":
                return False
            side.setdefault(c.event_key, set()).add(c.type == "below")
        if any(len(v) > 1 for v in side.values()):
            return False
    return True


def quadrature_nodes(loading: float) -> int:
    """Gauss–Hermite nodes per dimension for parlay marks whose loaded clusters
    load at most `loading`: the integrand steepens as a -> 1 (its slope in the
    factor scales as a / sqrt(1 - a^2)); these counts keep the mark's error under
    1e-8 (tests/test_horizon.py measured 2e-12 at a = 0.9 with 64 nodes, 6e-9 at
    0.97 with 128, 1.2e-7 at 0.99 with 256)."""
    return 64 if loading <= 0.9 else 128 if loading <= 0.97 else 256


def point_key(c) -> str:
    """The (underlying, expiry) bridge point of a binary on an underlying or a
    future (a binary's event key)."""
    when = c.expiry if c.expiry is not None else f"{c.expiry_in!r}y"
    return f"{c.underlying}@{when}"


def _parlay_structure(book: Book, ids: dict, cpad: int, dynamic: bool):
    """Horizon mode only (else all empty): the parlay slots, null-padded to a
    power of two; those whose live legs (resolving after the horizon) sit on
    distinct events in clusters with a_c a_d R_cd > 0, whose marks need the
    integral over the post-horizon factors (_marks.py); and per such parlay the
    loaded clusters of its live legs (one quadrature dimension each, -1 padded);
    and whether every such parlay has a loaded cluster holding one live event, put
    last, whose dimension the marks integrate in closed form."""
    empty = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.int64)
    if not dynamic:
        return *empty, True
    null = cpad - 1
    slots = [i for i, c in enumerate(book.contracts) if c.type == "parlay"]
    if not slots:
        return *empty, True
    parlays = np.full(bucket(len(slots), 1), null, np.int64)
    parlays[: len(slots)] = slots
    h = book.model_horizon_years
    times = book.maturities()
    names = book.hierarchy.cluster_names
    loading = dict(zip(names, book.hierarchy.loadings))
    corr = correlation_of(book.hierarchy)
    pos = {n: k for k, n in enumerate(names)}
    quad: list[tuple[int, list[int], int | None]] = []
    for i in slots:
        live = [ids[leg] for leg in book.contracts[i].legs
                if times[ids[leg]] is not None and times[ids[leg]] > h]
        shared = any(
            book.contracts[x].event_key != book.contracts[y].event_key
            and loading[book.contracts[x].cluster] * loading[book.contracts[y].cluster]
            * corr[pos[book.contracts[x].cluster], pos[book.contracts[y].cluster]] > 0
            for j, x in enumerate(live) for y in live[j + 1:])
        if shared:
            events: dict[int, set] = {}
            for x in live:
                if loading[book.contracts[x].cluster] > 0:
                    events.setdefault(pos[book.contracts[x].cluster], set()).add(
                        book.contracts[x].event_key)
            single = [k for k in sorted(events) if len(events[k]) == 1]
            last = single[-1] if single else None
            quad.append((i, [k for k in sorted(events) if k != last], last))
    if not quad:
        return parlays, *empty[1:], True
    # The last dimension is integrated in closed form where it carries one live event
    # (_marks.py): it holds that cluster (or padding), the others come first.
    closed = all(last is not None for _, _, last in quad)
    dims = max(len(cl) + (last is not None) for _, cl, last in quad)
    quad_parlay = np.full(bucket(len(quad), 1), null, np.int64)
    quad_cluster = np.full((len(quad_parlay), dims), -1, np.int64)
    for r, (i, cl, last) in enumerate(quad):
        quad_parlay[r] = i
        if closed:
            quad_cluster[r, : len(cl)] = cl
            quad_cluster[r, -1] = last
        else:
            both = cl + ([] if last is None else [last])
            quad_cluster[r, : len(both)] = both
    return parlays, quad_parlay, quad_cluster, closed


def _parlays_on_event(book: Book, ids: dict, cpad: int) -> np.ndarray:
    """Row i (a non-parlay slot): the parlays with a leg on slot i's event, padded
    with the null slot ``cpad - 1``; width a power of two. With the contracts on
    the event itself, these are the contracts whose YES can flip when the event's
    latent crosses slot i's cut (used by the conditional sensitivities)."""
    on_event: dict[str, set[int]] = {}
    for m, c in enumerate(book.contracts):
        for leg in c.legs:
            on_event.setdefault(book.contracts[ids[leg]].event_key, set()).add(m)
    width = bucket(max((len(v) for v in on_event.values()), default=1), 1)
    out = np.full((cpad, width), cpad - 1, np.int64)
    for i, c in enumerate(book.contracts):
        if c.type != "parlay":
            row = sorted(on_event.get(c.event_key, ()))
            out[i, : len(row)] = row
    return out
