"""Pre-trade what-if: the margin of a book after some trades, without simulating again.

A [`MarginSession`][] simulates the book once and keeps on the device what a
change of quantities needs:

    yes       (C, N)      the outcome matrix, uint8 (contract slots x scenarios);
                          under a horizon the marks, in the values' dtype
    losses    (K + 1, N)  each scenario's loss per cluster and for the book
    weights   (N,)        likelihood ratios (1 for plain sampling, 0 on padding)

Outcomes do not depend on quantities, so trades dq on slots T change the losses by

    losses[c(t)] += dq_t (p_t - yes[t]),   losses[book] += sum_t dq_t (p_t - yes[t])

(a gather of |T| rows of the outcome matrix, O(|T| N)). Only the rows a trade
moves are re-estimated (ES, standard error and VaR, exactly as
[`margin_from_weighted_losses`][] computes them); the other rows keep the
session's figures. Then [`margin_from_statistics`][] gives the floor, the
add-ons, and the exact worst-case cap from the book's outcome table.

Trades are passed as a padded vector of slots and quantity changes (a
power-of-two bucket of at least 8), so a what-if of 1 to 8 trades on the same
book never recompiles. Committing trades ([`MarginSession.apply`][]) recomputes
the losses from the outcome matrix (no drift) with the same shapes under the
plain sampler, and simulates the committed book again under the others (below).

Contracts new to the book. Draws are keyed by event name (see
[`block_noise`][]), so a contract on a new event gets exactly the draws a full
call on the new book would give it: the session rebuilds the book's arrays
(host work: the worst-case table and the stress matrix are rebuilt, and a
larger padding bucket recompiles), redraws only the latents of the events the
new contracts sit on (existing or new) with the same key, recomputes the
outcome rows of every contract on those events and of every parlay with a leg
there, and keeps every other row. The result equals
[`portfolio_margin`][] of the new book with the same seed.

Samplers. With the plain sampler every figure equals [`portfolio_margin`][] of
the traded book with the same seed, to float32 rounding of the loss updates.
With ``sampler = "importance"`` the session keeps
the proposal fitted to the book it was opened on (a valid likelihood-ratio
estimator for any traded book, with honest standard errors) rather than
refitting it per what-if, so its figures equal a full call only for the
untraded book; they agree with a full call on the traded book to within their
standard errors. Those grow when the trades turn the book's tail around (every
position of a perps-and-strip book flipped: a base standard error of 215 against
a full call's 36 at 16,384 draws), so [`MarginSession.apply`][] simulates the
committed book again with a proposal fitted to it: after it, the session's
report is the full call's. With ``sampler = "exact_block"`` (the default where
``[model] sampler`` is unset) the same holds, and each what-if computes the
traded book's independent block and its exact law on the host (about 12 ms
for a 100-position book, memoised per session on the block and its
quantities; a trade may move positions into or out of the block), the rest's
loss R from the outcome matrix (updated on the slots whose q x rest changed),
and the base as the ES of R + S ([`sampler_law`][]; the law's fixed width keeps
the compiled program).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, UInt8

from ._arrays import BookArrays, BookLayout, book_arrays, bucket, row_membership
from ._block import BlockLaw, exact_block_rows, freeze, independent_slots, sampler_law
from ._book import MAX_AMOUNT, Book, Contract, check_book, check_number
from ._errors import BookError
from ._margin import (
    MarginParams,
    MarginResult,
    margin_from_statistics,
    row_statistics,
    static_top,
)
from ._portfolio import ClusterReport, MarginReport, _report
from ._programs import program
from ._sampler import (
    Proposal,
    check_sampler,
    chunk_rows,
    chunk_size,
    fit_proposal,
    outcome_losses,
    padded_scenarios,
    stream,
)
from ._shortfall import (
    tail_size,
)
from ._simulation import HIGHEST, atom_cuts_jit, latent_rows, latents_from_noise, outcome_rows

MIN_TRADES = 8  # trade vectors are padded to a power of two >= this
LAWS = 8  # exact-block laws a session keeps (MarginSession._law)


class SessionState(eqx.Module):
    """What a what-if needs from the simulation (see module doc)."""

    yes: UInt8[Array, "C Np"] | Float[Array, "C Np"]  # marks (values' dtype) at a horizon
    losses: Float[Array, "K+1 Np"]
    weights: Float[Array, " Np"]


# ---- jitted pieces -----------------------------------------------------------------
def _outcome_step(arrays: BookArrays, scenarios: int):
    # Scenarios on the minor axis (see _simulation.latent_rows): the session's
    # outcome matrix and loss rows are built in the layout they are kept in.
    def fn(noise, index, log_w):
        yes = outcome_rows(latent_rows(noise, arrays), arrays)  # (C, n)
        valid = index < scenarios
        losses = jnp.where(valid[None, :], outcome_losses(arrays, yes), -jnp.inf)
        # 0/1 outcomes fit in a byte; marks at a horizon (and linear values) do not.
        kept = yes.astype(arrays.price.dtype if arrays.dynamic else jnp.uint8)
        return kept, losses, jnp.where(valid, jnp.exp(log_w), 0.0)

    return fn


@program
def _simulate(arrays: BookArrays, confidence, key: PRNGKeyArray, scenarios: int,
              sampler: str, chunk: int | None, law: BlockLaw | None = None
              ) -> tuple[SessionState, Proposal | None]:
    proposal = None
    if sampler != "plain":
        proposal = freeze(fit_proposal(arrays, confidence, key, scenarios, chunk, law), law)
    yes, losses, weights = stream(arrays, key, scenarios, chunk, proposal,
                                  _outcome_step(arrays, scenarios), per_scenario=False)
    return SessionState(chunk_rows(yes), chunk_rows(losses), weights.reshape(-1)), proposal


class RestUpdate(eqx.Module):
    """The exact-block what-if's rest row R from the session's: `losses` (R of
    the session's book) plus `delta` (the change of q x rest) on slots `index`
    (padding: the null slot, delta 0); `full`: recompute R from every slot
    instead (a session without R yet, or more changed slots than the width)."""

    losses: Float[Array, " Np"]
    index: Int[Array, " T"]
    delta: Float[Array, " T"]
    full: Bool[Array, ""]


class RowStatistics(eqx.Module):
    """ES, standard error and VaR of each loss row (each cluster's, then the
    book's), as [`margin_from_statistics`][] takes them."""

    es: Float[Array, " K+1"]
    se: Float[Array, " K+1"]
    var: Float[Array, " K+1"]

    @classmethod
    def of(cls, result: MarginResult) -> RowStatistics:
        cat = lambda c, b: jnp.concatenate([c, b[None]])  # noqa: E731
        return cls(cat(result.cluster_es, result.base), cat(result.cluster_se, result.base_se),
                   cat(result.cluster_var, result.var))


@program
def _what_if(state: SessionState, stats: RowStatistics, arrays: BookArrays,
             params: MarginParams, quantity: Float[Array, " C"], index: Int[Array, " T"],
             delta: Float[Array, " T"], refresh: Bool[Array, ""], top: int,
             scenarios: int, law: BlockLaw | None = None, rest: RestUpdate | None = None
             ) -> tuple[MarginResult, Float[Array, " Np"] | None]:
    """The margin of `arrays` with quantities `quantity` = the session's + `delta`
    on slots `index` (padding: the null slot with delta 0).

    Only the loss rows a trade moves (its cluster's and the book's) are
    recomputed, one row at a time (``lax.map`` over the rows, ``lax.cond`` on
    whether a trade touches the row); the others keep the session's `stats`.
    `refresh` recomputes every row (the session's own figures). With the
    exact-block sampler's `law` (the traded book's), the book's row is instead
    the ES of R + S (R, the rest's loss: the session's R plus the slots whose
    q x rest changed, or all of them when `rest.full`, from the outcome matrix)
    and the clusters inside the block take their exact figures; R is returned
    beside the result (None without a law)."""
    k = arrays.loading.shape[0]
    cols = state.yes[index].astype(arrays.price.dtype)  # (T, Np)
    per = delta[:, None] * (arrays.price[index][:, None] - cols)
    rows = row_membership(arrays, arrays.cluster[index])  # (T, K + 1): the rows t moves
    touched = (jnp.any((rows > 0) & (delta != 0)[:, None], axis=0)) | refresh
    if law is not None:  # the book's row: R + S, unless the law is empty; a cluster
        # inside the block takes its exact figures, so its sampled row is not needed
        touched = touched & jnp.concatenate([~law.cluster_exact, jnp.all(law.rest > 0)[None]])

    def row(r):
        def fresh():
            loss = state.losses[r] + jnp.matmul(rows[:, r], per, precision=HIGHEST)
            es, se, var = row_statistics(loss[None], state.weights, params.confidence, top,
                                          scenarios)
            return es[0], se[0], var[0]

        return lax.cond(touched[r], fresh, lambda: (stats.es[r], stats.se[r], stats.var[r]))

    es, se, var = lax.map(row, jnp.arange(k + 1))
    traded = eqx.tree_at(lambda a: a.quantity, arrays, quantity)
    r_loss = None
    if law is not None:
        f = traded.price.dtype

        def whole():
            return jnp.matmul((quantity * law.rest)[None],
                              traded.price[:, None] - state.yes.astype(f), precision=HIGHEST)[0]

        def update():
            cols = traded.price[rest.index][:, None] - state.yes[rest.index].astype(f)
            return rest.losses + jnp.matmul(rest.delta[None], cols, precision=HIGHEST)[0]

        r_loss = lax.cond(rest.full, whole, update)
        r_loss = jnp.where(state.weights > 0, r_loss, 0.0)
        es, se, var = exact_block_rows(es, se, var, r_loss, state.weights, law,
                                       params.confidence)
    return margin_from_statistics(traded, params, es, se, var), r_loss


@program
def _recompute_losses(state: SessionState, arrays: BookArrays) -> SessionState:
    """Row losses of `arrays`' quantities from the outcome matrix (padding at -inf)."""
    valid = state.weights > 0
    losses = outcome_losses(arrays, state.yes.astype(arrays.price.dtype))
    return SessionState(state.yes, jnp.where(valid[None, :], losses, -jnp.inf), state.weights)


def _padded(index: list[int], fill: int) -> Int[Array, " B"]:
    """`index` padded with `fill` to a power-of-two bucket (at least 1)."""
    out = np.full(bucket(len(index), 1), fill, np.int32)
    out[: len(index)] = index
    return jnp.asarray(out)


@jax.jit
def _new_rows(yes: UInt8[Array, "C Np"], latents: Float[Array, "Np Et"], lo: Float[Array, " C"],
              hi: Float[Array, " C"], slots: Int[Array, " S"], columns: Int[Array, " S"],
              parlays: Int[Array, " P"], legs: Int[Array, "P L"]) -> UInt8[Array, "C Np"]:
    """The outcome matrix with the rows of `slots` set to their atoms (cuts `lo`,
    `hi`) of the latents in `columns`, then the rows of `parlays` to the minimum of
    their `legs`' rows (legs are not parlays, so the order is immaterial). One
    program, depending on the sizes alone (not on the rest of the book's layout):
    run eagerly, each comparison, gather and scatter compiled on its own (86 small
    programs on a session's first new contract of the reference book)."""
    x = latents[:, columns].T  # (S, Np)
    lo_s, hi_s = lo.at[slots].get(mode="clip"), hi.at[slots].get(mode="clip")
    atom = (x > lo_s[:, None]) & (x <= hi_s[:, None])
    yes = yes.at[slots].set(atom.astype(yes.dtype), mode="drop")
    return yes.at[parlays].set(jnp.min(yes[legs], axis=1), mode="drop")


@program
def _event_latents(view: BookArrays, key: PRNGKeyArray, scenarios: int, chunk: int,
                   proposal: Proposal | None) -> Float[Array, "Np Et"]:
    """Latents of the events of `view` (a book whose events are the touched ones)."""
    return stream(view, key, scenarios, chunk, proposal,
                  lambda noise, index, log_w: latents_from_noise(noise, view))


# ---- reports -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WhatIfReport(MarginReport):
    """The [`MarginReport`][] of the book after `trades`, with the change it makes.

    - `incremental`: margin after - margin before (dollars; negative: the trades
      free margin).
    - `margin_before`, `binding_before`, `clusters_before`: the session's book
      before the trades.
    - `trades`: contract id -> quantity traded (added to the position).
    """

    incremental: float = 0.0
    margin_before: float = 0.0
    binding_before: str = ""
    clusters_before: tuple[ClusterReport, ...] = ()
    trades: tuple[tuple[str, float], ...] = ()

    def cluster_changes(self) -> list[dict]:
        """Per cluster: gross and ES before and after, and the change of ES."""
        before = {c.name: c for c in self.clusters_before}
        out = []
        for c in self.clusters:
            b = before.get(c.name)
            gross_b, es_b = (b.gross, b.es) if b is not None else (0.0, 0.0)
            out.append({"name": c.name, "gross_before": gross_b, "gross_after": c.gross,
                        "es_before": es_b, "es_after": c.es, "es_change": c.es - es_b})
        return out

    def summary(self) -> dict:
        """The change: trades, margin before and after, incremental, binding
        before and after, and per cluster (see [`cluster_changes`][])."""
        return {
            "trades": dict(self.trades),
            "margin_before": self.margin_before,
            "margin_after": self.margin,
            "incremental": self.incremental,
            "binding_before": self.binding_before,
            "binding_after": self.binding,
            "clusters": self.cluster_changes(),
        }

    def to_dict(self) -> dict:
        """The traded book's margin report (SPEC.md §4) with ``what_if``: the
        [`summary`][]."""
        return {**super().to_dict(), "what_if": self.summary()}


# ---- the session -----------------------------------------------------------------------
def _changes(after: MarginReport, before: MarginReport, trades) -> WhatIfReport:
    """`after` as a [`WhatIfReport`][]: with the change from `before` and the trades."""
    return WhatIfReport(
        **{f.name: getattr(after, f.name) for f in dataclasses.fields(MarginReport)},
        incremental=after.margin - before.margin,
        margin_before=before.margin,
        binding_before=before.binding,
        clusters_before=before.clusters,
        trades=trades,
    )


class MarginSession:
    """A book simulated once, for pre-trade what-ifs (see module doc).

    Open one with [`margin_session`][]. `book` and `report` are the current
    (committed) book and its margin report.
    """

    def __init__(self, book: Book, *, dtype=None, key: PRNGKeyArray | None = None):
        book = book.with_sampler_for("what_if")
        s = book.settings
        check_sampler(s.sampler)
        self._dtype = dtype
        self._key = jax.random.key(s.seed) if key is None else key
        self._top = tail_size(s.scenarios, s.confidence)
        self._params: MarginParams | None = None
        self._proposal: Proposal | None = None
        self._open(book)

    # The book, its arrays and the simulation stay consistent: only _open, _extend
    # and apply change them.
    def _open(self, book: Book) -> None:
        arrays, layout = book_arrays(book, self._dtype)
        s = book.settings
        self._params = MarginParams.from_settings(s, arrays.price.dtype)
        law = sampler_law(arrays)[0] if s.sampler == "exact_block" else None
        state, self._proposal = _simulate(arrays, self._params.confidence, self._key,
                                          s.scenarios, s.sampler, None, law)
        self._set(book, arrays, layout, state)

    def _set(self, book: Book, arrays: BookArrays, layout: BookLayout,
             state: SessionState) -> None:
        self.book, self._arrays, self._layout, self._state = book, arrays, layout, state
        self._slot = {cid: i for i, cid in enumerate(layout.contract_ids)}
        self._cluster = np.asarray(arrays.cluster)
        self._quantity = np.asarray(arrays.quantity, np.float64)
        self._rest = None  # (q x rest, R) of this book and state, exact-block sampler
        self._laws: dict[tuple, tuple[BlockLaw, int]] = {}  # see _law
        self.report, result, self._rest = self._margin(
            book, arrays, layout, state, None, self._quantity, np.zeros(0, np.int64),
            np.zeros(0))
        self._stats = RowStatistics.of(result)

    @property
    def margin(self) -> float:
        return self.report.margin

    @property
    def nbytes(self) -> int:
        """Bytes of the simulation the session keeps (the outcome matrix, or the
        marks at a horizon, with the loss rows and weights): its memory cost."""
        return sum(int(x.nbytes) for x in jax.tree.leaves(self._state))

    @property
    def sampler(self) -> str:
        return self.book.settings.sampler

    def _margin(self, book, arrays, layout, state, stats, quantity, index, delta
                ) -> tuple[MarginReport, MarginResult, tuple | None]:
        """The report after trading `delta` on slots `index`, its result and, for
        the exact-block sampler, ``(q x rest, R)`` of the traded book; `stats`
        are the row statistics of `state` before the trades (None: recompute
        every row, and R: `state` is not the session's)."""
        s = book.settings
        width = bucket(len(index), MIN_TRADES)
        null = arrays.quantity.shape[0] - 1  # a padding slot: quantity 0, any outcome
        idx = np.full(width, null, np.int32)
        dq = np.zeros(width)
        idx[: len(index)], dq[: len(index)] = index, delta
        f = arrays.price.dtype
        top = static_top(s.sampler, s.scenarios, state.weights.shape[0], self._top)
        refresh = stats is None
        if refresh:
            zero = jnp.zeros(arrays.loading.shape[0] + 1, f)
            stats = RowStatistics(zero, zero, zero)
        law, exact, update, rest_q = None, 0, None, None
        if s.sampler == "exact_block":  # the traded book's law (host, memoised)
            law, exact = self._law(arrays, quantity)
            rest_q = np.asarray(quantity, np.float64) * np.asarray(law.rest, np.float64)
            base = None if refresh else self._rest
            changed = (np.arange(0) if base is None
                       else np.flatnonzero(rest_q != base[0]))
            full = base is None or len(changed) > width
            r_idx = np.full(width, null, np.int32)
            r_dq = np.zeros(width)
            if not full:
                r_idx[: len(changed)] = changed
                r_dq[: len(changed)] = rest_q[changed] - base[0][changed]
            update = RestUpdate(base[1] if base is not None else state.weights * 0,
                                jnp.asarray(r_idx), jnp.asarray(r_dq, f), jnp.asarray(full))
        result, r_loss = _what_if(state, stats, arrays, self._params, jnp.asarray(quantity, f),
                                  jnp.asarray(idx), jnp.asarray(dq, f), jnp.asarray(refresh),
                                  top, s.scenarios, law, update)
        rest = None if law is None else (rest_q, r_loss)
        return _report(book, layout, result, exact), result, rest

    def _law(self, arrays: BookArrays, quantity: np.ndarray) -> tuple[BlockLaw, int]:
        """[`sampler_law`][] of `arrays` holding `quantity`, memoised on all it
        depends on besides the session's arrays: the block, its quantities, and
        the clusters holding positions outside it (a cluster is exact when all
        its positions lie in the block). A what-if that trades outside the block
        reuses the session's law (about 12 ms of host time on a 100-position
        book); the `LAWS` most recently used are kept. Arrays extended by
        contracts new to the book (other prices in the padding slots) are not
        memoised."""
        traded = eqx.tree_at(lambda a: a.quantity, arrays,
                             jnp.asarray(quantity, arrays.price.dtype))
        if arrays is not self._arrays:
            return sampler_law(traded)
        block = independent_slots(traded)
        outside = (quantity != 0) & ~block
        key = (block.tobytes(), quantity[block].tobytes(),
               np.unique(self._cluster[outside]).tobytes())
        law = self._laws.pop(key, None)
        if law is None:
            law = sampler_law(traded)
        self._laws[key] = law  # the most recently used last
        while len(self._laws) > LAWS:
            self._laws.pop(next(iter(self._laws)))
        return law

    # ---- trades --------------------------------------------------------------------
    def _parse(self, trades) -> tuple[dict[str, float], list[Contract]]:
        """Net quantity per contract id, and the contracts new to the book."""
        if not isinstance(trades, Mapping):
            raise BookError("trades", f"{type(trades).__name__} is not a mapping of "
                                      f"contract id (or kj.Contract) to quantity")
        net: dict[str, float] = {}
        new: dict[str, Contract] = {}
        for key, qty in trades.items():
            if isinstance(key, Contract):
                cid = key.id
                if cid in self._slot:
                    if self.book.contract(cid) != key:
                        raise BookError(f"trades[{cid!r}]", "a contract of that id is in the "
                                        "book with another definition")
                elif cid in new and new[cid] != key:
                    raise BookError(f"trades[{cid!r}]", "two different definitions given")
                else:
                    new[cid] = key
            elif isinstance(key, str):
                cid = key
                if cid not in self._slot and cid not in new:
                    raise BookError(f"trades[{cid!r}]",
                                    "unknown contract; to trade a contract new to the book, "
                                    "give its definition (a kj.Contract) as the key")
            else:
                raise BookError("trades", f"key {key!r} is neither a contract id nor a "
                                          f"kj.Contract")
            q = check_number(f"trades[{cid!r}]", qty, low=-MAX_AMOUNT, high=MAX_AMOUNT)
            net[cid] = net.get(cid, 0.0) + q
        return net, list(new.values())

    def _traded(self, book: Book, trades: dict[str, float]) -> Book:
        qty = book.net_quantities()
        for cid, q in trades.items():
            qty[cid] = qty.get(cid, 0.0) + q
        return book.with_positions(qty)

    def what_if(self, trades) -> WhatIfReport:
        """The margin report of the book after `trades` (added to the positions),
        with `incremental` = margin after - margin before. Nothing is committed.

        **Arguments:**

        - `trades`: mapping of contract id to signed quantity traded. A contract
          in the book but not held may be traded; a contract new to the book is
          given by its definition, a [`Contract`][], as the key (see module doc).

        **Returns:** a [`WhatIfReport`][]. Raises [`BookError`][] naming the
        trade for an unknown contract, a non-numeric or out-of-range quantity,
        or a traded book that does not validate.
        """
        return self._evaluate(trades)[0]

    def apply(self, trades) -> WhatIfReport:
        """Commits `trades` (see [`what_if`][]); the session's book becomes the
        traded book, and ``session.report`` its margin report as
        [`portfolio_margin`][] gives it with the session's key.

        With the plain sampler the draws do not depend on the book: the loss
        rows are recomputed from the outcome matrix, and the report returned is
        that of ``what_if(trades)``. With ``"importance"`` and ``"exact_block"``
        the proposal is fitted to the book it was opened on, and a trade that
        turns the book's tail around (a flipped position) leaves it sampling the
        wrong tail: a standard error several times a full call's. So the
        committed book is simulated again with its own proposal (a full call's
        time; the shapes, hence the compiled programs, stay), and the report
        returned is the committed book's, which agrees with ``what_if(trades)``
        within their standard errors; `incremental` is its margin less the
        margin before."""
        if self.sampler == "plain":
            report, book, arrays, layout, state, quantity = self._evaluate(trades)
            arrays = eqx.tree_at(lambda a: a.quantity, arrays,
                                 jnp.asarray(quantity, arrays.price.dtype))
            self._set(book, arrays, layout, _recompute_losses(state, arrays))
            return report
        # Only the traded book is needed: no what-if, no extended simulation.
        net, new = self._parse(trades)
        book = self._extended_book(new) if new else self.book
        before = self.report
        self._open(self._traded_checked(book, net))
        return _changes(self.report, before, tuple(net.items()))

    def _traded_checked(self, book: Book, net: dict[str, float]) -> Book:
        try:
            return self._traded(book, net)
        except BookError as e:
            raise BookError(f"trades ({e.field})", e.detail) from None

    def _evaluate(self, trades):
        net, new = self._parse(trades)
        book, arrays, layout, state = self.book, self._arrays, self._layout, self._state
        if new:
            book, arrays, layout, state = self._extend(new)
        traded = self._traded_checked(book, net)
        slot = {cid: i for i, cid in enumerate(layout.contract_ids)}
        held = book.net_quantities()
        index = np.array([slot[cid] for cid in net], np.int64)
        quantity = np.zeros(arrays.quantity.shape[0])
        after = traded.net_quantities()
        for i, cid in enumerate(layout.contract_ids):
            quantity[i] = after[cid]
        # Losses in `state` are those of `book`'s quantities: trade the difference.
        delta = np.array([after[cid] - held[cid] for cid in net], np.float64)
        # A book extended by new contracts has no row statistics yet: all rows.
        stats = None if new else self._stats
        report, _, _ = self._margin(traded, arrays, layout, state, stats, quantity, index,
                                    delta)
        what = _changes(report, self.report, tuple(net.items()))
        return what, traded, arrays, layout, state, quantity

    # ---- contracts new to the book -----------------------------------------------------
    def _extended_book(self, new: list[Contract]) -> Book:
        """The session's book with `new` contracts appended (not held)."""
        # A new contract on an event of the book, undated, resolves with the event.
        dated = {c.event_key: (c.resolves, c.resolves_in) for c in self.book.contracts
                 if c.type != "parlay" and (c.resolves or c.resolves_in is not None)}
        new = [dataclasses.replace(c, resolves=dated[c.event_key][0],
                                   resolves_in=dated[c.event_key][1])
               if c.type != "parlay" and c.resolves is None and c.resolves_in is None
               and c.event_key in dated else c for c in new]
        try:
            return dataclasses.replace(self.book, contracts=self.book.contracts + tuple(new))
        except BookError as e:
            raise BookError(f"trades ({e.field})", e.detail) from None

    def _extend(self, new: list[Contract]):
        """The session's book with `new` contracts appended (not held), its arrays
        and its simulation state (see module doc)."""
        book = self._extended_book(new)
        s = book.settings
        arrays, layout = book_arrays(book, self._dtype)
        if arrays.dynamic:
            # Marks of new contracts on existing events (and parlays over them) need
            # the whole revealed state: simulate the extended book, as a full call does.
            state, _ = _simulate(arrays, self._params.confidence, self._key, s.scenarios,
                                 s.sampler, None)
            return book, arrays, layout, state
        old = self.book.contracts
        n_old = len(old)
        ids = {c.id: i for i, c in enumerate(book.contracts)}
        touched_events = {c.event_key for c in new if c.type != "parlay"}
        events = list(layout.event_names)
        ev_index = {e: k for k, e in enumerate(events)}
        slots = [i for i, c in enumerate(book.contracts)
                 if c.type != "parlay" and c.event_key in touched_events]
        parlays = [i for i, c in enumerate(book.contracts) if c.type == "parlay" and (
            i >= n_old or any(book.contracts[ids[leg]].event_key in touched_events
                              for leg in c.legs))]
        chunk = chunk_size(arrays, s.scenarios)
        n_padded = padded_scenarios(arrays, s.scenarios, chunk)
        state = _repad(self._state, s.scenarios, n_padded)
        cpad = arrays.quantity.shape[0]
        yes = state.yes
        if cpad > yes.shape[0]:  # new padding slots are always YES, as in the core
            yes = jnp.concatenate(
                [yes, jnp.ones((cpad - yes.shape[0], yes.shape[1]), yes.dtype)], axis=0)
        if slots or parlays:
            touched = sorted(ev_index[e] for e in touched_events)
            position = {e: t for t, e in enumerate(touched)}
            latents = (self._latents(arrays, touched, s.scenarios, chunk) if slots
                       else jnp.asarray(np.zeros((yes.shape[1], 1), arrays.price.dtype)))
            # Padded to power-of-two buckets (stable shapes): padding entries point
            # past the matrix (their rows are dropped), padding legs at the last
            # slot, always padding and always YES.
            width = bucket(max([len(book.contracts[i].legs) for i in parlays], default=1), 1)
            legs = np.full((bucket(len(parlays), 1), width), cpad - 1, np.int32)
            for r, i in enumerate(parlays):
                legs[r, : len(book.contracts[i].legs)] = [ids[leg] for leg in
                                                          book.contracts[i].legs]
            lo, hi = atom_cuts_jit(arrays)
            yes = _new_rows(
                yes, latents, lo, hi,
                _padded(slots, cpad),
                _padded([position[ev_index[book.contracts[i].event_key]] for i in slots], 0),
                _padded(parlays, cpad), jnp.asarray(legs))
        state = SessionState(yes, state.losses, state.weights)
        quantity = np.zeros(cpad)
        qty = book.net_quantities()
        for i, cid in enumerate(layout.contract_ids):
            quantity[i] = qty[cid]
        arrays = eqx.tree_at(lambda a: a.quantity, arrays,
                             jnp.asarray(quantity, arrays.price.dtype))
        state = _recompute_losses(state, arrays)
        return book, arrays, layout, state

    def _latents(self, arrays: BookArrays, touched: list[int], scenarios: int, chunk: int):
        """Latents (Np, W) of the events `touched` (indices in `arrays`), from the
        same key and draws as a full simulation of the book: column t < len(touched)
        is event touched[t]'s; W is a power-of-two bucket (stable shapes)."""
        width = bucket(len(touched), 1)
        pick = np.full(width, touched[0], np.int64)
        pick[: len(touched)] = touched
        view = eqx.tree_at(lambda a: (a.event_seed, a.event_cluster), arrays,
                           (jnp.asarray(np.asarray(arrays.event_seed)[pick]),
                            jnp.asarray(np.asarray(arrays.event_cluster)[pick])))
        proposal = None
        if self._proposal is not None:
            shift = np.zeros((self._proposal.event_shift.shape[0], width))
            known = np.asarray(self._proposal.event_shift)
            for t, e in enumerate(pick):
                if e < known.shape[1] and e < len(self._layout.event_names):
                    shift[:, t] = known[:, e]
            proposal = eqx.tree_at(lambda p: p.event_shift, self._proposal,
                                   jnp.asarray(shift, known.dtype))
        return _event_latents(view, self._key, scenarios, chunk, proposal)  # (Np, width)


def _repad(state: SessionState, scenarios: int, n_padded: int) -> SessionState:
    """The state with `n_padded` scenario columns (padding: YES, -inf, weight 0)."""
    if state.weights.shape[0] == n_padded:
        return state
    extra = n_padded - scenarios
    cut = lambda x: x[..., :scenarios]  # noqa: E731
    pad = lambda x, v: jnp.concatenate(  # noqa: E731
        [cut(x), jnp.full((*x.shape[:-1], extra), v, x.dtype)], axis=-1)
    return SessionState(pad(state.yes, 1), pad(state.losses, -jnp.inf), pad(state.weights, 0))


def margin_session(
    book: Book,
    *,
    scenarios: int | None = None,
    seed: int | None = None,
    confidence: float | None = None,
    sampler: str | None = None,
    dtype=None,
    key: PRNGKeyArray | None = None,
) -> MarginSession:
    """Simulates `book` once and returns a [`MarginSession`][] for what-ifs.

    **Arguments:** as [`portfolio_margin`][]: `scenarios`, `seed`, `confidence`,
    `sampler` override the book's ``[model]`` values; `dtype`; `key` instead of
    ``jax.random.key(seed)``.

    **Returns:** the session; ``session.report`` is the book's margin report
    (equal to [`portfolio_margin`][] with the same settings).
    """
    return MarginSession(check_book(book).with_overrides(scenarios=scenarios, seed=seed,
                                              confidence=confidence, sampler=sampler),
                         dtype=dtype, key=key)

