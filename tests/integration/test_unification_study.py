"""The unification study end to end in a reduced form: its real Hydra multirun (digits,
one epoch, two seeds, a subset of the arms with every kind of baseline), then the report
that answers the question. `make studies` runs it in full."""

from __future__ import annotations

import re

import pytest

from fedpriv.experiments.studies import run_study

pytestmark = [pytest.mark.processes, pytest.mark.slow]

ARMS = ("horizontal_iid_once_average", "horizontal_iid_once_absmax", "vertical_once_average",
        "vertical_once_max", "centralized", "split_learning")  # fmt: skip
REDUCED = ["data=digits", "~data.limit", "rounds=1", "train.local_epochs=1", "seed=0,1",
           f"+arms/unification={','.join(ARMS)}"]  # fmt: skip


def table_rows(text: str, section: str) -> dict[str, list[str]]:
    """The rows of one section's table, by arm label."""
    block = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in block.splitlines() if line.startswith("| ")]
    return {row[0].lstrip("| "): row[1:] for row in rows[1:]}


def test_reduced_unification_study_answers_with_baselines(tmp_path):
    stale = tmp_path / "unification" / "99"  # a job of an older, longer sweep
    stale.mkdir(parents=True)
    (stale / "summary.json").write_text("{}")
    text = run_study("unification", tmp_path, REDUCED)
    assert not stale.exists()
    assert text == (tmp_path / "unification" / "report.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "# Unification: merging models trained apart"
    assert lines[2].startswith("**Question.** Can models trained apart be merged")
    assert lines[4].startswith("**Answer.** ")
    horizontal = table_rows(text, "horizontal IID")
    vertical = table_rows(text, "vertical (left/right image halves)")
    for rows, merges in ((horizontal, ("Average", "AbsMax")), (vertical, ("Average", "Max"))):
        expected = {f"merged once: {rule}" for rule in merges}
        expected |= {"better holder alone", "holder 0 alone", "holder 1 alone", CENTRAL}
        assert expected <= set(rows)
        assert all(rows[label][1] == "2" for label in expected)  # two seeds each
    assert vertical["split learning"][0] == "reference"
    # The answer's numbers are the table's: the centralized mean, to three places.
    central = float(horizontal[CENTRAL][2].split(" ± ")[0])
    assert f"(centralized {central:.3f})" in lines[4]
    assert re.search(r"Horizontal IID: merged once, the best rule \((Average|AbsMax), ", lines[4])
    assert "`python -m fedpriv.experiments.studies unification`" in text
    assert (tmp_path / "unification" / "arms.png").stat().st_size > 0


CENTRAL = "centralized (pooled data)"
