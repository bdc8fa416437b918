"""Node side of a swarm: every peer trains, merges with others, and seals what it sends.

Messages (the relay's side is :mod:`strategies.swarm.family`):

* ``query.keys`` -- make an X25519 key pair (the private half stays in
  ``context.state``; on a fleet, the pair is the bundle's, every peer's public half
  pinned there) and publish the public half and the example count.
* ``train.swarm`` -- open the sealed models addressed to this peer (neighbours' models
  with ``strategy=gossip``/``dinno``, the last merged model with ``leader``), merge, train
  locally, evaluate, and seal the new model for each recipient the relay names.
* ``query.lead`` -- the elected leader opens every peer's model, merges them
  (``strategy.merge``, a rule of :data:`fedpriv.merge.MERGE_RULES`), evaluates the merge
  and seals it for every peer.

Under ``crypto=ckks_secagg`` (leader mode only) a peer seals nothing for the leader: it
leaves its pre-weighted model under ``contribution``, which a mod masks and encrypts
(:mod:`fedpriv.crypto.secagg_peers`), and the leader's handler receives the unmasked sum
of the peers' models, never one of them.

Models travel as sealed float32 vectors (ChaCha20-Poly1305, a key per pair of peers);
the relay sees ciphertexts, sizes and who talks to whom.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedpriv.config import ExperimentConfig
from fedpriv.crypto import peers
from fedpriv.crypto.party_keys import peer_keys
from fedpriv.crypto.records import Layout
from fedpriv.crypto.secagg_peers import CONTRIBUTION, contribution, plain_sum
from fedpriv.node import node_bundle, partition_id
from fedpriv.privacy.accounting import planned_steps
from fedpriv.runtime import node_store
from fedpriv.runtime.models import evaluate_arrays, fresh_model
from fedpriv.strategies.swarm.settings import DiNNO, Leader, swarm_strategy
from fedpriv.training import seed_for

KEY, MODEL, DUAL, MERGED = "swarm.key", "swarm.model", "swarm.dual", "swarm.merged"
#: What a peer keeps on its own device to resume from (never sent to the relay).
PRIVATE = [MODEL, DUAL, MERGED]
INBOX, OUTBOX, KEYS, CONFIG, METRICS = "inbox", "outbox", "keys", "config", "metrics"


def entry(sender: int, label: str) -> str:
    """Inbox name of a payload: who sealed it and under which label."""
    return f"from-{sender}-{label}"


def parse_entry(name: str) -> tuple[int, str]:
    _, sender, label = name.split("-", 2)
    return int(sender), label


@dataclasses.dataclass
class Sealed:
    """What a peer holds while handling one message."""

    party: int
    private: bytes
    keys: dict[int, bytes]


class SwarmPeer:
    """The handlers every swarm node registers (picklable: config and layout only)."""

    def __init__(self, config: ExperimentConfig, layout: Layout, initial: np.ndarray) -> None:
        self.config = config
        self.strategy = swarm_strategy(config)
        self.layout = layout
        self.initial = initial
        #: Leader mode under crypto=ckks_secagg: models go to the leader masked.
        self.masked = bool(getattr(config.crypto, "masks_updates", False))

    # -- state ---------------------------------------------------------------------
    def data(self, context: Context) -> tuple[int, np.ndarray, np.ndarray]:
        party = partition_id(context)
        x, y = self.config.federated_data().client(party)
        return party, x, y

    def model_vector(self, context: Context) -> np.ndarray:
        record = context.state.array_records.get(MODEL)
        return (
            self.initial.copy() if record is None else record["values"].numpy().astype(np.float64)
        )

    def keep(self, context: Context, vector: np.ndarray) -> None:
        context.state[MODEL] = ArrayRecord({"values": Array(vector.astype(np.float32))})

    def remember(self, context: Context, sync: int) -> None:
        """On a device with a state directory, its model (and duals, merge marker) as
        they are after ``sync``, to resume from; the relay never sees them."""
        node_store.save_private(context, sync, PRIVATE, self.config.checkpoint_every)

    def sealing(self, msg: Message, context: Context, party: int) -> Sealed:
        """This peer's private key and the peers' public keys for this message. On a
        fleet both come from the peer's bundle, and a key the relay offers that differs
        from the pinned one is refused; in simulation the relay distributes them."""
        record = msg.content.config_records.get(KEYS, ConfigRecord())
        offered = {int(k): bytes(v) for k, v in record.items()}  # type: ignore[arg-type]
        if self.config.engine.keys_provisioned:
            pinned = peer_keys(node_bundle(context))
            pinned.check(offered)
            return Sealed(party, pinned.private, pinned.pinned)
        private = bytes(context.state.config_records[KEY]["private"])  # type: ignore[arg-type]
        return Sealed(party, private, offered)

    def open_inbox(
        self, msg: Message, seal: Sealed, accept: Callable[[str], bool]
    ) -> dict[int, np.ndarray]:
        """Every payload addressed to this peer, opened. The label (bound into the AEAD)
        must be one ``accept`` expects for this sync, so a relay cannot replay an old
        payload under its old label; a forgery raises."""
        out = {}
        for name, array in msg.content.array_records.get(INBOX, ArrayRecord()).items():
            sender, label = parse_entry(name)
            if not accept(label):
                raise ValueError(f"payload from peer {sender} labelled {label!r} is not for now")
            plain = peers.open_sealed(
                array.numpy().tobytes(), seal.private, seal.keys[sender], sender, seal.party, label
            )
            vector = np.frombuffer(plain, np.float32).astype(np.float64)
            if vector.shape != self.initial.shape or not np.isfinite(vector).all():
                raise ValueError(
                    f"model from peer {sender} has the wrong size or non-finite values"
                )
            out[sender] = vector
        return out

    def seal_for(
        self, vector: np.ndarray, seal: Sealed, recipients: Sequence[int], label: str
    ) -> ArrayRecord:
        payload = vector.astype(np.float32).tobytes()
        return ArrayRecord(
            {
                f"to-{r}": Array(
                    np.frombuffer(
                        peers.seal(payload, seal.private, seal.keys[r], seal.party, r, label),
                        np.uint8,
                    ).copy()
                )
                for r in recipients
            }
        )

    def module(self, vector: np.ndarray) -> torch.nn.Module:
        model = fresh_model(self.config, self.config.federated_data().dataset)
        model.load_state_dict(self.layout.unflatten(vector).to_torch_state_dict())
        return model

    def score(self, vector: np.ndarray) -> dict[str, float]:
        data = self.config.federated_data()
        return evaluate_arrays(self.config, data, self.layout.unflatten(vector))

    # -- handlers -----------------------------------------------------------------------
    def keys(self, msg: Message, context: Context) -> Message:
        """Publish this peer's key; in a resumed run, first take back its own state after
        the round the relay's checkpoint follows."""
        party, _, y = self.data(context)
        if (after := node_store.resume_after(msg)) > 0:
            node_store.load_private(context, after)
        if self.config.engine.keys_provisioned:  # a fleet: this peer's key from its bundle
            private = peer_keys(node_bundle(context)).private
        else:
            private = peers.new_private_key()
            context.state[KEY] = ConfigRecord({"private": private})
        content = RecordDict(
            {
                KEYS: ConfigRecord({"public": peers.public_key(private)}),
                METRICS: MetricRecord(
                    {"party": party, "partition-id": party, "num-examples": len(y)}
                ),
            }
        )
        return Message(content=content, reply_to=msg)

    def sync(self, msg: Message, context: Context) -> Message:
        """One sync of this peer: merge what arrived, train, evaluate, seal."""
        strategy, cfg = self.strategy, self.config
        party, x, y = self.data(context)
        seal = self.sealing(msg, context, party)
        settings = msg.content.config_records[CONFIG]
        sync = int(settings["round"])  # type: ignore[arg-type]
        last = int(context.state.config_records.get(MERGED, ConfigRecord({"sync": 0}))["sync"])  # type: ignore[arg-type]
        received = self.open_inbox(msg, seal, lambda label: strategy.accepts(label, sync, last))
        live = [int(p) for p in settings["live"]]  # type: ignore[union-attr]
        expected = strategy.leader(live, sync, cfg.seed)
        named = int(settings["leader"])  # type: ignore[arg-type]
        if expected is not None and named != expected:
            raise ValueError(f"sync {sync}: relay names leader {named}, election gives {expected}")
        weights = msg.content.config_records.get("weights", ConfigRecord())
        vector = strategy.combine(
            party,
            self.model_vector(context),
            received,
            {int(k): float(v) for k, v in weights.items()},  # type: ignore[arg-type]
        )
        if expected is not None and received:  # the merge adopted; older ones are refused
            (name,) = msg.content.array_records[INBOX]
            context.state[MERGED] = ConfigRecord({"sync": int(parse_entry(name)[1][6:])})
        model = self.module(vector)
        train = dataclasses.replace(cfg.train, local_epochs=strategy.local_epochs(cfg, sync))
        after_step = (
            self.dinno_pull(context, model, vector, received)
            if isinstance(strategy, DiNNO)
            else None
        )
        stats, privacy_metrics = cfg.privacy.train(
            model,
            x,
            y,
            train,
            seed=seed_for(cfg.seed, sync, party),
            planned_steps=planned_steps(cfg, len(y)),
            after_step=after_step,
        )
        vector = self.layout.flatten(ArrayRecord(model.state_dict()))
        self.keep(context, vector)
        recipients = [int(r) for r in settings["to"]]  # type: ignore[union-attr]
        outbox = self.seal_for(vector, seal, recipients, f"r{sync}")
        self.remember(context, sync)
        records = {OUTBOX: outbox}
        if self.masked and isinstance(strategy, Leader):
            records[CONTRIBUTION] = contribution(self.weight(strategy, len(y)) * vector)
        metrics = MetricRecord(
            {
                "party": party,
                "partition-id": party,
                "num-examples": len(y),
                "train-loss": stats.loss,
                "steps": stats.steps,
                "train-gpu": int(stats.on_gpu),
                **{f"test-{k}": v for k, v in self.score(vector).items()},
                **privacy_metrics,
            }
        )
        return Message(content=RecordDict({**records, METRICS: metrics}), reply_to=msg)

    @staticmethod
    def weight(strategy: Leader, examples: int) -> float:
        """A peer's weight in the leader's merge: its example count if the rule weighs."""
        return float(examples) if strategy.merge_rule().weighted else 1.0

    def dinno_pull(
        self,
        context: Context,
        model: torch.nn.Module,
        start: np.ndarray,
        received: dict[int, np.ndarray],
    ):
        """DiNNO: update the dual with the disagreement with neighbours, then return the
        primal step's data-independent part: p ← p − lr·(λ + 2ρ·Σ_j (p − (θ_i+θ_j)/2))."""
        s = self.strategy
        assert isinstance(s, DiNNO), "DiNNO's primal step only"
        record = context.state.array_records.get(DUAL)
        dual = (
            np.zeros_like(start) if record is None else record["values"].numpy().astype(np.float64)
        )
        if not received:
            return None
        dual = dual + s.rho * sum(start - theta for theta in received.values())
        context.state[DUAL] = ArrayRecord({"values": Array(dual.astype(np.float32))})
        anchor = np.mean([(start + theta) / 2 for theta in received.values()], axis=0)
        lr, weight = self.config.train.lr, 2 * s.rho * len(received)
        targets = self.layout.unflatten(anchor).to_torch_state_dict()
        duals = self.layout.unflatten(dual).to_torch_state_dict()
        pairs = [(p, targets[n].float(), duals[n].float()) for n, p in model.named_parameters()]

        def pull() -> None:
            with torch.no_grad():
                for i, (param, target, lam) in enumerate(pairs):
                    if target.device != param.device:  # training moved the model (a GPU)
                        target, lam = target.to(param.device), lam.to(param.device)
                        pairs[i] = (param, target, lam)
                    param.sub_(lr * (lam + weight * (param - target)))

        return pull

    def lead(self, msg: Message, context: Context) -> Message:
        """The leader's merge: open every peer's model, merge, evaluate, seal for all."""
        if not isinstance(self.strategy, Leader):
            raise ValueError(f"query.lead sent to a peer of strategy={self.strategy.name}")
        party, _, _ = self.data(context)
        seal = self.sealing(msg, context, party)
        settings = msg.content.config_records[CONFIG]
        sync = int(settings["round"])  # type: ignore[arg-type]
        sizes = {int(k): int(v) for k, v in msg.content.config_records["sizes"].items()}  # type: ignore[arg-type]
        rule = self.strategy.merge_rule()
        total = plain_sum(msg)
        if total is not None:  # masked: the sum of the peers in ``sizes``, no one model
            count = sum(self.weight(self.strategy, n) for n in sizes.values())
            merged, merged_from = rule.from_sum(total, count), len(sizes)
        else:
            received = self.open_inbox(msg, seal, lambda label: label == f"r{sync}")
            received[party] = self.model_vector(context)  # the leader's own, trained this sync
            merged = rule.numpy(
                np.stack([received[p] for p in sorted(received)]),
                [sizes[p] for p in sorted(received)],
            )
            merged_from = len(received)
        self.keep(context, merged)
        self.remember(context, sync)
        recipients = [int(r) for r in settings["to"]]  # type: ignore[union-attr]
        outbox = self.seal_for(merged, seal, recipients, f"merged{sync:06d}")
        scores = self.score(merged)
        metrics = MetricRecord({"party": party, "merged-from": merged_from, **scores})
        return Message(content=RecordDict({OUTBOX: outbox, METRICS: metrics}), reply_to=msg)

    def consensus(self, msg: Message, context: Context) -> Message:
        """This peer's model, for the secure sum (a mod encrypts it on the way out)."""
        party = partition_id(context)
        vector = self.model_vector(context).astype(np.float32).reshape(1, -1)
        content = RecordDict(
            {
                "model": ArrayRecord({"values": Array(vector)}),
                METRICS: MetricRecord({"party": party}),
            }
        )
        return Message(content=content, reply_to=msg)

    def distance(self, msg: Message, context: Context) -> Message:
        """Distance of this peer's model from the average (the sum arrives decrypted)."""
        party = partition_id(context)
        count = int(msg.content.config_records[CONFIG]["count"])  # type: ignore[arg-type]
        total = msg.content.array_records["model-sum"]["values"].numpy().astype(np.float64).ravel()
        gap = float(np.linalg.norm(self.model_vector(context) - total / count))
        metrics = MetricRecord({"party": party, "consensus-distance": gap})
        return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)

    def handlers(self) -> dict[str, object]:
        return {
            "query.keys": self.keys,
            "train.swarm": self.sync,
            "query.lead": self.lead,
            "query.consensus": self.consensus,
            "query.distance": self.distance,
        }
