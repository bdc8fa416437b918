"""Runs as ``fedpriv report`` reads them: where they are, which ones differ only by seed
(a :class:`RunGroup`), the per-round values the report tabulates and plots, and how well
the audited attacks did (:class:`AttackSuccess`, from ``audit.json``).

A sibling of :mod:`fedpriv.report` rather than a subpackage so that the wheel, whose
``pyproject.toml`` lists packages one by one, ships it without a packaging change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedpriv.results import Result, round_epsilon

log = logging.getLogger("fedpriv")

#: Config keys left out of the group key: what differs between runs of one setting
#: (``seed``, ``output_dir``) and bookkeeping that does not change what a run computes.
PER_RUN_KEYS = ("seed", "output_dir", "checkpoint_every")
#: Config groups left out of the group key: where a run's rounds were also logged
#: (``logger``; configs written before it existed have none).
PER_RUN_GROUPS = ("logger",)
#: How a key absent from a group's settings reads in a label.
UNSET = "(unset)"


def find_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Finished run directories (holding ``summary.json``) at or below each path."""
    runs: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise FileNotFoundError(f"no such run or sweep directory: {path}")
        found = (
            [path]
            if (path / "summary.json").is_file()
            else sorted(p.parent for p in path.rglob("summary.json"))
        )
        if not found:
            log.warning("no finished runs (summary.json) under %s", path)
        runs += [p for p in found if p not in runs]
    return runs


def run_label(result: Result, results: Sequence[Result]) -> str:
    """A short run name: the path below the runs' common parent."""
    if len(results) == 1:
        return result.run_dir.name
    common = Path(os.path.commonpath([r.run_dir.resolve() for r in results]))
    return str(result.run_dir.resolve().relative_to(common)) or result.run_dir.name


@dataclasses.dataclass(frozen=True)
class RunGroup:
    """Runs of one setting: the same resolved config but for ``PER_RUN_KEYS`` (the seed).

    ``label`` names what sets the group apart from the report's other groups, e.g.
    ``partition.alpha=0.5 strategy=fedprox``; ``seeds[i]`` is ``runs[i]``'s seed, as text.
    """

    label: str
    runs: tuple[Result, ...]
    seeds: tuple[str, ...]


def group_runs(results: Sequence[Result]) -> list[RunGroup]:
    """Groups of runs that differ only by seed, in the order their first run appears.

    Settings come from each run's ``config.yaml``; if any run lacks one, every run is
    described by its ``summary.json`` instead, so that like is compared with like.
    """
    if not results:
        return []
    use_config = all((r.run_dir / "config.yaml").is_file() for r in results)
    settings, seeds = zip(*(_settings(r, use_config) for r in results), strict=True)
    members: dict[str, list[int]] = {}
    for i, setting in enumerate(settings):
        members.setdefault(json.dumps(setting, sort_keys=True), []).append(i)
    indices = list(members.values())
    labels = _labels([settings[idx[0]] for idx in indices])
    groups = []
    for label, idx in zip(labels, indices, strict=True):
        runs = tuple(results[i] for i in idx)
        label = label or _directory_label(runs, results)
        groups.append(RunGroup(label, runs, tuple(seeds[i] for i in idx)))
    return groups


def _labels(settings: Sequence[Mapping[str, str]]) -> list[str]:
    """``key=value`` for the keys whose values vary across groups; ``""`` when none do.

    First only keys whose values differ among the groups that have them (a key only DP
    runs have, such as ``privacy.target_epsilon``, is named only if DP runs differ in
    it); if that leaves two groups alike, also keys some groups lack, shown as ``(unset)``.
    """
    keys = list(dict.fromkeys(key for setting in settings for key in setting))
    for with_unset in (False, True):
        shown = [
            key
            for key in keys
            if len({s.get(key, UNSET) for s in settings if with_unset or key in s}) > 1
        ]
        labels = [
            " ".join(
                f"{_short(key)}={setting.get(key, UNSET)}"
                for key in shown
                if with_unset or key in setting
            )
            for setting in settings
        ]
        if all(labels) and len(set(labels)) == len(labels):
            return labels
    return [""] * len(settings)


def _short(key: str) -> str:
    """``strategy.name`` reads as Hydra's group choice: ``strategy``."""
    return key.removesuffix(".name")


