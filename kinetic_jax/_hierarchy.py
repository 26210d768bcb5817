"""Asset hierarchy: clusters as leaves of a tree, correlations from the LCA rule.

The structure (names, parents, the lowest-common-ancestor table) is fixed when a
[`Hierarchy`][] is built, with NumPy. The values (each internal node's ``rho``, each
cluster's ``loading``) are arrays, so the correlation matrix is a differentiable
function of them: ``R[c, d] = rho[lca[c, d]]`` off the diagonal, 1 on it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._checks import check_number
from ._errors import BookError

ROOT = "root"


def _unit_interval(field: str, value: float) -> None:
    check_number(field, value, low=0.0, high=1.0, high_open=True)


@dataclasses.dataclass(frozen=True)
class Node:
    """An internal node of the hierarchy. ``rho`` is the factor correlation of
    any two clusters whose lowest common ancestor is this node."""

    name: str
    parent: str | None
    rho: float


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A leaf of the hierarchy: one latent systematic factor. ``loading`` is the
    weight a_c of the factor in every event latent of the cluster."""

    name: str
    parent: str
    loading: float


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """A validated asset hierarchy.

    **Arguments:**

    - `nodes`: internal nodes. A node named ``root`` with no parent is the root; if
      absent it is added with ``rho = 0``.
    - `clusters`: the leaves, each under an internal node, each with its loading.

    Raises [`BookError`][] naming the node or cluster for duplicate or unknown
    names, cycles, values outside [0, 1), and a ``rho`` smaller than its
    parent's (which could make the correlation matrix indefinite).
    """

    nodes: tuple[Node, ...]
    clusters: tuple[Cluster, ...]

    def __post_init__(self):
        nodes = list(self.nodes)
        # Field names index the nodes as given (the book's [[hierarchy]] entries),
        # not counting an implicit root inserted here.
        offset = 0
        if not any(n.name == ROOT for n in nodes):
            nodes.insert(0, Node(ROOT, None, 0.0))
            offset = 1
        names: dict[str, Node] = {}
        for i, n in enumerate(nodes):
            field = f"hierarchy[{i - offset}] (node {n.name!r})"
            if not isinstance(n.name, str) or not n.name:
                raise BookError(f"hierarchy[{i - offset}].node",
                                f"{n.name!r} is not a non-empty string")
            if n.name in names:
                raise BookError(f"{field}.node", f"duplicate node {n.name!r}")
            if n.name == ROOT and n.parent is not None:
                raise BookError(f"{field}.parent", f"the root has no parent, got {n.parent!r}")
            if n.name != ROOT and n.parent is None:
                raise BookError(f"{field}.parent", "missing (only 'root' has no parent)")
            _unit_interval(f"{field}.rho", n.rho)
            names[n.name] = n
        for i, n in enumerate(nodes):
            if n.parent is not None and n.parent not in names:
                raise BookError(
                    f"hierarchy[{i - offset}] (node {n.name!r}).parent",
                    f"unknown node {n.parent!r}",
                )
        # Every node must reach the root without a cycle: each node's path is
        # walked up to a node already known to reach it (linear in the nodes; a
        # walk per node to the root was quadratic in a chain's depth).
        reaches: set[str] = set()
        for n in nodes:
            path, on_path = [], set()
            p = n.name
            while p is not None and p not in reaches:
                if p in on_path:
                    raise BookError(f"hierarchy (node {n.name!r}).parent", f"cycle through {p!r}")
                path.append(p)
                on_path.add(p)
                p = names[p].parent
            reaches.update(path)
        for i, n in enumerate(nodes):
            if n.parent is not None and n.rho < names[n.parent].rho:
                raise BookError(
                    f"hierarchy[{i - offset}] (node {n.name!r}).rho",
                    f"{n.rho!r} is below its parent {n.parent!r}'s rho "
                    f"{names[n.parent].rho!r}; rho must be non-decreasing from the root down",
                )
        if not self.clusters:
            raise BookError("clusters", "the hierarchy has no clusters")
        seen_clusters: set[str] = set()
        for i, c in enumerate(self.clusters):
            field = f"clusters[{i}] (cluster {c.name!r})"
            if not isinstance(c.name, str) or not c.name:
                raise BookError(f"clusters[{i}].name", f"{c.name!r} is not a non-empty string")
            if c.name in seen_clusters:
                raise BookError(f"{field}.name", f"duplicate cluster {c.name!r}")
            if c.name in names:
                raise BookError(f"{field}.name", f"{c.name!r} is already a hierarchy node")
            if c.parent not in names:
                raise BookError(f"{field}.parent", f"unknown node {c.parent!r}")
            _unit_interval(f"{field}.loading", c.loading)
            seen_clusters.add(c.name)
        object.__setattr__(self, "nodes", tuple(nodes))

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters)

    @property
    def rho(self) -> np.ndarray:
        """Each node's rho, in `node_names` order."""
        return np.array([n.rho for n in self.nodes])

    @property
    def loadings(self) -> np.ndarray:
        """Each cluster's loading, in `cluster_names` order."""
        return np.array([c.loading for c in self.clusters])

    def ancestors(self, cluster: str) -> list[str]:
        """Internal nodes from the cluster's parent up to the root."""
        parent = {n.name: n.parent for n in self.nodes}
        out = []
        p: str | None = next(c.parent for c in self.clusters if c.name == cluster)
        while p is not None:
            out.append(p)
            p = parent[p]
        return out

    def lca_table(self) -> np.ndarray:
        """``lca[c, d]``: index (in `node_names`) of the lowest common ancestor of
        clusters c and d; -1 on the diagonal."""
        index = {name: i for i, name in enumerate(self.node_names)}
        paths = [self.ancestors(c) for c in self.cluster_names]
        k = len(paths)
        lca = np.full((k, k), -1, dtype=np.int32)
        for a in range(k):
            for b in range(k):
                if a != b:
                    common = set(paths[b])
                    lca[a, b] = index[next(n for n in paths[a] if n in common)]
        return lca

    def replace(
        self, rho: dict[str, float] | None = None, loading: dict[str, float] | None = None
    ) -> Hierarchy:
        """A copy with some nodes' rho and clusters' loadings replaced (validated)."""
        rho = dict(rho or {})
        loading = dict(loading or {})
        for name in rho:
            if name not in self.node_names:
                raise BookError(f"rho.{name}", f"unknown hierarchy node {name!r}")
        for name in loading:
            if name not in self.cluster_names:
                raise BookError(f"loading.{name}", f"unknown cluster {name!r}")
        return Hierarchy(
            tuple(dataclasses.replace(n, rho=rho.get(n.name, n.rho)) for n in self.nodes),
            tuple(
                dataclasses.replace(c, loading=loading.get(c.name, c.loading))
                for c in self.clusters
            ),
        )


