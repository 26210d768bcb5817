"""Parameter sweeps: the margin of a book on a grid of rho, loading, confidence,
quantity and price values, all points on the same scenarios (common random
numbers, SPEC.md §5.3).

A sweep is a product grid of axes (``rho.<node>``, ``loading.<cluster>``,
``confidence``, ``horizon_days``, ``quantity.<contract>``, ``price.<contract>``,
``spot.<underlying>``, ``vol.<underlying>``; linspace values,
both ends included). Every point is validated on the host by the same
[`Book`][]/[`Hierarchy`][]/[`Settings`][] checks a margin call runs, so an
invalid point carries exactly the message `kinetic-jax margin` would print for
it; the valid points are margined on device, vmapped over points in chunks of a
fixed size (one compilation per grid shape and book bucket: the points' values
are arrays). Each point changes only values of [`BookArrays`][] and
[`MarginParams`][] (quantity, price, rho, loading, confidence, and the exact
worst-case table where prices move the order of the cuts), never shapes.

Plain sampler: the points stream the same block-keyed scenarios in chunks
(``lax.scan``), the normals drawn once per chunk for all the points of a call;
each point keeps only the running top-``top`` of its (K + 1) loss rows, so
memory is O(points x chunk x contracts) whatever the scenario count. A point's
figures are those of [`portfolio_margin`][] on the book with the point's values,
the same seed and scenarios, to float32 rounding (tests/test_sweep.py). With
several local devices the chunks are dealt out over them as by
[`portfolio_margin`][] (device d streams chunks ``d * per ... (d + 1) * per -
1``, `jax.shard_map`), each device keeping its own running top-``top`` per
point; those candidates are copied to the first device, merged
([`merge_tails`][]) and finished there, so the figures are bit-identical on any
number of devices (tests/test_scaling.py). Sweeps with sensitivities vmap
[`margin_arrays`][] itself; importance sampling maps it over the points one at
a time (its fitted proposal makes discrete choices that batched arithmetic may
round differently, so a vmapped point could differ from the margin call by more
than rounding). The exact-block sampler does the same with each point's block
law, computed on the host ([`point_laws`][]; the empty law where a point has
no block, as its margin call does). These run on one device.

Sensitivities (``sensitivities=True``): at each point, the derivative of the
margin along each axis — quantity and confidence: the exact derivative of the
hard margin on the simulated scenarios (reverse mode, `jax.grad`); price, rho
and loading: the unbiased conditional estimator of
[`sensitivities`][] (kinetic_jax._conditional), with its Monte-Carlo standard
error. Under a liquidation horizon (a book with ``horizon_days``, or a
``horizon_days`` axis) the points' losses are the marks at the horizon
(_marks.py); price, rho, loading and horizon derivatives then come from the
hybrid estimator (live marks pathwise, resolved atoms smoothed), without
standard errors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int

from ._arrays import BookArrays, book_arrays, padded_table_shape
from ._block import BlockLaw, sampler_law
from ._book import Book, Position, check_book
from ._dates import DAYS_PER_YEAR, MAX_HORIZON_DAYS
from ._errors import BookError
from ._hierarchy import correlation_matrix
from ._margin import BINDING, MarginParams, margin_arrays, margin_from_statistics
from ._programs import program
from ._progress import Progress, want_progress
from ._sampler import chunk_size, outcome_losses
from ._sensitivities import (
    DEFAULT_TEMPERATURE,
    JumpRun,
    _conditional_jacobian,
    jump_run,
    quantity_jacobian,
    sensitivity_arrays,
)
from ._sharding import AXIS, scenario_mesh
from ._shortfall import tail_size, weighted_tail_statistics
from ._simulation import (
    BLOCK,
    Noise,
    atom_cuts,
    chunk_noise,
    latent_rows,
    n_blocks,
    outcome_rows,
)
from ._stress import stress_matrix
from ._worst_case import OutcomeTable, build_outcome_table

KINDS = ("rho", "loading", "confidence", "quantity", "price", "horizon_days", "spot", "vol")
MAX_POINTS_PER_CALL = 64
SENSITIVITY_POINTS_PER_CALL = 4
CHUNK_ELEMENTS = 1 << 25  # (point, scenario, contract) entries per streamed chunk
NOISE_CACHE_BYTES = 1 << 28  # normals kept between calls of points
MAX_GRID_POINTS = 1 << 20


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis of a sweep: `name` (``rho.<node>``, ``loading.<cluster>``,
    ``confidence``, ``horizon_days``, ``quantity.<contract>``, ``price.<contract>``,
    ``spot.<underlying>`` or ``vol.<underlying>``) and its values."""

    name: str
    values: tuple[float, ...]

    @classmethod
    def linspace(cls, name: str, start: float, stop: float, count: int) -> Axis:
        """`count` evenly spaced values from `start` to `stop`, both included."""
        field = f"--vary {name}"
        for what, v in (("START", start), ("STOP", stop)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BookError(field, f"{what} {v!r} is not a finite number")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise BookError(field, f"COUNT {count!r} is not a positive integer")
        check_grid_size((count,))  # before a value is made
        # 15 significant digits: 0.25, not linspace's 0.24999999999999997.
        return cls(name, tuple(float(f"{x:.15g}") for x in np.linspace(start, stop, count)))


def check_grid_size(counts: Sequence[int]) -> None:
    """Raises [`BookError`][] when a grid of axes of these lengths has more than
    `MAX_GRID_POINTS` points (checked before any axis is built)."""
    size = math.prod(counts)
    if size > MAX_GRID_POINTS:
        raise BookError("--vary", f"the grid has {size:,} points, over the limit of "
                                  f"{MAX_GRID_POINTS:,}")


def parse_axis(spec: str) -> Axis:
    """``NAME=START:STOP:COUNT`` (the CLI's ``--vary``) as an [`Axis`][]."""
    return Axis.linspace(*_split_spec(spec))


def parse_axes(specs: Sequence[str]) -> tuple[Axis, ...]:
    """Several ``--vary`` specs as [`Axis`][]es; the size of their product grid is
    checked against `MAX_GRID_POINTS` before any axis is built."""
    parts = [_split_spec(spec) for spec in specs]
    check_grid_size([count for *_, count in parts])
    return tuple(Axis.linspace(*p) for p in parts)


def _split_spec(spec: str) -> tuple[str, float, float, int]:
    name, eq, rest = spec.rpartition("=")
    parts = rest.split(":")
    if not eq or not name or len(parts) != 3:
        raise BookError("--vary", f"{spec!r} is not NAME=START:STOP:COUNT")
    try:
        start, stop = float(parts[0]), float(parts[1])
    except ValueError:
        raise BookError(f"--vary {name}", f"{rest!r}: START and STOP must be numbers") from None
    try:
        count = int(parts[2])
    except ValueError:
        raise BookError(f"--vary {name}", f"COUNT {parts[2]!r} is not an integer") from None
    if count < 1:
        raise BookError(f"--vary {name}", f"COUNT {count!r} is not a positive integer")
    return name, start, stop, count


def _as_axes(axes) -> tuple[Axis, ...]:
    if isinstance(axes, Mapping):
        axes = list(axes.items())
    if isinstance(axes, (str, Axis)):
        axes = [axes]
    axes = list(axes)
    if all(isinstance(a, str) for a in axes):
        axes = list(parse_axes(axes))  # the grid's size checked before any axis is built
    out = []
    for a in axes:
        if isinstance(a, Axis):
            out.append(a)
        elif isinstance(a, str):
            out.append(parse_axis(a))
        elif isinstance(a, Sequence) and len(a) == 2 and isinstance(a[0], str):
            values = tuple(float(v) for v in np.asarray(a[1], dtype=np.float64).reshape(-1))
            if not values:
                raise BookError(f"--vary {a[0]}", "no values")
            out.append(Axis(a[0], values))
        else:
            raise BookError("axes", f"{a!r} is not an Axis, 'NAME=START:STOP:COUNT' or "
                                    f"(name, values)")
    if not out:
        raise BookError("--vary", "a sweep needs at least one axis")
    names = [a.name for a in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise BookError(f"--vary {n}", "the same axis is given twice")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class _Target:
    kind: str
    name: str
    slot: int  # index into the leaf the axis changes (-1 for confidence)


def _resolve(book: Book, axis: Axis) -> _Target:
    kind, _, target = axis.name.partition(".")
    field = f"--vary {axis.name}"
    h = book.hierarchy
    if axis.name in ("confidence", "horizon_days"):
        return _Target(axis.name, "", -1)
    if kind not in KINDS or kind in ("confidence", "horizon_days") or not target:
        raise BookError(field, "NAME is not rho.<node>, loading.<cluster>, confidence, "
                               "horizon_days, quantity.<contract>, price.<contract>, "
                               "spot.<underlying> or vol.<underlying>")
    if kind == "rho":
        if target not in h.node_names:
            raise BookError(field, f"unknown hierarchy node {target!r} (nodes: "
                                   f"{', '.join(h.node_names)})")
        return _Target(kind, target, h.node_names.index(target))
    if kind == "loading":
        if target not in h.cluster_names:
            raise BookError(field, f"unknown cluster {target!r} (clusters: "
                                   f"{', '.join(h.cluster_names)})")
        return _Target(kind, target, h.cluster_names.index(target))
    if kind in ("spot", "vol"):
        ids = [u.id for u in book.underlyings]
        if target not in ids:
            raise BookError(field, f"unknown underlying {target!r} (underlyings: "
                                   f"{', '.join(ids) or 'none'})")
        return _Target(kind, target, ids.index(target))
    if target not in book.contract_ids:
        raise BookError(field, f"unknown contract {target!r}")
    contract = book.contract(target)
    if kind == "price" and contract.is_linear:
        # A binary's price is the p of its loss q (p - YES); a future's is its
        # forward F0, which enters through the basis F0 / S0 and the cap instead.
        raise BookError(field, f"{target!r} is a {contract.type}: its price is not an axis "
                               f"(vary spot.{contract.underlying} instead)")
    return _Target(kind, target, book.contract_ids.index(target))


class Points(eqx.Module):
    """The values of P grid points (leading axis P): every leaf a point changes."""

    quantity: Float[Array, "P C"]
    price: Float[Array, "P C"]
    rho: Float[Array, "P M"]
    loading: Float[Array, "P K"]
    confidence: Float[Array, " P"]
    horizon: Float[Array, " P"]  # liquidation horizon in years (inf: to resolution)
    spot: Float[Array, "P U"]
    vol: Float[Array, "P U"]
    wc_component: Int[Array, "P R"]
    wc_index: Int[Array, "P R W"]
    wc_yes: Float[Array, "P R W"]
    stress_yes: Float[Array, "P S C"]


def at_point(arrays: BookArrays, params: MarginParams, point: Points
             ) -> tuple[BookArrays, MarginParams]:
    """The book and parameters of one point (an unbatched slice of [`Points`][])."""
    arrays = eqx.tree_at(
        lambda a: (a.quantity, a.price, a.rho, a.loading, a.horizon, a.spot, a.vol,
                   a.wc_component, a.wc_index, a.wc_yes, a.stress_yes),
        arrays,
        (point.quantity, point.price, point.rho, point.loading, point.horizon, point.spot,
         point.vol, point.wc_component, point.wc_index, point.wc_yes, point.stress_yes),
    )
    return arrays, eqx.tree_at(lambda p: p.confidence, params, point.confidence)


def _row_losses_t(arrays: BookArrays, z: Float[Array, "K n"], eta: Float[Array, "E n"]
                  ) -> Float[Array, "K+1 n"]:
    """The scenarios' loss per cluster and (last row) for the book, scenarios on the
    last axis: the margin's own kernels (``_simulation.latent_rows``, ...), marks
    at a liquidation horizon included."""
    yes = outcome_rows(latent_rows(Noise(z.T, eta.T), arrays), arrays)
    return outcome_losses(arrays, yes)


UNROLL_CONTRACTS = 256


@dataclasses.dataclass(frozen=True)
class Structure:
    """A book's integer structure as static Python tuples (real slots only), for
    the unrolled loss kernel of small books: each event's cluster, each contract's
    event (-1 for a parlay), cluster and parlay legs."""

    event_cluster: tuple[int, ...]
    contract_event: tuple[int, ...]
    contract_cluster: tuple[int, ...]
    legs: tuple[tuple[int, ...], ...]
    n_clusters: int


def structure_of(book: Book, arrays: BookArrays, layout) -> Structure | None:
    """The [`Structure`][] of `book`, or None above `UNROLL_CONTRACTS` contracts."""
    n = layout.n_contracts
    if n > UNROLL_CONTRACTS:
        return None
    event = np.asarray(arrays.event)[:n]
    ids = {c: i for i, c in enumerate(book.contract_ids)}
    return Structure(
        event_cluster=tuple(int(c) for c in
                            np.asarray(arrays.event_cluster)[: len(layout.event_names)]),
        contract_event=tuple(-1 if c.type == "parlay" else int(event[i])
                             for i, c in enumerate(book.contracts)),
        contract_cluster=tuple(int(c) for c in np.asarray(arrays.cluster)[:n]),
        legs=tuple(tuple(ids[x] for x in c.legs) for c in book.contracts),
        n_clusters=int(arrays.loading.shape[0]),
    )


def _unrolled_losses(arrays: BookArrays, st: Structure, z: Float[Array, "K n"],
                     eta: Float[Array, "E n"]) -> Float[Array, "K+1 n"]:
    """[`_row_losses_t`][] unrolled over the (few) contracts of a small book: one
    elementwise pass over the scenarios, no gathers and no matmul (the factors as
    F_c = sum_j L_cj z_j over the lower-triangular Cholesky factor)."""
    chol = jnp.linalg.cholesky(correlation_matrix(arrays.rho, arrays.lca))
    a = arrays.loading
    s = jnp.sqrt(1 - a * a)
    factor: dict[int, Array] = {}
    for c in sorted(set(st.event_cluster)):
        f = chol[c, 0] * z[0]
        for j in range(1, c + 1):
            f = f + chol[c, j] * z[j]
        factor[c] = f
    x = [factor[c] * a[c] + s[c] * eta[e] for e, c in enumerate(st.event_cluster)]
    lo, hi = atom_cuts(arrays)
    atom = {i: (x[e] > lo[i]) & (x[e] <= hi[i]) for i, e in enumerate(st.contract_event)
            if e >= 0}
    dtype = arrays.price.dtype
    n = z.shape[1]
    rows: list = [None] * st.n_clusters
    total = None
    for i, k in enumerate(st.contract_cluster):
        if st.contract_event[i] >= 0:
            yes = atom[i]
        else:
            yes = atom[st.legs[i][0]]
            for leg in st.legs[i][1:]:
                yes = yes & atom[leg]
        loss = arrays.quantity[i] * (arrays.price[i] - yes.astype(dtype))
        rows[k] = loss if rows[k] is None else rows[k] + loss
        total = loss if total is None else total + loss
    zero = jnp.zeros(n, dtype)
    rows = [zero if r is None else r for r in rows]
    return jnp.stack(rows + [zero if total is None else total])


@program
def noise_chunk(key, arrays: BookArrays, first_block, blocks: int
                ) -> tuple[Float[Array, "K n"], Float[Array, "E n"]]:
    """The block-keyed normals of `blocks` blocks from `first_block`, scenarios on
    the last axis (factor noise z, event noise eta). Materialised by its own call,
    so the sweep kernel reads them row by row."""
    noise = chunk_noise(key, arrays, first_block, blocks)
    return noise.factors.T, noise.events.T


@program
def sweep_step(arrays: BookArrays, params: MarginParams, points: Points,
               tail: Float[Array, "P K+1 T"], z: Float[Array, "K n"], eta: Float[Array, "E n"],
               first, scenarios: int, structure: Structure | None = None
               ) -> Float[Array, "P K+1 T"]:
    """One streamed chunk of scenarios for P points (plain sampler): each point's
    (K + 1) loss rows on the chunk merged into its running top-T (padding
    scenarios, index >= `scenarios`, at -inf)."""

    def one(pt, t):
        a, _ = at_point(arrays, params, pt)
        if structure is None or a.dynamic:
            losses = _row_losses_t(a, z, eta)
        else:
            losses = _unrolled_losses(a, structure, z, eta)
        index = first + jnp.arange(z.shape[1])
        losses = jnp.where(index[None, :] < scenarios, losses, -jnp.inf)
        merged, _ = lax.top_k(jnp.concatenate([t, losses], axis=1), t.shape[1])
        return merged

    return jax.vmap(one)(points, tail)


@program
def sweep_finish(arrays: BookArrays, params: MarginParams, points: Points,
                 tail: Float[Array, "P K+1 T"], scenarios: int) -> dict:
    """Each point's figures from its top-T loss rows (equally likely scenarios: the
    Acerbi–Tasche estimator of [`weighted_tail_statistics`][])."""

    def one(pt, t):
        a, p = at_point(arrays, params, pt)
        mass = jnp.where(jnp.isfinite(t), jnp.asarray(1.0 / scenarios, t.dtype), 0.0)
        es, se, var, _ = weighted_tail_statistics(t, mass, p.confidence, scenarios)
        return _figures(margin_from_statistics(a, p, es, se, var))

    return jax.vmap(one)(points, tail)


def _figures(result) -> dict:
    se = jnp.where(result.base >= result.floor, result.base_se, result.floor_se)
    return {"margin": result.margin, "base": result.base, "floor": result.floor,
            "binding": result.binding, "standard_error": se,
            "worst_case_loss": result.worst_case_loss, "full_collateral": result.full_collateral,
            "capital_released": result.capital_released}


@program
def sharded_noise(key, arrays: BookArrays, c, per: int, blocks: int, mesh: Mesh
                  ) -> tuple[Float[Array, "D K n"], Float[Array, "D E n"]]:
    """Chunk ``d * per + c`` of every device d of `mesh` (its normals, as
    [`noise_chunk`][] draws them), stacked along a leading device axis sharded
    over the mesh: device d holds only its own chunk."""
    dynamic, static = eqx.partition((key, arrays, c), eqx.is_array)

    def body(dyn):
        key, arrays, c = eqx.combine(dyn, static)
        first = (lax.axis_index(AXIS) * per + c) * blocks
        noise = chunk_noise(key, arrays, first, blocks)
        return noise.factors.T[None], noise.events.T[None]

    return jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec(),),
                         out_specs=(PartitionSpec(AXIS), PartitionSpec(AXIS)),
                         check_vma=False)(dynamic)


