"""Every study preset (conf/experiment/) runs to completion in a reduced form: one
round, at most 3 clients, digits; the sweep's last job, and the first as well where
the first runs another family (unification) or partition (replicate_vs_split).
`make studies` runs them in full. In-process: the presets' settings are under test."""

from __future__ import annotations

import json

import pytest

from fedpriv import load_config, run
from fedpriv.experiments.studies import presets, sweep_points

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