def default_hierarchy() -> Hierarchy:
    """The reference design's hierarchy (SPEC.md §2.1): 8 clusters under a
    risk-on factor (rho_cross 0.35) with a crypto sub-factor (rho_within 0.68)."""
    return Hierarchy(
        nodes=(
            Node(ROOT, None, 0.0),
            Node("risk", ROOT, 0.35),
            Node("crypto", "risk", 0.68),
            Node("equity", "risk", 0.35),
            Node("macro", "risk", 0.35),
            Node("politics", ROOT, 0.0),
            Node("sports", ROOT, 0.0),
        ),
        clusters=(
            Cluster("BTC", "crypto", 0.9),
            Cluster("ETH", "crypto", 0.9),
            Cluster("SOL", "crypto", 0.9),
            Cluster("SPX", "equity", 0.9),
            Cluster("OIL", "macro", 0.9),
            Cluster("Election", "politics", 0.0),
            Cluster("Sports", "sports", 0.0),
            Cluster("Parlays", ROOT, 0.0),
        ),
    )


def correlation_matrix(
    rho: Float[Array, " nodes"], lca: Int[Array, "clusters clusters"]
) -> Float[Array, "clusters clusters"]:
    """The inter-cluster factor correlation matrix generated by the LCA rule:
    ``R[c, d] = rho[lca[c, d]]`` for c != d and 1 on the diagonal. Differentiable in
    `rho`."""
    k = lca.shape[0]
    eye = jnp.eye(k, dtype=bool)
    return jnp.where(eye, jnp.ones((), rho.dtype), rho[jnp.where(eye, 0, lca)])


def correlation_of(hierarchy: Hierarchy) -> np.ndarray:
    """The correlation matrix of a hierarchy as a float64 NumPy array."""
    lca = hierarchy.lca_table()
    r = hierarchy.rho[np.where(lca < 0, 0, lca)]
    np.fill_diagonal(r, 1.0)
    return r
