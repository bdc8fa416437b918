"""``crypto=ckks_secagg`` against the coalition it is built for: the server (every
message and reply, the CKKS key any client holds) plus ``threshold - 1`` clients (their
keys and shares). It cannot open one client's update; ``threshold`` clients can (so the
attack is real); ``crypto=ckks`` falls to one client. The aggregate still equals the
plaintext FedAvg, with dropouts within the tolerance and none beyond it."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from secagg_federation import Federation

from fedpriv.crypto import Ckks, ckks, masking, packed
from fedpriv.crypto.records import chunks_of
from fedpriv.crypto.secagg_node import RECORD

pytestmark = pytest.mark.usefixtures("task_identity")

N, T = 6, 4


def open_update(fed: Federation, replies, target: int, coalition: list[int], server_round=1):
    """The coalition's best reconstruction of ``target``'s pre-weighted update: decrypt
    its ciphertext, rebuild whatever mask secrets its shares allow, subtract the masks."""
    reply = next(r for r in replies if r.metadata.src_node_id == target)
    q = fed.quantizer()
    size, bits = fed.layout.size, q.bits
    masked = fed.masked(reply)
    # The self-mask seed: the server learnt it at unmasking if the target survived;
    # else from the shares sealed to the colluders in the target's reply.
    answers = fed.unmasking_answers()
    shares = [cast(bytes, a[f"self/{target}"]) for a in answers if f"self/{target}" in a]
    if not shares:
        for c in coalition:
            state = fed.state(c)
            key = masking.agree(state["channel"], state[f"channel/{target}"])
            token = fed.sealed_to(reply, c)
            shares.append(masking.unseal(key, (target, c, server_round), token))
    seed = _combine(shares)
    # The target's mask secret: revealed at unmasking if the server called it dropped,
    # else from the shares the colluders hold.
    revealed = [cast(bytes, a[f"mask/{target}"]) for a in answers if f"mask/{target}" in a]
    secret = _combine(revealed or [fed.state(c)[f"held/{target}"] for c in coalition])
    masks = masking.self_mask(seed, server_round, size, bits) if seed else np.zeros(size, np.uint64)
    for peer in sorted(fed.contexts):
        if peer == target:
            continue
        if peer in coalition:
            agreed = masking.agree(fed.state(peer)["mask"], fed.state(peer)[f"mask/{target}"])
        elif secret is not None:
            agreed = masking.agree(secret, fed.state(coalition[0])[f"mask/{peer}"])
        else:
            continue  # neither secret of the pair: this mask stays on
        masks = masks + masking.pair_mask(agreed, target, peer, server_round, size, bits)
    return q.decode((masked - masks) & np.uint64((1 << bits) - 1))


def _combine(shares: list[bytes]) -> bytes | None:
    try:
        return masking.combine(shares)
    except ValueError:  # too few shares often fail to unpad: nothing rebuilt
        return None


def run_round(seed: int = 0):
    fed = Federation.create(N, T, seed=seed)
    aggregator = fed.aggregator()
    result, replies = fed.round(aggregator, 1)
    return fed, result, replies


def test_threshold_aggregate_equals_plaintext_fedavg():
    fed, result, _ = run_round()
    assert result.arrays is not None and not result.rejected
    np.testing.assert_allclose(fed.mean(result.arrays), fed.fedavg(list(fed.contexts)), atol=1e-6)


def test_server_and_threshold_minus_one_clients_cannot_open_an_update():
    fed, _, replies = run_round()
    target, coalition = 1, [2, 3, 4][: T - 1]
    truth = fed.weights[target] * fed.updates[target]
    guess = open_update(fed, replies, target, coalition)
    # What is left is uniform noise mod 2^bits: nothing like the update.
    assert np.abs(guess - truth).mean() > 100 * np.abs(truth).mean()
    assert abs(np.corrcoef(guess, truth)[0, 1]) < 0.3


def test_server_and_threshold_clients_can_open_an_update():
    """The same attack with one more colluder succeeds: the test above can fail."""
    fed, _, replies = run_round()
    target, coalition = 1, [2, 3, 4, 5][:T]
    truth = fed.weights[target] * fed.updates[target]
    guess = open_update(fed, replies, target, coalition)
    np.testing.assert_allclose(guess, truth, atol=fed.quantizer().step)


def test_today_ckks_one_client_and_the_server_open_an_update():
    """crypto=ckks, the baseline: every client holds the one secret key, so one of them
    decrypts any other's ciphertext the server relays."""
    spec = Ckks()
    keys = ckks.make_keys(spec.params)
    update = np.random.default_rng(1).normal(0, 1, 100) * 37
    sent = packed.encrypt(keys.secret, spec.params, update)  # what the server receives
    sizes = [spec.params.packed_values] * (len(sent) - 1)
    sizes.append(len(update) - sum(sizes))
    opened = packed.decrypt(keys.secret, spec.params, sent, sizes)  # any colluding client
    np.testing.assert_allclose(opened, update, atol=1e-3)


@pytest.mark.parametrize("drop", [{6}, {5, 6}])
def test_dropouts_within_the_tolerance_still_decrypt(drop):
    fed = Federation.create(N, T)
    aggregator = fed.aggregator()
    result, replies = fed.round(aggregator, 1, drop=drop)
    survivors = sorted(set(fed.contexts) - drop)
    assert sorted(r.metadata.src_node_id for r in replies) == survivors
    np.testing.assert_allclose(fed.mean(result.arrays), fed.fedavg(survivors), atol=1e-6)
    assert aggregator.retired == drop  # their secrets are out: never a round's client again


