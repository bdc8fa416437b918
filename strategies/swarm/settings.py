"""``swarm.*`` (how peers are connected and what a sync waits for) and the swarm
strategies (``strategy=gossip | leader | dinno``: how peers merge, with their own
parameters)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from fedpriv.config import ExperimentConfig
from fedpriv.errors import ConfigError
from fedpriv.families import StrategySpec
from fedpriv.merge import MergeRule, merge_choices, merge_rule
from fedpriv.registry import Registry, Spec
from fedpriv.strategies.swarm import topology

MIXING = ("metropolis", "data_size")
#: The rules a leader may merge the peers' models with.
MERGES = merge_choices("mean", "weighted_mean", "coordinate_median", "trimmed_mean")
ELECTIONS = ("rotating", "random")


@dataclasses.dataclass(frozen=True)
class SwarmSettings(Spec):
    """The swarm of one experiment (``family=swarm``): one peer per client."""

    topology: str = "ring"
    #: Neighbours per peer for ``random_regular``; lattice degree for ``small_world``.
    degree: int = 3
    #: Rewiring probability of ``small_world``.
    rewire: float = 0.2
    #: Draw a new graph every sync (seeded by the round) instead of one for the run.
    redraw: bool = False
    #: Peers that must answer for a sync to count; fewer stops the run. Null: all.
    min_peers: int | None = None
    #: Measure the consensus distance each sync (a CKKS secure sum of the peers' models:
    #: each peer learns the average model, the relay nothing; two extra exchanges).
    consensus: bool = True

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.topology not in topology.TOPOLOGIES:
            out.append(("topology", f"must be one of: {', '.join(topology.TOPOLOGIES)}"))
        if self.degree < 1:
            out.append(("degree", "must be >= 1"))
        if not 0.0 <= self.rewire <= 1.0:
            out.append(("rewire", "must be in [0, 1]"))
        if self.min_peers is not None and self.min_peers < 1:
            out.append(("min_peers", "must be >= 1 or null (all peers)"))
        return out

    def required_peers(self, peers: int) -> int:
        return peers if self.min_peers is None else self.min_peers


#: Why gossip and DiNNO refuse encryption (``crypto=``): what masks could protect.
NEIGHBOUR_MERGE = (
    "each peer merges its own neighbours' models, and no peer merges them all: pairwise "
    "masks cancel only in a sum over every peer that agreed them, so a neighbour average "
    "cannot remove them, and a key every peer holds would let any neighbour read a model "
    "it averages; peer payloads are already end-to-end encrypted (X25519 + "
    "ChaCha20-Poly1305), so only the neighbours a model is sealed for read it; use "
    "strategy=leader with crypto=ckks_secagg"
)

#: Swarm strategies (``strategy=<name>`` with ``family=swarm``).
SWARM_STRATEGIES: Registry[StrategySpec] = Registry("swarm strategy")


@dataclasses.dataclass(frozen=True)
class SwarmStrategy(StrategySpec):
    """How the peers of a swarm merge. By default each peer sends its model to its
    neighbours in this sync's graph, and opens theirs at the next sync."""

    def leader(self, live: Sequence[int], sync: int, seed: int) -> int | None:
        """The peer every model goes to in ``sync``; None: each peer's neighbours."""
        return None

    def accepts(self, label: str, sync: int, last_merge: int) -> bool:
        """Whether a payload sealed under ``label`` may arrive in ``sync`` (a relay must
        not replay an old one): by default, what neighbours sealed in the previous sync."""
        return label == f"r{sync - 1}"

    def combine(
        self,
        party: int,
        own: np.ndarray,
        received: Mapping[int, np.ndarray],
        weights: Mapping[int, float],
    ) -> np.ndarray:
        """The model a peer trains from in this sync, given the models it received by
        sender and the relay's mixing weights by peer (gossip only; else empty)."""
        return own

    def local_epochs(self, config: ExperimentConfig, sync: int) -> int:
        """Local epochs a peer trains in ``sync``."""
        return config.train.local_epochs

    def planned_epochs(self, config: ExperimentConfig) -> int:
        return sum(self.local_epochs(config, sync) for sync in range(1, config.rounds + 1))


