"""A study's arms: the paired/Welch comparisons against independent computations, the
table's marks, and the unification answer computed from the numbers."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from fedpriv.experiments.unification import BETTER_HOLDER, CENTRALIZED, answer
from fedpriv.report_arms import Arm, arm_table, compare

SEEDS = (0, 1, 2, 3, 4)


def arm(label: str, values: tuple[float, ...], kind: str = "arm", section: str = "s") -> Arm:
    return Arm(section, label, values, kind, seeds=SEEDS[: len(values)])


def test_same_seeds_are_compared_pairwise():
    a, b = (0.80, 0.82, 0.79, 0.81, 0.83), (0.78, 0.81, 0.77, 0.80, 0.80)
    result = compare(arm("a", a), arm("b", b))
    differences = [x - y for x, y in zip(a, b, strict=True)]
    t = statistics.fmean(differences) / (statistics.stdev(differences) / math.sqrt(5))
    assert result.paired and result.p == pytest.approx(2 * stats.t.sf(abs(t), 4), rel=1e-9)
    assert result.verdict == "better" and result.gap == pytest.approx(0.018)


def test_different_seeds_fall_back_to_welch():
    a, b = (0.80, 0.82, 0.79), (0.70, 0.71, 0.69, 0.72)
    left = Arm("s", "a", a, seeds=(0, 1, 2))
    right = Arm("s", "b", b, seeds=(0, 1, 2, 3))
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 4
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    result = compare(left, right)
    assert not result.paired and result.p == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-6)


def test_noise_sized_gaps_are_marked_within_noise():
    noisy = compare(arm("a", (0.80, 0.70, 0.90)), arm("b", (0.79, 0.81, 0.78)))
    assert noisy.verdict == "within noise" and noisy.text().startswith("within noise (paired p=")
    table = arm_table([arm("a", (0.80, 0.70, 0.90)), arm("b", (0.79, 0.81, 0.78), "baseline")])
    assert "| a | arm | 3 | 0.8000 ± 0.1000 |" in table and "within noise" in table


def study(merge: tuple[float, ...], holders: tuple[float, ...]) -> list[tuple[str, list[Arm]]]:
    return [
        (
            "horizontal IID",
            [
                arm("merged once: Average", merge),
                arm(BETTER_HOLDER, holders, "baseline"),
                arm(CENTRALIZED, (0.85,) * 5, "baseline"),
            ],
        )
    ]


def test_the_answer_says_yes_only_when_a_merge_beats_the_better_holder_beyond_noise():
    beats = answer(study((0.82, 0.83, 0.81, 0.82, 0.84), (0.80, 0.81, 0.79, 0.80, 0.81)))
    assert beats.startswith("Yes: in every setting some merge does beat the better holder")
    assert "Average, 0.824) is above the better holder alone (0.802, paired p=" in beats
    assert "(centralized 0.850)" in beats
    level = answer(study((0.80, 0.83, 0.79, 0.80, 0.81), (0.81, 0.81, 0.79, 0.80, 0.80)))
    assert level.startswith("No: no merge does beat") and "is level with" in level
    worse = answer(study((0.70, 0.71, 0.69, 0.70, 0.72), (0.80, 0.81, 0.79, 0.80, 0.81)))
    assert "is below the better holder alone" in worse