@program
def sharded_step(arrays: BookArrays, params: MarginParams, points: Points,
                 tail: Float[Array, "D P K+1 T"], z: Float[Array, "D K n"],
                 eta: Float[Array, "D E n"], c, chunk: int, per: int, scenarios: int,
                 structure: Structure | None, mesh: Mesh) -> Float[Array, "D P K+1 T"]:
    """[`sweep_step`][] on every device of `mesh` at once: device d merges its
    chunk ``d * per + c`` into its own running top-T of each point (`tail`, `z`
    and `eta` sharded along their leading device axis; the rest replicated)."""
    dynamic, static = eqx.partition((arrays, params, points, c), eqx.is_array)

    def body(dyn, tail, z, eta):
        arrays, params, points, c = eqx.combine(dyn, static)
        first = (lax.axis_index(AXIS) * per + c) * chunk
        return sweep_step(arrays, params, points, tail[0], z[0], eta[0], first, scenarios,
                          structure)[None]

    spec = PartitionSpec(AXIS)
    return jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec(), spec, spec, spec),
                         out_specs=spec, check_vma=False)(dynamic, tail, z, eta)


@program
def merge_tails(tails: Float[Array, "D P K+1 T"]) -> Float[Array, "P K+1 T"]:
    """The `T` largest of every device's top-T candidates, per point and row: the
    top-T of the whole run (values, so exactly the one-device tail)."""
    d, p, r, t = tails.shape
    candidates = jnp.moveaxis(tails, 0, 2).reshape(p, r, d * t)
    return lax.top_k(candidates, t)[0]


