"""An allocation of the margin to positions that adds up (docs/methodology.md,
"Allocation").

The margin is M = max(0, min(W, X + mc + liquidity + stress)) with X = max(base,
floor) (SPEC.md §2.5). Position i gets

- M = 0 (the max(0, .) case): nothing;
- the cap binds (binding ``worst_case``, M = W): its loss in the worst outcome,
  l_i = q_i (p_i - YES*_i), YES* the argmax row of each component of the exact
  worst-case table (sum_i l_i = W);
- otherwise the sum of
  - ``base`` or ``floor`` (whichever is X): the Euler allocation e_i = q_i dX/dq_i
    from the sensitivity Jacobian (sum_i e_i = X: ES on fixed scenarios is
    homogeneous of degree 1 in the quantities);
  - ``mc_error``: the buffer of X's standard error, pro rata to e_i;
  - ``liquidity``: the position's own liquidity term;
  - ``stress``: pro rata to s_i = q_i (p_i - P(YES_i)) in the worst stress
    scenario (the loss the add-on buffers).

"Pro rata to w" is amount * w_i / sum w when sum w > 0, else amount * |w_i| /
sum |w| (a buffer never turns into a credit), else equal shares. The figures
of the report are float32; the float32 rounding left between the parts and the
reported margin (relative 1e-7) is spread over the binding part in proportion
to its size, so the allocations sum to the reported margin to float64
precision. The pure Euler figure (q_i dM/dq_i) is reported beside it.
"""

from __future__ import annotations

import numpy as np

from ._book import Book
from ._margin import ADDONS, BINDING, MarginResult
from ._worst_case import OutcomeTable


def pro_rata(amount: float, weights: np.ndarray) -> np.ndarray:
    """`amount` split in proportion to `weights` (see module doc)."""
    w = np.asarray(weights, np.float64)
    if amount == 0.0 or len(w) == 0:
        return np.zeros(len(w))
    total = float(np.sum(w))
    if total > 0.0:
        return amount * w / total
    size = float(np.sum(np.abs(w)))
    if size > 0.0:
        return amount * np.abs(w) / size
    return np.full(len(w), amount / len(w))


def _settle(target: float, values: np.ndarray) -> np.ndarray:
    """`values` plus the residual target - sum(values), spread by |values|."""
    residual = target - float(np.sum(values))
    size = float(np.sum(np.abs(values)))
    if size > 0.0:
        return values + residual * np.abs(values) / size
    return values + residual / max(len(values), 1)


def liquidity_terms(book: Book, quantity: np.ndarray, price: np.ndarray) -> np.ndarray:
    """Each position's own liquidity add-on term (dollars), as the engine's:
    min(gross, rate * gross * max(0, |q| / open interest - threshold)) where the
    open interest is given, 0 elsewhere or when the add-on is off."""
    s = book.settings
    oi = np.array([c.open_interest or 0.0 for c in book.contracts])
    gross = np.maximum(quantity * price, -quantity * (1 - price))
    # Perps and futures: their notional |q| F0 (as the engine's full collateral).
    notional = np.array([book.forward_price(c) if c.is_linear else 0.0 for c in book.contracts])
    gross = np.where(notional > 0, np.abs(quantity) * notional, gross)
    given = oi > 0
    ratio = np.abs(quantity) / np.where(given, oi, 1.0)
    each = np.minimum(gross, s.liquidity_rate * gross * np.maximum(
        ratio - s.liquidity_threshold, 0.0))
    return np.where(given, each, 0.0) * float(s.liquidity)


def stress_terms(book: Book, quantity: np.ndarray, price: np.ndarray) -> np.ndarray:
    """Each position's loss in the worst stress scenario (zeros without one)."""
    if not book.stress:
        return np.zeros(len(quantity))
    from ._stress import stress_matrix

    per = quantity[None, :] * (price[None, :] - stress_matrix(book))  # (S, C)
    return per[int(np.argmax(per.sum(axis=1)))]


def allocate(
    book: Book,
    table: OutcomeTable,
    result: MarginResult,
    d_base: np.ndarray,
    d_floor: np.ndarray,
) -> dict[str, np.ndarray]:
    """The allocation of the margin to every contract of `book` (see module doc).

    **Arguments:** the book, its worst-case `table`, the reported figures
    `result` (a [`MarginResult`][] of host numbers), and dM/dq of base and floor
    per contract slot (Jacobian rows 1 and 2 of the sensitivities; padding
    slots beyond the book's contracts are ignored).

    **Returns:** ``{part: per-contract dollars}`` for the parts ``base``,
    ``floor``, ``mc_error``, ``liquidity``, ``stress``, ``worst_case`` and
    their sum ``allocation`` (which adds up to `margin`).
    """
    margin, base, floor = float(result.margin), float(result.base), float(result.floor)
    addons = {name: float(v) for name, v in zip(ADDONS, np.asarray(result.addons))}
    binding = BINDING[int(result.binding)]
    qty = book.net_quantities()
    q = np.array([qty[c.id] for c in book.contracts], np.float64)
    p = np.array([c.loss_price for c in book.contracts], np.float64)
    n = len(q)
    parts = {name: np.zeros(n) for name in
             ("base", "floor", "mc_error", "liquidity", "stress", "worst_case")}
    held = np.flatnonzero(q != 0)
    if margin <= 0.0 or len(held) == 0:
        parts["allocation"] = np.zeros(n)
        return parts

    def on_held(values: np.ndarray) -> np.ndarray:
        out = np.zeros(n)
        out[held] = values
        return out

    if binding == "worst_case":
        loss = q * (p - table.worst_outcome(q, p))
        parts["worst_case"] = on_held(_settle(margin, loss[held]))
        parts["allocation"] = parts["worst_case"]
        return parts
    name, x, grad = ("base", base, d_base) if base >= floor else ("floor", floor, d_floor)
    euler = (q * np.asarray(grad, np.float64)[:n])[held]
    parts["mc_error"] = on_held(pro_rata(addons.get("mc_error", 0.0), euler))
    parts["liquidity"] = on_held(pro_rata(addons.get("liquidity", 0.0),
                                          liquidity_terms(book, q, p)[held]))
    if addons.get("stress", 0.0) > 0.0:
        parts["stress"] = on_held(pro_rata(addons["stress"], stress_terms(book, q, p)[held]))
    others = parts["mc_error"] + parts["liquidity"] + parts["stress"]
    # X's Euler allocation, with the float32 rounding between the parts and the
    # reported margin spread over it.
    parts[name] = on_held(_settle(margin - float(np.sum(others)), euler))
    parts["allocation"] = parts[name] + others
    return parts
