"""The swarm_vs_fedavg study's rows and answer (``+experiment=swarm_vs_fedavg``).

Two sections. Equal compute: every arm trains the same rounds of the same local epochs;
the row is the final accuracy. Equal communication: every federated run's accuracy at its
last round within the bytes (up and down) that the thriftiest run sent in all, so an arm
that sends more per round is read earlier. FedAvg is the baseline of both; one holder of
the whole set and one peer alone are shown for scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedpriv.experiments.arm_runs import Value, collect, find, run_config, versus
from fedpriv.report_arms import Arm, compare
from fedpriv.results import Result

__all__ = ["accuracy_within", "against", "answer", "sections"]

FEDAVG = "FedAvg (server averages all)"
NAMES = {"gossip": "swarm, ring gossip", "leader": "swarm, elected leader"}
CENTRALIZED = "centralized (pooled data)"
ALONE = "one peer alone (its share)"
ORDER = (*NAMES.values(), FEDAVG, CENTRALIZED, ALONE)
COMPUTE = "equal compute"
COMMUNICATION = "equal communication"


def total_bytes(result: Result) -> int:
    return sum(int(r.get("bytes_up", 0)) + int(r.get("bytes_down", 0)) for r in result.history)


def accuracy_within(history: Sequence[Mapping[str, Any]], budget: float) -> float | None:
    """The accuracy of the last round by which the run had sent at most ``budget`` bytes
    (None when its first round already sent more)."""
    sent, accuracy = 0, None
    for record in history:
        sent += int(record.get("bytes_up", 0)) + int(record.get("bytes_down", 0))
        if sent > budget:
            break
        accuracy = record.get("accuracy")
    return accuracy


def sections(results: Sequence[Result]) -> list[tuple[str, list[Arm]]]:
    federated = [r for r in results if int(run_config(r.run_dir)["num_clients"]) > 1]
    budget = min((total_bytes(r) for r in federated), default=0)
    rounds = max((len(r.history) for r in results), default=0)

    def classify(config: Mapping[str, Any], result: Result) -> list[Value]:
        final = result.final.get("accuracy")
        compute = f"{COMPUTE} ({rounds} rounds of the same local epochs)"
        communication = f"{COMMUNICATION} (≤ {budget / 1e6:.1f} MB sent per run)"
        if int(config["num_clients"]) == 1:
            alone = config["data"].get("limit") is not None
            rows = [(compute, ALONE if alone else CENTRALIZED, "reference", final)]
            if alone:  # sends nothing, so it fits any budget
                rows.append((communication, ALONE, "reference", final))
            return rows
        if config["family"]["name"] == "swarm":
            name = NAMES.get(config["strategy"]["name"], config["strategy"]["name"])
            kind = "arm"
        else:
            name, kind = FEDAVG, "baseline"
        within = accuracy_within(result.history, budget)
        return [(compute, name, kind, final), (communication, name, kind, within)]

    return collect(results, classify, order)


def order(row: str) -> int:
    return ORDER.index(row) if row in ORDER else len(ORDER)


def against(arms: Sequence[Arm]) -> Arm | None:
    return find(arms, FEDAVG)


def answer(found: Sequence[tuple[str, Sequence[Arm]]]) -> str:
    """Per budget, which swarm modes are not below FedAvg beyond seed noise, then each
    mode against FedAvg (paired over seeds)."""
    leads, clauses = [], []
    for name, arms in found:
        base = against(arms)
        swarm = [arm for arm in arms if arm.kind == "arm"]
        if base is None or not swarm:
            continue
        level = [arm.label for arm in swarm if compare(arm, base).verdict != "worse"]
        who = " and ".join(level) if level else "no swarm mode"
        verb = "reach" if len(level) > 1 else "reaches"
        leads.append(f"at {name.split(' (')[0]}: {who} {verb} FedAvg's accuracy")
        parts = "; ".join(f"{arm.label}: {versus(arm, base, 'FedAvg')}" for arm in swarm)
        clauses.append(f"At {name}: {parts}")
    if not clauses:
        return "No answer: the runs hold no swarm arm together with FedAvg."
    lead = "; ".join(leads)
    return f"{lead[:1].upper()}{lead[1:]}. {'. '.join(clauses)}."
