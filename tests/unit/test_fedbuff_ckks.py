"""FedBuff under CKKS: the server scales encrypted updates and adds them, and the model
it publishes is the plaintext FedBuff model.

The driver runs on the in-process grid with scripted nodes behind the real client mod
(:class:`fedpriv.crypto.offset.OffsetClientMod`) and a scripted arrival order, so each
update's staleness is exact; the expected model is computed independently, in numpy,
from the models the grid delivered. Real SEAL (tenseal.sealapi) throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pytest
import tenseal.sealapi as sealapi
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedpriv.crypto import Ckks, packed
from fedpriv.crypto.ckks import load_context
from fedpriv.crypto.fingerprint import fingerprint
from fedpriv.crypto.offset import OffsetAggregator, OffsetClientMod, offset_chunks
from fedpriv.crypto.records import Layout, is_chunk
from fedpriv.errors import ConfigError
from fedpriv.results import RunDirectory
from fedpriv.runtime.context import RunContext
from fedpriv.runtime.inprocess import InProcessGrid
from fedpriv.strategies.horizontal import Horizontal
from fedpriv.strategies.horizontal.async_family import AsyncHorizontal

pytestmark = pytest.mark.usefixtures("task_identity")

SCHEME = Ckks(preset="ckks-128-async")
PARAMS = SCHEME.params
KEYS = SCHEME.make_keys()
#: The node holding partition 0; partition p is on node FIRST_NODE + p.
FIRST_NODE = 100
CKKS = ["crypto=ckks", "crypto.preset=ckks-128-async", "crypto.workers=1"]


def step_of(partition: int) -> float:
    """What the scripted client of ``partition`` adds to every value of its model."""
    return 0.01 * (partition + 1)


# -- the scale-and-add primitive ----------------------------------------------------------
def test_a_scaled_sum_is_the_numpy_weighted_sum() -> None:
    rng = np.random.default_rng(3)
    updates = [rng.normal(0.0, 1.0, 5000) for _ in range(6)]
    factors = [1.0, 0.7071, 0.5, 0.3, 1.7, 0.01]
    sizes = Layout(("w",), ((5000,),), ("float32",)).chunk_sizes(1, PARAMS.packed_values)
    total = packed.ScaledSum(KEYS.public, PARAMS, len(sizes))
    for update, factor in zip(updates, factors, strict=True):
        total.add(packed.encrypt(KEYS.secret, PARAMS, update), factor)
    got = packed.decrypt(KEYS.secret, PARAMS, total.save(), sizes)
    expected = np.sum([f * u for f, u in zip(factors, updates, strict=True)], axis=0)
    assert np.abs(got - expected).max() < 1e-6


def test_one_multiply_per_update_fits_the_chain_and_a_second_does_not() -> None:
    """The level count: a fresh ciphertext of ckks-128-async takes one plaintext multiply
    and rescale, sums of such terms go on adding (hundreds of versions of an offset), and
    the chain has no level left for a second multiply. ckks-128 has none at all."""
    update = np.linspace(-1.0, 1.0, 3000)
    chunks = packed.encrypt(KEYS.secret, PARAMS, update)
    offset, buffer = (packed.ScaledSum(KEYS.public, PARAMS, 1) for _ in range(2))
    for _ in range(200):
        buffer.add(chunks, 0.25)
        offset.absorb(buffer)
    got = packed.decrypt(KEYS.secret, PARAMS, offset.save(), [3000])
    # The same ciphertext 200 times: its noise adds up in step, under 1e-7 a term.
    assert np.abs(got - 50.0 * update).max() < 200 * 1e-7
    assert offset.totals is not None
    term = offset.totals[0]
    evaluator = sealapi.Evaluator(offset.seal.context)
    plain = sealapi.Plaintext()
    offset.encoder.encode(0.5, term.parms_id(), offset.prime, plain)
    with pytest.raises(ValueError, match="scale out of bounds"):  # no prime left to drop
        evaluator.multiply_plain_inplace(term, plain)
    default = Ckks()
    keys = default.make_keys()
    with pytest.raises(ValueError, match="ckks-128-async"):
        packed.ScaledSum(keys.public, default.params, 1)


def test_the_server_side_context_holds_no_key_and_cannot_decrypt_the_sum() -> None:
    server = load_context(KEYS.public, PARAMS.scale_bits)
    assert not server.is_private() and not server.has_secret_key()
    assert not server.has_relin_keys() and not server.has_galois_keys()
    total = packed.ScaledSum(KEYS.public, PARAMS, 1)
    assert total.seal.secret is None
    total.add(packed.encrypt(KEYS.secret, PARAMS, np.ones(10)), 0.5)
    with pytest.raises(ValueError, match="secret context"):
        packed.decrypt(KEYS.public, PARAMS, total.save(), [10])


# -- the driver ---------------------------------------------------------------------------
class Arrivals:
    """Queries and evaluations answered at once; each pull answers the oldest train
    message of the next partition in ``order``."""

    def __init__(self, order: list[int]) -> None:
        self.order = order

    def __call__(self, pending: list[Message]) -> list[Message]:
        queries = [m for m in pending if m.metadata.message_type != "train"]
        if queries or not self.order:
            return queries
        mine = [m for m in pending if m.metadata.dst_node_id - FIRST_NODE == self.order[0]]
        if not mine:
            return []
        self.order.pop(0)
        return mine[:1]


def scripted(message: Message, context: Context) -> Message:
    """A node that adds :func:`step_of` its partition to the model it was sent."""
    partition = int(context.node_config["partition-id"])
    metrics = {"partition-id": partition, "steps": 1, "work-seconds": 0.01}
    if message.metadata.message_type.startswith("query"):
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)
    if message.metadata.message_type == "evaluate":  # the key holder evaluates
        quality = MetricRecord({"accuracy": 0.5, "loss": 1.0})
        return Message(RecordDict({"metrics": quality}), reply_to=message)
    step = step_of(partition)
    arrays = ArrayRecord(
        {k: Array(v.numpy() + np.float32(step)) for k, v in message.content["arrays"].items()}
    )
    metrics["num-examples"] = 10
    return Message(
        RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)}), reply_to=message
    )


class Grid(InProcessGrid):
    """Nodes 100, 101, ... run the mods around :func:`scripted`, then ``tamper`` their
    reply (an attacker's last word); keeps what was sent."""

    def __init__(
        self,
        mods: list[Callable[..., Message]],
        order: list[int],
        tamper: Callable[[int, Message], None] = lambda partition, reply: None,
    ) -> None:
        def node(message: Message, context: Context) -> Message:
            handler: Callable[[Message, Context], Message] = scripted
            for mod in reversed(mods):
                handler = (lambda m, h: lambda msg, ctx: m(msg, ctx, h))(mod, handler)
            reply = handler(message, context)
            if message.metadata.message_type == "train":
                tamper(int(context.node_config["partition-id"]), reply)
            return reply

        nodes = [FIRST_NODE + p for p in range(3)]
        super().__init__(node, 3, node_ids=nodes, order=Arrivals(order))
        self.sent: list[Message] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.sent += messages
        return super().push_messages(messages)


def started(make_config, tmp_path, order, *overrides, tamper=None):
    config = make_config("num_clients=3", "engine.round_timeout_s=2", *overrides)
    driver = Horizontal.create(config)
    assert isinstance(driver, AsyncHorizontal)
    setup = driver.prepare()
    grid = Grid(setup.client_mods, order, tamper or (lambda partition, reply: None))
    ctx = RunContext(config, RunDirectory(tmp_path / "run"), server_key=setup.server_key)
    driver.start(grid, ctx)
    ctx.clock.start()
    return driver, ctx, grid, setup


def decrypted(driver: AsyncHorizontal, mod: OffsetClientMod) -> np.ndarray:
    """The driver's model as a key holder reads it: base plus the decrypted offset."""
    return mod.model_of(driver.arrays)


def expected_fedbuff(grid: Grid, entries, *, lr, buffer, a) -> np.ndarray:
    """FedBuff by hand: each update is the client's constant step (whatever model it was
    sent); every ``buffer`` arrivals the model moves by lr·Σ (τ+1)^-a·Δ / buffer."""
    first = next(m for m in grid.sent if m.metadata.message_type == "train")
    layout = Layout.of(first.content["arrays"])
    model = layout.flatten(first.content["arrays"])  # version 0: the plaintext base
    pending = []
    for entry in entries:
        update = np.full(layout.size, np.float32(step_of(entry["partition-id"])), np.float64)
        pending.append((entry["staleness"] + 1) ** -a * update)
        if len(pending) == buffer:
            model = model + lr * np.sum(pending, axis=0) / buffer
            pending = []
    return model


def test_the_encrypted_fedbuff_model_is_the_plaintext_fedbuff_model(make_config, tmp_path):
    order = [0, 1, 0, 2, 1, 0]
    settings = ["strategy=fedbuff", "strategy.buffer_size=2", "strategy.updates_per_round=6",
                "strategy.server_lr=0.8", "strategy.staleness_a=0.5"]  # fmt: skip
    driver, ctx, grid, setup = started(make_config, tmp_path, list(order), *settings, *CKKS)
    report = driver.round(1, grid, ctx)
    entries = report.clients
    assert [e["partition-id"] for e in entries] == order
    assert report.extra["version"] == 3
    # The server's record holds the base in plaintext and the offset as ciphertexts.
    assert offset_chunks(driver.arrays) and any(is_chunk(n) for n in driver.arrays)
    # The server side: the run's public context, no key; SEAL objects without a secret.
    assert ctx.server_key == setup.server_key and driver.sealed is not None
    assert not load_context(setup.server_key, PARAMS.scale_bits).is_private()
    assert driver.sealed.buffer.seal.secret is None and driver.sealed.offset.seal.secret is None
    mod = setup.client_mods[0]
    assert isinstance(mod, OffsetClientMod)
    encrypted = decrypted(driver, mod)
    # The same arrivals through the plaintext driver (crypto=none).
    plain, plain_ctx, plain_grid, _ = started(
        make_config, tmp_path / "plain", list(order), *settings
    )
    plain_report = plain.round(1, plain_grid, plain_ctx)
    assert [e["staleness"] for e in plain_report.clients] == [e["staleness"] for e in entries]
    np.testing.assert_allclose(encrypted, plain.state.model, atol=1e-6, rtol=0)
    # And by hand: staleness (τ + 1)^-0.5, two updates a step, η = 0.8.
    by_hand = expected_fedbuff(grid, entries, lr=0.8, buffer=2, a=0.5)
    assert np.abs(encrypted - by_hand).max() < 1e-6
    # A resumed run's aggregator takes the offset back from the checkpointed record.
    again = OffsetAggregator(
        PARAMS, setup.server_key, layout=driver.layout, weight_key="num-examples"
    )
    again.restore(driver.arrays)
    assert np.array_equal(mod.model_of(again.model(driver.initial)), encrypted)
    costs = report.extra["crypto"]
    assert costs["ciphertext_bytes_up"] > costs["plaintext_bytes_up"] > 0
    assert costs["aggregate_seconds"] > 0


def test_a_stale_key_or_a_malformed_ciphertext_is_rejected_and_the_buffer_goes_on(
    make_config, tmp_path, caplog
):
    """Partition 2 is hostile: its first update was encrypted under another key set (a
    stale client.ctx, honestly labelled), its second is SEAL garbage under the run's
    fingerprint. Both are rejected and logged; the buffer holds the honest updates only."""
    other = Ckks(preset="ckks-128-async").make_keys()
    stale_key = fingerprint(other.secret)
    attempts = []

    def tamper(partition: int, reply: Message) -> None:
        if partition == 0:  # a well-formed update with metrics that are no numbers
            reply.content["metrics"]["ckks-error"] = [1e9, float("nan")]
            reply.content["metrics"]["ckks-encrypt-seconds"] = float("inf")
        if partition != 2:
            return
        arrays = reply.content["arrays"]
        attempts.append(partition)
        for name in [n for n in arrays if is_chunk(n)]:
            if len(attempts) == 1:  # encrypted under the other key, which it names
                values = np.zeros(arrays[name].shape[0])
                chunk = packed.encrypt(other.secret, PARAMS, values)[0]
                arrays[name] = Array(dtype="ckks", shape=arrays[name].shape,
                                     stype=arrays[name].stype, data=chunk)  # fmt: skip
                arrays["key-fingerprint"] = Array(np.frombuffer(stale_key, np.uint8).copy())
            else:  # the run's fingerprint on bytes that are no ciphertext
                junk = bytes(len(arrays[name].data))
                arrays[name] = Array(dtype="ckks", shape=arrays[name].shape,
                                     stype=arrays[name].stype, data=junk)  # fmt: skip

    order = [2, 0, 1, 0, 1]
    settings = ["strategy=fedbuff", "strategy.buffer_size=2", "strategy.updates_per_round=4",
                "strategy.staleness=constant"]  # fmt: skip
    driver, ctx, grid, setup = started(
        make_config, tmp_path, list(order), *settings, *CKKS, tamper=tamper
    )
    with caplog.at_level("WARNING", logger="fedpriv"):
        report = driver.round(1, grid, ctx)
        record = ctx.end_round(report)
    assert [e["partition-id"] for e in report.clients] == [0, 1, 0, 1]
    reasons = [r["reason"] for r in record["rejected"]]
    assert len(reasons) == 1 and "not this run's key" in reasons[0]
    assert "rejected reply from node 102" in caplog.text
    assert report.extra["version"] == 2
    assert report.extra["crypto"]["max_abs_error"] is None  # partition 0's word not taken
    assert report.extra["crypto"]["encrypt_seconds_max"] < float("inf")
    ctx.start_round()
    grid.order.order = [2, 0, 1, 0, 1]  # type: ignore[union-attr]
    report = driver.round(2, grid, ctx)
    record = ctx.end_round(report)
    reasons = [r["reason"] for r in record["rejected"]]
    assert len(reasons) == 1 and reasons[0].startswith("ciphertext 0 rejected")
    assert report.extra["version"] == 4  # the buffer went on with the honest updates
    # Every honest update added 0.01·(p + 1) at weight 1/2: the hostile ones left no trace.
    model = decrypted(driver, setup.client_mods[0])
    start = Layout.of(driver.initial).flatten(driver.initial)
    honest = sum(step_of(e) for e in [0, 1, 0, 1, 0, 1, 0, 1]) / 2
    assert np.abs(model - start - honest).max() < 1e-5


def test_fedbuff_under_ckks_is_refused_where_it_cannot_work(make_config) -> None:
    with pytest.raises(ConfigError, match=r"crypto\.preset=ckks-128-async"):
        make_config("strategy=fedbuff", "crypto=ckks")  # ckks-128: no rescale level
    with pytest.raises(ConfigError, match="buffer_size >= 2"):
        make_config("strategy=fedbuff", "strategy.buffer_size=1", *CKKS)
    with pytest.raises(ConfigError, match="delay_compensation=0"):
        make_config("strategy=fedbuff", "strategy.delay_compensation=0.1", *CKKS)
    for other in ("fedasync", "easgd", "bmuf"):
        with pytest.raises(ConfigError, match="use strategy=fedbuff"):
            make_config(f"strategy={other}", *CKKS)
    # Masked FedBuff encrypts real-valued steps: not at the masked integers' scale.
    with pytest.raises(ConfigError, match=r"crypto\.scale_bits=null"):
        make_config("strategy=fedbuff", "crypto=ckks_secagg", "crypto.preset=ckks-128-async",
                    "strategy.staleness=constant")  # fmt: skip
    config = make_config("strategy=fedbuff", "privacy=dp_sgd", "privacy.target_epsilon=null",
                         "privacy.noise_multiplier=1.0", *CKKS)  # fmt: skip
    assert config.crypto.params.rescale_levels == 1
