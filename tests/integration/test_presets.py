"""Every study preset (conf/experiment/) runs to completion in a reduced form: one
round, at most 3 clients, digits; the sweep's last job, and the first as well where
the first runs another family (unification) or partition (replicate_vs_split).
`make studies` runs them in full. In-process: the presets' settings are under test."""

from __future__ import annotations

import itertools
import json
import statistics

import pytest

from fedpriv import load_config, run
from fedpriv.cli import main as cli
from fedpriv.experiments.studies import (
    ANALYSES,
    preset_notes,
    presets,
    study_report,
    sweep,
    sweep_points,
)

pytestmark = pytest.mark.inprocess


def reduced(name: str, point: list[str]) -> list[str]:
    full = load_config([f"+experiment={name}", *point])  # an arm may set num_clients
    overrides = ["rounds=1", "data=digits", "engine=inprocess"]
    if getattr(full.data, "limit", None) is not None:
        overrides.append("~data.limit")  # Fashion-MNIST's subset size; digits has none
    if full.num_clients > 3:
        overrides.append("num_clients=3")
    return overrides


def jobs() -> list[tuple[str, list[str]]]:
    out = []
    for name in presets():
        points = sweep_points(name)
        out.append((name, points[-1]))
        if name in ("unification", "replicate_vs_split"):  # a family, a partition apart
            out.append((name, points[0]))
    return out


@pytest.mark.parametrize(
    ("name", "point"), jobs(), ids=lambda v: v if isinstance(v, str) else " ".join(v)
)
def test_preset_runs_in_reduced_form(name, point, tmp_path):
    config = load_config(
        [f"+experiment={name}", *point, *reduced(name, point), f"output_dir={tmp_path}"]
    )
    result = run(config)
    assert result.summary["rounds"] == 1 and result.final["accuracy"] is not None
    summary, record = result.summary, result.history[0]
    if config.crypto.name == "ckks":
        assert summary["crypto"]["scheme"] == "ckks"
    if config.privacy.name == "dp_sgd":
        assert 0 < summary["privacy"]["epsilon_max"] <= config.privacy.target_epsilon + 1e-6
    if config.family == "swarm":
        assert record["swarm"]["consensus_distance"] is not None
    if config.family == "vertical":
        assert summary["family"] == "vertical" and config.family_settings.split == "halves"
    if config.partition.name == "replicate":
        clients = json.loads((result.run_dir / "clients.json").read_text())
        assert len(set(clients["num_examples"])) == 1  # every device holds the whole set


STUDIES = ("dp_utility", "batch_size", "replicate_vs_split", "swarm_vs_fedavg", "noniid")


@pytest.mark.parametrize("name", STUDIES)
def test_study_report_answers_from_its_arms_in_reduced_form(name, tmp_path):
    """Every arm of the study (two seeds, two rounds, at most 3 clients) run in-process
    into one directory, then the study's report: it states the question, answers it, and
    its rows are the runs' own final accuracies (read back here from summary.json)."""
    (arm_key,) = [key for key in sweep(name) if key.startswith("+arms/")]
    finals: dict[str, list[float]] = {}
    for index, (arm, seed) in enumerate(itertools.product(sweep(name)[arm_key], (0, 1))):
        point = [f"{arm_key}={arm}", f"seed={seed}"]
        where = tmp_path / name / str(index)
        overrides = [*reduced(name, point), "rounds=2", f"output_dir={where}"]
        result = run(load_config([f"+experiment={name}", *point, *overrides]))
        summary = json.loads((result.run_dir / "summary.json").read_text())
        finals.setdefault(arm, []).append(summary["final"]["accuracy"])
    text, plots = study_report(name, tmp_path / name)
    lines = text.splitlines()
    assert lines[0] == f"# {ANALYSES[name].title}"
    assert lines[2].startswith("**Question.** ") and preset_notes(name)["Question"] in lines[2]
    assert lines[4].startswith("**Answer.** ") and "No answer" not in lines[4]
    assert f"`python -m fedpriv.experiments.studies {name}`" in text
    assert all(plot.stat().st_size > 0 for plot in plots)
    assert cli(["report", str(tmp_path / name), "--study", name]) == 0  # the same, on the CLI
    assert (tmp_path / name / "report.md").read_text() == text
    rows = table_means(text)
    for arm, values in finals.items():  # each arm's mean is in some row, over both seeds
        assert any(abs(mean - statistics.fmean(values)) < 5e-5 and n == 2
                   for mean, n in rows), (arm, values, rows)  # fmt: skip


def table_means(text: str) -> list[tuple[float, int]]:
    """(mean, n) of every row of the study's arm tables (those before "Every run")."""
    studied = text.split("## Every run", 1)[0]
    out = []
    for line in studied.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) >= 4 and cells[1] in ("arm", "baseline", "reference"):
            out.append((float(cells[3].split(" ± ")[0]), int(cells[2])))
    return out
