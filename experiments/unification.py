"""The unification study's arms and answer, read from its runs (``+experiment=unification``).

Each run is one arm of one section: the section is the environment (``horizontal IID``,
``horizontal non-IID``: sample halves; ``vertical``: feature halves), the arm the protocol
and merge rule (``merged once: Average``). The baselines come with them: each holder
alone is that holder's own model before the merge (``test-accuracy`` of the merged-once
runs, the same model whatever rule follows), centralized is the one-holder run on the
pooled data, split learning the vertical family's run. The answer compares, per section
and protocol, the best rule with the better holder alone of the same seed (paired t-test
over seeds; :func:`fedpriv.report_arms.compare`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from fedpriv.experiments.arm_runs import KIND_ORDER, Value, collect
from fedpriv.report_arms import Arm, compare
from fedpriv.results import Result

__all__ = ["answer", "sections"]

#: Section of a run by its partition.
SECTIONS = {
    "iid": "horizontal IID",
    "dirichlet": "horizontal non-IID",
    "features": "vertical (left/right image halves)",
}
#: The merge rules by strategy name, as the question names them.
RULES = {"fedavg": "Average", "max": "Max", "absmax": "AbsMax"}
CENTRALIZED = "centralized (pooled data)"
#: Per seed, the higher of the holders' accuracies: what "beats its parts" must beat.
BETTER_HOLDER = "better holder alone"
SPLIT_LEARNING = "split learning"


def sections(results: Sequence[Result]) -> list[tuple[str, list[Arm]]]:
    """Each section's rows: the merges (merged once, then every k epochs; Average, Max,
    AbsMax), each holder alone and the better of them per seed, centralized, and split
    learning in the vertical one."""
    found = collect(results, classify, _arm_order)
    shared = [arm for name, arms in found if name == "" for arm in arms]
    rank = list(SECTIONS.values())
    out = []
    for name, arms in sorted(
        ((name, arms) for name, arms in found if name),
        key=lambda item: rank.index(item[0]) if item[0] in rank else len(rank),
    ):
        rows = [*arms, *(dataclasses.replace(arm, section=name) for arm in shared)]
        if better := _better_holder(name, arms):
            rows.append(better)
        rows.sort(key=lambda arm: (KIND_ORDER[arm.kind], _arm_order(arm.label)))
        out.append((name, rows))
    return out


def classify(config: Mapping[str, Any], result: Result) -> list[Value]:
    """A merge is a row of its environment's section, and so is each holder's own model
    before a merged-once run's merge; centralized (section "") joins every section."""
    final = result.final.get("accuracy")
    if config["family"]["name"] == "vertical":
        return [(SECTIONS["features"], SPLIT_LEARNING, "reference", final)]
    if config["num_clients"] == 1:
        return [("", CENTRALIZED, "baseline", final)]
    section = SECTIONS.get(config["partition"]["name"], config["partition"]["name"])
    strategy = config["strategy"]["name"]
    rows = [(section, f"{protocol(config)}: {RULES.get(strategy, strategy)}", "arm", final)]
    if config["rounds"] == 1 and result.history:
        for client in result.history[0].get("clients", []):
            holder = f"holder {int(client['partition-id'])} alone"
            rows.append((section, holder, "baseline", client.get("test-accuracy")))
    return rows


def _better_holder(section: str, arms: Sequence[Arm]) -> Arm | None:
    """Per seed that every holder ran, the higher of their accuracies."""
    holders = [arm for arm in arms if arm.label.startswith("holder ")]
    if not holders:
        return None
    seeds = sorted(set.intersection(*(set(arm.seeds) for arm in holders)))
    values = tuple(max(h.values[h.seeds.index(seed)] for h in holders) for seed in seeds)
    return Arm(section, BETTER_HOLDER, values, "baseline", seeds=tuple(seeds))


def protocol(config: Mapping[str, Any]) -> str:
    """``merged once`` (one round of E local epochs) or ``merged every k epochs``."""
    if config["rounds"] == 1:
        return "merged once"
    epochs = int(config["train"]["local_epochs"])
    return "merged every epoch" if epochs == 1 else f"merged every {epochs} epochs"


def better_holder(arms: Sequence[Arm]) -> Arm | None:
    """The per-seed better holder alone (the higher of the holders' accuracies in each
    seed): what a merge must beat to beat its parts."""
    return next((arm for arm in arms if arm.label == BETTER_HOLDER), None)


#: The baseline of each section's table.
against = better_holder

#: How the answer words a comparison's verdict.
WHERE = {"better": "above", "worse": "below", "within noise": "level with"}
BEATS = "beat the better holder alone beyond seed noise"


def answer(found: Sequence[tuple[str, Sequence[Arm]]]) -> str:
    """One sentence from the numbers: per section and protocol, the best rule against the
    better holder alone (paired over seeds), and the centralized accuracy. The best rule
    is picked by its mean before the test, so a p just under 0.05 is weak evidence."""
    clauses, beaten = [], []
    for section, arms in found:
        holder = better_holder(arms)
        merges = [arm for arm in arms if arm.kind == "arm"]
        if holder is None or not merges:
            continue
        parts = []
        for name in dict.fromkeys(arm.label.split(": ")[0] for arm in merges):
            best = max((a for a in merges if a.label.startswith(f"{name}: ")), key=_mean)
            result = compare(best, holder)
            p = "" if result.p is None else f", {'paired ' * result.paired}p={result.p:.2g}"
            parts.append(
                f"{name}, the best rule ({best.label.split(': ')[1]}, {best.mean:.3f}) is "
                f"{WHERE[result.verdict]} the better holder alone ({holder.mean:.3f}{p})"
            )
            if result.verdict == "better" and section not in beaten:
                beaten.append(section)
        central = next((arm for arm in arms if arm.label == CENTRALIZED), None)
        tail = "" if central is None else f" (centralized {central.mean:.3f})"
        clauses.append(f"{section[0].upper()}{section[1:]}: {'; '.join(parts)}{tail}")
    if not clauses:
        return "No answer: the runs hold no merge together with a holder-alone baseline."
    if len(beaten) == len(clauses):
        lead = f"Yes: in every setting some merge does {BEATS}"
    elif not beaten:
        lead = f"No: no merge does {BEATS}"
    else:
        lead = f"Only in {' and '.join(beaten)} does a merge {BEATS}"
    caveat = " (paired t-test, p < 0.05; the best of three rules, with no correction)"
    return f"{lead}{caveat}. {'. '.join(clauses)}."


def _mean(arm: Arm) -> float:
    return arm.mean


def _arm_order(label: str) -> tuple[int, int, str]:
    """Merged once before every k; Average, Max, AbsMax; the better holder before each."""
    head, _, rule = label.partition(": ")
    rules = list(RULES.values())
    first = {"merged once": 0, BETTER_HOLDER: 0}.get(head, 1)
    return (first, rules.index(rule) if rule in rules else 9, label)
