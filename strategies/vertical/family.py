"""The vertical family: parties hold different features of the same entities.

The coordinator (the ServerApp) holds no data and no model. It aligns the parties'
entities (private set intersection, or plain IDs), then runs one epoch per round:
for each mini-batch, every party embeds its features (``train.step``), the coordinator
relays the embeddings -- or, under CKKS, their encrypted sum -- to the label owner,
which runs the top model and the loss (``train.top``) and returns gradients that the
next ``train.step`` delivers. After each epoch the test entities are embedded and
scored the same way. A party that fails or goes silent stops the run with the reason;
a malformed embedding is rejected and its batch skipped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedpriv.compatibility import NO_ADVERSARIES_YET
from fedpriv.config import ExperimentConfig
from fedpriv.crypto import party_keys, psi
from fedpriv.crypto.ckks import SplitKeys
from fedpriv.crypto.embeddings import CkksEmbeddingSum
from fedpriv.data.vertical import LABEL_OWNER, vertical_tables
from fedpriv.errors import ConfigError, SimulationError
from fedpriv.records import metric
from fedpriv.runtime import node_store
from fedpriv.runtime.parties import Parties, PartyFailure
from fedpriv.strategies.base import Handler, RoundReport, RunContext, Setup, Strategy
from fedpriv.strategies.vertical.model import build_bottom, build_top, epoch_batches
from fedpriv.strategies.vertical.party import (
    BATCH,
    EMBEDDING,
    GRADIENTS,
    POINTS,
    SUM,
    VerticalParty,
    embedding_of,
    one_array,
    values,
)
from fedpriv.strategies.vertical.settings import (
    LINEAR_MERGES,
    VERTICAL_STRATEGIES,
    VerticalSettings,
    outdated,
    split_model,
    vertical_settings,
)

#: Message types whose replies carry an embedding, and those delivering merged ones.
EMBEDS = {"train.step": EMBEDDING, "evaluate.embed": EMBEDDING}
MERGED = {"train.top": SUM, "evaluate.top": SUM}


class PlainRelay:
    """Plaintext embeddings: checked, then forwarded one per party to the label owner."""

    def __init__(self, width: int) -> None:
        self.width = width

    def check(self, record: ArrayRecord, rows: int) -> str | None:
        if len(record) != 1:
            return f"expected one array, got {len(record)}"
        array = next(iter(record.values()))
        if tuple(array.shape) != (rows, self.width) or array.dtype != "float32":
            return (
                f"embedding has shape {tuple(array.shape)} {array.dtype}; expected "
                f"({rows}, {self.width}) float32"
            )
        if not np.isfinite(array.numpy()).all():
            return "embedding has NaN or infinite values"
        return None

    def combine(
        self, records: Mapping[int, ArrayRecord], rows: int
    ) -> tuple[dict[str, ArrayRecord], dict[int, str]]:
        return {embedding_of(p): record for p, record in records.items()}, {}


class SumRelay:
    """Encrypted embeddings: the coordinator adds them; the label owner gets the sum."""

    def __init__(self, adder: CkksEmbeddingSum) -> None:
        self.adder = adder
        self.check = adder.check
        self.ciphertext_bytes = self.plaintext_bytes = 0

    def combine(
        self, records: Mapping[int, ArrayRecord], rows: int
    ) -> tuple[dict[str, ArrayRecord], dict[int, str]]:
        for record in records.values():
            self.ciphertext_bytes += sum(len(a.data) for a in record.values())
            self.plaintext_bytes += 4 * rows * self.adder.width  # float32 embeddings
        total, bad = self.adder.combine(records, rows)
        return ({} if total is None else {SUM: total}), bad

    def costs(self) -> dict[str, Any]:
        """This epoch's encryption costs (``crypto`` in the round record), then reset."""
        out = {
            "encryption": "public-key (parties encrypt, only the label owner decrypts); "
            "coordinator holds parameters only",
            "ciphertext_bytes_up": self.ciphertext_bytes,
            "plaintext_bytes_up": self.plaintext_bytes,
            "aggregate_seconds": self.adder.seconds,
            "max_abs_error": None,
        }
        self.ciphertext_bytes = self.plaintext_bytes = 0
        self.adder.seconds = 0.0
        return out


#: Why neither DP mode is offered for split learning.
NO_DP_ACCOUNTING = (
    "DP-SGD accounting assumes one model per client; protect embeddings and gradients "
    "with vertical.embedding_noise / vertical.gradient_noise (no ε is claimed)"
)


