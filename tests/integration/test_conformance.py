"""One conformance table over the registries: every family × strategy × privacy × crypto
combination that config validation accepts runs one round on the in-process engine,
through the real ClientApp handlers and mods, and reports what it promises (a finite
accuracy and loss, bytes both ways, ε where DP is on, ciphertext bytes where CKKS is).

A combination refused at config time is skipped here (tests/unit/test_config.py tests
the refusals); the last test checks that no family, strategy, privacy or crypto setting
is refused in every combination, so a skip cannot hide one."""

from __future__ import annotations

import functools
import itertools
import math

import pytest

from fedpriv import ExperimentConfig, load_config, run
from fedpriv.crypto import CRYPTO
from fedpriv.errors import ConfigError
from fedpriv.families import FAMILIES
from fedpriv.privacy import PRIVACY

pytestmark = pytest.mark.inprocess

#: One round on 200 synthetic samples; each family keeps its own number of nodes.
SMALL = [
    "engine=inprocess", "rounds=1", "model=logreg", "data=synthetic", "data.num_samples=200",
    "telemetry.device=false",
]  # fmt: skip

COMBINATIONS = [
    (family, strategy, privacy, crypto)
    for family in FAMILIES.names()
    for strategy in FAMILIES.get(family).strategies.names()
    for privacy, crypto in itertools.product(PRIVACY.names(), CRYPTO.names())
]


@functools.cache
def config_of(combination: tuple[str, str, str, str]) -> ExperimentConfig | None:
    """The validated config of a combination; None when validation refuses it."""
    family, strategy, privacy, crypto = combination
    overrides = [f"family={family}", f"strategy={strategy}", f"privacy={privacy}",
                 f"crypto={crypto}"]  # fmt: skip
    try:
        return load_config(overrides=[*SMALL, *overrides])
    except ConfigError:
        return None


@pytest.mark.parametrize("combination", COMBINATIONS, ids="-".join)
def test_an_accepted_combination_runs_and_reports_what_it_promises(combination, tmp_path):
    config = config_of(combination)
    if config is None:
        pytest.skip("refused at config time")
    _, _, privacy, crypto = combination
    result = run(config.replace(output_dir=str(tmp_path)))
    summary, (record,) = result.summary, result.history
    assert summary["rounds"] == 1 and summary["rejected_replies"] == 0
    assert 0.0 <= record["accuracy"] <= 1.0 and math.isfinite(record["loss"])
    assert record["bytes_up"] > 0 and record["bytes_down"] > 0
    spent = summary["privacy"]
    if privacy == "none":
        assert spent is None
    if "dp_sgd" in privacy:
        assert 0 < spent["epsilon_max"] < math.inf
    if "central" in privacy:
        assert 0 < spent["user_level_epsilon"] < math.inf
    if crypto == "none":
        assert summary["crypto"] is None
    else:
        assert summary["crypto"]["scheme"] == crypto
        assert record["crypto"]["ciphertext_bytes_up"] > 0


def test_no_setting_is_refused_in_every_combination():
    accepted = [c for c in COMBINATIONS if config_of(c) is not None]
    parts = {"family/strategy": slice(0, 2), "privacy": slice(2, 3), "crypto": slice(3, 4)}
    for name, part in parts.items():
        missing = {c[part] for c in COMBINATIONS} - {c[part] for c in accepted}
        assert not missing, f"{name}: {sorted(missing)} is refused in every combination"