class _Stream:
    """The scenario chunks of a plain sweep: normals drawn once per chunk by
    [`noise_chunk`][], kept while they fit in `NOISE_CACHE_BYTES`, else redrawn
    for each call of points."""

    def __init__(self, arrays: BookArrays, key, scenarios: int, chunk: int):
        self.arrays, self.key, self.scenarios, self.chunk = arrays, key, scenarios, chunk
        self.count = -(-scenarios // chunk)
        per = chunk * (arrays.loading.shape[0] + arrays.event_cluster.shape[0]) * 4
        self.keep = per * self.count <= NOISE_CACHE_BYTES
        self._cache: dict[int, tuple] = {}

    def __getitem__(self, c: int):
        if c in self._cache:
            return self._cache[c]
        blocks = self.chunk // BLOCK
        noise = noise_chunk(self.key, self.arrays, jnp.asarray(c * blocks, jnp.int32), blocks)
        if self.keep:
            self._cache[c] = noise
        return noise


class _ShardedStream:
    """The scenario chunks of a plain sweep dealt out over the devices of `mesh`:
    device d streams chunks ``d * per ... (d + 1) * per - 1`` (chunks past the
    last hold only padding scenarios). Item c is every device's c-th chunk
    ([`sharded_noise`][]), kept while they fit in `NOISE_CACHE_BYTES`."""

    def __init__(self, arrays: BookArrays, key, scenarios: int, chunk: int, mesh: Mesh):
        self.arrays, self.key, self.scenarios, self.chunk = arrays, key, scenarios, chunk
        self.mesh = mesh
        self.per = -(-(-(-scenarios // chunk)) // mesh.size)
        per = chunk * (arrays.loading.shape[0] + arrays.event_cluster.shape[0]) * 4
        self.keep = per * self.per * mesh.size <= NOISE_CACHE_BYTES
        self._cache: dict[int, tuple] = {}

    def __getitem__(self, c: int):
        if c in self._cache:
            return self._cache[c]
        noise = sharded_noise(self.key, self.arrays, jnp.asarray(c, jnp.int32), self.per,
                              self.chunk // BLOCK, self.mesh)
        if self.keep:
            self._cache[c] = noise
        return noise


def streamed_margins(arrays, params, points: Points, stream: _Stream | _ShardedStream,
                     top: int, structure: Structure | None) -> dict:
    """Figures of P points on the streamed scenarios (see module doc)."""
    p = points.confidence.shape[0]
    rows = arrays.loading.shape[0] + 1
    if isinstance(stream, _ShardedStream):
        mesh = stream.mesh
        tails = jax.device_put(
            jnp.full((mesh.size, p, rows, top), -jnp.inf, arrays.price.dtype),
            NamedSharding(mesh, PartitionSpec(AXIS)))
        for c in range(stream.per):
            z, eta = stream[c]
            tails = sharded_step(arrays, params, points, tails, z, eta,
                                 jnp.asarray(c, jnp.int32), stream.chunk, stream.per,
                                 stream.scenarios, structure, mesh)
        # Every device's candidates onto one device, then the figures there, in the
        # program one device runs: bit-identical to one device.
        tail = merge_tails(jax.device_put(tails, mesh.devices.flat[0]))
        return sweep_finish(arrays, params, points, tail, stream.scenarios)
    tail = jnp.full((p, rows, top), -jnp.inf, arrays.price.dtype)
    for c in range(stream.count):
        z, eta = stream[c]
        tail = sweep_step(arrays, params, points, tail, z, eta,
                          jnp.asarray(c * stream.chunk, jnp.int32), stream.scenarios, structure)
    return sweep_finish(arrays, params, points, tail, stream.scenarios)


@program
def sweep_chunk_general(arrays: BookArrays, params: MarginParams, key, points: Points,
                        scenarios: int, top: int, sampler: str, targets: tuple,
                        sensitivities: bool, jumps: JumpRun | None,
                        laws: BlockLaw | None = None
                        ) -> tuple[dict, dict, dict]:
    """Figures of P points by [`margin_arrays`][] (any sampler; vmapped for plain
    sampling, one point after another for importance sampling) and, with
    `sensitivities`, each point's derivative along each target (kind, slot) and
    its standard error (NaN where the estimator gives none); prices, rho and
    loadings from the conditional estimator's run `jumps` ([`jump_run`][]; None
    without sensitivities). The exact-block sampler takes each point's law
    (`laws`: the stacked [`BlockLaw`][]s of [`point_laws`][])."""

    def one(pt, law=None):
        a, p = at_point(arrays, params, pt)
        if law is not None:
            return _figures(margin_arrays(a, p, key, scenarios, top, sampler, law=law)), {}, {}
        if not sensitivities:
            return _figures(margin_arrays(a, p, key, scenarios, top, sampler)), {}, {}

        def margin_of(q, conf):
            a2 = eqx.tree_at(lambda x: x.quantity, a, q)
            p2 = eqx.tree_at(lambda x: x.confidence, p, conf)
            res = margin_arrays(a2, p2, key, scenarios, top, sampler)
            return res.margin, res

        (_, result), (d_q, d_conf) = jax.value_and_grad(margin_of, argnums=(0, 1),
                                                        has_aux=True)(a.quantity, p.confidence)
        if sampler == "plain" and any(kind == "quantity" for kind, _ in targets):
            # As kj.sensitivities reports it: at ties at a VaR the mean of the
            # one-sided derivatives (the gradient above is the additive one).
            sides = quantity_jacobian(a, p, key, scenarios, top,
                                      jnp.asarray(DEFAULT_TEMPERATURE, a.price.dtype))[1]
            d_q = jnp.mean(sides[:, 0], axis=0)
        cond = None
        if any(kind in ("price", "rho", "loading", "horizon_days", "spot", "vol")
               for kind, _ in targets):
            if a.dynamic:
                # Under a horizon: live marks pathwise, resolved atoms smoothed (hybrid;
                # SPEC-horizon.md §6.6); no batch standard errors.
                jac = sensitivity_arrays(a, p, key, scenarios, top,
                                         jnp.asarray(DEFAULT_TEMPERATURE, a.price.dtype),
                                         "hybrid").jacobian
                cond = (jac, jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), jac))
            else:
                _, mean, err = _conditional_jacobian(a, p, key, *jumps)
                cond = (mean, err)
        d, e = {}, {}
        nan = jnp.asarray(jnp.nan, a.price.dtype)
        for kind, slot in targets:
            name = f"{kind}{slot}"
            if kind == "quantity":
                d[name], e[name] = d_q[slot], nan
            elif kind == "confidence":
                d[name], e[name] = d_conf, nan
            elif kind == "horizon_days":  # per calendar day (the leaf is in years)
                mean, err = cond
                d[name] = mean.horizon[0] / DAYS_PER_YEAR
                e[name] = err.horizon[0] / DAYS_PER_YEAR
            elif kind in ("spot", "vol"):
                mean, err = cond
                d[name], e[name] = getattr(mean, kind)[0, slot], getattr(err, kind)[0, slot]
            else:
                mean, err = cond
                d[name], e[name] = getattr(mean, kind)[0, slot], getattr(err, kind)[0, slot]
        return _figures(result), d, e

    # An importance-sampled jump run (resolution mode) is one fitted proposal per
    # point too: one point at a time, as below.
    jump_is = sensitivities and not arrays.dynamic and jumps.sampler != "plain"
    if sampler == "plain" and not jump_is:
        return jax.vmap(one)(points)
    if laws is not None:
        return lax.map(lambda x: one(*x), (points, laws))
    # The importance sampler's fitted proposal makes discrete choices (which shift
    # coordinates to keep, the pilot's tail) that batched arithmetic can round the
    # other way: one point at a time keeps each point the margin call's.
    return lax.map(one, points)


def point_laws(arrays: BookArrays, params: MarginParams, points: Points, cache: dict
               ) -> BlockLaw:
    """Each point's exact-block law ([`sampler_law`][], as its margin call's: the
    empty law where it has no block), computed on the host (`cache` keyed by the
    values the law depends on, so a rho or confidence axis computes it once),
    stacked (every law has the same fixed width)."""
    count = points.confidence.shape[0]
    laws = []
    for i in range(count):
        a, _ = at_point(arrays, params, jax.tree.map(lambda x: x[i], points))
        key = tuple(np.asarray(x).tobytes() for x in (a.quantity, a.price, a.loading))
        if key not in cache:
            cache[key] = sampler_law(a)[0]
        laws.append(cache[key])
    return jax.tree.map(lambda *x: jnp.stack(x), *laws)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """A sweep's figures on the grid (arrays shaped like the grid, axis order as
    given; NaN / ``None`` at invalid points).

    - `margin`, `base`, `floor`, `standard_error` (of the binding stressed loss),
      `worst_case_loss`, `capital_released`: dollars (capital released a fraction).
    - `binding`: ``"worst_case"``, ``"base"``, ``"floor"`` or None.
    - `valid`: bool; `reasons`: the input error of each invalid point, else None.
    - `sensitivities` / `sensitivity_standard_errors`: axis name -> dM/d(axis value)
      at each point and its Monte-Carlo standard error (NaN where the derivative is
      exact on the scenarios: quantity and confidence); None without sensitivities.
    """

    axes: tuple[Axis, ...]
    margin: np.ndarray
    base: np.ndarray
    floor: np.ndarray
    binding: np.ndarray
    standard_error: np.ndarray
    worst_case_loss: np.ndarray
    capital_released: np.ndarray
    valid: np.ndarray
    reasons: np.ndarray
    scenarios: int
    seed: int
    devices: int
    sensitivities: dict[str, np.ndarray] | None = None
    sensitivity_standard_errors: dict[str, np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a.values) for a in self.axes)

    def to_dict(self) -> dict:
        """The JSON object of ``kinetic-jax sweep --json`` (SPEC.md §5.3)."""

        def nested(x):
            flat = [None if (v is None or (isinstance(v, float) and not math.isfinite(v)))
                    else v for v in _plain(x).reshape(-1).tolist()]
            arr = np.empty(len(flat), dtype=object)
            arr[:] = flat
            return arr.reshape(self.shape).tolist()

        out = {
            "axes": [{"name": a.name, "values": list(a.values)} for a in self.axes],
            "figures": {name: nested(getattr(self, name)) for name in
                        ("margin", "base", "floor", "binding", "standard_error")},
            "valid": self.valid.tolist(),
            "reasons": nested(self.reasons),
            "scenarios": self.scenarios,
            "seed": self.seed,
            "devices": self.devices,
        }
        if self.sensitivities is not None:
            out["sensitivities"] = {k: nested(v) for k, v in self.sensitivities.items()}
            out["sensitivity_standard_errors"] = {
                k: nested(v) for k, v in self.sensitivity_standard_errors.items()}
        return out

    def rows(self) -> list[dict]:
        """One dict per grid point (C order: the last axis varies fastest)."""
        out = []
        for flat, idx in enumerate(np.ndindex(*self.shape)):
            row = {a.name: a.values[i] for a, i in zip(self.axes, idx)}
            row["valid"] = bool(self.valid[idx])
            for name in ("margin", "base", "floor", "binding", "standard_error",
                         "worst_case_loss", "capital_released"):
                v = getattr(self, name)[idx]
                row[name] = v if self.valid[idx] else None
            if self.sensitivities is not None:
                for name in self.sensitivities:
                    for key, table in (("d_", self.sensitivities),
                                       ("se_", self.sensitivity_standard_errors)):
                        v = float(table[name][idx])
                        row[f"{key}{name}"] = v if math.isfinite(v) else None
            row["reason"] = self.reasons[idx]
            out.append(row)
        return out

    def save(self, path: str) -> None:
        """Writes the grid to ``.csv`` (one row per point) or ``.npz`` (arrays)."""
        path = str(path)
        if path.endswith(".npz"):
            arrays = {f"axis{i}_values": np.asarray(a.values) for i, a in enumerate(self.axes)}
            arrays["axis_names"] = np.asarray([a.name for a in self.axes])
            for name in ("margin", "base", "floor", "standard_error", "worst_case_loss",
                         "capital_released", "valid"):
                arrays[name] = getattr(self, name)
            arrays["binding"] = np.where(self.valid, self.binding, "").astype(str)
            arrays["reasons"] = np.where(self.valid, "", self.reasons).astype(str)
            for name, v in (self.sensitivities or {}).items():
                arrays[f"d_{name}"] = v
                arrays[f"se_{name}"] = self.sensitivity_standard_errors[name]
            np.savez(path, **arrays)
            return
        if not path.endswith(".csv"):
            raise BookError("--out", f"{path!r}: the file name must end in .csv or .npz")
        import csv

        rows = self.rows()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})


