"""Packed CKKS ciphertexts (two values per slot, seeded): sums against numpy, sizes,
screening of bad ciphertexts, and the format's version."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedpriv.crypto import CkksParams, make_keys, packed
from fedpriv.crypto.client import CkksClientMod
from fedpriv.crypto.fingerprint import fingerprint
from fedpriv.crypto.records import (
    CKKS_STYPE,
    KEY,
    PACKED_STYPE,
    Layout,
    chunks_of,
    sizes_of,
    to_record,
)
from fedpriv.crypto.scheme import Ckks
from fedpriv.strategies.horizontal import HORIZONTAL_STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")

PARAMS = CkksParams(4096, (60, 49), 36)
KEYS = make_keys(PARAMS)
RNG = np.random.default_rng(11)
#: An odd size over several ciphertexts: the last one holds an odd tail, padded.
SIZE = 3 * PARAMS.packed_values + 1001


def chunk_sizes(size: int) -> list[int]:
    return Layout(("w",), ((size,),), ("float32",)).chunk_sizes(1, PARAMS.packed_values)


def client_updates(clients: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 models as training leaves them (some large values) and example counts."""
    models = RNG.normal(0.0, 0.1, (clients, SIZE)).astype(np.float32)
    models[:, :40] = RNG.uniform(-8, 8, (clients, 40))
    return models, RNG.integers(50, 6000, clients).astype(np.float64)


def encrypted_mean(
    models: np.ndarray, counts: np.ndarray, *, seeded: bool, workers: int = 1
) -> np.ndarray:
    """Clients encrypt n_k·x_k, the server adds with its key-less context, a key holder
    decrypts and divides by Σ n_k."""
    contributions = [
        packed.encrypt(KEYS.secret, PARAMS, n * m.astype(np.float64), workers, seeded=seeded)
        for m, n in zip(models, counts, strict=True)
    ]
    sizes = chunk_sizes(SIZE)
    sums, bad = packed.add(KEYS.public, PARAMS, contributions, len(sizes), workers)
    assert bad == {}
    return packed.decrypt(KEYS.secret, PARAMS, sums, sizes, workers) / counts.sum()


@pytest.mark.parametrize("seeded", [True, False])
def test_the_encrypted_mean_equals_numpys_weighted_mean_within_1e_6(seeded):
    models, counts = client_updates(10)
    expected = np.average(models.astype(np.float64), axis=0, weights=counts)
    got = encrypted_mean(models, counts, seeded=seeded)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-6


def test_worker_processes_give_the_same_mean():
    models, counts = client_updates(3)
    one = encrypted_mean(models, counts, seeded=True)
    two = encrypted_mean(models, counts, seeded=True, workers=2)
    expected = np.average(models.astype(np.float64), axis=0, weights=counts)
    assert np.abs(two - expected).max() < 1e-6 and np.abs(one - two).max() < 1e-6


def test_a_seeded_ciphertext_is_2x_float32_and_an_expanded_one_4x():
    values = RNG.normal(0.0, 1.0, 64 * PARAMS.packed_values)
    seeded = sum(map(len, packed.encrypt(KEYS.secret, PARAMS, values)))
    expanded = sum(map(len, packed.encrypt(KEYS.secret, PARAMS, values, seeded=False)))
    float32 = 4 * len(values)
    assert 2.0 < seeded / float32 < 2.05  # c0 alone, 8 bytes per 2 values, plus a seed
    assert 4.0 < expanded / float32 < 4.05  # both polynomials
    assert seeded / float32 <= 4.0


def test_the_server_sum_of_seeded_ciphertexts_is_a_whole_ciphertext():
    """A sum has no seed to keep: it travels expanded, which the clients then load."""
    chunks = [packed.encrypt(KEYS.secret, PARAMS, np.ones(100) * k) for k in (1, 2)]
    sums, _ = packed.add(KEYS.public, PARAMS, chunks, 1)
    assert len(sums[0]) > 1.9 * len(chunks[0][0])
    np.testing.assert_allclose(packed.decrypt(KEYS.secret, PARAMS, sums, [100]), 3.0, atol=1e-6)


