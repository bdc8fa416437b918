"""Noise that nobody can recompute: a ChaCha20 stream keyed from the operating system.

Central DP's noise is what stands between the aggregate and a client's update, so it
comes from a cryptographically secure generator (randomgen's ChaCha with the standard
20 rounds, a 256-bit key from ``os.urandom``), never from a seed in the config or from
NumPy's global Mersenne Twister, whose state can be read back from its outputs or from
a saved file. The generator lives in memory only: no file holds its key or state.
"""

from __future__ import annotations

import os

import numpy as np


def secure_generator() -> np.random.Generator:
    """A NumPy generator over ChaCha20 with a fresh secret 256-bit key."""
    from randomgen import ChaCha

    return np.random.Generator(ChaCha(key=int.from_bytes(os.urandom(32), "big"), rounds=20))
