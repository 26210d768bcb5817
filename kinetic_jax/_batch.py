"""Account batches: many accounts margined on one contract universe and one shared
simulation (SPEC.md §5.3, ``kinetic-jax batch``).

The book gives the contracts, the hierarchy and the model (its positions are
ignored); each account is a vector of net quantities over those contracts. The
scenarios are drawn once (plain Monte Carlo, the block-keyed draws of every
margin call) and streamed in chunks: per chunk, the matrix ``p - YES`` (scenarios
x contracts, contracts ordered by cluster) is multiplied by the accounts'
quantities, one GEMM per cluster's columns and block of accounts, giving every
account's loss per cluster; the book row is their sum. Each account keeps only
the running top-``top`` of its (K + 1) loss rows, so memory is O(accounts x K x
top + chunk x contracts). The figures then come from the same
[`margin_from_statistics`][] as a margin call (full collateral, add-ons, the
exact worst-case cap from the outcome table, which is built once for the
universe when it is exact for every quantity vector, else per account). With
several local devices the chunks are dealt out over them as a sweep deals them
([`merge_tails`][]: per-device top-``top`` candidates, merged and finished on
the first device), with bit-identical figures.

An account's figures equal [`portfolio_margin`][] of the book holding exactly
that account's positions, with the same seed and scenarios, to float32 rounding
(tests/test_batch.py).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float

from ._arrays import BookArrays, book_arrays, padded_table_shape
from ._book import MAX_AMOUNT, Book, check_book, check_number
from ._errors import BookError, EngineError
from ._margin import BINDING, MarginParams, margin_from_statistics
from ._programs import program
from ._progress import Progress, want_progress
from ._sharding import AXIS, scenario_mesh
from ._shortfall import weighted_tail_statistics
from ._simulation import (
    BLOCK,
    HIGHEST,
    chunk_noise,
    contract_outcomes,
    latents_from_noise,
    n_blocks,
)
from ._sweep import _table_leaves, merge_tails
from ._worst_case import build_outcome_table

ACCOUNT_BLOCK = 512
CHUNK_ELEMENTS = 5 << 23  # (account, row, scenario) loss entries per step (160 MB)
CACHE_BYTES = 1 << 28  # the p - YES chunks are kept between account blocks below this


@dataclasses.dataclass(frozen=True)
class AccountMargin:
    """One account's figures (dollars; `capital_released` a fraction), or its
    `error` (the other fields None) when its rows are invalid."""

    account: str
    margin: float | None = None
    base: float | None = None
    floor: float | None = None
    full_collateral: float | None = None
    worst_case_loss: float | None = None  # None: no cap (net short an underlying)
    binding: str | None = None
    capital_released: float | None = None
    standard_error: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if self.error is None:
            del out["error"]
        return out


FIELDS = ("account", "margin", "base", "floor", "full_collateral", "worst_case_loss",
          "binding", "capital_released", "standard_error")


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """Every account's [`AccountMargin`][], in input order."""

    accounts: tuple[AccountMargin, ...]
    scenarios: int
    seed: int
    devices: int

    @property
    def failed(self) -> tuple[AccountMargin, ...]:
        return tuple(a for a in self.accounts if a.error is not None)

    def to_dict(self) -> dict:
        """The JSON object of ``kinetic-jax batch --json``."""
        return {"accounts": [a.to_dict() for a in self.accounts], "scenarios": self.scenarios,
                "seed": self.seed, "devices": self.devices}

    def save(self, path: str) -> None:
        """Writes one CSV row per account (the figures of SPEC.md §5.3, then error)."""
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*FIELDS, "error"])
            for a in self.accounts:
                writer.writerow(["" if getattr(a, k) is None else getattr(a, k)
                                 for k in (*FIELDS, "error")])


