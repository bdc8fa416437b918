"""The server against packed, seeded CKKS ciphertexts: it sums them, it cannot read them.

A seeded ciphertext hands the server the seed of its random polynomial, and SEAL draws
that polynomial again when the server loads it, with the parameters alone. The attacks
here are what a curious server can do with that: look for a key in its context, make
a key of its own from the public parameters and decrypt with it, and send a short or
forged ciphertext through the screening. Real SEAL (tenseal.sealapi) throughout.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tenseal.sealapi as sealapi
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedpriv.crypto import Ckks, packed
from fedpriv.crypto.ckks import load_context
from fedpriv.crypto.fingerprint import fingerprint
from fedpriv.crypto.records import PACKED_STYPE, Layout, to_record
from fedpriv.runtime.exchange import Exchange
from fedpriv.strategies.horizontal import HORIZONTAL_STRATEGIES

pytestmark = pytest.mark.usefixtures("task_identity")

SCHEME = Ckks()
PARAMS = SCHEME.params
KEYS = SCHEME.make_keys()
RNG = np.random.default_rng(5)
UPDATE = RNG.normal(0.0, 1.0, 3000)


def test_the_servers_context_holds_no_secret_key_and_cannot_decrypt():
    server = load_context(KEYS.public, PARAMS.scale_bits)
    assert not server.has_secret_key() and not server.is_private()
    chunks = packed.encrypt(KEYS.secret, PARAMS, UPDATE)
    with pytest.raises(ValueError, match="secret context"):
        packed.decrypt(KEYS.public, PARAMS, chunks, [len(UPDATE)])


def test_a_key_the_server_makes_from_the_parameters_decrypts_nothing():
    """The parameters are public, so the server can make keys; the seed gives it the
    random polynomial. Neither helps: decrypting with its own key yields noise of the
    modulus' size, uncorrelated with the update."""
    context = load_context(KEYS.public, PARAMS.scale_bits).seal_context().data
    own_key = sealapi.KeyGenerator(context).secret_key()
    ciphertext = sealapi.Ciphertext()
    path = packed._SCRATCH.write(packed.encrypt(KEYS.secret, PARAMS, UPDATE)[0])
    ciphertext.load(context, path)  # the server expands the seed: c1 is in its hands
    plain = sealapi.Plaintext()
    sealapi.Decryptor(context, own_key).decrypt(ciphertext, plain)
    slots = np.asarray(sealapi.CKKSEncoder(context).decode_complex(plain), np.complex128)
    guess = slots.view(np.float64)[: len(UPDATE)]
    assert np.abs(guess - UPDATE).max() > 1e3
    assert abs(np.corrcoef(guess, UPDATE)[0, 1]) < 0.1
    chunks = packed.encrypt(KEYS.secret, PARAMS, UPDATE)
    truth = packed.decrypt(KEYS.secret, PARAMS, chunks, [len(UPDATE)])
    assert np.abs(truth - UPDATE).max() < 1e-6  # the clients' key does decrypt


def test_a_short_or_forged_ciphertext_is_rejected_with_a_logged_reason(caplog):
    """Screening as a round runs it: the reply passes the shape checks (names, sizes,
    format, key fingerprint) and SEAL refuses its ciphertext at the sum; the others'
    sum still decrypts to their weighted mean."""
    layout = Layout(("w",), ((len(UPDATE),),), ("float32",))
    fedavg = HORIZONTAL_STRATEGIES.create({"name": "fedavg"})
    aggregator = SCHEME.aggregator(
        fedavg.build(3), weight_key="num-examples", strategy=fedavg, layout=layout,
        public=KEYS.public,
    )  # fmt: skip
    current = ArrayRecord({"w": Array(np.zeros(len(UPDATE), np.float32))})
    updates = [UPDATE, 2 * UPDATE, 3 * UPDATE]
    replies = []
    for node, (update, weight) in enumerate(zip(updates, [10, 30, 20], strict=True), start=1):
        chunks = packed.encrypt(KEYS.secret, PARAMS, weight * update)
        if node == 2:
            chunks[0] = chunks[0][:-100]  # cut short in transit
        if node == 3:
            chunks[0] = bytes(len(chunks[0]))  # forged: the right length, no ciphertext
        key = fingerprint(KEYS.secret)
        record = to_record(chunks, [len(UPDATE)], key=key, stype=PACKED_STYPE)
        timing = {"ckks-encrypt-seconds": 0.1, "ckks-decrypt-seconds": 0.1}
        metrics = MetricRecord({"num-examples": weight, **timing})
        content = RecordDict({"arrays": record, "metrics": metrics})
        request = Message(RecordDict(), dst_node_id=node, message_type="train")
        replies.append(Message(content, reply_to=request))
    assert all(aggregator.check(reply, current) is None for reply in replies)
    result = aggregator.aggregate(1, replies, current, sent=3)
    assert [replies.index(r) for r, _ in result.rejected] == [1, 2]
    exchange = Exchange(None, None, None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        for reply, reason in result.rejected:
            exchange.reject(reply, reason)
    assert "ciphertext 0 rejected" in caplog.text
    assert [r["reason"].startswith("ciphertext 0 rejected") for r in exchange.rejected] == [
        True,
        True,
    ]
    assert result.arrays is not None
    client = packed.decrypt(KEYS.secret, PARAMS, [result.arrays["ckks/000000"].data], [3000])
    np.testing.assert_allclose(client / 10.0, UPDATE, atol=1e-6)
