"""``vertical.*``: how features and entities are split, aligned and protected; and the
vertical strategies (``strategy=splitnn``: the split model and how it merges)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from fedpriv.config import ExperimentConfig
from fedpriv.data.vertical import SPLITS
from fedpriv.errors import ConfigError
from fedpriv.families import StrategySpec
from fedpriv.merge import MergeRule, merge_choices, merge_rule
from fedpriv.registry import Registry, Spec

#: How the label owner combines the parties' embeddings (the V-environment merge rules).
MERGES = merge_choices("concat", "sum", "mean", "max", "absmax")
#: Those computable from the sum of the embeddings: the ones encrypted aggregation allows.
LINEAR_MERGES = tuple(name for name in MERGES if merge_rule(name).linear)


@dataclasses.dataclass(frozen=True)
class VerticalSettings(Spec):
    """The vertical setting of one experiment (``family=vertical``); party 0 holds the labels."""

    #: Parties, one node each (``num_clients`` follows this).
    parties: int = 2
    #: ``columns`` (contiguous groups, or ``columns`` below), ``random``, ``halves``
    #: (2 parties, left/right of each image) or ``quadrants`` (4 parties).
    split: str = "columns"
    #: With ``split=columns``: an explicit list of flat feature indices per party.
    columns: tuple[tuple[int, ...], ...] | None = None
    #: Fraction of training entities every party holds (the rest miss one party at least).
    overlap: float = 1.0
    #: Align entities by private set intersection; false: parties send plain IDs.
    psi: bool = True
    #: Std. dev. of Gaussian noise each party adds to its embeddings.
    embedding_noise: float = 0.0
    #: Std. dev. of Gaussian noise the label owner adds to the gradients it returns.
    gradient_noise: float = 0.0

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.parties < 2:
            out.append(("parties", "must be >= 2 (one label owner and at least one more)"))
        if self.split not in SPLITS:
            out.append(("split", f"must be one of: {', '.join(SPLITS)}"))
        elif SPLITS[self.split] not in (None, self.parties):
            out.append(("split", f"needs vertical.parties={SPLITS[self.split]}"))
        if self.columns is not None and self.split != "columns":
            out.append(("columns", "applies to split=columns only"))
        if not 0.0 < self.overlap <= 1.0:
            out.append(("overlap", "must be in (0, 1]"))
        if self.embedding_noise < 0:
            out.append(("embedding_noise", "must be >= 0"))
        if self.gradient_noise < 0:
            out.append(("gradient_noise", "must be >= 0"))
        return out


#: Vertical strategies (``strategy=<name>`` with ``family=vertical``).
VERTICAL_STRATEGIES: Registry[StrategySpec] = Registry("vertical strategy")


@VERTICAL_STRATEGIES.register("splitnn")
@dataclasses.dataclass(frozen=True)
class SplitNN(StrategySpec):
    """Split learning: bottom models at the parties, top model and loss at the label owner."""

    #: The coordinator's aggregate is the merge of the parties' embeddings; crypto=ckks
    #: also needs a merge computable from their sum (the family checks ``merge``).
    linear: ClassVar[bool] = True

    #: How the label owner combines the parties' embeddings.
    merge: str = "concat"
    #: Width of each party's embedding (output of its bottom model, ``model=``).
    embedding_dim: int = 16
    #: Hidden widths of the label owner's top model (an MLP on the merged embedding).
    top_hidden: tuple[int, ...] = (64,)

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.merge not in MERGES:
            out.append(("merge", f"must be one of: {', '.join(MERGES)}"))
        if self.embedding_dim < 1:
            out.append(("embedding_dim", "must be >= 1"))
        if any(width < 1 for width in self.top_hidden):
            out.append(("top_hidden", "widths must all be >= 1, e.g. [64] or []"))
        return out

    def merge_rule(self) -> MergeRule:
        """The rule ``strategy.merge`` names."""
        return merge_rule(self.merge)

    def merged_width(self, parties: int) -> int:
        """Width of the merged embedding: the top model's input."""
        return self.merge_rule().width(parties, self.embedding_dim)


def vertical_settings(config: ExperimentConfig) -> VerticalSettings:
    """The ``vertical.*`` settings of a ``family=vertical`` config."""
    settings = config.family_settings
    if not isinstance(settings, VerticalSettings):
        raise ConfigError(f"family={config.family} has no vertical.* settings")
    return settings


def split_model(config: ExperimentConfig) -> SplitNN:
    """The split model of a ``family=vertical`` config (``strategy.*``)."""
    if not isinstance(config.strategy, SplitNN):
        raise ConfigError(f"strategy={config.strategy.name} is not a vertical strategy")
    return config.strategy


#: The keys that moved from ``vertical.*`` to ``strategy.*`` (splitnn's own).
MOVED = ("merge", "embedding_dim", "top_hidden")


def outdated(mapping: Mapping[str, Any]) -> list[str]:
    """What a config from before splitnn had parameters (``vertical.merge=sum``: an
    older run's config.yaml) writes now."""
    settings = mapping.get("vertical")
    old = {k: v for k, v in settings.items() if k in MOVED} if isinstance(settings, Mapping) else {}
    if not old:
        return []
    write = " ".join(f"strategy.{k}={_plain_value(v)}" for k, v in old.items())
    keys = ", ".join(f"vertical.{k}" for k in old)
    return [f"{keys} moved to the split model's own parameters: write {write}"]


def _plain_value(value: Any) -> str:
    """``value`` as a Hydra override writes it (lists as ``[64,32]``)."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)
