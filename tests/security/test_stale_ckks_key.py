"""A key holder encrypting under another CKKS key set must not corrupt the encrypted sum.

The adversary (or the accident): a device that kept the ``client.ctx`` of a rotated key
set. Its ciphertexts load under the run's parameters, have the right sizes and add
without complaint; before key fingerprints the server summed them and every client then
decrypted garbage. Real TenSEAL contexts throughout: key set A is the run's, B the
stale one. The fingerprint is a consistency check, not authentication (a malicious key
holder can copy the run's): docs/security.md.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedpriv import run
from fedpriv.crypto import CRYPTO, Ckks, write_keys
from fedpriv.crypto.client import CkksClientMod
from fedpriv.crypto.fingerprint import fingerprint, short, split_server_context
from fedpriv.crypto.records import KEY, Layout
from fedpriv.errors import ConfigError
from fedpriv.strategies.horizontal import HORIZONTAL_STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")

SCHEME = Ckks()
GLOBAL = ArrayRecord(
    {"w": Array(np.zeros((4, 5), np.float32)), "b": Array(np.zeros(5, np.float32))}
)
LAYOUT = Layout.of(GLOBAL)
FEDAVG = HORIZONTAL_STRATEGIES.create({"name": "fedavg"})
RUN, STALE = SCHEME.make_keys(), SCHEME.make_keys()
RNG = np.random.default_rng(3)
#: node -> (the key it holds, its update, its example count)
NODES = {
    1: (RUN, RNG.normal(size=LAYOUT.size), 10),
    2: (RUN, RNG.normal(size=LAYOUT.size), 30),
    3: (STALE, RNG.normal(size=LAYOUT.size), 20),
}


def client_mod(secret: bytes) -> CkksClientMod:
    """The real key holders' mod, as ``crypto=ckks`` installs it on every node."""
    return CkksClientMod(
        SCHEME.params,
        secret,
        strategy=FEDAVG,
        layout=LAYOUT,
        weight_key="num-examples",
        num_clients=len(NODES),
        workers=1,
        verify=False,
    )


def train_reply(node: int, state: ArrayRecord) -> Message:
    """What ``node`` sends back after training from ``state``: its update, encrypted by
    the CKKS mod under the key it holds."""
    keys, values, weight = NODES[node]
    request = Message(RecordDict({"arrays": state}), dst_node_id=node, message_type="train")

    def train(msg: Message, context: object) -> Message:
        content = RecordDict(
            {
                "arrays": LAYOUT.unflatten(values),
                "metrics": MetricRecord({"num-examples": weight}),
            }
        )
        return Message(content, reply_to=msg)

    return client_mod(keys.secret)(request, None, train)  # type: ignore[arg-type]


def server_round(state: ArrayRecord) -> tuple[ArrayRecord | None, dict[int, str]]:
    """One round on the server: screen every reply, sum the accepted ciphertexts."""
    aggregator = SCHEME.aggregator(
        FEDAVG.build(len(NODES)),
        weight_key="num-examples",
        strategy=FEDAVG,
        layout=LAYOUT,
        public=RUN.public,
    )
    accepted, rejected = [], {}
    for node in NODES:
        reply = train_reply(node, state)
        if (reason := aggregator.check(reply, GLOBAL)) is None:
            accepted.append(reply)
        else:
            rejected[node] = reason
    result = aggregator.aggregate(1, accepted, GLOBAL, len(NODES))
    assert not result.rejected
    return result.arrays, rejected


def test_an_update_under_a_stale_key_is_rejected_and_the_sum_decrypts_to_the_honest_mean():
    """Before the fix the stale node's reply passed the check and entered the sum: the
    decrypted model was off by ~7e6 instead of matching the honest mean to 1e-6."""
    state, rejected = server_round(GLOBAL)
    run_key, stale_key = short(fingerprint(RUN.secret)), short(fingerprint(STALE.secret))
    assert list(rejected) == [3]
    assert stale_key in rejected[3] and run_key in rejected[3], rejected[3]
    assert state is not None
    decrypted = client_mod(RUN.secret).decrypt_state(state)[0]
    honest = np.average([NODES[1][1], NODES[2][1]], axis=0, weights=[10, 30])
    np.testing.assert_allclose(decrypted, honest, atol=1e-6)  # CKKS error ~1e-8 per value