class Vertical(Strategy):
    """Split learning over privately aligned entities (``family=vertical``)."""

    family = "vertical"
    strategies = VERTICAL_STRATEGIES
    settings = VerticalSettings
    settings_key = "vertical"
    resumable = True
    device_models = True
    unsupported: ClassVar[Mapping[str, str]] = {
        "dp_sgd": NO_DP_ACCOUNTING,
        "central_dp": NO_DP_ACCOUNTING,
        "adversary": NO_ADVERSARIES_YET,
        "feature_partition": "vertical.split already gives each party its own features: "
        "leave partition at its default and set vertical.split",
        "gpu": "its parties train on the CPU (their models are small and every batch's "
        "embeddings cross the network): set train.device=auto or cpu",
    }

    def __init__(self, config: ExperimentConfig) -> None:
        super().__init__(config)
        self.vertical = vertical_settings(config)
        self.split = split_model(config)
        self.parties = Parties(self.vertical.parties)
        self.train_count = self.test_count = 0
        self.alignment: dict[str, Any] = {}
        self.psi_seconds: list[float] = []
        self.relay: PlainRelay | SumRelay = PlainRelay(self.split.embedding_dim)

    @classmethod
    def outdated(cls, mapping: Mapping[str, Any]) -> list[str]:
        return outdated(mapping)

    def checkpoint_state(self) -> dict[str, Any] | None:
        """Nothing of the coordinator's: a resumed run aligns the entities again, and
        every model stays on its party's device (:meth:`VerticalParty.embed`)."""
        return {} if self.can_resume else None

    def restore_state(self, state: dict[str, Any] | None) -> None:
        """Nothing to take back (see :meth:`checkpoint_state`)."""

    @classmethod
    def config_problems(cls, config: ExperimentConfig) -> list[str]:
        s = vertical_settings(config)
        out = []
        if config.num_clients != s.parties:
            out.append(
                f"num_clients={config.num_clients} must equal vertical.parties={s.parties} "
                "(one node per party)"
            )
        split = split_model(config)
        if config.crypto.name != "none" and not split.merge_rule().linear:
            out.append(
                f"crypto={config.crypto.name} needs strategy.merge={' or '.join(LINEAR_MERGES)} "
                f"(the coordinator can only add ciphertexts); got strategy.merge={split.merge}"
            )
        return out

    # -- before the engine starts --------------------------------------------------------
    def prepare(self) -> Setup:
        """Check the split and the models on the data; make the keys."""
        cfg, s = self.config, self.vertical
        dataset, tables = vertical_tables(
            cfg.data, s.parties, s.split, s.columns, s.overlap, cfg.seed
        )
        for table in tables:
            try:
                build_bottom(cfg, table.party, table.input_shape)
            except ValueError as error:
                raise ConfigError(f"party {table.party}'s bottom model: {error}") from error
        build_top(cfg, dataset.num_classes)
        clients = {
            "num_clients": s.parties,
            "label_owner": LABEL_OWNER,
            "features": [list(t.input_shape) for t in tables],
            "entities": [len(t.ids) for t in tables],
            "test_examples": len(dataset.y_test),
        }
        if cfg.engine.keys_provisioned:  # a fleet: the coordinator reads its own file only
            if cfg.crypto.name == "none":
                return Setup(clients=clients)
            directory = str(getattr(cfg.crypto, "keys_dir", None))
            server_key = party_keys.vertical_server_key(directory, cfg.crypto.params)  # type: ignore[attr-defined]
            return Setup(clients=clients, server_key=server_key)
        keys = cfg.crypto.split_keys()
        mods = self.embedding_mods(keys)
        return Setup(clients=clients, client_mods=mods, server_key=keys.evaluate if keys else None)

    def embedding_mods(self, keys: SplitKeys | None) -> list[Any]:
        """The mods that encrypt each party's embeddings and, at the label owner alone,
        decrypt their sum."""
        return self.config.crypto.embedding_mods(
            keys,
            label_owner=LABEL_OWNER,
            width=self.split.embedding_dim,
            encrypt=EMBEDS,
            decrypt=MERGED,
        )

    def node_mods(self, bundle: str | None) -> list[Any]:
        """A party's keys from its own bundle: the public key, and the secret key at the
        label owner only (device-0's bundle)."""
        crypto = self.config.crypto
        if crypto.name == "none":
            return []
        if bundle is None:
            raise ConfigError(
                f"crypto={crypto.name} on a fleet: each party reads its keys from its bundle; "
                "start the SuperNode with its keys directory (fedpriv supernode <dir>/device-<k>)"
            )
        party = party_keys.bundle_party(bundle)
        keys = party_keys.vertical_node_keys(bundle, party, crypto.params)  # type: ignore[attr-defined]
        return self.embedding_mods(keys)

    def client_handlers(self) -> Mapping[str, Handler]:
        return VerticalParty(self.config).handlers()  # type: ignore[return-value]

    # -- alignment -----------------------------------------------------------------------
    def start(self, grid: Grid, ctx: RunContext) -> None:
        started = time.perf_counter()
        try:
            members = self.psi(grid, ctx) if self.vertical.psi else self.plain_ids(grid, ctx)
            contents = {p: RecordDict({"members": one_array(m)}) for p, m in members.items()}
            if ctx.checkpoint is not None:  # each party then takes back its own models
                for content in contents.values():
                    content["config"] = ConfigRecord(
                        {node_store.RESUME_AFTER: ctx.checkpoint.round}
                    )
            replies = self.parties.send(grid, ctx, "query.align", contents)
        except PartyFailure as failure:
            raise SimulationError(f"entity alignment failed: {failure}") from None
        counts = {(int(metric(r, "train")), int(metric(r, "test"))) for r in replies.values()}
        if len(counts) != 1:
            raise SimulationError(f"parties disagree on the aligned entities: {sorted(counts)}")
        self.train_count, self.test_count = counts.pop()
        if self.train_count == 0 or self.test_count == 0:
            raise SimulationError(
                f"the parties share {self.train_count} training and {self.test_count} test "
                "entities; nothing to train or evaluate on (raise vertical.overlap)"
            )
        self.alignment = {
            "method": "psi-ed25519" if self.vertical.psi else "plain-ids",
            "train_entities": self.train_count,
            "test_entities": self.test_count,
            "seconds": time.perf_counter() - started,  # includes starting the ClientApps
            "party_mask_seconds": self.psi_seconds,
            "bytes": self.parties.traffic(ctx).total,
        }
        ctx.out.write_json("alignment.json", self.alignment)
        adder = self.config.crypto.embedding_sum(ctx.server_key, self.split.embedding_dim)
        if adder is not None:
            self.relay = SumRelay(adder)

    def plain_ids(self, grid: Grid, ctx: RunContext) -> dict[int, np.ndarray]:
        """Without PSI: every party sends its IDs and the coordinator intersects them."""
        replies = self.parties.first_contact(grid, ctx, "query.ids")
        sets = [list(replies[p].content["ids"]["ids"]) for p in range(self.vertical.parties)]  # type: ignore[arg-type]
        return dict(enumerate(psi.align(sets)))

    def psi(self, grid: Grid, ctx: RunContext) -> dict[int, np.ndarray]:
        """Ring ECDH-PSI: each party masks its IDs, every other party re-masks them in
        turn, and the coordinator intersects the fully masked sets."""
        m = self.vertical.parties
        mask = RecordDict({"config": ConfigRecord({"step": "mask"})})
        replies = self.parties.first_contact(grid, ctx, "query.psi", mask)
        points = {p: values(replies[p].content.array_records[POINTS]) for p in range(m)}
        work = {p: metric(replies[p], "seconds") for p in range(m)}
        for hop in range(1, m):
            contents = {
                (owner + hop) % m: RecordDict(
                    {"config": ConfigRecord({"step": "remask"}), POINTS: one_array(points[owner])}
                )
                for owner in range(m)
            }
            answers = self.parties.send(grid, ctx, "query.psi", contents)
            for party, answer in answers.items():
                work[party] += metric(answer, "seconds")
            points = {
                owner: values(answers[(owner + hop) % m].content.array_records[POINTS])
                for owner in range(m)
            }
        self.psi_seconds = [work[p] for p in range(m)]
        return dict(enumerate(psi.align([psi.as_elements(points[p]) for p in range(m)])))

    # -- one epoch -------------------------------------------------------------------------
    def round(self, server_round: int, grid: Grid, ctx: RunContext) -> RoundReport:
        s = self.vertical
        batches = epoch_batches(
            self.train_count, self.config.train.batch_size, self.config.seed, server_round
        )
        totals = {"loss-sum": 0.0, "correct": 0.0, "count": 0.0}
        skipped, noise, gradient_noise = 0, [], []
        pending: dict[int, RecordDict] = {}
        try:
            for index, batch in enumerate([*batches, None]):
                step = (server_round - 1) * len(batches) + index
                contents = {}
                for party in range(s.parties):
                    content = RecordDict({"config": ConfigRecord({"step": step})})
                    if party in pending:
                        content[GRADIENTS] = pending[party][GRADIENTS]
                    if batch is not None:
                        content[BATCH] = one_array(batch.astype(np.int64))
                    contents[party] = content
                replies = self.parties.send(grid, ctx, "train.step", contents)
                pending = {}
                if batch is None:
                    break
                noise += [metric(r, "noise-ratio") for r in replies.values()]
                merged = self.merge(ctx, replies, len(batch), f"batch {index}")
                if merged is None:
                    skipped += 1
                    continue
                top = RecordDict(
                    {
                        "config": ConfigRecord({"step": step}),
                        BATCH: one_array(batch.astype(np.int64)),
                        **merged,
                    }
                )
                reply = self.parties.send(grid, ctx, "train.top", {LABEL_OWNER: top})[LABEL_OWNER]
                for key in totals:
                    totals[key] += metric(reply, key)
                gradient_noise.append(metric(reply, "noise-ratio"))
                gradients = reply.content.array_records[GRADIENTS]
                for party in range(s.parties):
                    gradient = (
                        gradients["sum"] if "sum" in gradients else gradients[f"party-{party}"]
                    )
                    pending[party] = RecordDict(
                        {
                            GRADIENTS: ArrayRecord(
                                {"gradient": gradient, "batch": Array(batch.astype(np.int64))}
                            )
                        }
                    )
            evaluation = self.evaluate(grid, ctx, server_round)
        except PartyFailure as failure:
            return RoundReport(
                server_round, clients=self.party_entries(ctx), failure=str(failure), contributors=0
            )
        count = max(totals["count"], 1)
        extra: dict[str, Any] = {
            "vertical": {
                "train_loss": totals["loss-sum"] / count,
                "train_accuracy": totals["correct"] / count,
                "batches": len(batches),
                "skipped_batches": skipped,
                "merge": self.split.merge,
                "embedding_noise": s.embedding_noise,
                "gradient_noise": s.gradient_noise,
                "embedding_noise_ratio": float(np.mean(noise)) if noise else 0.0,
                "gradient_noise_ratio": float(np.mean(gradient_noise)) if gradient_noise else 0.0,
            }
        }
        if server_round == 1:
            extra["alignment"] = self.alignment
        if isinstance(self.relay, SumRelay):
            extra["crypto"] = self.relay.costs()
        return RoundReport(
            server_round,
            accuracy=evaluation["accuracy"],
            loss=evaluation["loss"],
            clients=self.party_entries(ctx),
            extra=extra,
            contributors=s.parties if skipped < len(batches) else 0,
        )

    def merge(
        self, ctx: RunContext, replies: Mapping[int, Message], rows: int, what: str
    ) -> dict[str, ArrayRecord] | None:
        """Checked embeddings combined for the label owner; None if any was rejected."""
        records: dict[int, ArrayRecord] = {}
        for party, reply in replies.items():
            record = reply.content.array_records.get(EMBEDDING)
            reason = (
                "no embedding in the reply" if record is None else self.relay.check(record, rows)
            )
            if record is None or reason is not None:
                ctx.exchange.reject(reply, f"party {party}, {what}: {reason}")
                return None
            records[party] = record
        combined, bad = self.relay.combine(records, rows)
        for party, reason in bad.items():
            ctx.exchange.reject(replies[party], f"party {party}, {what}: {reason}")
        return None if bad else combined

    def evaluate(self, grid: Grid, ctx: RunContext, server_round: int) -> dict[str, float | None]:
        """Embed the test entities at every party (each keeps its models as they are
        after ``server_round``); the label owner scores them."""
        replies = self.parties.send(
            grid,
            ctx,
            "evaluate.embed",
            {
                p: RecordDict({"config": ConfigRecord({"round": server_round})})
                for p in range(self.vertical.parties)
            },
        )
        merged = self.merge(ctx, replies, self.test_count, "evaluation")
        if merged is None:
            return {"accuracy": None, "loss": None}
        top = {LABEL_OWNER: RecordDict(dict(merged))}
        reply = self.parties.send(grid, ctx, "evaluate.top", top)[LABEL_OWNER]
        return {"accuracy": metric(reply, "accuracy"), "loss": metric(reply, "loss")}

    def party_entries(self, ctx: RunContext) -> list[dict[str, Any]]:
        """Each party's line in the round record: its node and bytes this epoch."""
        traffic = self.parties.traffic(ctx)
        return [
            {
                "party": p,
                "node_id": self.parties.nodes.get(p),
                "bytes_down": traffic.down[p],
                "bytes_up": traffic.up[p],
            }
            for p in range(self.vertical.parties)
        ]
