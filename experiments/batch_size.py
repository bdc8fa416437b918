"""The batch_size study's rows and answer (``+experiment=batch_size``).

One section: every batch size at the reference lr, and the small and large batch again
with the lr scaled linearly from the reference (lr × B / 32). Besides final accuracy, the
time to accuracy: the first round at which the test accuracy reaches
:data:`TARGET`, and the run's elapsed seconds then.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpriv.experiments.arm_runs import Value, collect, find, run_config, versus
from fedpriv.report_arms import Arm, mean_std
from fedpriv.report_plots import plot_curves
from fedpriv.results import Result

__all__ = ["TARGET", "against", "answer", "extra", "sections"]

#: The test accuracy whose first crossing is the time to accuracy.
TARGET = 0.9
#: The batch and lr the others are measured against, and scaled from.
REFERENCE_BATCH, REFERENCE_LR = 32, 0.05
SECTION = "batch size and learning rate"


def label(batch: int, lr: float) -> str:
    scaled = batch != REFERENCE_BATCH and math.isclose(lr, REFERENCE_LR * batch / REFERENCE_BATCH)
    return f"batch {batch}, lr {lr:g}" + (" (scaled)" if scaled else "")


def classify(config: Mapping[str, Any], result: Result) -> list[Value]:
    batch, lr = int(config["train"]["batch_size"]), float(config["train"]["lr"])
    reference = batch == REFERENCE_BATCH and math.isclose(lr, REFERENCE_LR)
    return [(SECTION, label(batch, lr), "baseline" if reference else "arm",
             result.final.get("accuracy"))]  # fmt: skip


def order(row: str) -> tuple[bool, int]:
    """Fixed lr before scaled, each by batch size."""
    return row.endswith("(scaled)"), _batch(row)


def sections(results: Sequence[Result]) -> list[tuple[str, list[Arm]]]:
    return collect(results, classify, order)


def against(arms: Sequence[Arm]) -> Arm | None:
    return find(arms, label(REFERENCE_BATCH, REFERENCE_LR))


def answer(found: Sequence[tuple[str, Sequence[Arm]]]) -> str:
    """Each batch against the reference, at the fixed lr and with the lr scaled."""
    arms = found[0][1] if found else []
    base = against(arms)
    rows = [arm for arm in arms if arm.kind == "arm"]
    if base is None or not rows:
        return "No answer: the runs hold no batch size together with the reference."
    fixed = [f"batch {_batch(a.label)}: {versus(a, base, 'batch 32')}" for a in rows
             if not a.label.endswith("(scaled)")]  # fmt: skip
    scaled = [f"batch {_batch(a.label)}: {versus(a, base, 'batch 32')}" for a in rows
              if a.label.endswith("(scaled)")]  # fmt: skip
    clauses = []
    if fixed:
        clauses.append(
            f"At the fixed lr {REFERENCE_LR:g}, after the same epochs: " + "; ".join(fixed)
        )
    if scaled:
        clauses.append("With the lr scaled linearly: " + "; ".join(scaled))
    return ". ".join(clauses) + ". Rounds and seconds to accuracy are in the table below."


def extra(
    results: Sequence[Result], found: Sequence[tuple[str, Sequence[Arm]]], target: Path
) -> tuple[list[str], list[Path]]:
    """The time-to-accuracy table and accuracy against batch size, fixed and scaled lr."""
    reached: dict[str, list[tuple[int, float] | None]] = {}
    for result in results:
        train = run_config(result.run_dir)["train"]
        row = label(int(train["batch_size"]), float(train["lr"]))
        reached.setdefault(row, []).append(first_reaching(result.history, TARGET))
    lines = [
        f"## Time to accuracy {TARGET:g}",
        "",
        f"The first round whose test accuracy reaches {TARGET:g}, and the run's elapsed "
        "seconds then (mean ± std over the runs that reached it; seconds on a shared "
        "machine are noisy, rounds are not).",
        "",
        "| arm | reached | round | seconds |",
        "|---|---|---|---|",
    ]
    arms = found[0][1] if found else []
    for arm in arms:
        hits = [hit for hit in reached.get(arm.label, []) if hit is not None]
        rounds = mean_std([float(r) for r, _ in hits], ".1f")
        seconds = mean_std([s for _, s in hits], ".1f")
        lines.append(f"| {arm.label} | {len(hits)} of {len(reached.get(arm.label, []))} | "
                     f"{rounds} | {seconds} |")  # fmt: skip
    fixed = [(_batch(a.label), a) for a in arms if not a.label.endswith("(scaled)")]
    scaled = [(_batch(a.label), a) for a in arms if a.label.endswith("(scaled)")]
    base = against(arms)
    if base is not None:
        scaled.append((REFERENCE_BATCH, base))
    path = target / "accuracy_vs_batch.png"
    drawn = plot_curves(
        [(f"lr {REFERENCE_LR:g}", fixed), ("lr scaled × B/32", scaled)], [], path,
        xlabel="batch size", title="Accuracy against batch size, same epochs",
    )  # fmt: skip
    return [*lines, ""], [path] if drawn else []


def first_reaching(history: Sequence[Mapping[str, Any]], target: float) -> tuple[int, float] | None:
    """(round, elapsed seconds) of the first round whose accuracy is ≥ ``target``."""
    for record in history:
        accuracy = record.get("accuracy")
        if accuracy is not None and accuracy >= target:
            return int(record["round"]), float(record["elapsed"])
    return None


def _batch(row: str) -> int:
    return int(row.split(",")[0].split()[1])
