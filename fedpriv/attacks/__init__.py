"""Privacy audits: attacks that measure what a trained model or an update leaks.

Each module is one attack with its threat model in its docstring:
:mod:`~fedpriv.attacks.membership` (was this example in training?),
:mod:`~fedpriv.attacks.inversion` (rebuild a client's example from its update) and
:mod:`~fedpriv.attacks.label_inference` (a vertical party infers labels from gradients);
:mod:`~fedpriv.attacks.runs` audits a run with them (`fedpriv audit`, `attack=`).
"""

from fedpriv.attacks.inversion import (
    Dlg,
    InversionResult,
    invert_gradient,
    invert_update,
    recover_label,
    update_gradient,
)
from fedpriv.attacks.label_inference import (
    GradientBatch,
    LabelAudit,
    LabelInference,
    collect_gradients,
    infer_labels,
)
from fedpriv.attacks.membership import (
    MembershipResult,
    calibrated,
    logit_confidence,
    loss_threshold,
    membership_metrics,
    per_example_loss,
)

__all__ = [
    "Dlg",
    "GradientBatch",
    "InversionResult",
    "LabelAudit",
    "LabelInference",
    "MembershipResult",
    "calibrated",
    "collect_gradients",
    "infer_labels",
    "invert_gradient",
    "invert_update",
    "logit_confidence",
    "loss_threshold",
    "membership_metrics",
    "per_example_loss",
    "recover_label",
    "update_gradient",
]
