"""The noniid study's rows and answer (``+experiment=noniid``).

One section per Dirichlet α: FedAvg and FedProx under that label skew, against FedAvg
on IID shares, with one holder of the whole set for scale. The answer gives what the
skew costs FedAvg and whether FedProx wins it back (paired over seeds: a seed fixes the
split both strategies train on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedpriv.experiments.arm_runs import Value, collect, find, versus
from fedpriv.report_arms import Arm, compare
from fedpriv.results import Result

__all__ = ["against", "answer", "sections"]

IID = "FedAvg, IID shares"
CENTRALIZED = "centralized (pooled data)"
NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx"}


def section(alpha: float) -> str:
    return f"label skew Dir(α = {alpha:g})"


def classify(config: Mapping[str, Any], result: Result) -> list[Value]:
    """A skewed run is one row of its α's section; the IID and centralized runs are rows
    of every section (:func:`sections` copies them)."""
    final = result.final.get("accuracy")
    if int(config["num_clients"]) == 1:
        return [("", CENTRALIZED, "reference", final)]
    if config["partition"]["name"] != "dirichlet":
        return [("", IID, "baseline", final)]
    strategy = config["strategy"]["name"]
    alpha = float(config["partition"]["alpha"])
    return [(section(alpha), NAMES.get(strategy, strategy), "arm", final)]


def order(row: str) -> int:
    names = [*NAMES.values(), IID, CENTRALIZED]
    return names.index(row) if row in names else len(names)


def sections(results: Sequence[Result]) -> list[tuple[str, list[Arm]]]:
    """Skewed sections by α ascending, each with the IID and centralized rows."""
    found = collect(results, classify, order)
    shared = [arm for name, arms in found if name == "" for arm in arms]
    skewed = sorted((item for item in found if item[0]), key=lambda item: _alpha(item[0]))
    return [(name, [*arms, *shared]) for name, arms in skewed]


def against(arms: Sequence[Arm]) -> Arm | None:
    return find(arms, IID)


def answer(found: Sequence[tuple[str, Sequence[Arm]]]) -> str:
    clauses = []
    for name, arms in found:
        iid, fedavg, fedprox = against(arms), find(arms, "FedAvg"), find(arms, "FedProx")
        parts = []
        if fedavg is not None and iid is not None:
            parts.append(f"FedAvg: {versus(fedavg, iid, 'IID FedAvg')}")
        if fedprox is not None and fedavg is not None:
            parts.append(f"FedProx: {versus(fedprox, fedavg, 'FedAvg')}")
        if parts:
            clauses.append(f"{name[0].upper()}{name[1:]}: {'; '.join(parts)}")
    if not clauses:
        return "No answer: the runs hold no skewed FedAvg run together with IID FedAvg."
    central = next((find(arms, CENTRALIZED) for _, arms in found), None)
    tail = f" (centralized {central.mean:.3f})" if central is not None else ""
    return f"{_lead(found)}. {'. '.join(clauses)}{tail}."


def _lead(found: Sequence[tuple[str, Sequence[Arm]]]) -> str:
    """Which skews cost FedAvg beyond seed noise, and where FedProx gains beyond it."""
    costly, helped = [], []
    for name, arms in found:
        iid, fedavg, fedprox = against(arms), find(arms, "FedAvg"), find(arms, "FedProx")
        alpha = name.split("(", 1)[1].rstrip(")")
        if fedavg is not None and iid is not None and _verdict(fedavg, iid) == "worse":
            costly.append(alpha)
        if fedprox is not None and fedavg is not None and _verdict(fedprox, fedavg) == "better":
            helped.append(alpha)
    cost = (f"label skew costs FedAvg accuracy beyond seed noise at {', '.join(costly)}"
            if costly else "no skew tried costs FedAvg accuracy beyond seed noise")  # fmt: skip
    gain = (f"FedProx wins some back at {', '.join(helped)}" if helped
            else "FedProx wins none of it back beyond noise")  # fmt: skip
    return f"{cost[0].upper()}{cost[1:]}; {gain}"


def _verdict(arm: Arm, other: Arm) -> str:
    return compare(arm, other).verdict


def _alpha(name: str) -> float:
    return float(name.rsplit("= ", 1)[1].rstrip(")"))
