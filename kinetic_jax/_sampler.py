"""Scenario samplers, streamed in chunks: plain Monte Carlo and importance sampling.

Every sampler draws the same block-keyed standard normals xi = (z, eta) (factor
noise and event noise, see [`block_noise`][]) and turns them into scenarios in
chunks of whole blocks (``lax.map``), so memory is O(chunk x contracts) whatever
the scenario count, and results depend on neither the chunk size nor the padding.
Each chunk yields only the scenario's loss per cluster and for the whole book
((K + 1) numbers) and its likelihood-ratio weight.

``"plain"``: xi as drawn, weight 1.

``"importance"``: a defensive mixture of mean shifts of xi (Hesterberg 1995;
Glasserman, Heidelberger & Shahabuddin 2000). A pilot run of plain draws (its
own stream; an eighth of the run, 4,096 to 16,384 draws) estimates, for the whole book
and for each cluster, the mean of xi over the scenarios in that row's 1 - alpha
loss tail (the cross-entropy mean shift; coordinates within ``THRESHOLD``
standard errors of 0 are set to 0, and a cluster's shift touches only the
factors and the events its contracts depend on, [`cluster_events`][]). Scenario
s belongs to component j by a fixed allocation of the positions within each
block (fractions `MIXTURE`: unshifted, whole book, the clusters sharing the rest;
stratified, so the balance-heuristic weight below is unbiased), is drawn as
xi + mu_j, and carries the weight

    w(xi) = phi(xi) / sum_j pi_j phi(xi - mu_j)
          = 1 / sum_j pi_j exp(mu_j . xi - |mu_j|^2 / 2),

which is bounded by 1 / pi_0 thanks to the unshifted component, so no tail can
be made worse than plain Monte Carlo by more than that factor.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax, ops
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._arrays import PAD, PARLAY, BookArrays, row_membership
from ._block import BlockLaw, check_law, freeze, pairs_excess
from ._book import SAMPLERS
from ._shortfall import sortfree_tail_statistics
from ._simulation import (
    BLOCK,
    HIGHEST,
    Noise,
    chunk_noise,
    latent_rows,
    n_blocks,
    outcome_rows,
)

PILOT_SCENARIOS = 16384
PILOT_STREAM = 0x5A17
THRESHOLD = 2.0
# Mixture fractions: unshifted, whole book, and the clusters' share (split evenly).
MIXTURE = (0.25, 0.25, 0.5)
DEFAULT_CHUNK_ELEMENTS = 1 << 20  # outcome-matrix entries per chunk (4 MiB in float32)


def check_sampler(sampler: str) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: {sampler!r} is not one of {SAMPLERS}")
    return sampler


def chunk_size(arrays: BookArrays, scenarios: int, chunk: int | None = None) -> int:
    """Scenarios per streamed chunk: a whole number of blocks. By default as many
    as keep the (contracts, chunk) outcome matrix near 2**20 entries (cache-sized:
    on a CPU a 2**17-scenario margin call is 10 % faster than in one chunk), and never
    more than the scenarios need."""
    if chunk is None:
        chunk = max(BLOCK, DEFAULT_CHUNK_ELEMENTS // arrays.quantity.shape[0])
    if chunk < BLOCK or chunk % BLOCK:
        raise ValueError(f"chunk: {chunk} is not a positive multiple of {BLOCK}")
    return min(chunk, n_blocks(scenarios) * BLOCK)


def padded_scenarios(arrays: BookArrays, scenarios: int, chunk: int | None = None) -> int:
    """The scenario count rounded up to whole chunks (padding rows weigh 0)."""
    c = chunk_size(arrays, scenarios, chunk)
    return -(-scenarios // c) * c


class Proposal(eqx.Module):
    """An importance-sampling mixture of mean shifts of the normals xi = (z, eta):
    component j shifts z by `factor_shift[j]` and eta by `event_shift[j]`; it
    takes the scenarios whose position in their block, (s mod BLOCK + 1/2) / BLOCK,
    falls in [edges[j - 1], edges[j])."""

    factor_shift: Float[Array, "J K"]
    event_shift: Float[Array, "J E"]
    log_mix: Float[Array, " J"]
    edges: Float[Array, " J"]

    def component(self, index: Int[Array, " n"], scenarios: int) -> Int[Array, " n"]:
        # Every block holds the mixture in the same proportions, so that any run of
        # whole blocks (a chunk, a device's share) is an identically drawn batch.
        u = ((index % BLOCK).astype(self.edges.dtype) + 0.5) / BLOCK
        j = jnp.sum(u[:, None] >= self.edges[None, :], axis=1)
        return jnp.minimum(j, self.edges.shape[0] - 1)

    def shift(self, noise: Noise, index: Int[Array, " n"], scenarios: int
              ) -> tuple[Noise, Float[Array, " n"]]:
        """The shifted draws and their log likelihood ratio log w."""
        j = self.component(index, scenarios)
        z = noise.factors + self.factor_shift[j]
        eta = noise.events + self.event_shift[j]
        # Row-wise products and sums (not a matmul, whose blocking may depend on the
        # number of rows): each scenario's weight is the same in any chunk.
        dot = (jnp.sum(z[:, None, :] * self.factor_shift[None], axis=-1)
               + jnp.sum(eta[:, None, :] * self.event_shift[None], axis=-1))
        half = 0.5 * (jnp.sum(self.factor_shift ** 2, axis=1)
                      + jnp.sum(self.event_shift ** 2, axis=1))
        log_w = -jax.nn.logsumexp(self.log_mix + dot - half, axis=1)
        return Noise(z, eta), log_w


def row_losses(arrays: BookArrays, yes: Float[Array, "n C"]) -> Float[Array, "n K+1"]:
    """Each scenario's loss per cluster and (last column) for the whole book."""
    return outcome_losses(arrays, yes.T).T