def test_more_dropouts_than_tolerated_refuse_the_round():
    fed = Federation.create(N, T)
    aggregator = fed.aggregator()
    result, _ = fed.round(aggregator, 1, drop={4, 5, 6})
    assert result.arrays is None
    assert "3 of the round's 6 clients" in result.record["crypto"]["refused"]
    assert "threshold=4" in result.record["crypto"]["refused"]


def test_a_dropped_client_whose_reply_the_server_kept_stays_masked():
    """The late-reply attack: the server holds node 1's reply yet calls it dropped, to
    collect shares of its mask secret. Honest clients then withhold shares of its
    self-mask seed, so even with t-1 colluders its update stays masked."""
    fed = Federation.create(N, T, seed=3)
    aggregator = fed.aggregator()
    kept, honest = [], aggregator.correction

    def lying(server_round, peers, good):
        kept.extend(good)
        return honest(server_round, peers, [r for r in good if r.metadata.src_node_id != 1])

    aggregator.correction = lying
    fed.round(aggregator, 1)
    unmasked = fed.unmasking_answers()
    assert len([a for a in unmasked if "mask/1" in a]) >= T  # its mask secret is out
    assert not any("self/1" in a for a in unmasked)
    truth = fed.weights[1] * fed.updates[1]
    guess = open_update(fed, kept, 1, coalition=[2, 3, 4][: T - 1])
    assert abs(np.corrcoef(guess, truth)[0, 1]) < 0.3
    # With one more colluder the self mask falls too: the attack is real.
    np.testing.assert_allclose(open_update(fed, kept, 1, coalition=[2, 3, 4, 5][:T]), truth,
                               atol=fed.quantizer().step)  # fmt: skip


def test_a_replayed_unmasking_is_refused():
    fed, _, _ = run_round()
    ask = next(m for m in fed.transcript if m.metadata.message_type == "query.secagg_unmask")
    (reply,) = fed.send([ask])
    assert reply.has_error() and "are not a split of the round's clients" in reply.error.reason


def test_a_node_never_sees_its_peers_shares_in_the_clear():
    fed, _, replies = run_round()
    held = [fed.state(k)[f"held/{j}"] for k in fed.contexts for j in fed.contexts]
    for message in fed.transcript:
        if not message.has_content() or message.metadata.message_type == "query.secagg_unmask":
            continue  # unmasking replies carry the shares the protocol reveals
        for record in message.content.config_records.values():
            for value in record.values():
                assert not any(isinstance(value, bytes) and h in value for h in held)
    assert chunks_of(replies[0].content.array_records["arrays"])


def split_view(colluders: list[int]):
    """A server that lies about dropouts: all N clients replied, but it tells some honest
    nodes that node 1 dropped (they reveal shares of its mask secret) and the others that
    it survived (they reveal shares of its self-mask seed). The colluders give both.
    Returns node 1's update as the coalition rebuilds it, and the truth."""
    fed = Federation.create(N, T, seed=5)
    aggregator = fed.aggregator()
    aggregator.correction = lambda *_: (None, "the server unmasks by hand")
    _, replies = fed.round(aggregator, 1)
    sealed = {r.metadata.src_node_id: r.content.config_records[RECORD] for r in replies}
    everyone = sorted(fed.contexts)
    honest = [k for k in everyone if k not in colluders and k != 1]
    told_dropped = honest[: T - len(colluders)]
    told_survived = [k for k in [*honest, 1] if k not in told_dropped]

    def ask(node: int, survivors: list[int]) -> Message:
        values = {"round": 1, "survivors": survivors,
                  "dropped": sorted(set(everyone) - set(survivors))}  # fmt: skip
        values.update({f"from/{s}": sealed[s][f"to/{node}"] for s in survivors})
        return Message(RecordDict({RECORD: ConfigRecord(values)}), dst_node_id=node,
                       message_type="query.secagg_unmask")  # fmt: skip

    asks = [ask(k, [j for j in everyone if j != 1]) for k in told_dropped]
    asks += [ask(k, everyone) for k in told_survived]
    answers = [r.content.config_records[RECORD] for r in fed.send(asks) if not r.has_error()]
    target = next(r for r in replies if r.metadata.src_node_id == 1)
    mask_shares = [a["mask/1"] for a in answers if "mask/1" in a]
    mask_shares += [fed.state(c)["held/1"] for c in colluders]
    seed_shares = [a["self/1"] for a in answers if "self/1" in a]
    for c in colluders:
        key = masking.agree(fed.state(c)["channel"], fed.state(c)["channel/1"])
        seed_shares.append(masking.unseal(key, (1, c, 1), fed.sealed_to(target, c)))
    q, size = fed.quantizer(), fed.layout.size
    secret, seed = _combine(mask_shares), _combine(seed_shares)
    masks = masking.self_mask(seed, 1, size, q.bits) if seed else np.zeros(size, np.uint64)
    for peer in everyone[1:]:
        if secret is not None:
            agreed = masking.agree(secret, fed.state(colluders[0])[f"mask/{peer}"])
            masks = masks + masking.pair_mask(agreed, 1, peer, 1, size, q.bits)
    guess = q.decode((fed.masked(target) - masks) & np.uint64((1 << q.bits) - 1))
    return guess, fed.weights[1] * fed.updates[1]


def test_a_server_lying_about_dropouts_needs_2t_minus_k_colluders():
    """Each honest node reveals for one split of a round, so the two secrets need two
    disjoint honest sets: with c = 2T - N - 1 colluders (here 1) the update stays masked;
    with c = 2T - N (here 2) the split view opens it (docs/crypto.md's bound)."""
    guess, truth = split_view(colluders=[2])
    assert abs(np.corrcoef(guess, truth)[0, 1]) < 0.3
    guess, truth = split_view(colluders=[2, 3])
    np.testing.assert_allclose(guess, truth, atol=Federation.create(N, T).quantizer().step)