def _plain(x: np.ndarray) -> np.ndarray:
    if x.dtype == object:
        return x
    return x.astype(np.float64)


def _table_leaves(table: OutcomeTable, cpad: int, rows: int, width: int):
    """An outcome table padded as [`book_arrays`][] pads it, to `rows` x `width`."""
    n_real = len(table.component)
    ncomp = int(table.component.max()) + 1 if n_real else 0
    comp = np.concatenate([table.component, np.arange(ncomp, ncomp + rows - n_real)])
    index = np.full((rows, width), cpad - 1, np.int32)
    sub = table.index
    index[: sub.shape[0], : sub.shape[1]] = np.where(sub < 0, cpad - 1, sub)
    yes = np.zeros((rows, width))
    yes[: sub.shape[0], : sub.shape[1]] = table.yes
    return comp.astype(np.int32), index, yes


def _layout_book(book: Book, horizons: list[float]) -> Book:
    """`book` at the first of the (sorted) `horizons` at which it is valid; `book`
    itself without a horizon axis, or when it is valid at none of them (then every
    point is invalid)."""
    for h in horizons:
        try:
            return book.with_settings(horizon_days=h)
        except BookError:
            continue
    return book


def _moved_underlyings(book: Book, moves: tuple) -> Book:
    """`book` with the (kind, slot, value) spot / vol moves applied; futures with a
    price of their own keep their basis F0 / S0 (as the simulated losses do)."""
    us = list(book.underlyings)
    scale: dict[str, float] = {}
    for kind, slot, v in moves:
        if kind == "spot":
            scale[us[slot].id] = v / us[slot].spot
        us[slot] = dataclasses.replace(us[slot], **{kind: v})
    contracts = tuple(dataclasses.replace(c, price=c.price * scale[c.underlying])
                      if c.type == "future" and c.price is not None and c.underlying in scale
                      else c for c in book.contracts)
    return dataclasses.replace(book, contracts=contracts, underlyings=tuple(us))


