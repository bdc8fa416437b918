"""Merge rules by name: how contributions (client models, party embeddings) become one.

Every family merges something: the horizontal server merges client models (``max``,
``absmax``), the vertical label owner merges the parties' embeddings (splitnn's ``strategy.merge``),
a swarm leader merges the peers' models (``strategy.merge``). One registry holds the rules,
so a rule means the same thing wherever it is named.

A rule reads a stack of contributions along axis 0, with optional weights (example
counts). Its one definition is written in torch, because vertical training needs autograd
through the merge; :meth:`MergeRule.numpy` runs that same definition on numpy arrays
(torch reads their memory without copying), so the families that merge plain arrays do
not keep a second copy.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from fedpriv.registry import Registry, Spec

__all__ = ["MERGE_RULES", "MergeRule", "merge_choices", "merge_rule"]

#: Either array type; :meth:`MergeRule.from_sum` is plain arithmetic and serves both.
A = TypeVar("A", np.ndarray, torch.Tensor)


@dataclasses.dataclass(frozen=True)
class MergeRule(Spec, abc.ABC):
    """One way to merge contributions stacked along axis 0."""

    #: The merge is computable from the sum of the contributions (weighted by their
    #: weights if the rule is weighted), the only thing encrypted aggregation delivers:
    #: see :meth:`from_sum`.
    linear: ClassVar[bool] = False
    #: The rule weighs contributions by the weights it is given; other rules ignore them.
    weighted: ClassVar[bool] = False

    @abc.abstractmethod
    def torch(self, stacked: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The merge of ``stacked`` (contributions along dim 0); autograd flows through it."""

    def numpy(
        self, stacked: np.ndarray, weights: Sequence[float] | np.ndarray | None = None
    ) -> np.ndarray:
        """The same merge on numpy arrays, in the dtype of ``stacked``."""
        tensor = torch.from_numpy(np.require(stacked, requirements=("C", "W")))
        scale = None if weights is None else torch.from_numpy(np.asarray(weights, stacked.dtype))
        return self.torch(tensor, scale).numpy()

    def from_sum(self, total: A, count: float) -> A:
        """The merge from ``total``, the sum of the contributions (each times its weight
        for a weighted rule), and ``count``, their number (or total weight)."""
        linear = ", ".join(n for n in MERGE_RULES.names() if MERGE_RULES.get(n).linear)
        raise ValueError(
            f"merge rule {self.name!r} cannot be computed from a sum; linear rules: {linear}"
        )

    def width(self, parts: int, width: int) -> int:
        """Width of the merge of ``parts`` contributions ``width`` wide each."""
        return width


#: Every merge rule; ``strategy.merge`` (swarm leader, vertical splitnn) names one of them.
MERGE_RULES: Registry[MergeRule] = Registry("merge rule")


@dataclasses.dataclass(frozen=True)
class _Linear(MergeRule):
    """A rule defined by :meth:`from_sum`, so the plain and the encrypted path agree."""

    linear: ClassVar[bool] = True

    def torch(self, stacked: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        if self.weighted and weights is not None:
            scale = weights.reshape(-1, *(1,) * (stacked.dim() - 1))
            return self.from_sum((stacked * scale).sum(0), float(weights.sum()))
        return self.from_sum(stacked.sum(0), len(stacked))

    @abc.abstractmethod
    def from_sum(self, total: A, count: float) -> A: ...


@MERGE_RULES.register("sum")
@dataclasses.dataclass(frozen=True)
class Sum(_Linear):
    """The sum of the contributions."""

    def from_sum(self, total: A, count: float) -> A:
        return total


@MERGE_RULES.register("mean")
@dataclasses.dataclass(frozen=True)
class Mean(_Linear):
    """The unweighted mean of the contributions."""

    def from_sum(self, total: A, count: float) -> A:
        return total / count


@MERGE_RULES.register("weighted_mean")
@dataclasses.dataclass(frozen=True)
class WeightedMean(Mean):
    """The mean weighted by example counts: FedAvg's rule (McMahan et al. 2017)."""

    weighted: ClassVar[bool] = True


@MERGE_RULES.register("max")
@dataclasses.dataclass(frozen=True)
class Max(MergeRule):
    """The largest value per element (the Max unification rule); autograd routes the
    gradient to the contribution whose value was kept."""

    def torch(self, stacked: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return stacked.max(0).values


@MERGE_RULES.register("absmax")
@dataclasses.dataclass(frozen=True)
class AbsMax(MergeRule):
    """The value of largest magnitude per element, sign kept (the AbsMax unification
    rule); ties go to the first contribution."""

    def torch(self, stacked: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        keep = stacked.abs().argmax(0, keepdim=True)
        return stacked.gather(0, keep).squeeze(0)


@MERGE_RULES.register("coordinate_median")
@dataclasses.dataclass(frozen=True)
class CoordinateMedian(MergeRule):
    """The median per element, the mean of the two middle values for an even count
    (as ``np.median``; Yin et al. 2018)."""

    def torch(self, stacked: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        ordered, count = stacked.sort(0).values, len(stacked)
        return (ordered[(count - 1) // 2] + ordered[count // 2]) / 2


@MERGE_RULES.register("trimmed_mean")
@dataclasses.dataclass(frozen=True)
class TrimmedMean(MergeRule):
    """The mean per element after cutting ``int(trim × count)`` values at each end
    (Yin et al. 2018; the cut of Flower's ``aggregate_trimmed_avg``)."""

    trim: float = 0.1

    def problems(self) -> list[tuple[str, str]]:
        return [] if 0.0 <= self.trim < 0.5 else [("trim", "must be in [0, 0.5)")]

    def torch(self, stacked: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        cut = int(self.trim * len(stacked))
        return stacked.sort(0).values[cut : len(stacked) - cut].mean(0)


@MERGE_RULES.register("concat")
@dataclasses.dataclass(frozen=True)
class Concat(MergeRule):
    """The contributions side by side along the last axis (a split model's default)."""

    def torch(self, stacked: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat(stacked.unbind(0), dim=-1)

    def width(self, parts: int, width: int) -> int:
        return parts * width


def merge_rule(name: str, **settings: Any) -> MergeRule:
    """Rule ``name``, given those of ``settings`` it has fields for: a family passes all
    its merge settings (swarm: ``trim``) whichever rule is named."""
    cls = MERGE_RULES.get(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in settings.items() if k in fields})


def merge_choices(*names: str) -> tuple[str, ...]:
    """The rules a family offers, in the order its errors list them; each must be
    registered, so a family cannot offer a rule the registry lacks."""
    for name in names:
        MERGE_RULES.get(name)
    return names
