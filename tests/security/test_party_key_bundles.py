"""The vertical and swarm families' keys on a fleet, attacked with one host's bundle.

* A passive vertical party holds its whole bundle and the ciphertext of the embedding
  sum; it tries every context in it and cannot read the sum. The label owner can.
* A relay that hands a swarm peer its own key for another peer (a man in the middle)
  is refused: peers seal and open only under the keys pinned in their bundles.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedpriv import ConfigError, load_config
from fedpriv.crypto import ckks, peers
from fedpriv.crypto.party_keys import peer_keys
from fedpriv.crypto.records import chunks_of, to_record
from fedpriv.deployment.apps import check_role
from fedpriv.deployment.credentials import FleetKeys, write_fleet_keys
from fedpriv.families import FAMILIES

pytestmark = pytest.mark.usefixtures("task_identity")

PRESET = ckks.PRESETS["ckks-128"]  # the run's default crypto.preset
PARAMS = ckks.CkksParams(PRESET.poly_modulus_degree, PRESET.coeff_mod_bit_sizes, PRESET.scale_bits)
BASE = ["data=digits", "model=logreg", "num_clients=3", "engine=deployment"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> FleetKeys:
    return write_fleet_keys(tmp_path_factory.mktemp("k") / "fleet", nodes=3, ckks=PARAMS)


def node_context(bundle: Path, party: int) -> Context:
    return Context(
        run_id=1,
        node_id=100 + party,
        node_config={"partition-id": party, "num-partitions": 3, "keys-dir": str(bundle)},
        state=RecordDict(),
        run_config={},
    )


def message(content: RecordDict, message_type: str) -> Message:
    return Message(content, dst_node_id=101, message_type=message_type)


def vertical_mods(keys: FleetKeys, party: int) -> list:
    config = load_config(
        [
            *BASE,
            "family=vertical",
            "vertical.parties=3",
            "strategy.merge=sum",
            "crypto=ckks",
            f"crypto.keys_dir={keys.superlink.directory}",
        ]
    )
    strategy = FAMILIES.get("vertical").create(config)
    return strategy.node_mods(str(keys.device(party).directory))


def test_a_passive_partys_bundle_cannot_decrypt_the_embedding_sum(keys: FleetKeys) -> None:
    embeddings = np.random.default_rng(0).normal(size=(3, 64))
    encrypt = (keys.device(1).directory / "vertical" / "encrypt.ctx").read_bytes()
    evaluate = (keys.superlink.directory / "vertical" / "evaluate.ctx").read_bytes()
    ciphertexts = [ckks.encrypt(encrypt, PARAMS, e) for e in embeddings]
    sums, bad = ckks.add(evaluate, PARAMS, ciphertexts, [64 * 1])
    assert not bad
    total = list(sums)

    # The adversary: passive party 1 tries every context its bundle holds.
    contexts = sorted(keys.device(1).directory.rglob("*.ctx"))
    assert {p.name for p in contexts} == {"client.ctx", "encrypt.ctx", "consensus.ctx"}
    for path in contexts:
        try:
            guess = ckks.decrypt(path.read_bytes(), PARAMS, total)
        except (ValueError, RuntimeError, TypeError):
            continue  # no secret key in it
        assert not np.allclose(guess, embeddings.sum(0), atol=1.0), path
    # Its ClientApp's mod refuses to decrypt at all.
    (mod,) = vertical_mods(keys, 1)
    assert mod.keys.secret is None

    # The label owner reads the sum.
    secret = (keys.device(0).directory / "vertical" / "secret.ctx").read_bytes()
    np.testing.assert_allclose(ckks.decrypt(secret, PARAMS, total), embeddings.sum(0), atol=1e-4)
    (owner,) = vertical_mods(keys, 0)
    assert owner.keys.secret == secret


def test_a_passive_partys_mod_refuses_an_encrypted_sum(keys: FleetKeys) -> None:
    encrypt = (keys.device(1).directory / "vertical" / "encrypt.ctx").read_bytes()
    record = to_record(ckks.encrypt(encrypt, PARAMS, np.ones(16)), [16])
    assert len(chunks_of(record)) == 1
    (mod,) = vertical_mods(keys, 1)
    msg = message(RecordDict({"embedding-sum": record}), "train.top")
    with pytest.raises(PermissionError, match="holds no secret key"):
        mod(msg, node_context(keys.device(1).directory, 1), lambda m, c: m)


def swarm_sync(keys: FleetKeys, offered: dict[int, bytes]) -> Message:
    """A relay's ``train.swarm`` for peer 1, offering ``offered`` as the peers' keys."""
    config = load_config(
        [
            *BASE,
            "family=swarm",
            "strategy=gossip",
            "swarm.consensus=false",
            f"engine.keys_dir={keys.superlink.directory}",
        ]
    )
    handlers = FAMILIES.get("swarm").create(config).client_handlers()
    content = RecordDict(
        {
            "config": ConfigRecord({"round": 1, "leader": -1, "live": [0, 1, 2], "to": [0, 2]}),
            "inbox": ArrayRecord(),
            "keys": ConfigRecord({str(p): key for p, key in offered.items()}),
        }
    )
    return handlers["train.swarm"](
        message(content, "train.swarm"), node_context(keys.device(1).directory, 1)
    )


def test_a_swarm_peer_refuses_a_sealing_key_not_pinned_out_of_band(keys: FleetKeys) -> None:
    pinned = peer_keys(keys.device(1).directory).pinned
    relay_key = peers.public_key(peers.new_private_key())  # the relay's own, for peer 0
    with pytest.raises(ValueError, match="peer 0 that is not the one pinned"):
        swarm_sync(keys, {0: relay_key, 1: pinned[1], 2: pinned[2]})


def test_a_swarm_peer_seals_for_the_pinned_keys_only(keys: FleetKeys) -> None:
    pinned = peer_keys(keys.device(1).directory).pinned
    reply = swarm_sync(keys, pinned)
    outbox = reply.content.array_records["outbox"]
    assert sorted(outbox) == ["to-0", "to-2"]
    # Peer 0 opens what peer 1 sealed for it with its own bundle's key; the relay,
    # holding every public key, cannot.
    sealed = outbox["to-0"].numpy().tobytes()
    mine = peer_keys(keys.device(0).directory).private
    assert len(peers.open_sealed(sealed, mine, pinned[1], 1, 0, "r1")) > 0
    relay = peers.new_private_key()
    with pytest.raises(ValueError, match="does not authenticate"):
        peers.open_sealed(sealed, relay, pinned[1], 1, 0, "r1")


def test_a_node_started_with_another_partys_bundle_is_refused(keys: FleetKeys) -> None:
    with pytest.raises(ConfigError, match="are device-2's"):
        check_role(str(keys.device(2).directory), node_context(keys.device(2).directory, 0))
    check_role(str(keys.device(0).directory), node_context(keys.device(0).directory, 0))


def test_each_device_pins_the_same_peer_keys_and_holds_only_its_private_one(
    keys: FleetKeys,
) -> None:
    bundles = [peer_keys(keys.device(k).directory) for k in range(3)]
    assert all(b.pinned == bundles[0].pinned for b in bundles)
    for k, bundle in enumerate(bundles):
        assert peers.public_key(bundle.private) == bundle.pinned[k]
    privates = {b.private for b in bundles}
    for path in keys.superlink.directory.rglob("*"):
        if path.is_file():
            assert path.read_bytes() not in privates, path
