"""One conformance table over the registries: every family × strategy × privacy × crypto
combination that config validation accepts runs two rounds on the in-process engine,
through the real ClientApp handlers and mods, and reports what it promises in each (a
finite accuracy and loss, bytes both ways, no rejected reply, ε where DP is on and
growing, ciphertext bytes where CKKS is). A family that checkpoints is cut after round
1, as a crash would, and resumed from its directory for round 2.

A combination refused at config time is skipped here (tests/unit/test_config.py tests
the refusals); the last test checks that no family, strategy, privacy or crypto setting
is refused in every combination, so a skip cannot hide one."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedpriv import ExperimentConfig, load_config, resume, run
from fedpriv.crypto import CRYPTO
from fedpriv.crypto.keys import write_keys
from fedpriv.errors import ConfigError
from fedpriv.families import FAMILIES
from fedpriv.privacy import PRIVACY
from fedpriv.results import Result
from fedpriv.runtime.checkpoint import Checkpoint

pytestmark = pytest.mark.inprocess

#: Two rounds on 200 synthetic samples; each family keeps its own number of nodes.
SMALL = [
    "engine=inprocess", "rounds=2", "model=logreg", "data=synthetic", "data.num_samples=200",
    "telemetry.device=false",
]  # fmt: skip

#: What a combination needs besides (FedBuff's staleness scaling takes a rescale level).
ALSO = {
    ("fedbuff", "ckks"): ["crypto.preset=ckks-128-async"],
    ("fedbuff", "ckks_secagg"): [
        "crypto.preset=ckks-128-async",
        "crypto.scale_bits=null",
        "strategy.staleness=constant",
    ],
}

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
                 f"crypto={crypto}", *ALSO.get((strategy, crypto), [])]  # fmt: skip
    try:
        return load_config(overrides=[*SMALL, *overrides])
    except ConfigError:
        return None


class Crash(Exception):
    """The run dies right after writing its round-1 checkpoint."""


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Callable[[Any], Path]:
    """Key sets from `fedpriv keys init`, one per crypto scheme's parameters: a CKKS run
    that resumes needs its keys back."""
    made: dict[Any, Path] = {}

    def of(params: Any) -> Path:
        if params not in made:
            made[params] = tmp_path_factory.mktemp("keys")
            write_keys(made[params], params)
        return made[params]

    return of


def cut_and_resumed(config: ExperimentConfig, monkeypatch) -> Result:
    """``config`` run until its round-1 checkpoint is written, then resumed."""
    save = Checkpoint.save

    def save_then_crash(checkpoint: Checkpoint, run_dir) -> None:  # type: ignore[no-untyped-def]
        save(checkpoint, run_dir)
        if checkpoint.round == 1:
            raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(Checkpoint, "save", save_then_crash)
        with pytest.raises(Crash):
            run(config)
    assert not (Path(config.output_dir) / "summary.json").exists()
    return resume(config.output_dir)


@pytest.mark.parametrize("combination", COMBINATIONS, ids="-".join)
def test_an_accepted_combination_runs_and_reports_what_it_promises(
    combination, tmp_path, keys_dir, monkeypatch
):
    config = config_of(combination)
    if config is None:
        pytest.skip("refused at config time")
    family, _, privacy, crypto = combination
    resumable = FAMILIES.get(family).create(config).can_resume
    if resumable and crypto != "none":
        keys = str(keys_dir(config.crypto.params))
        config = config.replace(crypto=dataclasses.replace(config.crypto, keys_dir=keys))
    config = config.replace(output_dir=str(tmp_path / "run"))
    result = cut_and_resumed(config, monkeypatch) if resumable else run(config)
    summary, history = result.summary, result.history
    assert summary["rounds"] == 2 and summary["rejected_replies"] == 0
    for record in history:
        assert 0.0 <= record["accuracy"] <= 1.0 and math.isfinite(record["loss"])
        assert record["bytes_up"] > 0 and record["bytes_down"] > 0
        if crypto != "none":
            assert record["crypto"]["ciphertext_bytes_up"] > 0
    spent = summary["privacy"]
    if privacy == "none":
        assert spent is None
    if "dp_sgd" in privacy:
        assert 0 < spent["epsilon_max"] < math.inf
        first, second = (r["privacy"]["epsilon_max"] for r in history)
        assert second > first  # composed over both rounds, across the resume too
    if "central" in privacy:
        assert 0 < spent["user_level_epsilon"] < math.inf
    if crypto == "none":
        assert summary["crypto"] is None
    else:
        assert summary["crypto"]["scheme"] == crypto


def test_no_setting_is_refused_in_every_combination():
    accepted = [c for c in COMBINATIONS if config_of(c) is not None]
    parts = {"family/strategy": slice(0, 2), "privacy": slice(2, 3), "crypto": slice(3, 4)}
    for name, part in parts.items():
        missing = {c[part] for c in COMBINATIONS} - {c[part] for c in accepted}
        assert not missing, f"{name}: {sorted(missing)} is refused in every combination"


def test_a_ckks_run_with_keys_made_in_memory_is_refused_a_resume(tmp_path, monkeypatch):
    """Its checkpoint's model is encrypted under a key that ended with the run: resuming
    used to make new keys and reject every reply after the checkpoint."""
    config = load_config([*SMALL, "crypto=ckks", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"cannot be resumed\. .* set crypto\.keys_dir="):
        cut_and_resumed(config, monkeypatch)
