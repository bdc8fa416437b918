"""Statistics over seeds, and a study's table of arms: each setting or baseline, its final
accuracy over seeds, the 95 % t-interval, and which gaps are beyond seed noise.

Below :mod:`fedpriv.report` (which prints the same intervals and tests for its groups)
and beside :mod:`fedpriv.report_plots`, so both can use them.

``fedpriv report --by-group`` names a group by the config keys that vary; a study names
its arms by what they mean (``merged once: Average``, ``holder 0 alone``, ``centralized``)
and may draw a baseline from a client metric rather than from a run of its own (each
holder's model before the merge). :class:`Arm` holds one such row, whatever made it.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

__all__ = [
    "SIGNIFICANCE", "Arm", "Comparison", "arm_table", "compare", "mean_std", "t_interval",
    "versus_best",
]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Arm:
    """One row of a study's table.

    ``values``: the final test accuracy of each seed, in the order of ``seeds`` (empty:
    unknown); ``kind``: ``arm`` (a setting the study compares), ``baseline`` (what the
    arms must beat) or ``reference`` (another method, shown for scale).
    """

    section: str
    label: str
    values: tuple[float, ...]
    kind: str = "arm"
    seeds: tuple[int, ...] = ()

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: the gap of their means, the test's p-value (None when either
    has fewer than two values or nothing varies), and the verdict at :data:`SIGNIFICANCE`.
    ``paired``: the test paired the seeds (t-test on the per-seed differences)."""

    gap: float
    p: float | None
    paired: bool = False

    @property
    def verdict(self) -> str:
        """``better``, ``worse`` or ``within noise``."""
        if self.p is not None and self.p >= SIGNIFICANCE:
            return "within noise"
        if self.p is None and self.gap == 0:
            return "within noise"
        return "better" if self.gap > 0 else "worse"

    def text(self) -> str:
        """The verdict with its p-value, e.g. ``better (p=0.003)``."""
        shown = "" if self.p is None else f" ({'paired ' if self.paired else ''}p={self.p:.2g})"
        return f"{self.verdict}{shown}"


def compare(a: Arm, b: Arm) -> Comparison:
    """``a`` against ``b``: a paired t-test on the per-seed differences when both rows
    ran the same seeds (a seed fixes the data split and the initial model, so the pair
    shares its luck), else Welch's t-test on the two samples."""
    gap = a.mean - b.mean
    if len(a.values) < 2 or len(b.values) < 2:
        return Comparison(gap, None)
    from scipy import stats

    if a.seeds and a.seeds == b.seeds:
        differences = [x - y for x, y in zip(a.values, b.values, strict=True)]
        if statistics.stdev(differences) == 0:
            return Comparison(gap, None, paired=True)
        return Comparison(gap, float(stats.ttest_rel(a.values, b.values).pvalue), paired=True)
    if statistics.stdev(a.values) == statistics.stdev(b.values) == 0:
        return Comparison(gap, None)
    return Comparison(gap, float(stats.ttest_ind(a.values, b.values, equal_var=False).pvalue))


def arm_table(arms: Sequence[Arm], against: Arm | None = None) -> str:
    """One Markdown table of ``arms`` (one section's): mean ± sample std, the 95 %
    t-interval, the gap to the best row (``within noise`` when Welch's test cannot tell
    them apart) and, with ``against``, each arm against that baseline (:func:`compare`)."""
    header = ["arm", "kind", "n", "accuracy", "95% CI", "vs best"]
    if against is not None:
        header.append(f"vs {against.label}")
    verdicts = versus_best([list(arm.values) for arm in arms])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, verdict in zip(arms, verdicts, strict=True):
        interval = t_interval(arm.values)
        row = [
            arm.label,
            arm.kind,
            str(len(arm.values)),
            mean_std(arm.values, ".4f"),
            "-" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]",
            verdict,
        ]
        if against is not None:
            row.append("-" if arm is against else compare(arm, against).text())
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean of ``values`` (seeds are few, so not the
    normal one); None for fewer than two values."""
    if len(values) < 2:
        return None
    from scipy import stats

    mean = statistics.fmean(values)
    half = float(stats.t.ppf((1 + level) / 2, len(values) - 1)) * statistics.stdev(values)
    half /= math.sqrt(len(values))
    return mean - half, mean + half


#: Below this Welch p-value a group's gap to the best is reported as a difference.
SIGNIFICANCE = 0.05


def versus_best(finals: Sequence[Sequence[float]]) -> list[str]:
    """Each group's final accuracies against the group with the best mean: ``best``,
    ``within noise (p=…)`` when Welch's t-test cannot tell them apart at
    :data:`SIGNIFICANCE`, ``worse (p=…)`` when it can; ``-`` where a group has fewer
    than two runs (one seed says nothing about noise)."""
    means = [statistics.fmean(values) if values else -math.inf for values in finals]
    best = max(range(len(finals)), key=means.__getitem__, default=None)
    if best is None or not finals[best]:
        return ["-"] * len(finals)
    from scipy import stats

    verdicts = []
    for index, values in enumerate(finals):
        if index == best:
            verdicts.append("best")
        elif len(values) < 2 or len(finals[best]) < 2:
            verdicts.append("-")
        elif statistics.stdev(values) == statistics.stdev(finals[best]) == 0:
            same = means[index] == means[best]
            verdicts.append("within noise (no spread)" if same else "worse (no spread)")
        else:
            p = float(stats.ttest_ind(values, finals[best], equal_var=False).pvalue)
            verdicts.append(f"{'within noise' if p >= SIGNIFICANCE else 'worse'} (p={p:.2g})")
    return verdicts


def mean_std(values: Sequence[float], spec: str) -> str:
    """``mean ± std`` (sample std, n − 1) of ``values``; the value alone for one, ``-`` for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{statistics.fmean(values):{spec}} ± {statistics.stdev(values):{spec}}"