@SWARM_STRATEGIES.register("gossip")
@dataclasses.dataclass(frozen=True)
class Gossip(SwarmStrategy):
    """Decentralized SGD: each peer averages its neighbours' models with its own
    (Lian et al., 2017, "Can decentralized algorithms outperform centralized ones?")."""

    unsupported: ClassVar[Mapping[str, str]] = {"ckks": NEIGHBOUR_MERGE}

    #: ``metropolis`` (Metropolis-Hastings, doubly stochastic) or ``data_size``.
    mixing: str = "metropolis"

    def problems(self) -> list[tuple[str, str]]:
        if self.mixing not in MIXING:
            return [("mixing", f"must be one of: {', '.join(MIXING)}")]
        return []

    def mixing_weights(self, graph: list[set[int]], sizes: list[int]) -> list[dict[int, float]]:
        """Each peer's weight for itself and its neighbours in ``graph``."""
        if self.mixing == "data_size":
            return topology.size_weights(graph, sizes)
        return topology.metropolis_weights(graph)

    def combine(
        self,
        party: int,
        own: np.ndarray,
        received: Mapping[int, np.ndarray],
        weights: Mapping[int, float],
    ) -> np.ndarray:
        if not received:
            return own
        if set(weights) != {party, *received} or abs(sum(weights.values()) - 1) > 1e-6:
            raise ValueError(f"mixing weights {weights} do not cover self and senders or sum to 1")
        return weights[party] * own + sum(weights[j] * received[j] for j in received)


@SWARM_STRATEGIES.register("leader")
@dataclasses.dataclass(frozen=True)
class Leader(SwarmStrategy):
    """An elected peer merges every model and sends the merge back to all (swarm
    learning, Warnat-Herresthal et al., Nature 2021)."""

    #: A sum suffices for ``mean``/``weighted_mean``: under ``crypto=ckks_secagg`` the
    #: leader sums masked ciphertexts (the family refuses the other merges with it).
    linear: ClassVar[bool] = True

    #: How the leader merges the peers' models.
    merge: str = "mean"
    #: Fraction cut from each end per coordinate by ``trimmed_mean``.
    trim: float = 0.1
    #: ``rotating`` over live peers, or ``random`` (seeded, checked by peers).
    election: str = "rotating"

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.merge not in MERGES:
            out.append(("merge", f"must be one of: {', '.join(MERGES)}"))
        if not 0.0 <= self.trim < 0.5:
            out.append(("trim", "must be in [0, 0.5)"))
        if self.election not in ELECTIONS:
            out.append(("election", f"must be one of: {', '.join(ELECTIONS)}"))
        return out

    def merge_rule(self) -> MergeRule:
        """The rule ``strategy.merge`` names, cutting ``strategy.trim`` if it trims."""
        return merge_rule(self.merge, trim=self.trim)

    def leader(self, live: Sequence[int], sync: int, seed: int) -> int | None:
        return elect(live, sync, self.election, seed)

    def accepts(self, label: str, sync: int, last_merge: int) -> bool:
        """A merge newer than the last one adopted, from a past sync."""
        return label.startswith("merged") and last_merge < int(label[6:]) < sync

    def combine(
        self,
        party: int,
        own: np.ndarray,
        received: Mapping[int, np.ndarray],
        weights: Mapping[int, float],
    ) -> np.ndarray:
        """The latest merge (a peer that missed syncs catches up here), else its own."""
        if len(received) > 1:
            raise ValueError(f"expected one merged model, got {len(received)}")
        return next(iter(received.values())) if received else own