def _directory_label(runs: Sequence[Result], results: Sequence[Result]) -> str:
    """What a group is called when no setting tells it apart (the report's only group)."""
    if len(runs) == 1:
        return run_label(runs[0], results)
    return Path(os.path.commonpath([r.run_dir.resolve() for r in runs])).name


def _settings(result: Result, use_config: bool) -> tuple[dict[str, str], str]:
    """The run's setting as flat ``dotted.key -> value text`` (per-run keys left out), and
    its seed."""
    config = _config(result.run_dir / "config.yaml") if use_config else _summary_config(result)
    flat = _flatten(config)
    seed = flat.get("seed", "null")
    for key in PER_RUN_KEYS:
        flat.pop(key, None)
    for key in [key for key in flat if key.split(".")[0] in PER_RUN_GROUPS]:
        del flat[key]
    return flat, seed


def _config(path: Path) -> Mapping[str, Any]:
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not readable YAML ({error}); fix or remove it") from error
    if not isinstance(config, Mapping):
        raise ValueError(f"{path} holds {type(config).__name__}, not a config mapping")
    return config


#: DP parameters in ``summary.json``'s privacy ledger that are settings, not outcomes.
_PRIVACY_SETTINGS = ("noise_multiplier", "target_epsilon", "max_grad_norm", "budget_epsilon",
                     "central_noise_multiplier", "clipping_norm")  # fmt: skip


def _summary_config(result: Result) -> dict[str, Any]:
    """A config-shaped view of ``summary.json``, for runs without ``config.yaml``."""
    s = result.summary
    privacy = s.get("privacy") or {}
    crypto = s.get("crypto") or {}
    return {
        "data": {"name": s.get("dataset")},
        "partition": {"name": s.get("partition")},
        "model": {"name": s.get("model")},
        "strategy": {"name": s.get("strategy")},
        "family": {"name": s.get("family")},
        "privacy": {
            "name": privacy.get("mode", "none"),
            **{k: privacy[k] for k in _PRIVACY_SETTINGS if privacy.get(k) is not None},
        },
        "crypto": {"name": crypto.get("scheme", "none"), "preset": crypto.get("preset")},
        "num_clients": s.get("num_clients"),
        "rounds": s.get("rounds_planned", s.get("rounds")),
        "seed": s.get("seed"),
    }


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            text = json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
            flat[name] = value if isinstance(value, str) else text
    return flat


def final_epsilon(result: Result) -> float | None:
    """The run's ε: the largest client ε (DP-SGD), else the user-level ε (central DP)."""
    return round_epsilon(result.summary)  # the summary's privacy entry has the same keys


def epsilon_per_client(result: Result) -> dict[int, float]:
    """Each client's ε (DP-SGD, ``summary.json``), by partition id; empty without DP-SGD."""
    privacy = result.summary.get("privacy") or {}
    per_client = privacy.get("epsilon_per_client") or {}
    return {int(k): float(v) for k, v in per_client.items() if v is not None}


def consensus_distance(record: Mapping[str, Any]) -> float | None:
    """A swarm round's consensus distance (``record["swarm"]``), or ``None``."""
    swarm = record.get("swarm")
    value = swarm.get("consensus_distance") if isinstance(swarm, Mapping) else None
    if value is None:
        value = record.get("consensus_distance")
    return None if value is None else float(value)


#: What ``fedpriv audit`` (or ``attack=`` in the config) writes into a run directory.
AUDIT_FILE = "audit.json"
#: The audited attacks the report reads, in the order it shows them.
AUDITED_ATTACKS = ("membership", "gradient_inversion", "label_inference")


@dataclasses.dataclass(frozen=True)
class AttackSuccess:
    """How well each audited attack did on one run, from its ``audit.json``.

    A value is ``None`` when its attack was not audited, could not run (``reasons`` says
    why) or did not measure it. ``audited`` names the attacks ``audit.json`` has.
    """

    #: ROC AUC of the calibrated (reference-model) membership attack: 0.5 is chance.
    membership_auc: float | None = None
    #: ROC AUC of the plain loss-threshold membership attack.
    membership_loss_auc: float | None = None
    #: The calibrated attack's TPR at 1 % FPR.
    membership_tpr_at_1pct_fpr: float | None = None
    #: Gradient inversion: mean squared error per input value of the reconstruction.
    inversion_mse: float | None = None
    #: Gradient inversion: whether the recovered label is the true one.
    inversion_label_correct: bool | None = None
    #: Label inference: the passive party's accuracy on the labels it inferred.
    label_inference_accuracy: float | None = None
    #: Label inference: what always guessing the majority class scores.
    label_inference_chance: float | None = None
    audited: tuple[str, ...] = ()
    reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)


