"""CKKS aggregation in whole runs: same results as plaintext, no secret on the server,
DP and HE together, tampered ciphertexts rejected while the round goes on. In-process
but for the secret-key run, on Ray (its keys cross real process boundaries)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tenseal as ts

from fedpriv import run
from fedpriv.crypto import Ckks, packed
from fedpriv.crypto.fingerprint import split_server_context
from fedpriv.crypto.records import PACKED_STYPE
from fedpriv.runtime.context import RunContext
from fedpriv.runtime.exchange import Exchange

pytestmark = pytest.mark.inprocess


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm"])
def test_ckks_run_matches_the_plaintext_run(strategy, make_config, tmp_path):
    overrides = (f"strategy={strategy}", "rounds=5", "model=mlp")
    plain = run(make_config(*overrides))
    encrypted = run(make_config(*overrides, "crypto=ckks", f"output_dir={tmp_path / 'ckks'}"))
    assert [r["accuracy"] for r in encrypted.history] == pytest.approx(
        [r["accuracy"] for r in plain.history], abs=1e-4
    )
    assert [r["loss"] for r in encrypted.history] == pytest.approx(
        [r["loss"] for r in plain.history], abs=1e-4
    )
    crypto = json.loads((encrypted.run_dir / "summary.json").read_text())["crypto"]
    assert crypto["scheme"] == "ckks" and crypto["security_bits"] == 128
    assert crypto["poly_modulus_degree"] == 4096 and crypto["coeff_mod_bit_sizes"] == [60, 49]
    # 2x: a seeded ciphertext holds 4096 floats in ~32 KiB, the last one padded (this
    # model: 2 ciphertexts); FedAvgM also carries its momentum.
    parts = 2 if strategy == "fedavgm" else 1
    assert 2 * parts <= crypto["expansion"] < 2 * parts * 1.3
    assert crypto["ciphertext_format"] == PACKED_STYPE and crypto["seeded"] is True
    for record in encrypted.history:
        costs = record["crypto"]
        assert costs["ciphertext_bytes_up"] > costs["plaintext_bytes_up"] > 0
        assert costs["aggregate_seconds"] > 0 and costs["encrypt_seconds_max"] > 0
        assert all(c["ckks-encrypt-seconds"] > 0 for c in record["clients"])


@pytest.mark.simulation
def test_server_never_handles_a_secret_key(make_config, monkeypatch):
    seen, keys, server_keys = [], [], []
    make_keys, send_and_receive = Ckks.make_keys, Exchange.send_and_receive
    open_context = RunContext.__init__

    def spy_keys(self):
        keys.append(make_keys(self))
        return keys[-1]

    def spy_messages(self, grid, messages, timeout=None):
        messages = list(messages)
        replies = send_and_receive(self, grid, messages, timeout)
        seen.extend(m.content for m in messages + [r for r in replies if r.has_content()])
        return replies

    def spy_context(self, *args, **kwargs):
        open_context(self, *args, **kwargs)
        server_keys.append(self.server_key)

    monkeypatch.setattr(Ckks, "make_keys", spy_keys)
    monkeypatch.setattr(RunContext, "__init__", spy_context)
    monkeypatch.setattr(Exchange, "send_and_receive", spy_messages)
    result = run(make_config("crypto=ckks"))
    assert result.final["accuracy"] > 0.3
    secret = keys[0].secret
    windows = [secret[i : i + 64] for i in range(200, len(secret) - 64, 2048)]
    blobs = [
        array.data for content in seen for record in content.array_records.values()
        for array in record.values()
    ]  # fmt: skip
    assert len(blobs) >= 2 * 4 * 2  # every train message and reply of two rounds
    for blob in blobs:
        assert not any(window in blob for window in windows)
    assert server_keys == [keys[0].public]  # the one context the ServerApp holds
    server = ts.context_from(split_server_context(keys[0].public)[1])
    assert not server.has_secret_key()
    state = [c for c in seen if "arrays" in c.array_records][-1]["arrays"]
    ciphertext = next(a for a in state.values() if a.stype == PACKED_STYPE)
    with pytest.raises(ValueError, match="secret context"):
        packed.decrypt(keys[0].public, Ckks().params, [ciphertext.data], list(ciphertext.shape))
    assert len(packed.decrypt(secret, Ckks().params, [ciphertext.data], list(ciphertext.shape)))


def test_dp_sgd_and_ckks_together(make_config):
    result = run(
        make_config("crypto=ckks", "crypto.verify=true", "privacy=dp_sgd", "strategy=fedprox")
    )
    assert result.summary["privacy"]["epsilon_max"] <= 3.0 + 1e-6
    assert result.summary["crypto"]["max_abs_error"] < 1e-6
    assert all(r["accuracy"] is not None for r in result.history)
    assert all("epsilon" in c and "ckks-error" in c for c in result.history[-1]["clients"])


def test_tampered_ciphertexts_are_rejected_and_the_round_goes_on(make_config, register_spec):
    result = run(make_config("crypto=ckks", f"crypto.name={register_spec('tampering_ckks')}"))
    assert result.summary["rounds"] == 2 and result.summary["rejected_replies"] == 4
    for record in result.history:
        reasons = sorted(r["reason"] for r in record["rejected"])
        assert reasons[0].startswith("ciphertext 0 rejected")
        assert reasons[1].startswith("expected 1 ciphertexts")
        assert sorted(c["partition-id"] for c in record["clients"]) == [2, 3]
        assert record["accuracy"] is not None
    assert np.isfinite(result.final["loss"])
