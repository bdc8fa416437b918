"""Membership inference against a trained (global) model.

Threat model: the attacker queries the final model (its logits; the weights are not
needed) on a candidate example whose label it knows, and guesses whether the example
was in the training set. Both attacks score every candidate, higher meaning "member";
the audit reports how well the scores separate members from non-members:

- :func:`loss_threshold` (Yeom et al. 2018): score = −loss. Members were fit, so their
  loss is lower. Cheap, but it confuses "easy" with "seen".
- :func:`calibrated`: offline LiRA (Carlini et al. 2022) with a global variance, i.e.
  difficulty calibration (Watson et al. 2022) on LiRA's logit-scaled confidence. The
  attacker also holds a reference pool from the same distribution, disjoint from the
  candidates, and trains reference models on it the way the target was trained; a
  candidate scores by how much more confident the target is on it than models that
  never saw it.

Evaluation is balanced: the larger candidate set is subsampled (seeded) to the size of
the smaller, so AUC 0.5 is chance. DP-SGD bounds what any attack can reach (at every
threshold, TPR ≤ e^ε·FPR + δ); an audit measures how much of that bound these
attacks reach, which is a lower bound on the leakage, not a proof of privacy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from fedpriv.training import seed_for

__all__ = [
    "Examples",
    "MembershipResult",
    "TrainReference",
    "balanced",
    "calibrated",
    "logit_confidence",
    "loss_threshold",
    "membership_metrics",
    "per_example_loss",
]

#: Labelled examples: inputs ``x`` (float32, any per-sample shape) and int64 labels ``y``.
Examples = tuple[np.ndarray, np.ndarray]
#: Trains a fresh reference model on ``(x, y)`` with a seed: the attacker's guess at the
#: target's recipe (architecture and training).
TrainReference = Callable[[np.ndarray, np.ndarray, int], nn.Module]

#: The false-positive rate :attr:`MembershipResult.tpr_at_1pct_fpr` is read at.
LOW_FPR = 0.01


@dataclasses.dataclass(frozen=True)
class MembershipResult:
    """How well an attack's scores separate members from non-members."""

    attack: str
    #: Area under the ROC curve: 0.5 is chance, 1.0 a perfect attack.
    auc: float
    #: The largest TPR among thresholds whose FPR is ≤ 1 %: read off the ROC step
    #: function, not interpolated (a conservative reading). With fewer than 100
    #: non-members this is the TPR at FPR = 0.
    tpr_at_1pct_fpr: float
    num_members: int
    num_nonmembers: int


def _logits(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    model.eval()
    return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).double()


@torch.no_grad()
def per_example_loss(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy of each example under ``model`` (put in eval mode), float64."""
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return nn.functional.cross_entropy(_logits(model, x), labels, reduction="none").numpy()


@torch.no_grad()
def logit_confidence(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's statistic, log(p_y / (1 − p_y)) for each example's true class ``y`` under
    ``model`` (put in eval mode), float64.

    Computed as z_y − logsumexp_{j≠y} z_j, so it keeps separating examples whose loss
    has rounded to 0: exactly where a model that memorized differs from one that did not.
    """
    logits = _logits(model, x)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))[:, None]
    true = logits.gather(1, labels)[:, 0]
    others = logits.scatter(1, labels, float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


def balanced(members: Examples, nonmembers: Examples, *, seed: int) -> tuple[Examples, Examples]:
    """Both sets cut to the smaller one's size by a seeded subsample of the larger."""
    size = min(len(members[1]), len(nonmembers[1]))
    if size == 0:
        raise ValueError(
            f"membership inference needs members and non-members; got {len(members[1])} "
            f"members and {len(nonmembers[1])} non-members"
        )
    rng = np.random.default_rng(seed)

    def cut(examples: Examples) -> Examples:
        if len(examples[1]) == size:
            return examples
        keep = np.sort(rng.choice(len(examples[1]), size=size, replace=False))
        return examples[0][keep], examples[1][keep]

    return cut(members), cut(nonmembers)


def membership_metrics(
    member_scores: np.ndarray, nonmember_scores: np.ndarray, *, attack: str
) -> MembershipResult:
    """AUC and TPR at 1 % FPR of scores where higher means "member"."""
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    scores = np.concatenate([member_scores, nonmember_scores])
    # Every threshold kept: the best TPR under the FPR cap sits at a corner of the curve.
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return MembershipResult(
        attack=attack,
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_1pct_fpr=float(tpr[fpr <= LOW_FPR].max()),
        num_members=len(member_scores),
        num_nonmembers=len(nonmember_scores),
    )


def loss_threshold(
    model: nn.Module, *, members: Examples, nonmembers: Examples, seed: int = 0
) -> MembershipResult:
    """Loss-threshold attack (Yeom et al. 2018): score = −per-example loss.

    ``members`` were in the model's training set, ``nonmembers`` were not (same
    distribution, ideally the same class mix); ``seed`` picks the balanced subsample.
    """
    members, nonmembers = balanced(members, nonmembers, seed=seed)
    return membership_metrics(
        -per_example_loss(model, *members),
        -per_example_loss(model, *nonmembers),
        attack="loss_threshold",
    )


def calibrated(
    model: nn.Module,
    *,
    members: Examples,
    nonmembers: Examples,
    train_reference: TrainReference,
    reference_data: Examples,
    num_references: int = 4,
    seed: int = 0,
) -> MembershipResult:
    """Reference-calibrated attack: offline LiRA with a global variance (Carlini et al.
    2022), i.e. Watson et al.'s (2022) difficulty calibration on the logit confidence.

    Each of ``num_references`` reference models is trained by ``train_reference`` on a
    seeded random half of ``reference_data``, which must be disjoint from the
    candidates, so every reference model is an "out" model for every candidate (make the
    pool twice the target's training-set size to match it). A candidate's score is
    φ_target − mean φ_reference, φ = :func:`logit_confidence`. LiRA's offline test
    divides by the out-distribution's standard deviation; with few references it uses
    one global value, which leaves the ranking, and so both metrics, unchanged.
    """
    if num_references < 1:
        raise ValueError(f"num_references={num_references} must be >= 1, e.g. 4")
    pool_x, pool_y = reference_data
    if len(pool_y) < 2:
        raise ValueError(
            f"reference_data holds {len(pool_y)} examples; each reference model trains on "
            "a random half of it, so it needs at least 2 (twice the target's training set "
            "is best)"
        )
    members, nonmembers = balanced(members, nonmembers, seed=seed)
    rng = np.random.default_rng(seed_for(seed, 1))
    reference_member, reference_nonmember = [], []
    for k in range(num_references):
        half = np.sort(rng.permutation(len(pool_y))[: len(pool_y) // 2])
        reference = train_reference(pool_x[half], pool_y[half], seed_for(seed, 2, k))
        reference_member.append(logit_confidence(reference, *members))
        reference_nonmember.append(logit_confidence(reference, *nonmembers))
    return membership_metrics(
        logit_confidence(model, *members) - np.mean(reference_member, axis=0),
        logit_confidence(model, *nonmembers) - np.mean(reference_nonmember, axis=0),
        attack="calibrated",
    )
