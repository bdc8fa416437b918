"""Adversary specs: who attacks and what each attack sends, against hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv import ConfigError, load_config

GLOBAL = {"w": np.array([1.0, -2.0], np.float32)}
LOCAL = {"w": np.array([1.5, -1.0], np.float32)}  # the honest update is (+0.5, +1.0)


def adversary(*overrides: str):
    return load_config(list(overrides)).adversary


def test_a_seeded_fraction_attacks():
    spec = adversary("adversary=sign_flip", "adversary.fraction=0.2")
    chosen = spec.attackers(10, seed=0)
    assert len(chosen) == 2 and chosen == spec.attackers(10, seed=0)
    assert all(0 <= p < 10 for p in chosen)
    assert len({tuple(spec.attackers(10, seed=s)) for s in range(5)}) > 1
    assert adversary().attackers(10, seed=0) == []


def test_update_attacks_by_hand():
    rng = np.random.default_rng(0)
    flipped = adversary("adversary=sign_flip", "adversary.factor=4").tamper(GLOBAL, LOCAL, rng)
    np.testing.assert_allclose(flipped["w"], [1.0 - 4 * 0.5, -2.0 - 4 * 1.0])
    boosted = adversary("adversary=scale", "adversary.factor=3").tamper(GLOBAL, LOCAL, rng)
    np.testing.assert_allclose(boosted["w"], [1.0 + 3 * 0.5, -2.0 + 3 * 1.0])
    noisy = adversary("adversary=noise", "adversary.std=0.5").tamper(GLOBAL, LOCAL, rng)
    assert noisy["w"].dtype == np.float32 and not np.allclose(noisy["w"], LOCAL["w"])
    assert np.abs(noisy["w"] - GLOBAL["w"]).max() < 5 * 0.5


def test_label_flip_poisons_labels_only():
    y = np.array([0, 3, 9])
    assert adversary("adversary=label_flip").poison_labels(y, 10).tolist() == [9, 6, 0]
    assert adversary("adversary=sign_flip").poison_labels(y, 10).tolist() == [0, 3, 9]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["adversary=scale", "adversary.fraction=1.5"], "adversary.fraction=1.5 must be in [0, 1]"),
        (["adversary=sign_flip", "adversary.factor=0"], "adversary.factor=0.0 must be > 0"),
        (["adversary=noise", "family=vertical"], "not available with family=vertical"),
    ],
)
def test_bad_adversary_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(overrides)