class _Grid:
    """Host side of a sweep: the targets, each point's validation and its values."""

    def __init__(self, book: Book, axes: tuple[Axis, ...]):
        self.book = book
        self.axes = axes
        self.targets = tuple(_resolve(book, a) for a in axes)
        self.shape = tuple(len(a.values) for a in axes)
        check_grid_size(self.shape)
        # A horizon axis margins at a horizon: the arrays are laid out at its
        # shortest horizon at which the book is valid (the most legs live, for the
        # parlays' structure); points at shorter ones are invalid, reported per point.
        horizons = sorted(v for t, a in zip(self.targets, axes) if t.kind == "horizon_days"
                          for v in a.values if 0 < v <= MAX_HORIZON_DAYS)
        self.arrays, self.layout = book_arrays(_layout_book(book, horizons))
        self.params = MarginParams.from_settings(book.settings, self.arrays.price.dtype)
        self.kinds = {t.kind for t in self.targets}
        self._settings: dict = {}
        self._hierarchies: dict = {}
        self._books: dict = {}
        self._tables: dict = {}
        self._stress: dict = {}
        self.rebuild_table = "price" in self.kinds or (
            "quantity" in self.kinds and not self.layout.table.exact)

    def _values(self, idx, kinds) -> tuple:
        return tuple((t.kind, t.slot, a.values[i]) for t, a, i in
                     zip(self.targets, self.axes, idx) if t.kind in kinds)

    def check(self, idx) -> tuple[str | None, tuple, tuple]:
        """(reason or None, table key, stress key) of the point at grid index `idx`."""
        conf = self._values(idx, ("confidence",))
        if conf:
            if conf not in self._settings:
                try:
                    dataclasses.replace(self.book.settings, confidence=conf[0][2])
                    self._settings[conf] = None
                except BookError as e:
                    self._settings[conf] = str(e)
            if self._settings[conf] is not None:
                return self._settings[conf], (), ()
        horizon = self._values(idx, ("horizon_days",))
        if horizon:
            if horizon not in self._settings:
                try:
                    self.book.with_settings(horizon_days=horizon[0][2])
                    self._settings[horizon] = None
                except BookError as e:
                    self._settings[horizon] = str(e)
            if self._settings[horizon] is not None:
                return self._settings[horizon], (), ()
        under = self._values(idx, ("spot", "vol"))
        if under:
            if under not in self._settings:
                try:
                    _moved_underlyings(self.book, under)
                    self._settings[under] = None
                except BookError as e:
                    self._settings[under] = str(e)
            if self._settings[under] is not None:
                return self._settings[under], (), ()
        hier_key = self._values(idx, ("rho", "loading"))
        if hier_key not in self._hierarchies:
            try:
                self._hierarchies[hier_key] = self.book.hierarchy.replace(
                    rho={self.book.hierarchy.node_names[s]: v for k, s, v in hier_key
                         if k == "rho"},
                    loading={self.book.hierarchy.cluster_names[s]: v for k, s, v in hier_key
                             if k == "loading"})
            except BookError as e:
                self._hierarchies[hier_key] = str(e)
        hierarchy = self._hierarchies[hier_key]
        if isinstance(hierarchy, str):
            return hierarchy, (), ()
        book_key = self._values(idx, ("price", "quantity"))
        if book_key not in self._books:
            try:
                self._books[book_key] = self._point_book(book_key)
            except BookError as e:
                self._books[book_key] = str(e)
        point_book = self._books[book_key]
        if isinstance(point_book, str):
            return point_book, (), ()
        table_key = book_key if self.rebuild_table else ()
        if table_key not in self._tables:
            q = np.array([point_book.net_quantities()[c] for c in point_book.contract_ids])
            self._tables[table_key] = (build_outcome_table(point_book, q) if table_key
                                       else self.layout.table)
        stress_key = ()
        # Stress probabilities move with prices, rho and loadings, but enter the
        # margin only through the stress add-on: recomputed only when it is on.
        if self.book.stress and self.book.settings.stress_addon:
            stress_key = book_key + hier_key + horizon + under
            if stress_key not in self._stress:
                stressed = dataclasses.replace(point_book, hierarchy=hierarchy)
                if horizon:  # stress losses depend on what the horizon reveals
                    stressed = stressed.with_settings(horizon_days=horizon[0][2])
                if under:
                    stressed = _moved_underlyings(stressed, under)
                self._stress[stress_key] = stress_matrix(stressed)
        return None, table_key, stress_key

    def _point_book(self, key: tuple) -> Book:
        if not key:
            return self.book
        contracts = list(self.book.contracts)
        qty = self.book.net_quantities()
        for kind, slot, v in key:
            if kind == "price":
                contracts[slot] = dataclasses.replace(contracts[slot], price=v)
            else:
                qty[contracts[slot].id] = v
        positions = tuple(Position(c, q) for c, q in qty.items() if q != 0)
        return dataclasses.replace(self.book, contracts=tuple(contracts), positions=positions)

    def table_shape(self) -> tuple[int, int]:
        rows, width = (max(x) for x in zip(*(padded_table_shape(t) for t in self._tables.values())))
        return (max(rows, self.arrays.wc_component.shape[0]),
                max(width, self.arrays.wc_index.shape[1]))

    def points(self, flat: np.ndarray, keys: list, rows: int, width: int) -> Points:
        """The [`Points`][] of the grid points with flat indices `flat`."""
        a = self.arrays
        p = len(flat)
        idx = np.stack(np.unravel_index(flat, self.shape), axis=1)
        tile = lambda x: np.tile(np.asarray(x, np.float64), (p,) + (1,) * np.ndim(x))  # noqa
        leaves = {"quantity": tile(a.quantity), "price": tile(a.price), "rho": tile(a.rho),
                  "loading": tile(a.loading), "confidence": tile(self.params.confidence),
                  "horizon": tile(a.horizon), "spot": tile(a.spot), "vol": tile(a.vol)}
        for ax, (t, axis) in enumerate(zip(self.targets, self.axes)):
            v = np.asarray(axis.values)[idx[:, ax]]
            if t.kind == "confidence":
                leaves["confidence"] = v
            elif t.kind == "horizon_days":
                leaves["horizon"] = v / DAYS_PER_YEAR
            else:
                leaves[t.kind][:, t.slot] = v
        cpad = a.quantity.shape[0]
        tables = {}
        comp = np.zeros((p, rows), np.int32)
        index = np.zeros((p, rows, width), np.int32)
        yes = np.zeros((p, rows, width))
        stress = np.tile(np.asarray(a.stress_yes, np.float64), (p, 1, 1))
        n = self.layout.n_contracts
        for j, (table_key, stress_key) in enumerate(keys):
            if table_key not in tables:
                tables[table_key] = _table_leaves(self._tables[table_key], cpad, rows, width)
            comp[j], index[j], yes[j] = tables[table_key]
            if stress_key:
                stress[j, : len(self.book.stress), :n] = self._stress[stress_key]
        dtype = a.price.dtype
        f = lambda x: jnp.asarray(x, dtype)  # noqa: E731
        return Points(f(leaves["quantity"]), f(leaves["price"]), f(leaves["rho"]),
                      f(leaves["loading"]), f(leaves["confidence"]), f(leaves["horizon"]),
                      f(leaves["spot"]), f(leaves["vol"]), jnp.asarray(comp),
                      jnp.asarray(index), f(yes), f(stress))


