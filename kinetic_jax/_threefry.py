"""Standard normals from JAX's threefry stream, bit for bit, without its CPU loop.

On the CPU, JAX lowers the threefry-2x32 hash as a rolled loop (five passes of
four rounds, each pass writing its state to memory) to keep compile times down;
for the millions of draws of a margin call that makes the hash, not the model,
the most expensive step (about 6x slower than the same rounds fused into one
elementwise kernel). [`threefry_normal`][] computes exactly what
``jax.random.normal(key, shape, float32)`` computes for a threefry key (the
partitionable counter layout, JAX's default): the 20 rounds of Salmon et al.
(2011) written out, which XLA fuses on any backend (GPUs and TPUs already lower
JAX's own hash this way), then the same uniform-to-normal map
(``sqrt(2) erfinv(u)``, u in (-1, 1)). Keys of another implementation (``rbg``,
...) fall back to ``jax.random.normal``.

The identity with ``jax.random.normal`` is tested (tests/test_simulation.py), so
the engine's scenarios do not depend on which path drew them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, PRNGKeyArray, UInt32

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x: UInt32[Array, " *shape"], d: int) -> UInt32[Array, " *shape"]:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(
    k1: UInt32[Array, ""], k2: UInt32[Array, ""], x0: UInt32[Array, " *shape"],
    x1: UInt32[Array, " *shape"],
) -> tuple[UInt32[Array, " *shape"], UInt32[Array, " *shape"]]:
    """The Threefry-2x32 hash (20 rounds) of the counter words (x0, x1) under the
    key (k1, k2), unrolled."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotate_left(x1, r)
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def random_bits(key: PRNGKeyArray, shape: tuple[int, ...]) -> UInt32[Array, " *shape"]:
    """``jax.random.bits(key, shape)`` (32-bit) of a threefry key: element n of the
    flattened shape is the XOR of the two words of the hash of the counter (0, n)."""
    n = math.prod(shape)
    if n >= 2**32:
        raise ValueError(f"shape: {shape} holds more than 2**32 draws")
    k = jax.random.key_data(key)
    count = lax.iota(jnp.uint32, n)
    a, b = threefry2x32(k[0], k[1], jnp.zeros_like(count), count)
    return (a ^ b).reshape(shape)


def is_threefry(key: PRNGKeyArray) -> bool:
    """A typed key (``jax.random.key``) of the threefry implementation."""
    return (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and str(jax.random.key_impl(key)) == "threefry2x32")


def threefry_normal(key: PRNGKeyArray, shape: tuple[int, ...]) -> Float[Array, " *shape"]:
    """``jax.random.normal(key, shape, jnp.float32)``, bit for bit, with the threefry
    hash written out so that XLA fuses it (see module doc)."""
    if not is_threefry(key) or not jax.config.jax_threefry_partitionable:
        return jax.random.normal(key, shape, jnp.float32)
    bits = random_bits(key, shape)
    # A float in [1, 2) from the top 23 bits, minus 1; then scaled onto (-1, 1).
    one = lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32)
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    hi = np.float32(1.0)
    u = lax.max(lo, (one - np.float32(1.0)) * (hi - lo) + lo)
    return np.float32(math.sqrt(2.0)) * lax.erf_inv(u)
