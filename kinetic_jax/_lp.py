"""Exact certificate for hedges: the minimum of the base ES over a box, as the
Rockafellar–Uryasev linear programme on the same scenarios.

    minimise    v + 1 / (N (1 - alpha)) * sum_s u_s + cost * sum_j (x+_j + x-_j)
    subject to  u_s >= L0_s + sum_j A_sj (x+_j - x-_j) - v,   u_s >= 0,
                0 <= x+_j, x-_j <= Q.

Its optimum equals the minimum over the box of the empirical Acerbi–Tasche ES
(with the fractional boundary weight) exactly. Solved with scipy's HiGHS; scipy
is an optional dependency (``pip install kinetic-jax[lp]``).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class LPSolution:
    es: float
    quantities: np.ndarray
    wall_seconds: float
    status: str


def minimum_base_es(
    base_losses: np.ndarray, columns: np.ndarray, confidence: float, bound: float,
    cost: float = 0.0,
) -> LPSolution:
    """Minimum over |x_j| <= bound of ES_alpha(L0 + A x) + cost * |x|_1.

    **Arguments:**

    - `base_losses`: (N,) loss of the current book per scenario.
    - `columns`: (N, n) loss per unit of each instrument per scenario.
    """
    try:
        from scipy import sparse
        from scipy.optimize import linprog
    except ImportError as e:  # pragma: no cover - exercised without the extra
        raise ImportError("the LP certificate needs scipy: pip install 'kinetic-jax[lp]'") from e
    l0 = np.asarray(base_losses, np.float64)
    a = np.asarray(columns, np.float64)
    n_s, n_x = a.shape
    k = n_s * (1 - confidence)
    # variables: x+ (n), x- (n), v, u (N)
    c = np.concatenate([np.full(2 * n_x, cost), [1.0], np.full(n_s, 1.0 / k)])
    a_ub = sparse.hstack([
        sparse.csr_matrix(a), sparse.csr_matrix(-a), sparse.csr_matrix(-np.ones((n_s, 1))),
        -sparse.identity(n_s, format="csr"),
    ], format="csr")
    bounds = [(0, bound)] * (2 * n_x) + [(None, None)] + [(0, None)] * n_s
    t0 = time.perf_counter()
    res = linprog(c, A_ub=a_ub, b_ub=-l0, bounds=bounds, method="highs")
    wall = time.perf_counter() - t0
    if res.status != 0:
        return LPSolution(float("nan"), np.full(n_x, np.nan), wall, res.message)
    x = res.x[:n_x] - res.x[n_x: 2 * n_x]
    return LPSolution(float(res.fun), x, wall, "optimal")


def certify_hedge(book, instruments, *, max_quantity: float, cost: float = 0.0) -> LPSolution:
    """The exact minimum of the base ES (plus cost) over the same instruments,
    bounds and scenarios as [`optimise_hedge`][] with ``objective="base"``."""
    from ._hedge import build_hedge_problem

    problem, _ = build_hedge_problem(book, instruments, max_quantity, cost)
    n = len(instruments)
    l0 = np.asarray(problem.base_losses, np.float64).sum(axis=1)
    a = np.asarray(problem.columns, np.float64)[:, :n]
    return minimum_base_es(l0, a, book.settings.confidence, max_quantity, cost)
