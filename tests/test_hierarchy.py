"""The asset hierarchy and its LCA correlation matrix (SPEC.md §2.1). What the
simulation does with the matrix is in test_simulation.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import binary, make_book
from hypothesis import given, settings, strategies as st

import kinetic_jax as kj
from kinetic_jax import BookError, Cluster, Hierarchy, Node

NAMES = ("BTC", "ETH", "SOL", "SPX", "OIL", "Election", "Sports", "Parlays")


def test_default_hierarchy_matrix_is_exact():
    h = kj.default_hierarchy()
    assert h.cluster_names == NAMES
    c, e = 0.68, 0.35  # rho_within (crypto), rho_cross (risk)
    expected = np.array([
        [1, c, c, e, e, 0, 0, 0],
        [c, 1, c, e, e, 0, 0, 0],
        [c, c, 1, e, e, 0, 0, 0],
        [e, e, e, 1, e, 0, 0, 0],
        [e, e, e, e, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
    ])
    np.testing.assert_array_equal(kj.correlation_of(h), expected)
    np.testing.assert_array_equal(h.loadings, [0.9] * 5 + [0.0] * 3)
    # The JAX form used inside the engine gives the same matrix.
    arrays, _ = kj.book_arrays(make_book([binary("G", 0.5)]))
    np.testing.assert_allclose(
        np.asarray(kj.correlation_matrix(arrays.rho, arrays.lca)), expected, rtol=1e-7
    )


def test_correlation_matrix_derivative_in_rho():
    # dR[c, d] / d rho[m] = 1 exactly where LCA(c, d) = m (off the diagonal).
    h = kj.default_hierarchy()
    lca = h.lca_table()
    jac = jax.jacobian(kj.correlation_matrix)(jnp.asarray(h.rho, jnp.float32),
                                              jnp.asarray(np.maximum(lca, 0)))
    for m in range(len(h.node_names)):
        expected = ((lca == m) & ~np.eye(len(NAMES), dtype=bool)).astype(float)
        np.testing.assert_array_equal(np.asarray(jac)[:, :, m], expected)


def test_root_rho_applies_to_clusters_meeting_at_the_root():
    h = Hierarchy(
        (Node("root", None, 0.2), Node("a", "root", 0.5)),
        (Cluster("X", "a", 0.5), Cluster("Y", "a", 0.5), Cluster("Z", "root", 0.0)),
    )
    np.testing.assert_array_equal(
        kj.correlation_of(h), [[1, 0.5, 0.2], [0.5, 1, 0.2], [0.2, 0.2, 1]]
    )


# --- random valid hierarchies ----------------------------------------------------


@st.composite
def hierarchies(draw, monotone=True):
    """A random tree: internal node i > 0 hangs under a random earlier node; its
    rho is its parent's plus a non-negative increment (so rho is monotone)."""
    n_nodes = draw(st.integers(1, 7))
    parents = [None] + [draw(st.integers(0, i - 1)) for i in range(1, n_nodes)]
    rho = [draw(st.floats(0.0, 0.9))]
    for i in range(1, n_nodes):
        rho.append(min(0.99, rho[parents[i]] + draw(st.floats(0.0, 0.5))))
    names = ["root"] + [f"n{i}" for i in range(1, n_nodes)]
    nodes = tuple(Node(names[i], None if i == 0 else names[parents[i]], rho[i])
                  for i in range(n_nodes))
    n_clusters = draw(st.integers(1, 9))
    clusters = tuple(
        Cluster(f"c{j}", names[draw(st.integers(0, n_nodes - 1))], draw(st.floats(0.0, 0.99)))
        for j in range(n_clusters)
    )
    return Hierarchy(nodes, clusters)


def _lca_rho(h: Hierarchy, a: str, b: str) -> float:
    """rho of the lowest common ancestor, walking parent pointers (reference)."""
    parent = {n.name: n.parent for n in h.nodes}
    rho = {n.name: n.rho for n in h.nodes}
    up_a = h.ancestors(a)
    p = next(c.parent for c in h.clusters if c.name == b)
    while p not in up_a:
        p = parent[p]
    return rho[p]


@settings(max_examples=60, deadline=None)
@given(hierarchies())
def test_lca_matrix_of_any_valid_hierarchy_is_a_correlation_matrix(h):
    r = kj.correlation_of(h)
    k = len(h.clusters)
    assert r.shape == (k, k)
    np.testing.assert_array_equal(r, r.T)
    np.testing.assert_array_equal(np.diag(r), np.ones(k))
    assert np.linalg.eigvalsh(r).min() >= -1e-12
    for a in range(k):
        for b in range(k):
            if a != b:
                ca, cb = h.cluster_names[a], h.cluster_names[b]
                assert r[a, b] == _lca_rho(h, ca, cb)


@settings(max_examples=40, deadline=None)
@given(hierarchies(), st.data())
def test_non_monotone_rho_is_an_error_naming_the_node(h, data):
    rho = {n.name: n.rho for n in h.nodes}
    candidates = [n for n in h.nodes if n.parent is not None and rho[n.parent] > 0]
    if not candidates:
        return
    node = data.draw(st.sampled_from(candidates))
    bad = data.draw(st.floats(0.0, rho[node.parent], exclude_max=True))
    with pytest.raises(BookError) as err:
        h.replace(rho={node.name: bad})
    assert repr(node.name) in str(err.value)
    assert ".rho" in err.value.field


def test_non_monotone_default_hierarchy_names_crypto():
    with pytest.raises(BookError, match="'crypto'") as err:
        kj.default_hierarchy().replace(rho={"crypto": 0.2})  # below risk's 0.35
    assert "0.35" in str(err.value)


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_rho_outside_unit_interval_is_an_error(bad):
    with pytest.raises(BookError, match="'risk'"):
        kj.default_hierarchy().replace(rho={"risk": bad})
