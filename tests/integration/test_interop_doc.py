"""docs/interop.md's code runs as written: a plain Flower ClientApp under fedpriv's
server, and fedpriv's ClientApp under Flower's stock FedAvg."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "interop.md"


@pytest.mark.inprocess
def test_the_interop_page_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 3, "the ClientApp, the fedpriv run, the Flower server"
    monkeypatch.chdir(tmp_path)  # the run's default results directory: outputs/ here
    namespace: dict[str, object] = {"__name__": "interop_doc"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    result = namespace["result"]
    assert result.status == "completed" and result.final["accuracy"] > 0.8  # type: ignore[attr-defined]
    metrics = namespace["trained"]["metrics"]  # type: ignore[index]
    assert set(metrics) == {1, 2} and metrics[2]["epsilon"] > metrics[1]["epsilon"] > 0
