"""A study's runs read into the rows of its tables: each run says, by its config, which
section and arm it belongs to, and the rows collect its seeds.

A study module gives a ``classify`` function (a run's config and result -> the rows it
adds a value to) and a sort key for its labels; :func:`collect` does the rest.
:func:`versus` words one row against another for the answer sentence.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedpriv.report_arms import Arm, compare
from fedpriv.results import Result

__all__ = ["KIND_ORDER", "Classify", "Value", "collect", "find", "run_config", "versus"]

#: One value a run adds: (section, label, kind, value); a None value is left out.
Value = tuple[str, str, str, float | None]
Classify = Callable[[Mapping[str, Any], Result], Iterable[Value]]
#: Arms first, then what they are measured against, then what is shown for scale.
KIND_ORDER = {"arm": 0, "baseline": 1, "reference": 2}


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml``, as a plain mapping."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{run_dir / 'config.yaml'} holds no config mapping")
    return config


def collect(
    results: Sequence[Result], classify: Classify, order: Callable[[str], Any] = str
) -> list[tuple[str, list[Arm]]]:
    """Each section (in the order first seen) with its rows: arms, then baselines, then
    references, each kind sorted by ``order`` of the label. A row's value for a seed is
    the mean of that seed's runs (normally one)."""
    values: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for result in results:
        config = run_config(result.run_dir)
        for section, label, kind, value in classify(config, result):
            if value is not None:
                by_seed = values.setdefault((section, label, kind), {})
                by_seed.setdefault(int(config["seed"]), []).append(float(value))
    sections = list(dict.fromkeys(section for section, _, _ in values))
    out = []
    for section in sections:
        rows = [
            Arm(
                section,
                label,
                tuple(statistics.fmean(v) for _, v in sorted(by_seed.items())),
                kind,
                seeds=tuple(sorted(by_seed)),
            )
            for (where, label, kind), by_seed in values.items()
            if where == section
        ]
        rows.sort(key=lambda arm: (KIND_ORDER[arm.kind], order(arm.label)))
        out.append((section, rows))
    return out


def find(arms: Sequence[Arm], label: str) -> Arm | None:
    """The row called ``label``, if the runs had it."""
    return next((arm for arm in arms if arm.label == label), None)


#: How a verdict reads in a sentence.
WORDS = {"better": "above", "worse": "below", "within noise": "level with"}


def versus(arm: Arm, other: Arm, name: str | None = None) -> str:
    """``0.912, below FedAvg's 0.934 (paired p=0.01)``: ``arm``'s mean and where it stands
    against ``other`` (:func:`~fedpriv.report_arms.compare`; *level with* is within noise)."""
    result = compare(arm, other)
    p = "" if result.p is None else f" ({'paired ' * result.paired}p={result.p:.2g})"
    return f"{arm.mean:.3f}, {WORDS[result.verdict]} {name or other.label}'s {other.mean:.3f}{p}"
