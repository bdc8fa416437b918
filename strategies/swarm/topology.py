"""Who talks to whom in a swarm: undirected graphs over peers, and mixing weights."""

from __future__ import annotations

import itertools

import numpy as np

from fedpriv.errors import ConfigError

TOPOLOGIES = ("full", "ring", "random_regular", "small_world")
#: Draws tried for a connected random graph before giving up.
ATTEMPTS = 200


def graph(name: str, peers: int, degree: int, rewire: float, seed: int) -> list[set[int]]:
    """Neighbour sets of ``peers`` nodes; a disconnected graph is a ConfigError."""
    if name == "random_regular" and (degree >= peers or peers * degree % 2):
        raise ConfigError(
            f"swarm.topology=random_regular needs swarm.degree < peers and peers × degree "
            f"even; got {peers} peers, swarm.degree={degree}"
        )
    rng = np.random.default_rng([seed, 17])
    for _ in range(ATTEMPTS if name in ("random_regular", "small_world") else 1):
        edges = _edges(name, peers, degree, rewire, rng)
        neighbours: list[set[int]] = [set() for _ in range(peers)]
        for a, b in edges:
            neighbours[a].add(b)
            neighbours[b].add(a)
        if connected(neighbours):
            return neighbours
    raise ConfigError(
        f"swarm.topology={name} with {peers} peers and swarm.degree={degree} gave no connected "
        f"graph in {ATTEMPTS} draws; raise swarm.degree or use full or ring"
    )


def _edges(
    name: str, peers: int, degree: int, rewire: float, rng: np.random.Generator
) -> set[tuple[int, int]]:
    if name == "full":
        return set(itertools.combinations(range(peers), 2))
    if name == "ring":
        return {_edge(i, (i + 1) % peers) for i in range(peers) if peers > 1}
    if name == "random_regular":
        return _random_regular(peers, degree, rng)
    # small_world (Watts-Strogatz): a ring lattice of degree k, each edge rewired with p.
    edges: set[tuple[int, int]] = set()
    for i in range(peers):
        for step in range(1, degree // 2 + 1):
            j = (i + step) % peers
            if rng.random() < rewire:
                choices = [c for c in range(peers) if c != i and _edge(i, c) not in edges]
                j = int(rng.choice(choices)) if choices else j
            edges.add(_edge(i, j))
    return edges


def _edge(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _random_regular(peers: int, degree: int, rng: np.random.Generator) -> set[tuple[int, int]]:
    """Pairing model: match ``degree`` stubs per node, retry on loops or doubled edges."""
    for _ in range(ATTEMPTS):
        stubs = rng.permutation(np.repeat(np.arange(peers), degree))
        pairs = {_edge(int(a), int(b)) for a, b in stubs.reshape(-1, 2)}
        if len(pairs) == peers * degree // 2 and all(a != b for a, b in pairs):
            return pairs
    return set()


def connected(neighbours: list[set[int]]) -> bool:
    seen, frontier = {0}, [0]
    while frontier:
        for other in neighbours[frontier.pop()]:
            if other not in seen:
                seen.add(other)
                frontier.append(other)
    return len(seen) == len(neighbours)


def metropolis_weights(neighbours: list[set[int]]) -> list[dict[int, float]]:
    """Metropolis-Hastings weights: w_ij = 1 / (1 + max(d_i, d_j)) for each edge, the
    rest on w_ii. Symmetric and doubly stochastic, so gossip converges to the mean."""
    out = []
    for i, mine in enumerate(neighbours):
        row = {j: 1.0 / (1 + max(len(mine), len(neighbours[j]))) for j in mine}
        row[i] = 1.0 - sum(row.values())
        out.append(row)
    return out


def size_weights(neighbours: list[set[int]], sizes: list[int]) -> list[dict[int, float]]:
    """Weights proportional to each peer's example count over its closed neighbourhood."""
    out = []
    for i, mine in enumerate(neighbours):
        group = [i, *sorted(mine)]
        total = sum(sizes[j] for j in group)
        out.append({j: sizes[j] / total for j in group})
    return out
