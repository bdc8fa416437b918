"""The dp_utility study's rows and answer (``+experiment=dp_utility``).

Two sections, federated (10 clients) and centralized (one holder of the pooled data);
in each, DP-SGD at every ε against the same training without DP. The answer gives what
DP costs at each ε in both, and what federating costs on top at the same ε.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpriv.experiments.arm_runs import Value, collect, find, versus
from fedpriv.report_arms import Arm
from fedpriv.report_plots import plot_curves
from fedpriv.results import Result

__all__ = ["against", "answer", "extra", "sections"]

FEDERATED = "federated"
CENTRALIZED = "centralized (pooled data)"
NON_PRIVATE = "no DP"


def sections(results: Sequence[Result]) -> list[tuple[str, list[Arm]]]:
    return collect(results, classify, order)


def label(epsilon: float) -> str:
    return f"DP-SGD ε = {epsilon:g}"


def classify(config: Mapping[str, Any], result: Result) -> list[Value]:
    """A run is one row: its section by the number of clients, its label by its ε."""
    clients = int(config["num_clients"])
    section = CENTRALIZED if clients == 1 else f"{FEDERATED} ({clients} IID clients)"
    final = result.final.get("accuracy")
    if config["privacy"]["name"] == "none":
        kind = "reference" if clients == 1 else "baseline"
        return [(section, NON_PRIVATE, kind, final)]
    return [(section, label(float(config["privacy"]["target_epsilon"])), "arm", final)]


def order(row: str) -> float:
    """ε ascending, then no DP."""
    return float("inf") if row == NON_PRIVATE else float(row.rsplit("= ", 1)[1])


def against(arms: Sequence[Arm]) -> Arm | None:
    """Every DP row is measured against its own section's training without DP."""
    return find(arms, NON_PRIVATE)


def answer(found: Sequence[tuple[str, Sequence[Arm]]]) -> str:
    """What DP-SGD costs at each ε, federated and centralized, and the gap between the
    two at the same ε (paired over seeds: a seed fixes the test split and the initial
    model in both sections)."""
    clauses = [lead] if (lead := _costs(found)) else []
    by_section = dict(found)
    federated = next((s for s in by_section if s.startswith(FEDERATED)), None)
    for section, arms in found:
        base = against(arms)
        rows = [arm for arm in arms if arm.kind == "arm"]
        if base is None or not rows:
            continue
        costs = "; ".join(f"at ε = {_epsilon(arm):g}: {versus(arm, base, 'no DP')}" for arm in rows)
        clauses.append(f"{section[0].upper()}{section[1:]}: {costs}")
    if federated is not None and CENTRALIZED in by_section:
        gaps = []
        for arm in by_section[federated]:
            central = find(by_section[CENTRALIZED], arm.label)
            if arm.kind == "arm" and central is not None:
                gaps.append(f"at ε = {_epsilon(arm):g}: {versus(arm, central, 'centralized')}")
        if gaps:
            clauses.append("Federated against centralized DP-SGD: " + "; ".join(gaps))
    if not clauses:
        return "No answer: the runs hold no DP arm together with its no-DP baseline."
    return ". ".join(clauses) + "."


def _costs(found: Sequence[tuple[str, Sequence[Arm]]]) -> str:
    """``DP-SGD costs 26.9, 7.6 and 4.3 points at ε = 1, 3 and 8 federated (…)``."""
    parts = []
    for section, arms in found:
        base, rows = against(arms), [arm for arm in arms if arm.kind == "arm"]
        if base is not None and rows:
            points = ", ".join(f"{100 * (base.mean - arm.mean):.1f}" for arm in rows)
            parts.append(f"{points} points {section.split(' (')[0]}")
    if not parts:
        return ""
    epsilons = [f"{_epsilon(arm):g}" for arm in found[0][1] if arm.kind == "arm"]
    return f"DP-SGD costs {' and '.join(parts)} at ε = {', '.join(epsilons)}"


def extra(
    results: Sequence[Result], found: Sequence[tuple[str, Sequence[Arm]]], target: Path
) -> tuple[list[str], list[Path]]:
    """Accuracy against ε, both sections and both no-DP lines on one plot; and a check
    that every run spent the ε it was calibrated for (the accountant's number)."""
    curves, references = [], []
    for section, arms in found:
        curves.append((section, [(_epsilon(a), a) for a in arms if a.kind == "arm"]))
        if (base := against(arms)) is not None:
            references.append(Arm(section, f"{section}, no DP", base.values, base.kind))
    plots = []
    path = target / "accuracy_vs_epsilon.png"
    if plot_curves(curves, references, path, xlabel="ε (δ = 1e-5)",
                   title="Accuracy against ε: DP-SGD federated and centralized"):  # fmt: skip
        plots.append(path)
    gaps = [
        abs(float(spent) - float(r.summary["privacy"]["target_epsilon"]))
        for r in results
        if (r.summary.get("privacy") or {}).get("target_epsilon") is not None
        and (spent := r.summary["privacy"].get("epsilon_max")) is not None
    ]
    lines = []
    if gaps:
        lines = [
            f"Every DP run spent its target ε: the accountant's ε (largest client) is within "
            f"{max(gaps):.2g} of the target in all {len(gaps)} runs.",
            "",
        ]
    return lines, plots


def _epsilon(arm: Arm) -> float:
    return order(arm.label)
