"""Expected shortfall (Acerbi–Tasche) of simulated losses, with its standard error.

With N equally likely draws and k = N (1 - alpha), the tail mean of the
empirical distribution is exactly

    ES = (1 / k) * sum_j w_j L_(j),   w_j = clip(k - j, 0, 1),

over the losses sorted in decreasing order L_(0) >= L_(1) >= ...: the floor(k)
largest losses in full and the boundary draw with the fractional weight
k - floor(k). This is the Acerbi–Tasche integral of the empirical quantile
function, exact when the loss distribution has atoms. VaR is L_(floor(k)).

Standard error (Chen 2008; the estimator is the Rockafellar–Uryasev objective at
its minimiser, so its variance is that of the objective):

    SE = sqrt(Var[(L - VaR)^+] / N) / (1 - alpha).

Only the tail is needed, so the `top` largest losses are taken with
``lax.top_k`` (no full sort); `top` is a static bucket >= floor(k) + 1, and alpha
may change at run time within it without recompiling.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float


def tail_size(scenarios: int, confidence: float) -> int:
    """Static number of largest losses kept for ES at `confidence`: at least
    floor(N (1 - alpha)) + 2, rounded up to a multiple of 64, at most N."""
    need = math.floor(scenarios * (1 - confidence)) + 2
    return min(scenarios, -(-need // 64) * 64)


def _safe_sqrt(x):
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def expected_shortfall(
    losses: Float[Array, "*batch N"], confidence: Float[Array, ""], top: int
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"], Float[Array, "*batch"]]:
    """ES, its standard error and VaR of each row of `losses` (dollars).

    **Arguments:**

    - `losses`: simulated losses, scenarios on the last axis.
    - `confidence`: alpha in (0, 1) (an array; changing it does not recompile).
    - `top`: static tail size from [`tail_size`][].

    **Returns:** ``(es, standard_error, var)``, each with the leading shape.
    """
    tail, _ = lax.top_k(losses, top)
    return tail_statistics(tail, losses.shape[-1], confidence)


def tail_statistics(
    tail: Float[Array, "*batch T"], scenarios: int, confidence: Float[Array, ""]
) -> tuple[Float[Array, "*batch"], Float[Array, "*batch"], Float[Array, "*batch"]]:
    """``(es, standard_error, var)`` from the T largest of `scenarios` losses,
    sorted in decreasing order (T >= floor(N (1 - alpha)) + 1)."""
    n = scenarios
    top = tail.shape[-1]
    k = n * (1 - confidence)
    # The kept tail must reach the boundary draw L_(floor(k)); otherwise ES and VaR
    # would silently drop losses (a confidence below the one `top` was sized for).
    k = eqx.error_if(k, k >= top, "confidence too low for the static tail size `top`: "
                     "recompute it with tail_size(scenarios, confidence)")
    j = jnp.arange(top, dtype=tail.dtype)
    w = jnp.clip(k - j, 0.0, 1.0)
    es = jnp.sum(w * tail, axis=-1) / k
    m = jnp.clip(jnp.floor(k).astype(jnp.int32), 0, top - 1)
    var = jnp.take_along_axis(tail, jnp.broadcast_to(m, tail.shape[:-1])[..., None], axis=-1)
    excess = jnp.maximum(tail - var, 0.0)
    m1 = jnp.sum(excess, axis=-1) / n
    m2 = jnp.sum(excess * excess, axis=-1) / n
    se = _safe_sqrt((m2 - m1 * m1) / n) / (1 - confidence)
    return es, se, var[..., 0]


def exact_expected_shortfall(values, probabilities, confidence: float) -> float:
    """ES_alpha of a discrete loss distribution (float64 NumPy; reference for
    tests and docs): (1 / (1 - alpha)) * integral_alpha^1 VaR_u du."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-v)
    v, p = v[order], p[order]
    budget = 1 - confidence
    taken = np.minimum(p, np.maximum(budget - (np.cumsum(p) - p), 0.0))
    return float(np.sum(taken * v) / budget)
