"""FedBuff under CKKS end to end, with DP-SGD on: the clients' shared key encrypts every
update, the server scales and adds ciphertexts it cannot read, and a key holder
evaluates each model version (:mod:`fedpriv.crypto.offset`)."""

from __future__ import annotations

import pytest

from fedpriv import resume, run
from fedpriv.crypto import Ckks, write_keys

FEDBUFF_CKKS_DP = [
    "data=digits",
    "num_clients=3",
    "rounds=2",
    "strategy=fedbuff",
    "strategy.buffer_size=2",
    "strategy.updates_per_round=4",
    "crypto=ckks",
    "crypto.preset=ckks-128-async",
    "crypto.verify=true",
    "privacy=dp_sgd",
    "privacy.target_epsilon=null",
    "privacy.noise_multiplier=1.0",
]


def check(result) -> None:
    crypto = result.summary["crypto"]
    assert crypto["preset"] == "ckks-128-async"
    assert crypto["max_abs_error"] < 1e-6  # each client decrypted its own update
    assert crypto["expansion"] > 1  # one ciphertext holds 4096 values; logreg has 650
    assert all(r["accuracy"] is not None for r in result.history)  # a key holder evaluated
    assert result.history[-1]["accuracy"] > 0.5
    # A version per full buffer of two (a pull may bring more updates than a round asks).
    assert all(r["version"] == r["updates"] // 2 for r in result.history)
    clients = [c for r in result.history for c in r["clients"]]
    assert len(clients) >= 8 and all("epsilon" in c and "ckks-error" in c for c in clients)
    assert result.summary["privacy"]["epsilon_max"] > 0


@pytest.mark.inprocess
@pytest.mark.slow
def test_fedbuff_with_ckks_and_dp_sgd_in_process(make_config) -> None:
    check(run(make_config(*FEDBUFF_CKKS_DP)))


@pytest.mark.simulation
def test_fedbuff_with_ckks_and_dp_sgd_on_ray(make_config) -> None:
    check(run(make_config(*FEDBUFF_CKKS_DP)))


@pytest.mark.processes
def test_a_killed_fedbuff_ckks_run_resumes_from_its_encrypted_offset(tmp_path, kill_during_run):
    """The checkpoint holds the model as the encrypted offset over the base; the resumed
    run reads it again with the same key files and goes on from its version."""
    keys = tmp_path / "keys"
    write_keys(keys, Ckks(preset="ckks-128-async").params)
    killed = tmp_path / "killed"
    overrides = [o for o in FEDBUFF_CKKS_DP if not o.startswith(("num_clients", "rounds"))]
    kill_after = kill_during_run(
        killed,
        ["engine=inprocess", "model=logreg", "num_clients=3", "rounds=4", *overrides,
         f"crypto.keys_dir={keys}"],
    )  # fmt: skip
    result = resume(killed)
    history = result.history
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    versions = [r["version"] for r in history]
    assert versions == sorted(versions) and versions[kill_after] > versions[kill_after - 1]
    assert all(r["accuracy"] is not None for r in history)
    assert history[-1]["accuracy"] > 0.5
