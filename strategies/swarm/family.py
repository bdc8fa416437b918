"""The swarm family: peers train and merge with each other; the ServerApp only relays.

Each sync (round) the relay sends every peer one ``train.swarm`` message carrying the
sealed payloads addressed to it and the list of peers it must seal its new model for:
its neighbours in this sync's graph (``strategy=gossip``, ``dinno``; they merge next
sync) or the elected leader (``strategy=leader``, which then merges in a ``query.lead`` message and
seals the result for every peer, delivered at the next sync -- also to peers that
missed this one). The relay never holds a key: it forwards ciphertexts, counts bytes
and tracks who is live. Under ``crypto=ckks_secagg`` (leader mode) the peers send the
leader masked CKKS ciphertexts instead, and the relay runs the masks' key ceremony and
unmasking (:mod:`strategies.swarm.masked`): the leader reads the merge, never one model.
A peer that fails or is late is left out of the sync; the run stops, with the reason,
when fewer than ``swarm.min_peers`` answer.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedpriv.compatibility import NO_ADVERSARIES_YET
from fedpriv.config import ExperimentConfig
from fedpriv.crypto import ckks, party_keys, peers
from fedpriv.crypto.embeddings import CkksEmbeddingMod, CkksEmbeddingSum
from fedpriv.crypto.records import Layout
from fedpriv.errors import ConfigError
from fedpriv.records import metric
from fedpriv.runtime import node_store
from fedpriv.runtime.models import initial_arrays
from fedpriv.runtime.parties import Parties
from fedpriv.strategies.base import Handler, RoundReport, RunContext, Setup, Strategy
from fedpriv.strategies.swarm import topology
from fedpriv.strategies.swarm.masked import MaskedMerge, masked_mods
from fedpriv.strategies.swarm.peer import (
    CONFIG,
    INBOX,
    KEYS,
    METRICS,
    OUTBOX,
    SwarmPeer,
    entry,
)
from fedpriv.strategies.swarm.settings import (
    SWARM_STRATEGIES,
    Gossip,
    Leader,
    SwarmSettings,
    outdated,
    swarm_settings,
    swarm_strategy,
)

log = logging.getLogger("fedpriv")
#: CKKS parameters of the consensus measurement (128-bit, ~1e-9 error on a sum).
CONSENSUS_PARAMS = party_keys.consensus_params()


class SwarmFamily(Strategy):
    """Decentralized learning with the server as relay (``family=swarm``)."""

    family = "swarm"
    strategies = SWARM_STRATEGIES
    settings = SwarmSettings
    settings_key = "swarm"
    resumable = True
    device_models = True
    unsupported: ClassVar[Mapping[str, str]] = {
        "central_dp": "central DP needs a server that aggregates; use privacy=dp_sgd (each "
        "peer's training is DP)",
        "adversary": NO_ADVERSARIES_YET,
        "feature_partition": "peers merge whole models by the rule, and placing the input "
        "layers side by side is the horizontal server's step: use family=horizontal",
    }

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.swarm = swarm_settings(config)
        self.strategy = swarm_strategy(config)
        self.parties = Parties(config.num_clients)
        self.public: dict[int, bytes] = {}
        self.sizes: dict[int, int] = {}
        self.mailbox: dict[int, dict[str, Array]] = defaultdict(dict)
        #: Gossip weights of the last sync's graph, for the payloads sent along it.
        self.mixing: list[dict[int, float]] = []
        self.live: list[int] = []
        self.payload_bytes = 0
        self.layout: Layout | None = None
        self.adder: CkksEmbeddingSum | None = None
        self.initial: np.ndarray | None = None
        self.masked: MaskedMerge | None = None

    def checkpoint_state(self) -> dict[str, Any] | None:
        """The relay's part: the sealed payloads waiting for each peer, the live peers
        and the gossip weights. Each peer's model stays on its device
        (:meth:`SwarmPeer.remember`)."""
        if not self.can_resume:
            return None
        mailbox = {party: ArrayRecord(inbox) for party, inbox in self.mailbox.items() if inbox}
        return {"mailbox": mailbox, "live": list(self.live), "mixing": self.mixing}

    def restore_state(self, state: dict[str, Any] | None) -> None:
        """Take back :meth:`checkpoint_state` (None: a run with no checkpoint yet)."""
        if state is None:
            return
        for party, record in state["mailbox"].items():
            self.mailbox[int(party)] = dict(record.items())
        self.live = [int(p) for p in state["live"]]
        self.mixing = [{int(k): float(v) for k, v in row.items()} for row in state["mixing"]]

    @classmethod
    def outdated(cls, mapping: Mapping[str, Any]) -> list[str]:
        return outdated(mapping)

    @classmethod
    def config_problems(cls, config: ExperimentConfig) -> list[str]:
        s = swarm_settings(config)
        out = []
        if config.num_clients < 2:
            out.append(f"num_clients={config.num_clients}: a swarm needs at least 2 peers")
        if s.consensus and config.engine.fleet and getattr(config.engine, "keys_dir", None) is None:
            out.append(
                "swarm.consensus=true on a fleet: the relay reads its consensus context from "
                "the server's bundle; set engine.keys_dir=<keys>/superlink (or "
                "swarm.consensus=false)"
            )
        if s.min_peers is not None and s.min_peers > config.num_clients:
            out.append(f"swarm.min_peers={s.min_peers} exceeds num_clients={config.num_clients}")
        out += crypto_problems(config, s)
        if not out and config.num_clients >= 2:
            try:
                topology.graph(s.topology, config.num_clients, s.degree, s.rewire, config.seed)
            except ConfigError as error:
                out += error.problems
        return out

    def prepare(self) -> Setup:
        """Partition the data and build the initial model; for the consensus metric, a
        CKKS key shared by the peers (the relay gets the parameters only)."""
        config = self.config
        data = config.federated_data()
        config.privacy.check_clients([len(p) for p in data.parts])
        self.start_model(data)
        clients = {
            "num_clients": config.num_clients,
            "num_examples": [len(p) for p in data.parts],
            "label_histograms": data.label_histograms(),
            "test_examples": len(data.dataset.y_test),
        }
        if masks_models(config):  # consensus is refused with it: one CKKS key set
            if config.engine.keys_provisioned:  # a fleet: each peer's key is on its device
                return Setup(clients=clients, server_key=config.crypto.load_keys(server=True))
            keys = config.crypto.make_keys()
            assert keys is not None, "crypto=ckks_secagg makes keys"
            layout, _ = self.start_model()
            mods = masked_mods(config, keys.secret, layout)
            return Setup(clients=clients, client_mods=list(mods), server_key=keys.public)
        if not self.swarm.consensus:
            return Setup(clients=clients)
        engine = config.engine
        if engine.keys_provisioned:  # a fleet: the relay reads its own file only
            directory = str(getattr(engine, "keys_dir", None))
            return Setup(clients=clients, server_key=party_keys.consensus_server_key(directory))
        keys = ckks.make_keys(CONSENSUS_PARAMS)
        return Setup(
            clients=clients, client_mods=self.consensus_mods(keys.secret), server_key=keys.public
        )

    def start_model(self, data: Any = None) -> tuple[Layout, np.ndarray]:
        """The layout and seeded initial model every peer starts from (the same on
        every host: a deployed peer builds it itself)."""
        if self.layout is None or self.initial is None:
            initial = initial_arrays(self.config, data or self.config.federated_data())
            self.layout = Layout.of(initial)
            self.initial = self.layout.flatten(initial)
        return self.layout, self.initial

    def consensus_mods(self, secret: bytes) -> list[Any]:
        """The peers' mod of the consensus sum: encrypt the model, decrypt the sum."""
        _, initial = self.start_model()
        mod = CkksEmbeddingMod(
            CONSENSUS_PARAMS,
            ckks.SplitKeys(secret=secret, encrypt=secret, evaluate=b""),
            label_owner=None,
            width=len(initial),
            encrypt={"query.consensus": "model"},
            decrypt={"query.distance": "model-sum"},
        )
        return [mod]

    def node_mods(self, bundle: str | None) -> list[Any]:
        """From the device's bundle: the CKKS key the peers' masked models are encrypted
        under (``crypto=ckks_secagg``), or the consensus key shared by the peers."""
        if masks_models(self.config):
            layout, _ = self.start_model()
            secret = self.config.crypto.load_keys(server=False, directory=bundle)
            assert secret is not None, "crypto=ckks_secagg reads a key"
            return list(masked_mods(self.config, secret, layout))
        if not self.swarm.consensus:
            return []
        if bundle is None:
            raise ConfigError(
                "swarm.consensus=true on a fleet: each peer reads the consensus key from its "
                "bundle; start the SuperNode with its keys directory"
            )
        return self.consensus_mods(party_keys.consensus_node_key(bundle))

    def client_handlers(self) -> Mapping[str, Handler]:
        layout, initial = self.start_model()
        handlers = SwarmPeer(self.config, layout, initial).handlers()
        return {**handlers, **self.config.crypto.client_handlers(self.config)}  # type: ignore[dict-item]

    def send(
        self,
        grid: Grid,
        ctx: RunContext,
        message_type: str,
        contents: Mapping[int, RecordDict],
        timeout: float | None = None,
    ) -> dict[int, Message]:
        """One message per peer; a peer that fails is left out of this sync."""
        return self.parties.send(
            grid, ctx, message_type, contents, timeout=timeout, require_all=False
        )

    # -- set-up ------------------------------------------------------------------------------
    def start(self, grid: Grid, ctx: RunContext) -> None:
        """Learn each peer's key and size; a resumed run's peers first take back their own
        state after the checkpoint's round, from their devices."""
        first = None
        if ctx.checkpoint is not None:
            after = ConfigRecord({node_store.RESUME_AFTER: ctx.checkpoint.round})
            first = RecordDict({CONFIG: after})
        for party, reply in self.parties.first_contact(grid, ctx, "query.keys", first).items():
            self.public[party] = bytes(reply.content.config_records[KEYS]["public"])  # type: ignore[arg-type]
            self.sizes[party] = int(metric(reply, "num-examples"))
        self.live = self.live or sorted(self.parties.nodes)
        if masks_models(self.config):
            assert ctx.server_key is not None and self.layout is not None
            self.masked = MaskedMerge(self.config, self.layout, ctx.server_key)
            self.masked.open(
                lambda messages: ctx.exchange.send_and_receive(grid, messages),
                sorted(self.parties.nodes.values()),
            )
        if self.swarm.consensus:
            assert ctx.server_key is not None and self.initial is not None
            self.adder = CkksEmbeddingSum(CONSENSUS_PARAMS, ctx.server_key, len(self.initial))
        self.payload_bytes = (
            4 * len(self.initial if self.initial is not None else []) + peers.OVERHEAD
        )

    def graph(self, sync: int) -> list[set[int]]:
        s, n = self.swarm, self.config.num_clients
        seed = self.config.seed * 1_000_003 + sync if s.redraw else self.config.seed
        return topology.graph(s.topology, n, s.degree, s.rewire, seed)

    def keys_for(self, parties: set[int]) -> ConfigRecord:
        return ConfigRecord({str(p): self.public[p] for p in sorted(parties)})

    # -- one sync -----------------------------------------------------------------------------
    def round(self, server_round: int, grid: Grid, ctx: RunContext) -> RoundReport:
        s, strategy = self.swarm, self.strategy
        everyone = set(self.parties.nodes)
        graph = self.graph(server_round)
        leader = strategy.leader(self.live, server_round, self.config.seed)
        contents = {}
        for party in sorted(everyone):
            inbox = self.mailbox.pop(party, {})
            senders = {int(name.split("-")[1]) for name in inbox}
            recipients = graph[party] if leader is None else {leader}
            if self.masked is not None:  # models go to the leader masked, not sealed
                recipients = set()
            config = ConfigRecord(
                {
                    "round": server_round,
                    "leader": -1 if leader is None else leader,
                    "live": list(self.live),
                    "to": sorted(recipients - {party}),
                }
            )
            content = RecordDict(
                {
                    CONFIG: config,
                    INBOX: ArrayRecord(inbox),
                    KEYS: self.keys_for(senders | recipients | {party}),
                }
            )
            if isinstance(strategy, Gossip) and senders:
                content["weights"] = self.weights(party, senders)
            contents[party] = content
        if self.masked is not None:
            self.masked.stamp(
                server_round,
                {self.parties.nodes[p]: c[CONFIG] for p, c in contents.items()},  # type: ignore[misc]
            )
        replies = self.send(grid, ctx, "train.swarm", contents)
        if leader is not None:  # a peer that missed this sync gets the last merge next time
            for party in everyone - set(replies):
                if party not in self.mailbox:
                    self.mailbox[party] = dict(contents[party].array_records[INBOX].items())
        for party, reply in list(replies.items()):
            reason = self.check_outbox(reply, set(contents[party][CONFIG]["to"]))  # type: ignore[arg-type]
            if reason is None and self.masked is not None:
                reason = self.masked.check(reply)
            if reason:
                ctx.exchange.reject(reply, f"peer {party}: {reason}")
                del replies[party]
        if isinstance(strategy, Gossip):
            self.mixing = strategy.mixing_weights(graph, [self.sizes[p] for p in range(len(graph))])
        extra: dict[str, Any] = {}
        before = self.parties.traffic(ctx).total
        distance = self.consensus(grid, ctx, sorted(replies)) if self.adder else None
        measured = self.parties.traffic(ctx).total - before
        merged, stop = None, None
        if leader is None:  # neighbours merge next sync
            for sender, reply in replies.items():
                for name, array in reply.content.array_records[OUTBOX].items():
                    self.mailbox[int(name[3:])][entry(sender, f"r{server_round}")] = array
        elif leader in replies and self.masked is not None:
            merged, stop = self.lead_masked(grid, ctx, server_round, leader, replies)
        elif leader in replies:
            merged = self.lead(grid, ctx, server_round, leader, replies)
        else:
            if self.masked is not None:
                self.masked.forget(server_round)
            log.warning(
                "sync %d: leader %d did not answer; no merge this sync", server_round, leader
            )
        self.live = sorted(replies) or self.live
        needed = s.required_peers(self.config.num_clients)
        if stop is None and len(replies) < needed:
            stop = f"sync {server_round}: {len(replies)} peers answered, swarm.min_peers={needed}"
        accuracies = [metric(r, "test-accuracy") for r in replies.values()]
        losses = [metric(r, "test-loss") for r in replies.values()]
        extra["swarm"] = {
            "mode": strategy.name,  # the key of the results schema from before strategy=
            "live": sorted(replies),
            "leader": leader,
            "accuracy_mean": float(np.mean(accuracies)) if accuracies else None,
            "accuracy_min": min(accuracies, default=None),
            "accuracy_max": max(accuracies, default=None),
            "merged_accuracy": merged["accuracy"] if merged else None,
            "consensus_distance": distance,
            "consensus_bytes": measured,  # the measurement's own traffic, all peers
        }
        if self.masked is not None:
            extra["swarm"]["masked_from"] = int(merged["merged_from"]) if merged else 0
            extra["swarm"]["threshold"] = self.masked.threshold
        accuracy = merged["accuracy"] if merged else extra["swarm"]["accuracy_mean"]
        loss = merged["loss"] if merged else (float(np.mean(losses)) if losses else None)
        traffic = self.parties.traffic(ctx)
        clients = [
            {
                "party": p,
                "node_id": self.parties.nodes[p],
                "bytes_up": traffic.up[p],
                "bytes_down": traffic.down[p],
                **{k: v for k, v in replies[p].content.metric_records[METRICS].items()},
            }
            if p in replies
            else {
                "party": p,
                "node_id": self.parties.nodes[p],
                "bytes_up": 0,
                "bytes_down": traffic.down[p],
            }
            for p in sorted(everyone)
        ]
        return RoundReport(
            server_round,
            accuracy,
            loss,
            clients=clients,
            extra=extra,
            failure=stop,  # the swarm cannot go on with fewer peers
            contributors=len(replies),
        )

    def consensus(self, grid: Grid, ctx: RunContext, live: list[int]) -> float | None:
        """Mean distance of the live peers' models from their average, by a CKKS secure
        sum: the relay adds ciphertexts it cannot read; each peer decrypts the sum."""
        assert self.adder is not None
        if len(live) < 2:
            return None
        replies = self.send(grid, ctx, "query.consensus", {p: RecordDict() for p in live})
        records = {}
        for party, reply in replies.items():
            record = reply.content.array_records.get("model")
            reason = "no model" if record is None else self.adder.check(record, 1)
            if record is None or reason:
                ctx.exchange.reject(reply, f"peer {party}, consensus: {reason}")
                continue
            records[party] = record
        total, bad = self.adder.combine(records, 1) if records else (None, {})
        for party, reason in bad.items():
            ctx.exchange.reject(replies[party], f"peer {party}, consensus: {reason}")
        if total is None:
            return None
        count = ConfigRecord({"count": len(records)})
        answers = self.send(
            grid,
            ctx,
            "query.distance",
            {p: RecordDict({"model-sum": total, CONFIG: count}) for p in records},
        )
        distances = [metric(r, "consensus-distance") for r in answers.values()]
        return float(np.mean(distances)) if distances else None

    def weights(self, party: int, senders: set[int]) -> ConfigRecord:
        """Gossip weights for the payloads a peer receives; absent senders' share goes to self."""
        row = self.mixing[party]
        weights = {j: row.get(j, 0.0) for j in senders}
        weights[party] = 1.0 - sum(weights.values())
        return ConfigRecord({str(j): w for j, w in weights.items()})

    def check_outbox(self, reply: Message, recipients: set[int]) -> str | None:
        """Why a peer's sealed payloads are malformed (None: they are not)."""
        outbox = reply.content.array_records.get(OUTBOX)
        if outbox is None:
            return "no outbox"
        names = {f"to-{r}" for r in recipients}
        if set(outbox) != names:
            return f"seals for {sorted(outbox)}, expected {sorted(names)}"
        for name, array in outbox.items():
            shape = tuple(array.shape)
            if array.dtype != "uint8" or shape != (self.payload_bytes,):
                return f"{name} is {array.dtype} {shape}, expected uint8 ({self.payload_bytes},)"
        return None

    def lead(
        self,
        grid: Grid,
        ctx: RunContext,
        sync: int,
        leader: int,
        replies: Mapping[int, Message],
        masked: Mapping[str, ArrayRecord] | None = None,
    ) -> dict[str, float] | None:
        """Hand the leader every sealed model (or, ``masked``, every masked ciphertext
        and the masks' correction); keep its sealed merge for every peer."""
        inbox = {
            entry(p, f"r{sync}"): reply.content.array_records[OUTBOX][f"to-{leader}"]
            for p, reply in replies.items()
            if p != leader and masked is None
        }
        recipients = sorted(set(self.parties.nodes) - {leader})
        content = RecordDict(
            {
                CONFIG: ConfigRecord({"round": sync, "to": recipients}),
                INBOX: ArrayRecord(inbox),
                KEYS: self.keys_for(set(self.parties.nodes)),
                "sizes": ConfigRecord({str(p): self.sizes[p] for p in replies}),
                **(masked or {}),
            }
        )
        answer = self.send(grid, ctx, "query.lead", {leader: content}).get(leader)
        if answer is None:
            return None
        for name, array in answer.content.array_records[OUTBOX].items():
            self.mailbox[int(name[3:])] = {entry(leader, f"merged{sync:06d}"): array}
        return {
            "accuracy": metric(answer, "accuracy"),
            "loss": metric(answer, "loss"),
            "merged_from": metric(answer, "merged-from"),
        }

    def lead_masked(
        self, grid: Grid, ctx: RunContext, sync: int, leader: int, replies: Mapping[int, Message]
    ) -> tuple[dict[str, float] | None, str | None]:
        """The masked merge: unmask with the survivors' shares, then let the leader sum
        their ciphertexts. With fewer survivors than the threshold nothing is revealed
        and the run stops (the merge, and so the swarm, cannot go on), with the reason."""
        assert self.masked is not None
        correction, refusal = self.masked.correction(sync, list(replies.values()))
        if correction is None:
            return None, f"sync {sync}: crypto=ckks_secagg cannot merge: {refusal}"
        survivors = {p: replies[p] for p in sorted(replies)}
        merged = self.lead(
            grid, ctx, sync, leader, survivors, self.masked.lead_records(survivors, correction)
        )
        return merged, None