def read_accounts(path: str, contracts: Iterable[str] | None = None
                  ) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Reads an ``account,contract,quantity`` CSV (UTF-8, with or without the byte
    order mark a spreadsheet writes).

    **Arguments:**

    - `path`: the CSV file.
    - `contracts`: the contract ids of the book the accounts are margined on; when
      given, a row naming another contract is a bad row (its error names the file
      line).

    **Returns:** ``(accounts, errors)``: each account's rows netted per contract
    (contract id -> quantity, in file order), and for each account with a bad row
    the first error, naming the file line. Raises [`BookError`][] when the file as a
    whole is unusable (unreadable, empty, wrong header).
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BookError(str(path), f"cannot read the accounts file: {e}") from None
    header = [h.strip() for h in lines[0]] if lines else []
    if header != ["account", "contract", "quantity"]:
        raise BookError(f"{path} line 1", f"the header must be account,contract,quantity, "
                                          f"got {','.join(header) or 'nothing'}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line or all(not x.strip() for x in line):
            continue
        rows.append((f"{path} line {number}", line))
    return _net(rows, None if contracts is None else set(contracts))


def _net(rows: Iterable[tuple[str, list]], contracts: set[str] | None = None
         ) -> tuple[dict, dict]:
    """Nets ``(where, [account, contract, quantity])`` rows per account and
    contract; a bad row (or, with `contracts`, a contract not among them) gives its
    account an error naming `where`."""
    accounts: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for where, line in rows:
        if len(line) != 3:
            account = str(line[0]).strip() if line else ""
            accounts.setdefault(account, {})
            errors.setdefault(account, f"{where}: expected 3 fields (account,contract,"
                                       f"quantity), got {len(line)}")
            continue
        account, contract, quantity = (x.strip() if isinstance(x, str) else x for x in line)
        account = str(account)
        accounts.setdefault(account, {})
        if not account:
            errors.setdefault(account, f"{where}: account: empty account name")
            continue
        if contracts is not None and str(contract) not in contracts:
            errors.setdefault(account, f"{where}: contract: unknown contract "
                                       f"{str(contract)!r}")
            continue
        if isinstance(quantity, str):
            written = quantity
            try:
                quantity = float(quantity)
            except ValueError:
                errors.setdefault(account, f"{where}: quantity: {written!r} is not a number")
                continue
            if not math.isfinite(quantity):  # named as written (1e400, not inf)
                errors.setdefault(account, f"{where}: quantity: {written!r} is not finite")
                continue
        try:
            q = check_number("quantity", quantity, low=-MAX_AMOUNT, high=MAX_AMOUNT)
        except BookError as e:
            errors.setdefault(account, f"{where}: {e}")
            continue
        accounts[account][str(contract)] = accounts[account].get(str(contract), 0.0) + q
    return accounts, errors


def _check_account(book: Book, book_ids: dict[str, int], positions: Mapping[str, float]
                   ) -> str | None:
    """Why the account's positions would not validate as a book's, or None: the
    position rules of [`Book`][] (known contracts, quantities in range, their
    sum, a linear position only with a horizon), without revalidating the
    book's contracts for every account."""
    total = 0.0
    for cid, q in positions.items():
        if cid not in book_ids:
            return f"contract: unknown contract {cid!r}"
        try:
            q = check_number(f"quantity (contract {cid!r})", q, low=-MAX_AMOUNT, high=MAX_AMOUNT)
        except BookError as e:
            return str(e)
        c = book.contracts[book_ids[cid]]
        if c.is_linear and q != 0 and book.settings.horizon_days is None:
            return (f"contract {cid!r}: a {c.type} position needs a liquidation horizon "
                    f"(model.horizon_days or --horizon): its loss to resolution is undefined")
        total += abs(q)
    if total > MAX_AMOUNT:
        return (f"quantity: the account's positions add up to {total:.4g} contracts (sum of "
                f"|quantity|), over the limit of {MAX_AMOUNT:g}")
    return None


@program
def _chunk_matrix(key, arrays: BookArrays, first_block, blocks: int, order
                  ) -> Float[Array, "n C"]:
    """``p - YES`` of the chunk's scenarios, columns in cluster order."""
    noise = chunk_noise(key, arrays, first_block, blocks)
    yes = contract_outcomes(latents_from_noise(noise, arrays), arrays)
    return (arrays.price[None, :] - yes)[:, order]


@program
def _step(matrix: Float[Array, "n C"], quantity: Float[Array, "C A"],
          tail: Float[Array, "A K+1 T"], first, scenarios: int, bounds: tuple
          ) -> Float[Array, "A K+1 T"]:
    """Merges one chunk's losses of a block of accounts into their running top-T:
    one GEMM per cluster's columns (`bounds`: its static column range)."""
    n = matrix.shape[0]
    rows = []
    for lo, hi in bounds:
        if hi > lo:
            rows.append(jnp.matmul(quantity[lo:hi].T, matrix[:, lo:hi].T, precision=HIGHEST))
        else:
            rows.append(jnp.zeros((quantity.shape[1], n), matrix.dtype))
    losses = jnp.stack(rows, axis=1)  # (A, K, n)
    losses = jnp.concatenate([losses, jnp.sum(losses, axis=1, keepdims=True)], axis=1)
    index = first + jnp.arange(n)
    losses = jnp.where(index < scenarios, losses, -jnp.inf)
    merged, _ = lax.top_k(jnp.concatenate([tail, losses], axis=2), tail.shape[2])
    return merged


@program
def _sharded_matrix(key, arrays: BookArrays, c, per: int, blocks: int, order, mesh: Mesh
                    ) -> Float[Array, "D n C"]:
    """[`_chunk_matrix`][] of chunk ``d * per + c`` on every device d of `mesh`,
    stacked along a leading device axis sharded over the mesh."""
    dynamic, static = eqx.partition((key, arrays, c, order), eqx.is_array)

    def body(dyn):
        key, arrays, c, order = eqx.combine(dyn, static)
        first = (lax.axis_index(AXIS) * per + c) * blocks
        return _chunk_matrix(key, arrays, first, blocks, order)[None]

    return jax.shard_map(body, mesh=mesh, in_specs=(PartitionSpec(),),
                         out_specs=PartitionSpec(AXIS), check_vma=False)(dynamic)


@program
def _sharded_step(matrix: Float[Array, "D n C"], quantity: Float[Array, "C A"],
                  tail: Float[Array, "D A K+1 T"], c, chunk: int, per: int, scenarios: int,
                  bounds: tuple, mesh: Mesh) -> Float[Array, "D A K+1 T"]:
    """[`_step`][] on every device of `mesh`: device d merges its chunk
    ``d * per + c`` into its own running top-T of each account."""
    spec = PartitionSpec(AXIS)

    def body(matrix, quantity, tail, c):
        first = (lax.axis_index(AXIS) * per + c) * chunk
        return _step(matrix[0], quantity, tail[0], first, scenarios, bounds)[None]

    return jax.shard_map(body, mesh=mesh,
                         in_specs=(spec, PartitionSpec(), spec, PartitionSpec()),
                         out_specs=spec, check_vma=False)(matrix, quantity, tail, c)


@program
def _finish(arrays: BookArrays, params: MarginParams, quantity: Float[Array, "A C"],
            tables, tail: Float[Array, "A K+1 T"], scenarios: int) -> dict:
    def one(q, table, t):
        a = eqx.tree_at(lambda x: x.quantity, arrays, q)
        if table is not None:
            a = eqx.tree_at(lambda x: (x.wc_component, x.wc_index, x.wc_yes), a, table)
        mass = jnp.where(jnp.isfinite(t), jnp.asarray(1.0 / scenarios, t.dtype), 0.0)
        es, se, var, _ = weighted_tail_statistics(t, mass, params.confidence, scenarios)
        r = margin_from_statistics(a, params, es, se, var)
        return {"margin": r.margin, "base": r.base, "floor": r.floor,
                "full_collateral": r.full_collateral, "worst_case_loss": r.worst_case_loss,
                "binding": r.binding, "capital_released": r.capital_released,
                "standard_error": jnp.where(r.base >= r.floor, r.base_se, r.floor_se)}

    return jax.vmap(one)(quantity, tables, tail)


def margin_accounts(
    book: Book,
    accounts,
    *,
    scenarios: int | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    errors: Mapping[str, str] | None = None,
    account_block: int = ACCOUNT_BLOCK,
) -> BatchResult:
    """Margins many accounts on `book`'s contracts with one shared simulation.

    **Arguments:**

    - `book`: gives the contracts, hierarchy and model; its positions are ignored.
    - `accounts`: account name -> {contract id: quantity} (netted), or an iterable
      of ``(account, contract, quantity)`` rows (netted here).
    - `scenarios`, `seed`: override the book's ``[model]`` values. The batch always
      samples plain Monte Carlo (a ``[model] sampler = "importance"`` is not used:
      its proposal is fitted to one book's tail, not to many accounts').
    - `progress`: a progress bar on stderr (None: when stdout and stderr are
      terminals).
    - `errors`: account -> error for accounts already known to be bad (from
      [`read_accounts`][]); they are reported, not margined.

    **Returns:** a [`BatchResult`][]: one [`AccountMargin`][] per account, in input
    order; an account with an unknown contract or a bad quantity carries `error`.
    """
    if not isinstance(accounts, Mapping):
        accounts, row_errors = _net((f"row {i + 1}", list(r)) for i, r in enumerate(accounts))
        errors = {**row_errors, **(errors or {})}
    errors = dict(errors or {})
    book = check_book(book).with_overrides(scenarios=scenarios, seed=seed, sampler="plain")
    s = book.settings
    ids = {c: i for i, c in enumerate(book.contract_ids)}
    names = list(accounts)
    for name in names:
        if name not in errors:
            reason = _check_account(book, ids, accounts[name])
            if reason is not None:
                errors[name] = reason
    good = [a for a in names if a not in errors]
    arrays, layout = book_arrays(book.with_positions({}))
    params = MarginParams.from_settings(s, arrays.price.dtype)
    cpad = arrays.quantity.shape[0]
    n = layout.n_contracts
    q = np.zeros((len(good), cpad))
    for j, a in enumerate(good):
        for cid, v in accounts[a].items():
            q[j, ids[cid]] = v
    results: dict[str, AccountMargin] = {a: AccountMargin(a, error=errors[a]) for a in errors}
    mesh = scenario_mesh(jax.local_devices())
    if good:
        _margin_good(book, arrays, layout, params, q, good, n, results, s, progress,
                     account_block, mesh)
    return BatchResult(tuple(results[a] for a in names), s.scenarios, s.seed, mesh.size)


def _margin_good(book, arrays, layout, params, q, good, n, results, s, progress, block,
                 mesh):
    cpad = arrays.quantity.shape[0]
    k = arrays.loading.shape[0]
    cluster = np.asarray(arrays.cluster)
    order = np.argsort(cluster, kind="stable")  # padding slots (cluster 0, q = 0) included
    counts = np.bincount(cluster, minlength=k)
    edges = np.concatenate([[0], np.cumsum(counts)])
    bounds = tuple((int(edges[c]), int(edges[c + 1])) for c in range(k))
    # The fewest largest losses the estimator reads (floor(N (1 - alpha)) + 1, and one
    # more): the figures are those of any larger tail, and top_k's cost grows with it.
    top = min(s.scenarios, math.floor(s.scenarios * (1 - s.confidence)) + 2)
    block = max(1, min(block, len(good)))
    per = CHUNK_ELEMENTS // (block * (k + 1))
    # With several devices, chunks of at most an even share of the scenarios, so
    # every device has work; device d streams chunks d * steps ... (d + 1) * steps - 1.
    devices = mesh.size
    chunk = min(max(BLOCK, per // BLOCK * BLOCK), -(-n_blocks(s.scenarios) // devices) * BLOCK)
    steps = -(-(-(-s.scenarios // chunk)) // devices)
    key = jax.random.key(s.seed)
    keep = chunk * cpad * 4 * steps * devices <= CACHE_BYTES
    cache: dict[int, Array] = {}
    order_j = jnp.asarray(order, jnp.int32)

    def matrix(c):
        if c in cache:
            return cache[c]
        if devices == 1:
            m = _chunk_matrix(key, arrays, jnp.asarray(c * (chunk // BLOCK), jnp.int32),
                              chunk // BLOCK, order_j)
        else:
            m = _sharded_matrix(key, arrays, jnp.asarray(c, jnp.int32), steps, chunk // BLOCK,
                                order_j, mesh)
        if keep:
            cache[c] = m
        return m

    tables = None
    if not layout.table.exact:  # per-account tables (branch and bound at its quantities)
        built = [build_outcome_table(book.with_positions(
            {cid: v for cid, v in zip(book.contract_ids, row[:n]) if v != 0}), row[:n])
            for row in q]
        rows, width = (max(x) for x in zip(*(padded_table_shape(t) for t in built)))
        tables = [_table_leaves(t, cpad, rows, width) for t in built]
    dtype = arrays.price.dtype
    with Progress(len(good), "batch", want_progress(progress), unit="accounts") as bar:
        for start in range(0, len(good), block):
            rows_q = q[start: start + block]
            m = len(rows_q)
            padded = np.concatenate([rows_q, np.zeros((block - m, cpad))])
            qb = jnp.asarray(padded, dtype)
            q_sorted = jnp.asarray(padded[:, order].T, dtype)
            if devices == 1:
                tail = jnp.full((block, k + 1, top), -jnp.inf, dtype)
                for c in range(steps):
                    tail = _step(matrix(c), q_sorted, tail, jnp.asarray(c * chunk, jnp.int32),
                                 s.scenarios, bounds)
            else:
                tails = jax.device_put(jnp.full((devices, block, k + 1, top), -jnp.inf, dtype),
                                       NamedSharding(mesh, PartitionSpec(AXIS)))
                for c in range(steps):
                    tails = _sharded_step(matrix(c), q_sorted, tails, jnp.asarray(c, jnp.int32),
                                          chunk, steps, s.scenarios, bounds, mesh)
                # Every device's candidates onto one device; the figures there, in
                # the one-device program: bit-identical to one device.
                tail = merge_tails(jax.device_put(tails, mesh.devices.flat[0]))
            tb = None
            if tables is not None:
                sel = tables[start: start + block] + [tables[0]] * (block - m)
                tb = tuple(jnp.asarray(np.stack([t[i] for t in sel]),
                                       dtype if i == 2 else jnp.int32) for i in range(3))
            out = jax.device_get(_finish(arrays, params, qb, tb, tail, s.scenarios))
            for j in range(m):
                f = {name: float(np.asarray(v)[j]) for name, v in out.items()}
                name = good[start + j]
                results[name] = AccountMargin(
                    name, margin=f["margin"], base=f["base"], floor=f["floor"],
                    full_collateral=f["full_collateral"],
                    # No cap (net short an underlying): None, as MarginReport and JSON null.
                    worst_case_loss=(None if f["worst_case_loss"] == math.inf
                                     else f["worst_case_loss"]),
                    binding=BINDING[int(f["binding"])], capital_released=f["capital_released"],
                    standard_error=f["standard_error"])
                if not (all(math.isfinite(f[x]) for x in ("margin", "base", "floor"))
                        and not math.isnan(f["worst_case_loss"])):
                    raise EngineError("the engine produced a non-finite figure for account "
                                      f"{name!r}; please report this book")
            bar.update(m)
