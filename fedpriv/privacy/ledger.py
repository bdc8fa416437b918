"""The privacy ledger: ε per client, composed over every round it trained.

On each client, :class:`PrivacyLedgerMod` (a Flower mod around the train handler)
keeps the Opacus accountant's history in ``context.state``, declines to train when the
next round would pass ``budget_epsilon``, and adds the client's ε to its reply. On the
server, :class:`ServerLedger` collects those ε values and counts central-DP releases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedpriv.node import partition_id
from fedpriv.privacy.accounting import (
    EXACT_GAUSSIAN,
    History,
    compose,
    epsilon,
    load_history,
    planned_steps,
    sample_rate,
    save_history,
)
from fedpriv.privacy.dp_sgd import EVIDENCE
from fedpriv.telemetry.probes import TELEMETRY_KEYS

log = logging.getLogger("fedpriv")

DECLINED = "declined"
#: What a train reply's metrics may carry under DP-SGD (docs/privacy.md lists each):
#: counts and settings that follow from the client's dataset size (public in fedpriv's
#: DP model, as in Opacus': q and δ derive from it), the accounting itself, the model's
#: score on the public test split (post-processing), timings, where training ran and
#: device telemetry.
#: Anything else, such as the loss and accuracy on the private batches, is withheld:
#: ε does not cover it.
RELEASED_UNDER_DP = frozenset(
    {
        "num-examples", "partition-id", "party", "steps", "rounds-trained", "train-seconds",
        "train-gpu", "work-seconds", *EVIDENCE, *TELEMETRY_KEYS,
    }
)  # fmt: skip
#: Keys with this prefix score the trained model on the public test split (swarm peers).
PUBLIC_SCORE_PREFIX = "test-"


def withhold_private_metrics(reply: Message) -> list[str]:
    """Drop every reply metric ε does not cover (see RELEASED_UNDER_DP); the names dropped."""
    dropped = []
    for metrics in reply.content.metric_records.values():
        for key in list(metrics):
            if key not in RELEASED_UNDER_DP and not key.startswith(PUBLIC_SCORE_PREFIX):
                del metrics[key]
                dropped.append(key)
    return dropped


class PrivacyLedgerMod:
    """Flower client mod: DP-SGD accounting and the per-client privacy budget."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def __call__(
        self, msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        if not msg.metadata.message_type.startswith("train"):
            return call_next(msg, context)
        cfg, dp = self.config, self.config.privacy.local_dp()
        data = cfg.federated_data()
        n = len(data.parts[partition_id(context)])
        delta = dp.delta_for(n)
        history = load_history(context)
        spent = epsilon(history, delta, dp.accountant)
        if dp.budget_epsilon is not None:
            rate = sample_rate(n, cfg.train.batch_size)
            steps = cfg.train.local_epochs * math.ceil(n / cfg.train.batch_size)
            sigma = dp.noise_for(n, cfg.train.batch_size, planned_steps(cfg, n))
            projected = epsilon(compose(history, (sigma, rate, steps)), delta, dp.accountant)
            if projected > dp.budget_epsilon:
                reason = (
                    f"privacy budget: the next round would spend ε={projected:.3f} > "
                    f"budget_epsilon={dp.budget_epsilon} (spent so far: ε={spent:.3f})"
                )
                content = RecordDict(
                    {
                        "metrics": MetricRecord(
                            {
                                DECLINED: 1,
                                "partition-id": partition_id(context),
                                "epsilon": spent,
                                "delta": delta,
                            }
                        ),
                        "privacy": ConfigRecord({"reason": reason}),
                    }
                )
                return Message(content=content, reply_to=msg)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        metrics = next(iter(reply.content.metric_records.values()))
        ran = (
            float(metrics["dp-noise-multiplier"]),  # type: ignore[arg-type]
            float(metrics["dp-sample-rate"]),  # type: ignore[arg-type]
            int(metrics["dp-steps"]),  # type: ignore[arg-type]
        )
        if ran[2] > 0:
            history = compose(history, ran)
            save_history(context, history)
        metrics["epsilon"] = epsilon(history, delta, dp.accountant)
        metrics["delta"] = delta
        if dropped := withhold_private_metrics(reply):
            log.debug("withheld under DP (not covered by ε): %s", ", ".join(sorted(dropped)))
        return reply


def declined_reason(reply: Message) -> str | None:
    """The reason a client gave for declining to train, or None if it did not decline."""
    if reply.has_error() or not reply.has_content():
        return None
    metrics = reply.content.metric_records.get("metrics")
    if metrics is None or not metrics.get(DECLINED):
        return None
    record = reply.content.config_records.get("privacy")
    return str(record["reason"]) if record is not None else "declined"


