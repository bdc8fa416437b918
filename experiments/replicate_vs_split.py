"""The replicate_vs_split study's rows and answer (``+experiment=replicate_vs_split``).

One section: replicate (every device the whole set) and split at equal compute (each its
slice, as many epochs as there are devices) against split with one epoch a round; one
holder of the whole set and one device alone on its slice for scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedpriv.experiments.arm_runs import Value, collect, find, versus
from fedpriv.report_arms import Arm, compare
from fedpriv.results import Result

__all__ = ["against", "answer", "sections"]

SECTION = "replicate or split"
SPLIT = "split, 1 epoch a round"
REPLICATE = "replicate, 1 epoch a round"
EQUAL_COMPUTE = "split, equal compute"
CENTRALIZED = "centralized (whole set, 1 epoch a round)"
ALONE = "one device alone (its slice)"
ORDER = (REPLICATE, EQUAL_COMPUTE, SPLIT, CENTRALIZED, ALONE)


def classify(config: Mapping[str, Any], result: Result) -> list[Value]:
    final = result.final.get("accuracy")
    epochs = int(config["train"]["local_epochs"])
    if int(config["num_clients"]) == 1:
        row = ALONE if config["data"].get("limit") is not None else CENTRALIZED
        return [(SECTION, row, "reference", final)]
    if config["partition"]["name"] == "replicate":
        return [(SECTION, REPLICATE, "arm", final)]
    if epochs > 1:
        return [(SECTION, f"{EQUAL_COMPUTE} ({epochs} epochs a round)", "arm", final)]
    return [(SECTION, SPLIT, "baseline", final)]


def order(row: str) -> int:
    return next((i for i, name in enumerate(ORDER) if row.startswith(name)), len(ORDER))


def sections(results: Sequence[Result]) -> list[tuple[str, list[Arm]]]:
    return collect(results, classify, order)


def against(arms: Sequence[Arm]) -> Arm | None:
    return find(arms, SPLIT)


def answer(found: Sequence[tuple[str, Sequence[Arm]]]) -> str:
    """Replicate against split at the same epochs and at the same compute."""
    arms = found[0][1] if found else []
    split, replicate = against(arms), find(arms, REPLICATE)
    if split is None or replicate is None:
        return "No answer: the runs hold no replicate arm together with the split baseline."
    clauses = [f"Replicate reaches {versus(replicate, split, 'split')}"]
    lead = ""
    equal = next((a for a in arms if a.label.startswith(EQUAL_COMPUTE)), None)
    if equal is not None:
        beyond = compare(replicate, equal).verdict == "better"
        lead = ("Replication gains more than its extra compute buys. " if beyond else
                "Replication gains no more than its extra compute buys. ")  # fmt: skip
        clauses.append(
            f"at equal compute, it reaches {versus(replicate, equal, 'equal-compute split')} "
            f"({equal.label.split('(')[1].rstrip(')')} on each slice)"
        )
    scale = [f"{arm.label} {arm.mean:.3f}" for arm in arms if arm.kind == "reference"]
    tail = f" For scale: {', '.join(scale)}." if scale else ""
    return lead + "; ".join(clauses) + "." + tail
