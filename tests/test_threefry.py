"""The engine's normals are jax.random.normal's, bit for bit (kinetic_jax/_threefry.py:
the threefry hash unrolled instead of JAX's rolled CPU loop), and the order keys of
the sort-free tail search order floats exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kinetic_jax._shortfall import order_keys
from kinetic_jax._threefry import random_bits, threefry_normal

SHAPES = [(1,), (7,), (1024,), (1023, 3), (5, 8)]


@pytest.mark.parametrize("shape", SHAPES)
def test_bits_and_normals_equal_jax_random_bit_for_bit(shape):
    for key in (jax.random.key(0), jax.random.fold_in(jax.random.key(7), 2**31 + 5)):
        bits = jax.jit(random_bits, static_argnums=1)(key, shape)
        np.testing.assert_array_equal(bits, jax.random.bits(key, shape))
        z = jax.jit(threefry_normal, static_argnums=1)(key, shape)
        np.testing.assert_array_equal(z, jax.random.normal(key, shape, jnp.float32))
        assert z.dtype == jnp.float32


def test_vmapped_over_keys_as_the_engine_draws_them():
    keys = jax.random.split(jax.random.key(3), 40)
    mine = jax.jit(jax.vmap(lambda k: threefry_normal(k, (1024,))))(keys)
    theirs = jax.vmap(lambda k: jax.random.normal(k, (1024,)))(keys)
    np.testing.assert_array_equal(mine, theirs)


def test_keys_of_other_implementations_fall_back_to_jax_random():
    for key in (jax.random.key(1, impl="rbg"), jax.random.PRNGKey(4)):
        np.testing.assert_array_equal(threefry_normal(key, (64,)), jax.random.normal(key, (64,)))


def test_order_keys_order_floats_as_floats():
    # (No sub-normals: XLA flushes them to zero on CPUs, in comparisons as here.)
    x = np.array([-np.inf, -3.4e38, -1e30, -2.5, -1e-30, -2e-38, -0.0, 0.0, 2e-38, 1e-30,
                  0.5, 0.5, 2.5, 1e30, 3.4e38, np.inf], np.float32)
    k = np.asarray(order_keys(jnp.asarray(x)))
    assert k.dtype == np.int32
    for i in range(len(x)):
        for j in range(len(x)):
            assert (k[i] < k[j]) == (x[i] < x[j]), (x[i], x[j])
            assert (k[i] == k[j]) == (x[i] == x[j]), (x[i], x[j])
