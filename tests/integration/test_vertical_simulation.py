"""Vertical learning in whole runs: PSI alignment, split training as good as the same
model trained centrally, every merge rule, CKKS sums, misbehaving parties. In-process but
for the silent party, on Ray (a party that hangs would hold up the in-process engine)."""

from __future__ import annotations

import json

import pytest

from fedpriv import RunFailed, load_config, run
from fedpriv.config import from_mapping
from fedpriv.crypto.records import CKKS_STYPE
from fedpriv.data.vertical import join, vertical_tables
from fedpriv.runtime.exchange import Exchange
from fedpriv.strategies.vertical.model import train_centrally
from fedpriv.strategies.vertical.settings import vertical_settings

pytestmark = pytest.mark.inprocess


@pytest.fixture
def vertical(tmp_path):
    """``vertical("data=wine", ...)``: an in-process vertical config writing into tmp_path."""

    def make(*overrides: str):
        base = ["family=vertical", f"output_dir={tmp_path / 'run'}", "engine=inprocess"]
        return load_config([*base, *overrides])

    return make


@pytest.fixture
def messages(monkeypatch):
    """Every (message type, sent content, reply content) the coordinator exchanges."""
    seen = []
    send_and_receive = Exchange.send_and_receive

    def spy(self, grid, outgoing, timeout=None):
        outgoing = list(outgoing)
        replies = send_and_receive(self, grid, outgoing, timeout)
        by_node = {r.metadata.src_node_id: r for r in replies}
        for message in outgoing:
            reply = by_node.get(message.metadata.dst_node_id)
            seen.append((message.metadata.message_type, message.content, reply and reply.content))
        return replies

    monkeypatch.setattr(Exchange, "send_and_receive", spy)
    return seen


def central(config):
    """Test accuracy and loss per epoch of the same split model trained centrally."""
    s = vertical_settings(config)
    dataset, tables = vertical_tables(
        config.data, s.parties, s.split, s.columns, s.overlap, config.seed
    )
    joined = join(tables)
    history = train_centrally(
        config, joined.train, joined.y_train, joined.test, joined.y_test,
        dataset.num_classes, config.rounds,
    )  # fmt: skip
    return joined, history


def test_breast_cancer_three_parties_aligned_by_psi_match_central_training(vertical, messages):
    config = vertical(
        "data=breast_cancer", "vertical.parties=3", "vertical.overlap=0.9", "rounds=3"
    )
    result = run(config)
    joined, expected = central(config)
    alignment = json.loads((result.run_dir / "alignment.json").read_text())
    assert alignment["method"] == "psi-ed25519"
    assert (alignment["train_entities"], alignment["test_entities"]) == (
        len(joined.ids_train),
        len(joined.ids_test),
    )
    # Same rows in the same order as the plaintext join: the same numbers, epoch by epoch.
    got = [(r["accuracy"], r["loss"]) for r in result.history]
    for (accuracy, loss), want in zip(got, expected, strict=True):
        assert abs(accuracy - want["accuracy"]) <= 0.015 and loss == pytest.approx(
            want["loss"], abs=1e-4
        )
    assert result.final["accuracy"] > 0.9
    # What reached the parties during alignment: masked points and their own row numbers.
    members = len(joined.ids_train) + len(joined.ids_test)
    for kind, sent, _ in messages:
        if kind.startswith("query."):
            for record in sent.config_records.values():
                assert set(record.values()) <= {"mask", "remask"}  # no ID travels in clear
        if kind == "query.align":
            assert len(sent["members"]["values"].numpy()) == members
        if kind == "query.psi" and "points" in sent.array_records:
            assert sent["points"]["values"].numpy().shape[1] == 32
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["family"] == "vertical" and summary["strategy"] == "splitnn"
    for record in result.history:
        assert [c["party"] for c in record["clients"]] == [0, 1, 2]
        assert all(c["bytes_up"] > 0 and c["bytes_down"] > 0 for c in record["clients"])
        assert record["vertical"]["skipped_batches"] == 0


