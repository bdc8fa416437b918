"""Shamir shares of vectors over GF(p) (:mod:`fedpriv.crypto.shares`), checked against
Python's exact integers: any ``threshold`` shares rebuild the secret, fewer are uniform
whatever it is, and weighted sums of shares are shares of the weighted sum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedpriv.crypto import shares

P = shares.PRIME


def test_the_prime_is_prime_and_products_fit_in_64_bits():
    assert all(P % d for d in range(2, 70_000))  # 70_000^2 > p
    assert pow(3, P - 1, P) == 1 and (P - 1) ** 2 < 2**64


def test_any_threshold_shares_rebuild_the_secret():
    secret = shares.uniform(500)
    held = shares.split(secret, threshold=3, holders=5)
    for chosen in itertools.combinations(range(1, 6), 3):
        rebuilt = shares.combine({x: held[x - 1] for x in chosen}, threshold=3)
        np.testing.assert_array_equal(rebuilt, secret)
    # Given more shares than it needs, it uses the first ones.
    np.testing.assert_array_equal(shares.combine(dict(enumerate(held, 1)), 3), secret)


def test_fewer_shares_give_another_vector():
    secret = shares.uniform(500)
    held = shares.split(secret, threshold=3, holders=5)
    wrong = shares.combine({1: held[0], 2: held[1]}, threshold=2)  # as if t were 2
    assert np.mean(wrong == secret) < 0.01


def test_threshold_minus_one_shares_are_uniform_whatever_the_secret():
    """The same two holders' shares of an all-zero secret and of a constant one: both
    spread over the field, uncorrelated with the secret."""
    size = 20_000
    for secret in (np.zeros(size, np.uint64), np.full(size, 12345, np.uint64)):
        first, second = shares.split(secret, threshold=3, holders=5)[:2]
        for share in (first, second):
            assert abs(share.astype(np.float64).mean() / P - 0.5) < 0.01
            assert np.mean(share == secret) < 0.001
        assert abs(np.corrcoef(first.astype(float), second.astype(float))[0, 1]) < 0.03


def test_weighted_sums_of_shares_are_shares_of_the_weighted_sum():
    rng = np.random.default_rng(0)
    secrets = [shares.uniform(200) for _ in range(3)]
    weights = [int(w) for w in rng.integers(1, 2**16, 3)]
    held = [shares.split(s, threshold=2, holders=4) for s in secrets]
    combined = {x: shares.weighted_sum([h[x - 1] for h in held], weights) for x in (2, 4)}
    expected = [
        sum(w * int(s[i]) for w, s in zip(weights, secrets, strict=True)) % P for i in range(200)
    ]
    assert shares.combine(combined, threshold=2).tolist() == expected


def test_coded_shares_are_a_fraction_of_the_secret_and_any_enough_rebuild_it():
    """pieces=3, threshold 3: each share is a third of the secret (padded); any
    threshold - 1 + pieces = 5 of 6 rebuild it, and 2 are uniform."""
    secret = shares.uniform(1000)
    held = shares.split(secret, threshold=3, holders=6, pieces=3)
    assert {len(h) for h in held} == {334}
    for chosen in itertools.combinations(range(1, 7), 5):
        rebuilt = shares.combine({x: held[x - 1] for x in chosen}, 3, 3, size=1000)
        np.testing.assert_array_equal(rebuilt, secret)
    zeros = shares.split(np.zeros(30_000, np.uint64), threshold=3, holders=6, pieces=3)
    for share in zeros[:2]:
        assert abs(share.astype(np.float64).mean() / P - 0.5) < 0.01


def test_coded_shares_add_up_over_weighted_sums():
    secrets = [shares.uniform(99) for _ in range(3)]
    weights = [3, 1, 200]
    held = [shares.split(s, threshold=2, holders=5, pieces=2) for s in secrets]
    combined = {x: shares.weighted_sum([h[x - 1] for h in held], weights) for x in (1, 3, 5)}
    expected = [
        sum(w * int(s[i]) for w, s in zip(weights, secrets, strict=True)) % P for i in range(99)
    ]
    assert shares.combine(combined, 2, 2, size=99).tolist() == expected


def _det(matrix: list[list[int]]) -> int:
    """The determinant mod p by elimination (an independent check of invertibility)."""
    rows, det = [row[:] for row in matrix], 1
    for col in range(len(rows)):
        pivot = next((r for r in range(col, len(rows)) if rows[r][col] % P), None)
        if pivot is None:
            return 0
        if pivot != col:
            rows[col], rows[pivot], det = rows[pivot], rows[col], -det
        det = det * rows[col][col] % P
        inv = pow(rows[col][col], -1, P)
        for r in range(col + 1, len(rows)):
            f = rows[r][col] * inv % P
            rows[r] = [(a - f * b) % P for a, b in zip(rows[r], rows[col], strict=True)]
    return det % P


@pytest.mark.parametrize(("threshold", "pieces", "holders"), [(4, 1, 6), (3, 3, 6), (6, 5, 10)])
def test_any_threshold_minus_one_shares_are_uniform_exactly(threshold, pieces, holders):
    """Shares at x_1..x_{t-1} are D·secret + R·random, where R[j][i] = x_j^(pieces+i) for
    the t-1 random rows: if R is invertible for every such set of holders, the shares
    are uniform whatever the secret (a one-time pad), which is the privacy claim."""
    for chosen in itertools.combinations(range(1, holders + 1), threshold - 1):
        random_part = [[pow(x, pieces + i, P) for i in range(threshold - 1)] for x in chosen]
        assert _det(random_part) != 0


def test_signed_integers_round_trip_through_the_field():
    units = np.array([0, 1, -1, P // 2, -(P // 2), 123456789, -987654321], dtype=np.int64)
    field = shares.to_field(units)
    assert field.max() < P
    np.testing.assert_array_equal(shares.from_field(field), units)


def test_uniform_draws_field_elements():
    draws = shares.uniform(50_000)
    assert draws.dtype == np.uint64 and draws.max() < P
    assert abs(draws.astype(np.float64).mean() / P - 0.5) < 0.01


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: shares.split(np.zeros(3, np.uint64), 4, 3), "threshold=4, pieces=1 of holders=3"),
        (lambda: shares.split(np.zeros(3, np.uint64), 3, 4, 3), "t - 1 \\+ pieces <= n"),
        (lambda: shares.combine({1: np.zeros(2), 0: np.zeros(2)}, 2), "distinct x >= 1"),
        (lambda: shares.combine({1: np.zeros(2)}, 2, 2), "threshold - 1 \\+ pieces = 3"),
        (lambda: shares.weighted_sum([np.zeros(2)], [P]), "is not a field element"),
        (lambda: shares.weighted_sum([np.zeros(2)], [1, 2]), "1 vectors and 2 weights"),
    ],
)
def test_bad_arguments_are_named(call, says):
    with pytest.raises(ValueError, match=says):
        call()