def masks_models(config: ExperimentConfig) -> bool:
    """Whether the peers send the leader masked, encrypted models (crypto=ckks_secagg)."""
    return bool(getattr(config.crypto, "masks_updates", False))


def crypto_problems(config: ExperimentConfig, swarm: SwarmSettings) -> list[str]:
    """Why a swarm cannot run the config's crypto (gossip and DiNNO: the strategies say)."""
    crypto = config.crypto.name
    if crypto == "none" or not isinstance(config.strategy, Leader):
        return []
    out = []
    if not masks_models(config):
        out.append(
            f"crypto={crypto} is not available with family=swarm: every peer would hold the "
            "one key, so a leader could read each model it merges; use crypto=ckks_secagg "
            "with strategy=leader (pairwise masks: the leader reads only the merge)"
        )
    rule = config.strategy.merge_rule()
    if not rule.linear:
        out.append(
            f"strategy.merge={rule.name} needs each peer's plaintext model; under "
            f"crypto={crypto} the leader sums masked ciphertexts: use strategy.merge=mean "
            "or weighted_mean"
        )
    if swarm.consensus:
        out.append(
            f"swarm.consensus=true with crypto={crypto}: the consensus measurement encrypts "
            "each peer's model, unmasked, under one key every peer holds, so the relay and "
            "one peer could read it; set swarm.consensus=false"
        )
    return out