def test_add_leaves_out_truncated_junk_foreign_and_rescaled_ciphertexts():
    values = [np.full(PARAMS.packed_values + 10, float(k)) for k in range(6)]
    chunks = [packed.encrypt(KEYS.secret, PARAMS, v) for v in values]
    chunks[1][1] = chunks[1][1][: len(chunks[1][1]) // 2]  # truncated in transit
    chunks[2][0] = b"\x00" * len(chunks[2][0])  # junk of the right length
    foreign = CkksParams(8192, (60, 40, 40, 60), 40)
    chunks[3][0] = packed.encrypt(make_keys(foreign).secret, foreign, np.ones(10))[0]
    coarse = CkksParams(4096, (60, 49), 30)  # same modulus, another scale: a wrong sum
    chunks[4][1] = packed.encrypt(KEYS.secret, coarse, np.ones(10))[0]
    sums, bad = packed.add(KEYS.public, PARAMS, chunks, 2)
    assert sorted(bad) == [1, 2, 3, 4]
    assert all(reason.startswith("ciphertext ") for reason in bad.values())
    assert "scale" in bad[4]
    total = packed.decrypt(KEYS.secret, PARAMS, sums, [PARAMS.packed_values, 10])
    np.testing.assert_allclose(total, 0.0 + 5.0, atol=1e-6)


def test_add_with_every_party_bad_returns_nothing():
    sums, bad = packed.add(KEYS.public, PARAMS, [[b"junk"], [b""]], 1)
    assert sums == [] and sorted(bad) == [0, 1]


def key_holder(num_clients: int = 10) -> CkksClientMod:
    layout = Layout(("w",), ((SIZE,),), ("float32",))
    return CkksClientMod(
        PARAMS,
        KEYS.secret,
        strategy=HORIZONTAL_STRATEGIES.create({"name": "fedavg"}),
        layout=layout,
        weight_key="num-examples",
        num_clients=num_clients,
        workers=1,
        verify=True,
    )


def test_the_range_check_bounds_each_slots_pair_of_values():
    """A slot holds (x, y) as x + iy: |x + iy| must stay below the sum's room, which
    is larger than the largest of |x| and |y| alone."""
    mod = key_holder(num_clients=1)
    room = PARAMS.max_abs_value
    mod.check_range(np.array([0.9 * room, 0.0]))
    with pytest.raises(ValueError, match="complex number"):
        mod.check_range(np.array([0.8 * room, 0.8 * room]))  # each below, the pair above


def test_the_key_holders_mod_encrypts_in_the_packed_format_and_decrypts_the_state():
    mod = key_holder()
    model = RNG.normal(size=SIZE).astype(np.float32)
    request = Message(
        RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(SIZE, np.float32))})}),
        dst_node_id=1,
        message_type="train",
    )

    def train(msg: Message, context: object) -> Message:
        metrics = MetricRecord({"num-examples": 7})
        content = RecordDict({"arrays": ArrayRecord({"w": Array(model)}), "metrics": metrics})
        return Message(content, reply_to=msg)

    reply = mod(request, None, train)  # type: ignore[arg-type]
    arrays = reply.content["arrays"]
    assert {a.stype for n, a in arrays.items() if n != KEY} == {PACKED_STYPE}
    assert sizes_of(arrays) == chunk_sizes(SIZE)
    assert reply.content["metrics"]["ckks-error"] < 1e-6
    state = to_record(chunks_of(arrays), sizes_of(arrays), 7.0, mod.key, stype=PACKED_STYPE)
    np.testing.assert_allclose(mod.decrypt_state(state)[0], model, atol=1e-6)


def test_a_state_in_the_older_format_is_refused_with_both_formats_named():
    """A checkpoint of TenSEAL vectors must not be read as packed ciphertexts."""
    old = to_record([b"old"], [10], 1.0, fingerprint(KEYS.secret), stype=CKKS_STYPE)
    with pytest.raises(ValueError, match=r"'tenseal\.ckks'.*'seal\.ckks\.complex/1'"):
        key_holder().decrypt_state(old)


def test_the_server_refuses_a_reply_in_the_older_format():
    scheme = Ckks()
    layout = Layout(("w",), ((SIZE,),), ("float32",))
    fedavg = HORIZONTAL_STRATEGIES.create({"name": "fedavg"})
    aggregator = scheme.aggregator(
        fedavg.build(1), weight_key="num-examples", strategy=fedavg, layout=layout,
        public=KEYS.public,
    )  # fmt: skip
    sizes = chunk_sizes(SIZE)
    old = to_record([b"x"] * len(sizes), sizes, key=fingerprint(KEYS.secret), stype=CKKS_STYPE)
    content = RecordDict({"arrays": old, "metrics": MetricRecord({"num-examples": 3})})
    reply = Message(content, dst_node_id=0, message_type="train")
    reason = aggregator.check(reply, ArrayRecord({"w": Array(np.zeros(SIZE, np.float32))}))
    assert reason is not None and "'tenseal.ckks'" in reason and PACKED_STYPE in reason


def test_threads_of_one_process_do_not_mix_their_ciphertexts():
    """SEAL loads through a file path: each thread must have its own file, or one
    thread's ciphertext is loaded as another's."""
    values = [np.full(PARAMS.packed_values, float(k)) for k in range(8)]
    chunks = [packed.encrypt(KEYS.secret, PARAMS, v) for v in values]

    def round_trip(k: int) -> float:
        sums, _ = packed.add(KEYS.public, PARAMS, [chunks[k]] * 3, 1)
        total = packed.decrypt(KEYS.secret, PARAMS, sums, [PARAMS.packed_values])
        return float(np.abs(total - 3.0 * k).max())

    with ThreadPoolExecutor(4) as threads:
        errors = list(threads.map(round_trip, [k for k in range(8) for _ in range(3)]))
    assert max(errors) < 1e-6