def test_digits_split_in_halves_with_absmax_matches_central_training(vertical):
    config = vertical("data=digits", "vertical.split=halves", "strategy.merge=absmax",
                      "vertical.psi=false", "train.batch_size=64", "rounds=2")  # fmt: skip
    result = run(config)
    _, expected = central(config)
    assert abs(result.final["accuracy"] - expected[-1]["accuracy"]) <= 0.015
    assert result.final["accuracy"] > 0.6  # ten classes, two epochs


def test_ckks_sum_matches_plaintext_and_the_label_owner_sees_only_sums(vertical, messages):
    config = vertical("data=breast_cancer", "strategy.merge=sum", "crypto=ckks", "rounds=2")
    result = run(config)
    _, expected = central(config)
    assert [r["loss"] for r in result.history] == pytest.approx(
        [e["loss"] for e in expected], abs=1e-4
    )
    for kind, sent, reply in messages:
        if kind in ("train.step", "evaluate.embed") and "embedding" in reply.array_records:
            assert all(a.stype == CKKS_STYPE for a in reply["embedding"].values())
        if kind in ("train.top", "evaluate.top"):  # only the encrypted sum reaches party 0
            assert set(sent.array_records) <= {"embedding-sum", "batch"}
            assert all(a.stype == CKKS_STYPE for a in sent["embedding-sum"].values())
    crypto = result.summary["crypto"]
    assert crypto["scheme"] == "ckks" and crypto["expansion"] > 1
    assert "only the label owner decrypts" in crypto["encryption"]


def test_mean_merge_with_noise_on_embeddings_and_gradients(vertical):
    config = vertical("data=breast_cancer", "strategy.merge=mean", "vertical.psi=false",
                      "vertical.overlap=0.8", "vertical.embedding_noise=0.05",
                      "vertical.gradient_noise=0.001", "rounds=2")  # fmt: skip
    result = run(config)
    assert result.final["accuracy"] > 0.85
    record = result.history[-1]["vertical"]
    assert record["embedding_noise"] == 0.05 and record["gradient_noise"] == 0.001
    assert 0 < record["embedding_noise_ratio"] < 1 and record["gradient_noise_ratio"] > 0


def faulty(config, family):
    mapping = config.to_dict()
    mapping["family"] = {"name": family}
    return from_mapping(mapping)


def test_a_malformed_embedding_is_rejected_and_training_goes_on(vertical, register_spec):
    truncating = register_spec("truncating_vertical")
    config = vertical("data=breast_cancer", "strategy.merge=max", "vertical.psi=false", "rounds=2")
    result = run(faulty(config, truncating))
    (rejected,) = result.history[0]["rejected"]
    assert "party 1, batch 2: embedding has shape (31, 16)" in rejected["reason"]
    assert result.history[0]["vertical"]["skipped_batches"] == 1
    assert result.history[1]["rejected"] == [] and result.final["accuracy"] > 0.85


@pytest.mark.parametrize(
    ("family", "engine", "reason"),
    [
        ("crash", "inprocess", "failed train.step: "),
        pytest.param("silent", "simulation", "party 1 (node ", marks=pytest.mark.simulation),
    ],
)
def test_a_party_that_drops_out_mid_epoch_stops_the_run_with_the_reason(
    vertical, register_spec, family, engine, reason
):
    name = register_spec(f"{'crashing' if family == 'crash' else 'silent'}_vertical")
    config = vertical(f"engine={engine}", "data=breast_cancer", "vertical.psi=false",
                      "rounds=3", "engine.round_timeout_s=5")  # fmt: skip
    with pytest.raises(RunFailed) as failed:
        run(faulty(config, name))
    result = failed.value.result
    assert result.summary["status"] == "failed"
    assert len(result.history) == 1 and result.history[0]["accuracy"] is None
    assert reason in result.summary["stop_reason"]
    if family == "silent":
        assert (
            "did not answer train.step within engine.round_timeout_s=5"
            in result.summary["stop_reason"]
        )