@SWARM_STRATEGIES.register("dinno")
@dataclasses.dataclass(frozen=True)
class DiNNO(SwarmStrategy):
    """Distributed ADMM: local primal steps pulled towards the neighbours' models, and
    a dual per peer (Yu et al., "DiNNO: Distributed neural network optimization for
    multi-robot collaborative learning", RA-L 2022)."""

    unsupported: ClassVar[Mapping[str, str]] = {"ckks": NEIGHBOUR_MERGE}

    #: Penalty ρ of the consensus constraint.
    rho: float = 0.1
    #: Local epochs of primal steps in sync 1, added per sync, and the cap.
    primal_epochs: int = 1
    primal_growth: float = 0.5
    primal_max: int = 4

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.rho > 0:
            out.append(("rho", "must be > 0"))
        if self.primal_epochs < 1 or self.primal_max < self.primal_epochs:
            out.append(("primal_epochs", "must be >= 1 and <= strategy.primal_max"))
        if self.primal_growth < 0:
            out.append(("primal_growth", "must be >= 0"))
        return out

    def local_epochs(self, config: ExperimentConfig, sync: int) -> int:
        """The adaptive schedule: more primal epochs as communication rounds go on."""
        return min(self.primal_max, self.primal_epochs + int((sync - 1) * self.primal_growth))


def elect(live: Sequence[int], sync: int, election: str, seed: int) -> int:
    """The leader of a sync among the live peers; every peer can recompute it."""
    ordered = sorted(live)
    if election == "rotating":
        return ordered[(sync - 1) % len(ordered)]
    digest = hashlib.sha256(f"{seed}:{sync}:{','.join(map(str, ordered))}".encode()).digest()
    return ordered[int.from_bytes(digest[:8], "big") % len(ordered)]


def swarm_settings(config: ExperimentConfig) -> SwarmSettings:
    """The ``swarm.*`` settings of a ``family=swarm`` config."""
    settings = config.family_settings
    if not isinstance(settings, SwarmSettings):
        raise ConfigError(f"family={config.family} has no swarm.* settings")
    return settings


def swarm_strategy(config: ExperimentConfig) -> SwarmStrategy:
    """The swarm strategy of a ``family=swarm`` config."""
    if not isinstance(config.strategy, SwarmStrategy):
        raise ConfigError(f"strategy={config.strategy.name} is not a swarm strategy")
    return config.strategy


def outdated(mapping: Mapping[str, Any]) -> list[str]:
    """What a config from before the swarm strategies (``strategy=swarm``,
    ``swarm.mode=leader``, ``swarm.merge=...``: an older run's config.yaml) writes now."""
    settings, strategy = mapping.get("swarm"), mapping.get("strategy")
    named = strategy.get("name") if isinstance(strategy, Mapping) else None
    moved = {
        f.name for name in SWARM_STRATEGIES for f in dataclasses.fields(SWARM_STRATEGIES.get(name))
    }
    old = {
        key: value
        for key, value in (settings.items() if isinstance(settings, Mapping) else ())
        if key == "mode" or key in moved
    }
    if not old and named != "swarm":
        return []
    mode = old.pop("mode", named if named in SWARM_STRATEGIES else "gossip")
    if mode not in SWARM_STRATEGIES:
        return [
            f"swarm.mode={mode} is gone: swarm modes are strategies now; write strategy=<name>, "
            f"one of: {', '.join(SWARM_STRATEGIES.names())}"
        ]
    fields = {f.name for f in dataclasses.fields(SWARM_STRATEGIES.get(mode))}
    write = " ".join(
        [f"strategy={mode}", *(f"strategy.{k}={v}" for k, v in old.items() if k in fields)]
    )
    drop = [f"swarm.{k}" for k in old if k not in fields]
    return [
        f"strategy=swarm and swarm.mode are gone (swarm modes are strategies now): write {write}"
        + (f", and drop {', '.join(drop)} (parameters of the other strategies)" if drop else "")
    ]
