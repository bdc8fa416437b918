"""CKKS aggregation against plaintext arithmetic, who can decrypt, and misuse."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tenseal as ts
from aggregation_inputs import SHAPES, client_models, reply
from flwr.app import ArrayRecord, ConfigRecord

from fedpriv import ConfigError, load_config
from fedpriv.cli import main as cli_main
from fedpriv.crypto import PRESETS, CkksParams, ckks, make_keys, parallel, read_keys, write_keys
from fedpriv.crypto.client import CkksClientMod
from fedpriv.crypto.fingerprint import split_server_context
from fedpriv.crypto.parallel import map_spans, map_spans_forked
from fedpriv.crypto.records import Layout, is_encrypted, to_record
from fedpriv.strategies.horizontal import HORIZONTAL_STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")

PARAMS = CkksParams(4096, (60, 49), 36)
KEYS = make_keys(PARAMS)
RNG = np.random.default_rng(3)


def realistic_models(clients: int, size: int = 20_000) -> list[np.ndarray]:
    """Weights as a trained MLP has them: mostly small, some large, float32."""
    base = RNG.normal(0.0, 0.1, size).astype(np.float32)
    base[:50] = RNG.uniform(-8, 8, 50)  # biases and outliers
    return [base + RNG.normal(0.0, 0.02, size).astype(np.float32) for _ in range(clients)]


def encrypted_fedavg(models: list[np.ndarray], counts: list[int], workers: int = 1) -> np.ndarray:
    """The CKKS path end to end: clients encrypt n_k·w_k, the server adds with the public
    context, a key holder decrypts and divides by Σ n_k."""
    contributions = [
        ckks.encrypt(KEYS.secret, PARAMS, n * m.astype(np.float64), workers)
        for m, n in zip(models, counts, strict=True)
    ]
    sizes = Layout(("w",), ((models[0].size,),), ("float32",)).chunk_sizes(1, PARAMS.slots)
    sums, bad = ckks.add(KEYS.public, PARAMS, contributions, sizes, workers)
    assert bad == {}
    return ckks.decrypt(KEYS.secret, PARAMS, sums, workers) / sum(counts)


def test_encrypted_aggregate_equals_plaintext_fedavg_within_1e_6():
    models, counts = realistic_models(10), [int(n) for n in RNG.integers(50, 6000, 10)]
    plain = np.average(np.stack(models).astype(np.float64), axis=0, weights=counts)
    encrypted = encrypted_fedavg(models, counts)
    assert encrypted.shape == plain.shape
    assert np.abs(encrypted - plain).max() < 1e-6


def test_encrypted_aggregate_equals_flowers_fedavg():
    models = [{k: v * 3 for k, v in m.items()} for m in client_models(4)]
    counts = [10, 200, 35, 7]
    flower = HORIZONTAL_STRATEGIES.create({"name": "fedavg"}).build()
    replies = [reply(m, n, i) for i, (m, n) in enumerate(zip(models, counts, strict=True))]
    arrays, _ = flower.aggregate_train(1, replies)
    layout = Layout.of(ArrayRecord({k: v for k, v in replies[0].content["arrays"].items()}))
    flat = [layout.flatten(r.content["arrays"]) for r in replies]
    got = layout.unflatten(encrypted_fedavg(flat, counts))
    for name in SHAPES:
        np.testing.assert_allclose(got[name].numpy(), arrays[name].numpy(), atol=1e-6)


def test_process_pool_gives_the_same_aggregate():
    models, counts = realistic_models(3, size=40 * PARAMS.slots), [5, 9, 2]
    plain = np.average(np.stack(models).astype(np.float64), axis=0, weights=counts)
    assert np.abs(encrypted_fedavg(models, counts, workers=2) - plain).max() < 1e-6


def test_a_forked_worker_never_destroys_its_parents_contexts():
    """A worker forked from a process whose context cache is full loads a new context.
    With an lru_cache it evicted one of its parent's, whose destructor waits forever on
    a thread pool that did not survive the fork: the whole suite hung here."""
    import multiprocessing

    for bits in range(20, 20 + ckks._ContextCache.SIZE):  # fill the parent's cache
        ckks.load_context(KEYS.secret, bits)
    worker = multiprocessing.get_context("fork").Process(
        target=ckks.load_context, args=(KEYS.secret, PARAMS.scale_bits)
    )
    worker.start()
    worker.join(120)  # a guard against a hang, not a timing: loading takes milliseconds
    hung = worker.is_alive()
    if hung:
        worker.kill()
        worker.join()
    assert not hung and worker.exitcode == 0


def numbered_pids(start: int, stop: int) -> list[tuple[int, int]]:
    return [(i, os.getpid()) for i in range(start, stop)]


def test_map_spans_keeps_order_and_reuses_its_worker_processes():
    def spans(start: int, stop: int) -> tuple[int, int]:
        return start, stop

    results = map_spans(numbered_pids, 40, 2, spans, min_per_worker=4)
    assert [i for i, _ in results] == list(range(40))
    executor = parallel.pool(2)
    pool_pids = set(executor._processes)  # which worker takes which span is the pool's choice
    assert len(pool_pids) == 2 and os.getpid() not in pool_pids
    assert {pid for _, pid in results} <= pool_pids
    again = map_spans(numbered_pids, 40, 2, spans, min_per_worker=4)
    assert parallel.pool(2) is executor  # the same pool, not a new fork per call
    assert {pid for _, pid in again} <= pool_pids == set(executor._processes)
    assert {pid for _, pid in map_spans(numbered_pids, 5, 2, spans)} == {os.getpid()}


def test_map_spans_forked_sees_the_callers_data_and_stops_its_workers():
    data = list(range(100, 140))  # read by the forked workers, never pickled to them

    def work(start: int, stop: int) -> list[tuple[int, int]]:
        return [(data[i], os.getpid()) for i in range(start, stop)]

    results = map_spans_forked(work, 40, 2, min_per_worker=4)
    assert [v for v, _ in results] == data
    workers = {pid for _, pid in results}  # the pool may hand both spans to one worker
    assert 1 <= len(workers) <= 2 and os.getpid() not in workers
    for pid in workers:  # stopped and reaped by the time the call returns
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_server_context_holds_no_key_and_cannot_decrypt_or_encrypt():
    server = ts.context_from(split_server_context(KEYS.public)[1])
    assert not server.is_private() and not server.has_secret_key()
    # Parameters and the key's fingerprint only: no public, relinearization or Galois keys.
    assert len(KEYS.public) < 200
    ciphertext = ckks.encrypt(KEYS.secret, PARAMS, np.ones(10))[0]
    with pytest.raises(ValueError, match="secret_key"):
        ts.ckks_vector_from(server, ciphertext).decrypt()
    with pytest.raises(ValueError, match="encryption"):
        ts.ckks_vector(server, [1.0])
    client = ts.context_from(KEYS.secret)
    assert client.has_secret_key() and not client.has_galois_keys()


def test_add_leaves_out_tampered_wrong_sized_and_foreign_ciphertexts():
    values = [np.full(PARAMS.slots + 10, float(k)) for k in range(5)]
    chunks = [ckks.encrypt(KEYS.secret, PARAMS, v) for v in values]
    chunks[1][1] = chunks[1][1][: len(chunks[1][1]) // 2]  # truncated in transit
    chunks[2][0] = ckks.encrypt(KEYS.secret, PARAMS, np.ones(7))[0]  # wrong length
    foreign = CkksParams(8192, (60, 40, 40, 60), 40)
    chunks[3][0] = ckks.encrypt(make_keys(foreign).secret, foreign, np.ones(PARAMS.slots))[0]
    sums, bad = ckks.add(KEYS.public, PARAMS, chunks, [PARAMS.slots, 10])
    assert sorted(bad) == [1, 2, 3]
    assert "holds 7 values, expected 2048" in bad[2]
    assert all(reason.startswith("ciphertext ") for reason in bad.values())
    total = ckks.decrypt(KEYS.secret, PARAMS, sums)
    np.testing.assert_allclose(total, np.full(PARAMS.slots + 10, 0.0 + 4.0), atol=1e-6)


def test_add_with_every_party_bad_returns_nothing():
    sums, bad = ckks.add(KEYS.public, PARAMS, [[b"junk"], [b"more junk"]], [5])
    assert sums == [] and sorted(bad) == [0, 1]


def test_fedavgm_shares_reproduce_flowers_fedavgm_over_rounds():
    """Key holders' momentum rule, averaged, equals Flower's FedAvgM on plaintext."""
    spec = HORIZONTAL_STRATEGIES.create(
        {"name": "fedavgm", "server_momentum": 0.8, "server_learning_rate": 0.7}
    )
    flower = spec.build()
    start = {k: RNG.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    arrays = ArrayRecord({k: reply(start).content["arrays"][k] for k in SHAPES})
    layout = Layout.of(arrays)
    state = [layout.flatten(arrays), np.zeros(layout.size)]

    class Grid:  # configure_train only asks the grid for node ids
        def get_node_ids(self):
            return [0, 1, 2]

    for server_round in (1, 2, 3):
        list(flower.configure_train(server_round, arrays, ConfigRecord(), Grid()))
        models, counts = client_models(3), [4, 11, 6]
        replies = [reply(m, n, i) for i, (m, n) in enumerate(zip(models, counts, strict=True))]
        arrays, _ = flower.aggregate_train(server_round, replies)
        shares = [
            n * np.concatenate(spec.contribution(state, layout.flatten(r.content["arrays"])))
            for r, n in zip(replies, counts, strict=True)
        ]
        state = list((sum(shares) / sum(counts)).reshape(2, layout.size))
        np.testing.assert_allclose(state[0], layout.flatten(arrays), atol=1e-5)
    assert spec.state_parts() == 2


def test_layout_round_trip_and_chunk_sizes():
    arrays = reply({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}).content["arrays"]
    layout = Layout.of(arrays)
    back = layout.unflatten(layout.flatten(arrays))
    np.testing.assert_array_equal(back["w"].numpy(), arrays["w"].numpy())
    assert back["w"].dtype == "float32" and layout.float32_bytes == 48
    assert layout.chunk_sizes(2, 10) == [10, 10, 4]
    record = to_record([b"a", b"b"], [2, 1], weight=7.0)
    assert is_encrypted(record) and not is_encrypted(arrays)


def test_client_refuses_an_update_that_could_wrap_around():
    mod = CkksClientMod(
        PARAMS, KEYS.secret, strategy=None, layout=None, weight_key="num-examples",
        num_clients=10, workers=1, verify=False,
    )  # fmt: skip
    mod.check_range(np.full(3, 1e5))  # 1e5 < 2^23 / 10
    with pytest.raises(ValueError, match=r"reaches \|n_k·x\| = 1e\+06.*crypto.scale_bits"):
        mod.check_range(np.array([1.0, -1e6]))
    with pytest.raises(ValueError):
        mod.check_range(np.array([np.nan]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=krum"], "cannot aggregate strategy=krum"),
        (["strategy=fedadam"], "use one of: fedavg, fedavgm, fedprox"),
        (["privacy=central"], "central DP adds noise to the aggregate on the server"),
        (["crypto.coeff_mod_bit_sizes=[60,60]"], "120 bits, which is not 128-bit secure"),
        (["crypto.poly_modulus_degree=2048"], "allows at most 54"),
        (["crypto.poly_modulus_degree=3000"], "must be one of"),
        (["crypto.scale_bits=24"], "must be >= 32"),
        (["crypto.scale_bits=50"], "pre-weighted sums need >= 20"),
        (["crypto.preset=ckks-64"], "choose one of: ckks-128, ckks-128-n8192"),
        (["crypto.workers=0"], "crypto.workers=0 must be >= 1"),
    ],
)
def test_misuse_is_refused_with_the_reason(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(["crypto=ckks", *overrides])
    assert message in str(caught.value)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_are_valid_and_make_working_keys(preset):
    params = load_config(["crypto=ckks", f"crypto.preset={preset}"]).crypto.params
    assert params.problems() == []
    keys = make_keys(params)
    chunks = ckks.encrypt(keys.secret, params, np.linspace(-100, 100, 1000))
    np.testing.assert_allclose(
        ckks.decrypt(keys.secret, params, chunks), np.linspace(-100, 100, 1000), atol=1e-6
    )


def test_keys_init_writes_a_secret_client_file_and_a_public_server_file(tmp_path, capsys):
    out = tmp_path / "keys"
    assert cli_main(["keys", "init", "--out", str(out), "--preset", "ckks-128"]) == 0
    device, superlink = out / "device-0", out / "superlink"  # one bundle per host
    assert stat.S_IMODE((device / "client.ctx").stat().st_mode) == 0o600
    assert ts.context_from(read_keys(device, secret=True)).has_secret_key()
    server = split_server_context(read_keys(superlink, secret=False))[1]
    assert not ts.context_from(server).has_secret_key()
    assert not (superlink / "client.ctx").exists()
    assert "client.ctx" in capsys.readouterr().out
    assert cli_main(["keys", "init", "--out", str(out)]) == 2  # never overwrites silently
    assert "--force" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="fedpriv keys init"):
        read_keys(tmp_path / "none", secret=False)
    write_keys(out, PARAMS, force=True)
