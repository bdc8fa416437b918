"""Differential privacy: local DP-SGD (Opacus), central DP (Flower's wrappers), the ledger."""

from fedpriv.privacy.base import PRIVACY, NoPrivacy, PrivacySpec
from fedpriv.privacy.central import Central, DpSgdAndCentral
from fedpriv.privacy.dp_sgd import DpSgd, grad_sample_mode, private_model, train_dp_sgd
from fedpriv.privacy.ledger import PrivacyLedgerMod, ServerLedger, declined_reason

__all__ = [
    "PRIVACY",
    "Central",
    "DpSgd",
    "DpSgdAndCentral",
    "NoPrivacy",
    "PrivacyLedgerMod",
    "PrivacySpec",
    "ServerLedger",
    "declined_reason",
    "grad_sample_mode",
    "private_model",
    "train_dp_sgd",
]