def attack_success(result: Result) -> AttackSuccess:
    """The run's audited attack success (``AttackSuccess()`` without ``audit.json``).

    Attacks other than ``AUDITED_ATTACKS`` are ignored (a later fedpriv may add some);
    an unreadable file raises ``ValueError`` naming it.
    """
    path = result.run_dir / AUDIT_FILE
    if not path.is_file():
        return AttackSuccess()
    try:
        audits = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not readable JSON ({error}); rerun `fedpriv audit` or remove it"
        ) from error
    if not isinstance(audits, Mapping):
        raise ValueError(f"{path} holds {type(audits).__name__}, not an object keyed by attack")
    audited = tuple(a for a in AUDITED_ATTACKS if isinstance(audits.get(a), Mapping))
    reasons = {
        attack: str(audits[attack].get("reason") or "no reason given")
        for attack in audited
        if not audits[attack].get("possible")
    }

    def ran(attack: str) -> Mapping[str, Any]:
        return audits[attack] if attack in audited and attack not in reasons else {}

    calibrated = _mapping(ran("membership").get("calibrated"))
    inversion = ran("gradient_inversion")
    inference = _mapping(ran("label_inference").get("inference"))
    correct = inversion.get("label_correct")
    return AttackSuccess(
        membership_auc=_number(calibrated.get("auc")),
        membership_loss_auc=_number(_mapping(ran("membership").get("loss_threshold")).get("auc")),
        membership_tpr_at_1pct_fpr=_number(calibrated.get("tpr_at_1pct_fpr")),
        inversion_mse=_number(inversion.get("mse")),
        inversion_label_correct=None if correct is None else bool(correct),
        label_inference_accuracy=_number(inference.get("accuracy")),
        label_inference_chance=_number(inference.get("chance")),
        audited=audited,
        reasons=reasons,
    )


def attack_text(successes: Sequence[AttackSuccess], sep: str = "; ") -> str:
    """The audited attacks' success, compactly: ``AUC 0.53; MSE 0.071, label ✓; label acc
    0.91 (chance 0.10)``, attacks joined by ``sep``; ``AUC n/a`` for an attack that could
    not run; ``""`` when none was audited.

    ``successes`` are one run's or a group's: each value is the mean over the runs where
    the attack ran (``label 2/3 ✓`` when the inverted label was right in some).
    """
    parts = []
    for attack, describe in _DESCRIBE.items():
        audited = [s for s in successes if attack in s.audited]
        if audited:
            parts.append(describe([s for s in audited if attack not in s.reasons]))
    return sep.join(parts)


def _describe_membership(ran: Sequence[AttackSuccess]) -> str:
    return "AUC " + _mean_text([s.membership_auc for s in ran], ".2f")


def _describe_inversion(ran: Sequence[AttackSuccess]) -> str:
    text = "MSE " + _mean_text([s.inversion_mse for s in ran], ".2g")
    correct = [c for s in ran if (c := s.inversion_label_correct) is not None]
    if correct:
        right = sum(correct)
        mark = "✓" if right == len(correct) else "✗" if not right else f"{right}/{len(correct)} ✓"
        text += f", label {mark}"
    return text


def _describe_label_inference(ran: Sequence[AttackSuccess]) -> str:
    text = "label acc " + _mean_text([s.label_inference_accuracy for s in ran], ".2f")
    chance = [c for s in ran if (c := s.label_inference_chance) is not None]
    return text + (f" (chance {statistics.fmean(chance):.2f})" if chance else "")


_DESCRIBE = {
    "membership": _describe_membership,
    "gradient_inversion": _describe_inversion,
    "label_inference": _describe_label_inference,
}


def _mean_text(values: Iterable[float | None], spec: str) -> str:
    """The mean of the values that are not ``None``, formatted; ``n/a`` when none are."""
    present = [v for v in values if v is not None]
    return format(statistics.fmean(present), spec) if present else "n/a"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
