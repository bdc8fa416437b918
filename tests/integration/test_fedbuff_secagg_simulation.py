"""FedBuff under ``crypto=ckks_secagg`` in whole runs with DP-SGD: every full buffer is
unmasked by idle nodes and steps the encrypted model, and a key holder evaluates each
version. In process, and once on Ray, where a node's masks and answered-mask list must
travel in its own Flower context between messages."""

from __future__ import annotations

import pytest

from fedpriv import run

FEDBUFF_SECAGG_DP = [
    "data=digits",
    "num_clients=3",
    "rounds=2",
    "strategy=fedbuff",
    "strategy.buffer_size=2",
    "strategy.staleness=constant",
    "strategy.updates_per_round=4",
    "crypto=ckks_secagg",
    "crypto.preset=ckks-128-async",
    "crypto.scale_bits=null",
    "crypto.verify=true",
    "privacy=dp_sgd",
    "privacy.target_epsilon=null",
    "privacy.noise_multiplier=1.0",
]


def check(result) -> None:
    crypto = result.summary["crypto"]
    assert crypto["scheme"] == "ckks_secagg" and crypto["preset"] == "ckks-128-async"
    assert crypto["max_abs_error"] < 1e-6  # each refresher decrypted its own ciphertext
    assert all(r["accuracy"] is not None for r in result.history)  # a key holder evaluated
    assert result.history[-1]["accuracy"] > 0.5
    for record in result.history:
        assert "refused" not in record["crypto"]  # no buffer was dropped
        # Every full buffer stepped, or waits for enough idle nodes to unmask it.
        assert record["version"] + record["crypto"]["buffers_waiting"] == record["updates"] // 2
        assert record["crypto"]["unmask_seconds"] > 0
    clients = [c for r in result.history for c in r["clients"]]
    assert len(clients) >= 8 and all("epsilon" in c for c in clients)
    assert result.summary["privacy"]["epsilon_max"] > 0


@pytest.mark.inprocess
@pytest.mark.parametrize("pieces", [1, 2])
def test_fedbuff_with_masks_and_dp_sgd_in_process(pieces, make_config) -> None:
    """pieces=2: coded shares half the update's size, unmasked by all 3 nodes."""
    check(run(make_config(*FEDBUFF_SECAGG_DP, f"crypto.pieces={pieces}")))


@pytest.mark.simulation
def test_fedbuff_with_masks_and_dp_sgd_on_ray(make_config) -> None:
    check(run(make_config(*FEDBUFF_SECAGG_DP)))
