"""Scenarios spread over many devices, and over many processes (hosts).

One margin call runs as one SPMD program over a one-axis mesh of devices (axis
``"scenarios"``; `jax.sharding.Mesh` + `jax.shard_map`):

- The streamed chunks of [`stream`][] are dealt out in contiguous runs: device d
  simulates chunks ``d * per ... (d + 1) * per - 1`` (the chunk count is padded up
  to a multiple of the device count; padding scenarios weigh 0 and lose -inf).
  Draws are keyed by (event, block of BLOCK scenarios), so a scenario's numbers are
  the same whichever device draws it.
- Plain sampling: each device keeps only its rows' `top` largest losses (each of
  the K + 1 loss rows) with their weights; these tail candidates, (K + 1) x `top`
  numbers per device, are the only thing all-gathered, never the loss vectors.
  Every device then takes the `top` largest candidates: exactly the `top` largest
  losses of the whole run, so the figures are bit-identical to one device.
- Importance sampling: the tail holds an unknown number of draws (a draw of small
  weight can sit at the boundary), so the losses and weights are all-gathered in
  full ((K + 1) x N / devices per device), restored to the one-device padded
  length and margined exactly as on one device. The proposal's pilot run is
  computed by every device (it is small, and identical everywhere).
- Everything after the gather (ES, standard errors, floor, add-ons, worst case)
  is computed by every device on replicated data; the result is replicated.

With ``chunk=None`` the default chunk size is capped at an even share of the
scenarios per device, so every device has work; losses do not depend on the chunk
size, so plain figures are bit-identical on any number of devices. Importance
sampling agrees to float32 rounding (relative 1e-6, as across chunk sizes): the
pilot fit of the proposal compiles inside a different program, and its mean
shifts can move by one float32 ulp.

Many processes: `initialize` starts JAX's multi-controller runtime
(`jax.distributed.initialize`); `jax.devices()` then lists every process's
devices and the same mesh spans them all. Every process runs the same program
and holds the same replicated result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PRNGKeyArray

from ._arrays import BookArrays
from ._sampler import (
    Proposal,
    chunk_rows,
    chunk_size,
    loss_rows,
    padded_scenarios,
    stream_chunks,
)
from ._simulation import BLOCK, n_blocks

AXIS = "scenarios"
ENV_COORDINATOR = "KINETIC_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "KINETIC_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "KINETIC_JAX_PROCESS_ID"


def scenario_mesh(devices: int | Sequence[jax.Device] | Mesh | None = None) -> Mesh:
    """A one-axis mesh (axis ``"scenarios"``) to spread scenarios over.

    **Arguments:**

    - `devices`: None for every device of the job (``jax.devices()``: all local
      devices, and with [`initialize`][] every process's); an int n for the first
      n of them; a sequence of devices; or a mesh (returned as is).
    """
    if isinstance(devices, Mesh):
        if devices.axis_names != (AXIS,):
            raise ValueError(f"devices: a mesh must have the one axis {AXIS!r}, not "
                             f"{devices.axis_names!r}")
        return devices
    every = jax.devices()
    if devices is None:
        chosen = every
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(every):
            raise ValueError(f"devices: {devices} is outside [1, {len(every)}] (the devices "
                             f"of this job)")
        chosen = every[:devices]
    else:
        chosen = list(devices) if isinstance(devices, (list, tuple)) else None
        if chosen is None or not all(isinstance(d, jax.Device) for d in chosen):
            raise ValueError(f"devices: {devices!r:.80} is not None, a count, a list of "
                             f"devices (jax.devices()) or a mesh")
        if not chosen:
            raise ValueError("devices: an empty sequence of devices")
    return Mesh(np.asarray(chosen, dtype=object), (AXIS,))


def device_chunks(
    arrays: BookArrays, scenarios: int, chunk: int | None, devices: int
) -> tuple[int, int]:
    """``(size, per_device)``: scenarios per chunk and chunks per device when
    `scenarios` are spread over `devices` (see the module doc)."""
    size = chunk_size(arrays, scenarios, chunk)
    if chunk is None:
        size = min(size, -(-n_blocks(scenarios) // devices) * BLOCK)
    count = -(-scenarios // size)
    return size, -(-count // devices)


def _local_rows(arrays, key, scenarios, chunk, proposal, devices, rest=None):
    size, per = device_chunks(arrays, scenarios, chunk, devices)
    first = lax.axis_index(AXIS) * per
    losses, weights = stream_chunks(arrays, key, scenarios, size, first + jnp.arange(per),
                                    proposal, loss_rows(arrays, scenarios, rest),
                                    per_scenario=False)
    # (K + 1, per * size) and (per * size,): this device's
    return chunk_rows(losses), weights.reshape(-1)


def gathered_tail(
    arrays: BookArrays,
    key: PRNGKeyArray,
    scenarios: int,
    top: int,
    chunk: int | None,
    devices: int,
) -> tuple[Float[Array, "R T"], Float[Array, "R T"]]:
    """Plain sampling, inside ``shard_map`` over axis ``"scenarios"`` of `devices`
    devices: this device's chunks, then the whole run's `top` largest losses of
    each row and their probability masses, exactly as [`weighted_tail`][] gives
    them on one device (replicated on every device). Only each device's `top`
    largest losses per row and their weights are all-gathered."""
    losses, weights = _local_rows(arrays, key, scenarios, chunk, None, devices)
    local, index = lax.top_k(losses, min(top, losses.shape[1]))
    candidates = lax.all_gather(local, AXIS, axis=1, tiled=True)
    cand_w = lax.all_gather(weights[index], AXIS, axis=1, tiled=True)
    n = candidates.shape[1]
    if top >= n:
        order = jnp.argsort(-candidates, axis=-1)
        tail = jnp.take_along_axis(candidates, order, axis=-1)
    else:
        tail, order = lax.top_k(candidates, top)
    return tail, jnp.take_along_axis(cand_w, order, axis=1) / scenarios


def gathered_losses(
    arrays: BookArrays,
    key: PRNGKeyArray,
    scenarios: int,
    chunk: int | None,
    proposal: Proposal,
    devices: int,
    rest: Float[Array, " C"] | None = None,
) -> tuple[Float[Array, "R Np"], Float[Array, " Np"]]:
    """Importance sampling, inside ``shard_map``: every device's loss rows and
    weights, all-gathered in scenario order and restored to the one-device padded
    length (padding: loss -inf, weight 0), replicated on every device: exactly
    [`scenario_losses`][] on one device (with `rest`, its extra row too)."""
    losses, weights = _local_rows(arrays, key, scenarios, chunk, proposal, devices, rest)
    losses = lax.all_gather(losses, AXIS, axis=1, tiled=True)
    weights = lax.all_gather(weights, AXIS, axis=0, tiled=True)
    length = padded_scenarios(arrays, scenarios, chunk)
    have = losses.shape[1]
    if have >= length:
        return losses[:, :length], weights[:length]
    losses = jnp.pad(losses, ((0, 0), (0, length - have)), constant_values=-jnp.inf)
    return losses, jnp.pad(weights, (0, length - have))


def replicated_map(body, mesh: Mesh, *args):
    """``body(*args)`` as one SPMD program over `mesh`: every array argument
    replicated on every device (non-array leaves are static), the result
    replicated. `body` may use collectives over axis ``"scenarios"``."""
    dynamic, static = eqx.partition(args, eqx.is_array)

    def inner(dyn):
        return body(*eqx.combine(dyn, static))

    spec = PartitionSpec()
    # check_vma=False: JAX cannot infer replication through every primitive used
    # (error_if's callbacks among them); it holds by construction, since the only
    # device-dependent values (each device's chunks) reach the result through an
    # all-gather.
    return jax.shard_map(inner, mesh=mesh, in_specs=(spec,), out_specs=spec,
                         check_vma=False)(dynamic)


def replicate(tree, mesh: Mesh):
    """Places every array leaf of `tree` replicated on every device of `mesh` (in
    a multi-process job every process must pass the same values)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    if sharding.is_fully_addressable:
        return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x,
                            tree)

    def one(x):
        if not eqx.is_array(x):
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    initialization_timeout: int | None = None,
    heartbeat_timeout: int | None = None,
) -> bool:
    """Starts JAX's multi-controller runtime for a job over several processes.

    Values not given come from ``KINETIC_JAX_COORDINATOR`` (``HOST:PORT`` of
    process 0), ``KINETIC_JAX_NUM_PROCESSES`` and ``KINETIC_JAX_PROCESS_ID``. With
    none of them set this does nothing and returns False, unless `auto`, which
    calls a bare ``jax.distributed.initialize()`` (it detects SLURM and Cloud TPU
    slices itself); a coordinator ``"auto"`` does the same. Must run before JAX
    computes anything. Returns True when the runtime was started. Raises
    ValueError naming a bad or missing value.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = _int_setting("--num-processes", ENV_NUM_PROCESSES, num_processes)
    process_id = _int_setting("--process-id", ENV_PROCESS_ID, process_id)
    timeouts = {}
    if initialization_timeout is not None:
        timeouts["initialization_timeout"] = initialization_timeout
    if heartbeat_timeout is not None:
        timeouts["heartbeat_timeout_seconds"] = heartbeat_timeout
    if coordinator == "auto":
        auto, coordinator = True, None
    given = {"--coordinator": coordinator, "--num-processes": num_processes,
             "--process-id": process_id}
    if all(v is None for v in given.values()):
        if auto:
            jax.distributed.initialize(**timeouts)
            return True
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"{', '.join(missing)}: missing (--coordinator, --num-processes and "
                         f"--process-id go together)")
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--coordinator: {coordinator!r} is not HOST:PORT")
    if num_processes < 1:
        raise ValueError(f"--num-processes: {num_processes} is not a positive count")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id: {process_id} is outside [0, {num_processes - 1}]")
    jax.distributed.initialize(coordinator, num_processes, process_id, **timeouts)
    return True


def _int_setting(flag: str, env: str, value: int | None) -> int | None:
    if value is not None:
        return value
    text = os.environ.get(env)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{env} ({flag}): {text!r} is not an integer") from None


initialize_distributed = initialize  # the public name (kj.initialize_distributed)
