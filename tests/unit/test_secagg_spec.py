"""crypto=ckks_secagg's settings and its fixed-point encoding, against plain integers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedpriv import load_config
from fedpriv.crypto import CkksSecAgg, masking


def test_bad_settings_name_the_rule():
    problems = dict(CkksSecAgg(threshold=1, step_bits=40, scale_bits=36).problems())
    assert "must be >= 2" in problems["threshold"]
    assert "8 to 30" in problems["step_bits"]
    assert "16 to 24" in problems["scale_bits"]
    assert CkksSecAgg().problems() == []


def test_the_modulus_leaves_room_for_every_clients_sum():
    q = CkksSecAgg().quantizer(10)
    assert q.bits == 36  # sums of 10 clients stay below 2^40, decoded exactly
    assert q.largest(10) * 10 < 2.0 ** (q.bits - 1) * q.step


@given(st.lists(st.floats(-100, 100), min_size=1, max_size=8), st.integers(0, 2**32))
def test_masked_sums_decode_to_the_rounded_sum(values, seed):
    q = masking.Quantizer(36, 2.0**-20)
    rows = np.array([[v] for v in values])
    masks = [
        masking.stream(seed.to_bytes(8, "little"), b"t", k, 1, q.bits) for k in range(len(rows))
    ]
    total = sum(q.encode(r) + m for r, m in zip(rows, masks, strict=True))
    correction = (np.uint64(0) - sum(masks)) & np.uint64(q.modulus - 1)
    decoded = q.decode((total + correction) & np.uint64(q.modulus - 1))
    assert decoded[0] == pytest.approx(rows.sum(), abs=len(values) * q.step)


def test_pair_masks_cancel_and_rounds_differ():
    a, b = masking.KeyPair.generate(), masking.KeyPair.generate()
    ab, ba = masking.agree(a.secret, b.public), masking.agree(b.secret, a.public)
    assert ab == ba
    m1 = masking.pair_mask(ab, 1, 2, 1, 1000, 36)
    m2 = masking.pair_mask(ba, 2, 1, 1, 1000, 36)
    assert not ((m1 + m2) & np.uint64(2**36 - 1)).any()
    assert (masking.pair_mask(ab, 1, 2, 2, 1000, 36) != m1).mean() > 0.99


def test_a_sealed_share_opens_only_for_its_header():
    a, b = masking.KeyPair.generate(), masking.KeyPair.generate()
    key = masking.agree(a.secret, b.public)
    token = masking.seal(key, (1, 2, 3), b"share")
    assert masking.unseal(key, (1, 2, 3), token) == b"share"
    with pytest.raises(ValueError, match="addressed to another"):
        masking.unseal(key, (1, 2, 4), token)
    with pytest.raises(ValueError, match="does not decrypt"):
        masking.unseal(masking.agree(a.secret, a.public), (1, 2, 3), token)


def test_bytes_inside_lists_count_by_their_length():
    """Flower's SecAgg+ sends masked vectors as lists of bytes: the benchmark's byte
    counts must see them."""
    from flwr.app import ConfigRecord, RecordDict

    from fedpriv.records import payload_nbytes

    content = RecordDict({"c": ConfigRecord({"x": [b"abc", b"de"], "n": [1, 2], "s": "xy"})})
    assert payload_nbytes(content) == 5 + 2 * 8 + 2


def test_an_update_whose_masked_sum_would_wrap_is_refused_with_the_fix():
    """Masked integers live modulo 2^bits: a pre-weighted update past the room for
    num_clients summands would open as garbage, so the node refuses it and says what to
    change (clients and swarm peers share the check)."""
    from fedpriv.crypto.secagg_node import refuse_overflow

    quantizer = load_config(["crypto=ckks_secagg"]).crypto.quantizer(3)
    limit = quantizer.largest(3)
    refuse_overflow(quantizer, np.array([0.5 * limit, -0.5 * limit]), 3, "client", "update")
    with pytest.raises(ValueError, match=r"this peer's pre-weighted model .* reaches") as caught:
        refuse_overflow(quantizer, np.array([0.0, -limit]), 3, "peer", "model |w·x|")
    assert "the sum over 3 peers wraps above" in str(caught.value)
    assert "lower crypto.step_bits" in str(caught.value)