class ServerLedger:
    """What the server knows of privacy spent: clients' reported ε, and central releases."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.local = config.privacy.local_dp()
        self.central = config.privacy.central_dp()
        self.epsilon_per_client: dict[int, float] = {}
        self.delta_per_client: dict[int, float] = {}
        self.exhausted: set[int] = set()
        #: Central DP: each release's effective (σ, sampling rate 1, count), composed.
        self.central_history: History = []

    @property
    def enabled(self) -> bool:
        return self.local is not None or self.central is not None

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the ledger."""
        return {
            "epsilon_per_client": dict(self.epsilon_per_client),
            "delta_per_client": dict(self.delta_per_client),
            "exhausted": sorted(self.exhausted),
            "central_history": [list(entry) for entry in self.central_history],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.epsilon_per_client = dict(state["epsilon_per_client"])
        self.delta_per_client = dict(state["delta_per_client"])
        self.exhausted = set(state["exhausted"])
        self.central_history = [
            (float(s), float(q), int(n)) for s, q, n in state["central_history"]
        ]

    def client_reported(self, partition: int, metrics: Any) -> None:
        if "epsilon" in metrics:
            self.epsilon_per_client[partition] = float(metrics["epsilon"])
            self.delta_per_client[partition] = float(metrics["delta"])

    def declined(self, partition: int) -> None:
        self.exhausted.add(partition)

    @property
    def releases(self) -> int:
        """Central-DP aggregates released so far."""
        return sum(count for _, _, count in self.central_history)

    def released(self, noise_multiplier: float | None) -> None:
        """An aggregate was released with central-DP noise of this effective multiplier
        (None: the strategy added no central noise)."""
        if self.central is not None and noise_multiplier is not None:
            self.central_history = compose(self.central_history, (noise_multiplier, 1.0, 1))

    def user_level_epsilon(self) -> float | None:
        if self.central is None:
            return None
        return self.central.epsilon(self.central_history, self.config.num_clients)

    def stop_reason(self) -> str | None:
        if self.local is None:
            return None
        active = self.config.num_clients - len(self.exhausted)
        if active < self.local.min_clients:
            return (
                f"privacy budget exhausted: {active} of {self.config.num_clients} clients are "
                f"within budget_epsilon={self.local.budget_epsilon}, fewer than "
                f"privacy min_clients={self.local.min_clients}"
            )
        return None

    def round_record(self) -> dict[str, Any]:
        """The ``privacy`` entry of a round in metrics.jsonl ({} when DP is off)."""
        if not self.enabled:
            return {}
        record: dict[str, Any] = {}
        if self.local is not None:
            # None until a client accounted for its ε: 0.0 would read as "nothing spent".
            record["epsilon_max"] = max(self.epsilon_per_client.values(), default=None)
            record["epsilon_per_client"] = {
                str(k): v for k, v in sorted(self.epsilon_per_client.items())
            }
            record["exhausted_clients"] = sorted(self.exhausted)
        if self.central is not None:
            record["user_level_epsilon"] = self.user_level_epsilon()
            record["central_releases"] = self.releases
        return {"privacy": record}

    def summary(self) -> dict[str, Any] | None:
        """``summary.json``'s ``privacy`` object (None when DP is off)."""
        if not self.enabled:
            return None
        local, central = self.local, self.central
        deltas = sorted(set(self.delta_per_client.values()))
        return {
            "mode": self.config.privacy.name,
            "delta": (deltas[0] if len(deltas) == 1 else deltas) if local else None,
            "accountant": local.accountant if local else None,
            "epsilon_max": max(self.epsilon_per_client.values(), default=None) if local else None,
            "epsilon_per_client": (
                {str(k): v for k, v in sorted(self.epsilon_per_client.items())} if local else None
            ),
            "noise_multiplier": local.noise_multiplier if local else None,
            "target_epsilon": local.target_epsilon if local else None,
            "max_grad_norm": local.max_grad_norm if local else None,
            "budget_epsilon": local.budget_epsilon if local else None,
            "exhausted_clients": sorted(self.exhausted) if local else None,
            "user_level_epsilon": self.user_level_epsilon(),
            "user_level_delta": central.delta_for(self.config.num_clients) if central else None,
            "central_accountant": EXACT_GAUSSIAN if central else None,
            "central_noise_multiplier": central.noise_multiplier if central else None,
            "clipping_norm": central.clipping_norm if central else None,
            "central_releases": self.releases if central else None,
            "central_released_with": (
                [{"noise_multiplier": s, "releases": n} for s, _, n in self.central_history]
                if central
                else None
            ),
        }