def sweep(
    book: Book,
    axes,
    *,
    scenarios: int | None = None,
    seed: int | None = None,
    sensitivities: bool = False,
    progress: bool | None = None,
    points_per_call: int | None = None,
) -> SweepResult:
    """Margins `book` at every point of a grid, all points on the same scenarios.

    **Arguments:**

    - `book`: a validated [`Book`][] (its settings give the sampler, confidence,
      add-ons; `scenarios` and `seed` override its ``[model]`` values). An unset
      sampler is ``"plain"`` here: every point on the same draws, vmapped and
      spread over the devices, with sensitivities available; ``"exact_block"``
      gives tighter points at several times the time (docs/methodology.md,
      "Which sampler, where").
    - `axes`: the grid's axes, each an [`Axis`][], a ``"NAME=START:STOP:COUNT"``
      string or a ``(name, values)`` pair (or a mapping name -> values). The grid is
      their product, in the order given.
    - `sensitivities`: also the derivative of the margin along each axis at every
      point (module doc); prices, rho and loadings from the conditional
      estimator's run of [`sensitivities`][] ([`jump_run`][]: 8x the scenarios,
      importance-sampled).
    - `progress`: a progress bar on stderr (None: when stdout and stderr are
      terminals).
    - `points_per_call`: points margined per compiled call (default 64, 4 with
      sensitivities); memory grows with it.

    **Returns:** a [`SweepResult`][]. Raises [`BookError`][] for an unknown axis
    name or a malformed axis; invalid *points* are reported in the result.
    """
    axes = _as_axes(axes)
    book = check_book(book).with_overrides(scenarios=scenarios, seed=seed).with_sampler_for("sweep")
    s = book.settings
    if sensitivities and s.sampler == "exact_block":
        raise BookError("sensitivities", "the 'exact_block' sampler holds each point's law "
                                         "fixed, so derivatives through it would miss the "
                                         "block's; sweep sensitivities with 'importance' or "
                                         "'plain'")
    grid = _Grid(book, axes)
    size = math.prod(grid.shape)
    valid = np.zeros(size, bool)
    reasons = np.empty(size, dtype=object)
    keys: dict[int, tuple] = {}
    for flat, idx in enumerate(np.ndindex(*grid.shape)):
        reason, table_key, stress_key = grid.check(idx)
        reasons[flat] = reason
        valid[flat] = reason is None
        if reason is None:
            keys[flat] = (table_key, stress_key)
    lowest = min([s.confidence] + [v for t, a in zip(grid.targets, axes)
                                   if t.kind == "confidence" for v in a.values
                                   if 0 < v < 1 and s.scenarios * (1 - v) >= 1])
    top = tail_size(s.scenarios, lowest)
    default_p = SENSITIVITY_POINTS_PER_CALL if sensitivities else MAX_POINTS_PER_CALL
    if points_per_call is not None and (isinstance(points_per_call, bool) or not isinstance(
            points_per_call, int) or points_per_call < 1):
        raise BookError("points_per_call", f"{points_per_call!r} is not a positive integer")
    p = min(points_per_call or default_p, size)
    todo = np.flatnonzero(valid)
    names = ("margin", "base", "floor", "binding", "standard_error", "worst_case_loss",
             "capital_released")
    figs = {n: np.full(size, np.nan) for n in names}
    sens = {a.name: np.full(size, np.nan) for a in axes} if sensitivities else None
    errs = {a.name: np.full(size, np.nan) for a in axes} if sensitivities else None
    key = jax.random.key(s.seed)
    fast = s.sampler == "plain" and not sensitivities
    # Sensitivities along price, rho and loading axes: the conditional
    # estimator's run of [`sensitivities`][] (8x the draws, importance-sampled).
    jumps = None
    if sensitivities:
        jumps = jump_run(s)
        jumps = jumps._replace(top=tail_size(jumps.scenarios, lowest))
    chunk = 0
    if fast:
        per = CHUNK_ELEMENTS // (p * grid.arrays.quantity.shape[0])
        chunk = chunk_size(grid.arrays, s.scenarios, max(BLOCK, per // BLOCK * BLOCK))
    targets = tuple((t.kind, t.slot) for t in grid.targets)
    structure = (structure_of(book, grid.arrays, grid.layout)
                 if fast and not grid.arrays.dynamic else None)
    # Plain sweeps spread their chunks over this process's devices (the other
    # paths run on one device).
    mesh = scenario_mesh(jax.local_devices()[: None if fast else 1])
    stream = None
    if fast and mesh.size > 1:
        chunk = min(chunk, -(-n_blocks(s.scenarios) // mesh.size) * BLOCK)
        stream = _ShardedStream(grid.arrays, key, s.scenarios, chunk, mesh)
    elif fast:
        stream = _Stream(grid.arrays, key, s.scenarios, chunk)
    law_cache: dict = {}
    if len(todo):
        rows, width = grid.table_shape()
        with Progress(len(todo), "sweep", want_progress(progress)) as bar:
            for start in range(0, len(todo), p):
                flat = todo[start: start + p]
                padded = np.concatenate([flat, np.full(p - len(flat), flat[0])])
                pts = grid.points(padded, [keys[int(i)] for i in padded], rows, width)
                if fast:
                    out = streamed_margins(grid.arrays, grid.params, pts, stream, top,
                                           structure)
                    d = e = {}
                else:
                    laws = (point_laws(grid.arrays, grid.params, pts, law_cache)
                            if s.sampler == "exact_block" else None)
                    out, d, e = sweep_chunk_general(grid.arrays, grid.params, key, pts,
                                                    s.scenarios, top, s.sampler, targets,
                                                    sensitivities, jumps, laws)
                out = jax.device_get(out)
                m = len(flat)
                for n in names:
                    figs[n][flat] = np.asarray(out[n], np.float64)[:m]
                if sensitivities:
                    d, e = jax.device_get((d, e))
                    for t, a in zip(targets, axes):
                        sens[a.name][flat] = np.asarray(d[f"{t[0]}{t[1]}"], np.float64)[:m]
                        errs[a.name][flat] = np.asarray(e[f"{t[0]}{t[1]}"], np.float64)[:m]
                bar.update(m)
    binding = np.empty(size, dtype=object)
    binding[valid] = [BINDING[int(b)] for b in figs["binding"][valid]]
    shape = grid.shape
    return SweepResult(
        axes=axes,
        margin=figs["margin"].reshape(shape),
        base=figs["base"].reshape(shape),
        floor=figs["floor"].reshape(shape),
        binding=binding.reshape(shape),
        standard_error=figs["standard_error"].reshape(shape),
        worst_case_loss=figs["worst_case_loss"].reshape(shape),
        capital_released=figs["capital_released"].reshape(shape),
        valid=valid.reshape(shape),
        reasons=reasons.reshape(shape),
        scenarios=s.scenarios,
        seed=s.seed,
        devices=mesh.size,
        sensitivities=None if sens is None else {k: v.reshape(shape) for k, v in sens.items()},
        sensitivity_standard_errors=(None if errs is None else
                                     {k: v.reshape(shape) for k, v in errs.items()}),
    )


def plot_sweep(result: SweepResult, path: str | None = None, ax=None):
    """A line (one axis) or heat map (two axes) of the margin, with the binding
    component's regions; saved as PNG to `path` when given. Needs matplotlib (the
    ``plot`` extra). Returns the matplotlib Axes."""
    if len(result.axes) not in (1, 2):
        raise BookError("--plot", f"a plot needs one or two axes, the sweep has "
                                  f"{len(result.axes)}")
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as e:
        raise BookError("--plot", f"needs matplotlib (pip install 'kinetic-jax[plot]'): "
                                  f"{e}") from None
    colors = {"worst_case": "#d62728", "base": "#1f77b4", "floor": "#2ca02c"}
    code = {name: k for k, name in enumerate(BINDING)}
    if ax is None:
        size = (7, 5) if len(result.axes) == 2 else (7, 4)
        if path is None:  # shown by pyplot (a notebook, an interactive session)
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=size)
        else:  # only written: no pyplot, no GUI backend, nothing left open
            fig = Figure(figsize=size)
            ax = fig.subplots()
    fig = ax.figure
    present = [b for b in BINDING if np.any(result.binding == b)]
    if len(result.axes) == 1:
        x = np.asarray(result.axes[0].values)
        ax.plot(x, result.margin, color="black", lw=1.8, label="margin")
        # Shade each point's half-way span by its binding component, an invalid
        # point's hatched; the axis spans the whole sweep, invalid ends included.
        edges = np.concatenate([[x[0]], (x[1:] + x[:-1]) / 2, [x[-1]]])
        for i, b in enumerate(result.binding):
            if b is not None:
                ax.axvspan(edges[i], edges[i + 1], color=colors[b], alpha=0.15, lw=0)
            elif not result.valid[i]:
                ax.axvspan(edges[i], edges[i + 1], facecolor="white", edgecolor="grey",
                           hatch="///", lw=0, label="_invalid")
        if x[-1] != x[0]:
            ax.set_xlim(min(x[0], x[-1]), max(x[0], x[-1]))
        ax.set_xlabel(result.axes[0].name)
        ax.set_ylabel("margin ($)")
    else:
        xa, ya = result.axes[1], result.axes[0]  # rows: first axis, columns: second
        def edges(v):  # cells centred on the values
            v = np.asarray(v, np.float64)
            half = (v[-1] - v[0]) / (2 * (len(v) - 1)) if len(v) > 1 else 0.5
            return v[0] - half, v[-1] + half

        extent = (*edges(xa.values), *edges(ya.values))
        image = ax.imshow(np.ma.masked_invalid(result.margin), origin="lower", aspect="auto",
                          extent=extent, cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="margin ($)")
        codes = np.full(result.shape, np.nan)
        for b in present:
            codes[result.binding == b] = code[b]
        if len(present) > 1 and min(result.shape) > 1:
            ax.contour(np.asarray(xa.values), np.asarray(ya.values), codes,
                       levels=[0.5, 1.5], colors="white", linewidths=1.5)
        for b in present:
            rr, cc = np.nonzero(result.binding == b)
            ax.text(np.mean(np.asarray(xa.values)[cc]), np.mean(np.asarray(ya.values)[rr]),
                    b, color=colors[b], ha="center", va="center", fontsize=11,
                    fontweight="bold", bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})
        ax.set_xlabel(xa.name)
        ax.set_ylabel(ya.name)
    handles = [Patch(color=colors[b], alpha=0.5, label=f"binding: {b}") for b in present]
    if (~result.valid).any():
        handles.append(Patch(facecolor="white", edgecolor="grey", hatch="///",
                             label="invalid point"))
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_title(f"margin over {' x '.join(a.name for a in result.axes)} "
                 f"({result.scenarios:,} scenarios, seed {result.seed})")
    if path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    return ax
