"""Encrypted aggregation: the server adds CKKS ciphertexts (TenSEAL) it cannot read."""

from fedpriv.crypto.base import (
    CRYPTO,
    Aggregate,
    Aggregator,
    CryptoSpec,
    Interactive,
    NoCrypto,
    PlainAggregator,
)
from fedpriv.crypto.ckks import PRESETS, CkksParams, KeyPair, make_keys
from fedpriv.crypto.keys import read_keys, write_keys
from fedpriv.crypto.scheme import Ckks
from fedpriv.crypto.secagg_scheme import CkksSecAgg

__all__ = [
    "CRYPTO",
    "PRESETS",
    "Aggregate",
    "Aggregator",
    "Ckks",
    "CkksParams",
    "CkksSecAgg",
    "CryptoSpec",
    "Interactive",
    "KeyPair",
    "NoCrypto",
    "PlainAggregator",
    "make_keys",
    "read_keys",
    "write_keys",
]