def test_a_stale_device_refuses_the_runs_state_instead_of_training_on_garbage():
    """Before the fix the stale node decrypted the run's state under its own key and
    trained on noise without a word; now its error reply says what to do."""
    state, _ = server_round(GLOBAL)
    assert state is not None
    with pytest.raises(ValueError, match=r"client\.ctx is stale"):
        client_mod(STALE.secret).decrypt_state(state)


def test_a_reply_without_a_fingerprint_is_rejected():
    aggregator = SCHEME.aggregator(
        FEDAVG.build(1), weight_key="num-examples", strategy=FEDAVG, layout=LAYOUT,
        public=RUN.public,
    )  # fmt: skip
    reply = train_reply(1, GLOBAL)
    arrays = reply.content["arrays"]
    reply.content["arrays"] = ArrayRecord({k: v for k, v in arrays.items() if k != KEY})
    reason = aggregator.check(reply, GLOBAL)
    assert reason is not None and "no 'key-fingerprint'" in reason


def test_a_server_context_without_a_fingerprint_is_refused_at_load(tmp_path):
    """A server.ctx of an older fedpriv cannot check keys: the run refuses to start."""
    keys = write_keys(tmp_path, SCHEME.params)
    recorded = json.loads((tmp_path / "params.json").read_text())["key_fingerprint"]
    assert recorded == fingerprint(keys.secret).hex()
    scheme = Ckks(keys_dir=str(tmp_path))
    assert scheme.load_keys(server=True) == keys.public
    (tmp_path / "server.ctx").write_bytes(split_server_context(keys.public)[1])
    with pytest.raises(ConfigError, match=r"no key fingerprint.*fedpriv keys init"):
        scheme.load_keys(server=True)


@dataclasses.dataclass(frozen=True)
class StaleKeyCkks(Ckks):
    """``crypto=ckks`` where partition 3 still holds a key set of its own (a device that
    missed a key rotation); every node runs the real CKKS mod."""

    def client_mods(self, config: Any, secret: bytes | None, layout: Layout) -> list[Any]:
        (honest,) = super().client_mods(config, secret, layout)
        (stale,) = super().client_mods(config, self.make_keys().secret, layout)

        def by_device(msg: Message, context: Context, call_next: Callable[..., Message]):
            mod = stale if int(context.node_config["partition-id"]) == 3 else honest
            return mod(msg, context, call_next)

        return [by_device]


@pytest.fixture
def stale_key_scheme() -> Iterator[str]:
    """``crypto.name`` of :class:`StaleKeyCkks`, registered for one test."""
    CRYPTO.register("stale_key_ckks")(StaleKeyCkks)
    try:
        yield "stale_key_ckks"
    finally:
        CRYPTO.unregister("stale_key_ckks")


@pytest.mark.inprocess
def test_a_stale_device_in_a_whole_run_is_left_out_and_the_rounds_go_on(
    make_config, stale_key_scheme
):
    """Four nodes in a whole in-process run, one with a stale key: round 1 the server refuses its
    ciphertexts by fingerprint, round 2 the device refuses the state; the three honest
    clients carry both rounds, and the model they make is evaluated and finite.

    Under CKKS a key holder evaluates: the lowest-ID node among those whose updates the
    round accepted, so never the stale device (node IDs are random per run: it used to
    be asked whenever its ID was the lowest, and the round's accuracy was lost)."""
    result = run(make_config("crypto=ckks", f"crypto.name={stale_key_scheme}"))
    assert result.summary["rounds"] == 2 and result.summary["rejected_replies"] == 2
    first, second = (record["rejected"] for record in result.history)
    assert len(first) == 1 and "ciphertexts made under CKKS key" in first[0]["reason"]
    assert len(second) == 1 and "client.ctx is stale" in second[0]["reason"]
    for record in result.history:
        assert sorted(c["partition-id"] for c in record["clients"]) == [0, 1, 2]
        assert record["accuracy"] is not None and np.isfinite(record["loss"])
