"""docs/design/architecture.md's toy family compiles and runs, registered from outside
the config and runtime layers (the walk-through a reader copies)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedpriv.data.datasets import DATASETS
from fedpriv.families import FAMILIES

DOC = Path(__file__).parents[2] / "docs" / "design" / "architecture.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.inprocess
def test_the_toy_family_of_the_walk_through_runs(tmp_path, monkeypatch):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 4, "the walk-through's four blocks"
    monkeypatch.chdir(tmp_path)  # its default results directory: outputs/ under here
    namespace: dict[str, object] = {}
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), namespace)
    finally:
        if "toy" in FAMILIES:
            FAMILIES.unregister("toy")
    result = namespace["result"]
    train_size = len(DATASETS.create({"name": "wine"}, "data").load(0).x_train)
    assert [r["examples"] for r in result.history] == [train_size, train_size]
    assert result.summary["family"] == "toy" and result.summary["strategy"] == "count"
    assert (result.run_dir / "clients.json").is_file()