def outcome_losses(arrays: BookArrays, yes: Float[Array, "C n"],
                   rest: Float[Array, " C"] | None = None) -> Float[Array, "K+1 n"]:
    """[`row_losses`][] from outcome rows (scenarios on the last axis): each loss
    row is sum_i q_i (p_i - YES_i) over the slots the row counts. With `rest` (a
    0/1 mask over slots), one more row: the loss of the slots it marks."""
    member = row_membership(arrays)
    if rest is not None:
        member = jnp.concatenate([member, rest[:, None]], axis=1)
    weights = (member * arrays.quantity[:, None]).T  # (K + 1 [+ 1], C)
    return jnp.matmul(weights, arrays.price[:, None] - yes, precision=HIGHEST)


def chunk_rows(out: Float[Array, "count R size"]) -> Float[Array, "R count*size"]:
    """Per-chunk rows (chunks on the leading axis) joined in scenario order."""
    return jnp.moveaxis(out, 0, 1).reshape(out.shape[1], -1)


def stream(
    arrays: BookArrays,
    key: PRNGKeyArray,
    scenarios: int,
    chunk: int | None,
    proposal: Proposal | None,
    fn,
    per_scenario: bool = True,
):
    """Maps `fn(noise, index, log_w)` over the scenarios in chunks and stacks its
    per-scenario outputs (leading axis: the padded scenario count), or with
    ``per_scenario=False`` its per-chunk outputs (leading axis: the chunks)."""
    size = chunk_size(arrays, scenarios, chunk)
    count = -(-scenarios // size)
    return stream_chunks(arrays, key, scenarios, size, jnp.arange(count), proposal, fn,
                         per_scenario)


def stream_chunks(
    arrays: BookArrays,
    key: PRNGKeyArray,
    scenarios: int,
    size: int,
    chunks: Int[Array, " n"],
    proposal: Proposal | None,
    fn,
    per_scenario: bool = True,
):
    """[`stream`][] over the chunks numbered `chunks` only (chunk c holds scenarios
    c * size to (c + 1) * size - 1, `size` a multiple of BLOCK): what one device
    runs when the chunks are spread over several (see ``_sharding.py``)."""
    blocks = size // BLOCK

    def one(c):
        noise = chunk_noise(key, arrays, c * blocks, blocks)
        index = c * size + jnp.arange(size)
        if proposal is None:
            log_w = jnp.zeros(size, noise.factors.dtype)
        else:
            noise, log_w = proposal.shift(noise, index, scenarios)
        return fn(noise, index, log_w)

    out = lax.map(one, chunks)
    if not per_scenario:
        return out
    count = chunks.shape[0]
    return jax.tree.map(lambda x: x.reshape(count * size, *x.shape[2:]), out)


def scenario_losses(
    arrays: BookArrays,
    key: PRNGKeyArray,
    scenarios: int,
    chunk: int | None = None,
    proposal: Proposal | None = None,
    rest: Float[Array, " C"] | None = None,
) -> tuple[Float[Array, "K+1 Np"], Float[Array, " Np"]]:
    """Streamed losses per cluster and for the book (rows; padding scenarios carry
    -inf), then with `rest` the loss of the slots it marks, and each scenario's
    likelihood-ratio weight (0 for padding)."""

    losses, weights = stream(arrays, key, scenarios, chunk, proposal,
                             loss_rows(arrays, scenarios, rest), per_scenario=False)
    return chunk_rows(losses), weights.reshape(-1)


def loss_rows(arrays: BookArrays, scenarios: int, rest: Float[Array, " C"] | None = None):
    """The per-chunk function of [`scenario_losses`][]: the chunk's (K + 1) loss
    rows (scenarios on the last axis; -inf beyond `scenarios`; one more with
    `rest`, see [`outcome_losses`][]) and each scenario's weight (0 there)."""

    def fn(noise, index, log_w):
        yes = outcome_rows(latent_rows(noise, arrays), arrays)  # (C, n)
        valid = index < scenarios
        losses = jnp.where(valid[None, :], outcome_losses(arrays, yes, rest), -jnp.inf)
        return losses, jnp.where(valid, jnp.exp(log_w), 0.0)

    return fn


def real_events(arrays: BookArrays) -> Float[Array, " E"]:
    """1.0 for event slots that some contract resolves off, 0.0 for padding."""
    used = (arrays.kind != PAD) & (arrays.kind != PARLAY)
    n_events = arrays.event_cluster.shape[0]
    hit = ops.segment_sum(used.astype(arrays.rho.dtype), arrays.event, num_segments=n_events)
    return jnp.minimum(hit, 1.0)


def cluster_events(arrays: BookArrays) -> Float[Array, "K E"]:
    """1.0 where a cluster's loss can depend on an event: the cluster's own events
    and the events its contracts' legs resolve off (a parlay of games in the
    Parlays cluster depends on the Sports events)."""
    k = arrays.loading.shape[0]
    n_slots = arrays.quantity.shape[0]
    dtype = arrays.rho.dtype
    own = jax.nn.one_hot(arrays.event_cluster, k, dtype=dtype).T  # (K, E)
    leg = arrays.legs  # (C, L) slot indices; C: no leg
    events = arrays.event[jnp.minimum(leg, n_slots - 1)]
    clusters = jnp.broadcast_to(arrays.cluster[:, None], leg.shape)
    used = ((leg < n_slots) & (arrays.kind != PAD)[:, None]).astype(dtype)
    touched = jnp.zeros_like(own).at[clusters, events].max(used)
    return jnp.maximum(own, touched)


def pilot_scenarios(scenarios: int) -> int:
    """Pilot draws: an eighth of the run, at least 4,096 and at most
    `PILOT_SCENARIOS`, in whole blocks (never more than the run's own blocks)."""
    want = min(PILOT_SCENARIOS, max(4096, scenarios // 8))
    return min(n_blocks(want) * BLOCK, n_blocks(scenarios) * BLOCK)


def fit_proposal(
    arrays: BookArrays,
    confidence: Float[Array, ""],
    key: PRNGKeyArray,
    scenarios: int,
    chunk: int | None = None,
    law: BlockLaw | None = None,
) -> Proposal:
    """The defensive mixture of the module doc, from a pilot run on its own stream
    ``fold_in(key, PILOT_STREAM)`` (so the main run's draws are untouched).

    With the exact-block sampler's `law`, the book's shift is the cross-entropy
    shift of that sampler's estimator: the mean of xi weighted by each pilot
    draw's expected excess E_S[(R + S - v)^+] (instead of the indicator of the
    book's tail): its seed-to-seed variance on the reference book's base 20 %
    lower (docs/benchmarks.md)."""
    pilot = pilot_scenarios(scenarios)
    pkey = jax.random.fold_in(key, PILOT_STREAM)
    rows = loss_rows(arrays, pilot, None if law is None else law.rest)

    def fn(noise, index, log_w):  # the chunk's loss rows and the normals behind them
        return rows(noise, index, log_w)[0], noise

    losses, noise = stream(arrays, pkey, pilot, chunk, None, fn, per_scenario=False)
    # The pilot is whole blocks, but a chunk need not divide it (3 blocks in
    # chunks of 2): the draws past it pad the last chunk, in scenario order.
    losses = lax.stop_gradient(chunk_rows(losses)[:, :pilot])  # (K + 1 [+ 1], P)
    noise = lax.stop_gradient(
        jax.tree.map(lambda x: x.reshape(-1, x.shape[-1])[:pilot], noise))
    k = arrays.loading.shape[0]
    ones = jnp.ones(pilot, losses.dtype)
    _, _, var, _ = sortfree_tail_statistics(losses[:k + 1], ones, confidence, pilot)
    # Scenarios at or above the row's pilot VaR, and with a loss that varies at all.
    varies = jnp.max(losses[:k + 1], axis=1) > jnp.min(losses[:k + 1], axis=1)
    tail = ((losses[:k + 1] >= var[:, None]) & varies[:, None]).astype(losses.dtype)
    count = jnp.maximum(jnp.sum(tail, axis=1, keepdims=True), 1.0)  # draws behind each mean
    scale = count  # each row's sum of weights
    if law is not None:
        _, excess, _ = pairs_excess(losses[k + 1], ones, lax.stop_gradient(law), confidence)
        tail = tail.at[k].set(excess)
        total = jnp.sum(excess)
        scale = count.at[k].set(jnp.where(total > 0, total, 1.0))
        ess = total ** 2 / jnp.maximum(jnp.sum(excess * excess), jnp.finfo(excess.dtype).tiny)
        count = count.at[k].set(jnp.maximum(ess, 1.0))  # the effective draws
    mu_z = jnp.matmul(tail, noise.factors, precision=HIGHEST) / scale
    mu_e = jnp.matmul(tail, noise.events, precision=HIGHEST) / scale
    keep = THRESHOLD / jnp.sqrt(count)
    # A cluster's shift moves the factors and the events its loss depends on
    # (its own, its parlays' legs'); the book's all events.
    own = cluster_events(arrays).astype(losses.dtype)  # (K, E)
    relevant = jnp.concatenate([own, jnp.ones((1, own.shape[1]), own.dtype)]) * real_events(
        arrays)
    mu_z = jnp.where(jnp.abs(mu_z) > keep, mu_z, 0.0)
    mu_e = jnp.where(jnp.abs(mu_e) > keep, mu_e, 0.0) * relevant
    # Components: unshifted, the whole book, then each cluster.
    zero_z, zero_e = jnp.zeros((1, k), losses.dtype), jnp.zeros((1, own.shape[1]), losses.dtype)
    factor_shift = jnp.concatenate([zero_z, mu_z[-1:], mu_z[:-1]])
    event_shift = jnp.concatenate([zero_e, mu_e[-1:], mu_e[:-1]])
    base, book, clusters = MIXTURE
    mix = jnp.asarray([base, book] + [clusters / k] * k, losses.dtype)
    return Proposal(factor_shift, event_shift, jnp.log(mix), jnp.cumsum(mix))


def simulate(
    arrays: BookArrays,
    confidence: Float[Array, ""],
    key: PRNGKeyArray,
    scenarios: int,
    sampler: str = "plain",
    chunk: int | None = None,
    law: BlockLaw | None = None,
) -> tuple[Float[Array, "K+1 Np"], Float[Array, " Np"], Proposal | None]:
    """Losses per row and weights under `sampler` (see module doc), with the
    proposal used (None for plain sampling). ``"exact_block"`` with the book's
    [`BlockLaw`][] `law`: the importance sampler's proposal with the block's
    events unshifted, and one more row, the loss of the rest R (see
    ``_block.py``); without a law it is ``"importance"``."""
    check_sampler(sampler)
    check_law(law, sampler)
    proposal = None
    if sampler != "plain":
        proposal = freeze(fit_proposal(lax.stop_gradient(arrays), confidence, key, scenarios,
                                       chunk, law), law)
    rest = None if law is None else law.rest
    losses, weights = scenario_losses(arrays, key, scenarios, chunk, proposal, rest)
    return losses, weights, proposal
