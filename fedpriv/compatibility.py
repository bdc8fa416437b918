"""What combines with what: one table, checked once when a config is validated and
printed by ``fedpriv capabilities``.

The parts of a config declare themselves, and only this module reads the
declarations together:

- a strategy spec declares its traits (``linear``, ``uniform_mean``, ``asynchronous``,
  ``additive``);
- a family declares the features it cannot run, and why (``unsupported``), and so may
  one of its strategies (a swarm's gossip cannot run what its leader mode can);
- the privacy, crypto, adversary, selection and engine specs say what a run uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedpriv.config import ExperimentConfig

#: Features a family may lack (:func:`_setting` names the setting that asks for each).
FEATURES = ("dp_sgd", "central_dp", "ckks", "adversary", "fleet", "gpu")

#: Reasons more than one family gives for a feature it lacks.
NO_ADVERSARIES_YET = "it has no adversaries yet: use adversary=none"
#: Where a family whose nodes keep their own models resumes, and why.
DEVICE_MODELS_LIMIT = (
    "on a fleet only: a simulated node keeps its model in memory, a device keeps its own "
    "copy (state-dir)"
)


@dataclasses.dataclass(frozen=True)
class Rule:
    """``when`` every property in it holds, the config is refused with ``why``.

    ``why`` is formatted with the config's names: family, strategy, privacy, crypto,
    and the strategies of the family that have a trait (``{linear}``, ``{uniform_mean}``).
    """

    when: frozenset[str]
    why: str
    #: The reason without the names of one config, for the table's cells.
    short: str | None = None


def rule(*when: str, why: str, short: str | None = None) -> Rule:
    return Rule(frozenset(when), why, short)


#: Every combination fedpriv refuses that is not about one family (see ``unsupported``).
RULES = (
    rule(
        "ckks",
        "nonlinear",
        "synchronous",
        why="crypto={crypto} cannot aggregate strategy={strategy}: it needs the plaintext "
        "updates (a median, a distance, a square root), and the server holds only "
        "ciphertexts it can add; with crypto=ckks use one of: {linear}",
        short="its aggregate needs the plaintext updates, and under CKKS the server holds "
        "only ciphertexts it can add",
    ),
    rule(
        "central_dp",
        "not_uniform_mean",
        why="privacy={privacy}: central DP needs a uniform-mean aggregate, and "
        "strategy={strategy} is not one; use one of: {uniform_mean}",
        short="central DP's noise is sized for a uniform mean of clipped updates, and this "
        "aggregate is not one",
    ),
    rule(
        "ckks",
        "central_dp",
        why="crypto={crypto} cannot be combined with privacy={privacy}: central DP adds "
        "noise to the aggregate on the server, which cannot read it under CKKS; use "
        "privacy=dp_sgd (local DP-SGD on each client) with crypto=ckks",
    ),
    rule(
        "asynchronous",
        "ckks",
        "not_additive",
        why="crypto={crypto} cannot run strategy={strategy}: under CKKS the server can only "
        "multiply ciphertexts by plaintexts and add them; fedasync rescales the encrypted "
        "model and bmuf its encrypted momentum at every step (each product uses up one "
        "level of the modulus chain, which runs out after a few), and easgd steps the model "
        "on every single update (two consecutive models would show any key holder one "
        "client's update); use strategy=fedbuff (its buffered step is a sum of "
        "staleness-scaled updates) with crypto.preset=ckks-128-async, crypto=none, or a "
        "synchronous strategy: {linear}",
        short="under CKKS the server only scales and adds: this rule multiplies the encrypted "
        "model or momentum at every step (a modulus level each) or steps on single updates; "
        "fedbuff is the asynchronous rule that runs under CKKS",
    ),
    rule(
        "asynchronous",
        "ckks",
        "no_rescale_level",
        why="crypto={crypto} runs strategy={strategy}'s step as one plaintext multiply and "
        "rescale per update (its staleness weight), and these CKKS parameters have no "
        "rescale level: set crypto.preset=ckks-128-async (N=4096, [60, 29, 20])",
    ),
    rule(
        "asynchronous",
        "ckks",
        "delay_compensation",
        why="crypto={crypto} cannot correct updates for delay: strategy.delay_compensation "
        "multiplies an update by itself element-wise, and the server holds only ciphertexts "
        "it can scale and add; set strategy.delay_compensation=0",
    ),
    rule(
        "asynchronous",
        "ckks",
        "single_update_steps",
        why="crypto={crypto} hides single updates only inside sums: with a buffer of one, "
        "strategy={strategy} steps the model on every update, so any key holder reading two "
        "consecutive models would learn one client's update; set strategy.buffer_size >= 2",
    ),
    rule(
        "asynchronous",
        "masked",
        "integer_scale",
        why="crypto={crypto} with strategy={strategy} encrypts each buffer's real-valued "
        "step (its masks are removed before encryption), which needs the preset's scale, "
        "not the masked integers' 2^scale_bits: set crypto.scale_bits=null",
    ),
    rule(
        "asynchronous",
        "masked",
        "staleness_weights",
        why="crypto={crypto} sums strategy={strategy}'s masked updates as integers, each "
        "counted once: unequal integer weights (w_a·q_a + w_b·q_b) would show every "
        "update's low-order digits to any key holder, and weights the server chose could "
        "spell updates out digit by digit; set strategy.staleness=constant (and "
        "strategy.max_staleness to drop stale updates)",
    ),
    rule(
        "asynchronous",
        "central_dp",
        why="privacy={privacy} cannot run strategy={strategy}: central DP noises one "
        "aggregate of a round's clients, and asynchronous updates arrive one at a time; "
        "use privacy=dp_sgd (each client's own DP-SGD)",
        short="central DP noises one aggregate of a round, and asynchronous updates arrive "
        "one at a time",
    ),
    rule(
        "asynchronous",
        "target_epsilon",
        why="privacy.target_epsilon cannot calibrate σ for strategy={strategy}: it plans "
        "rounds × local_epochs of training per client, and an asynchronous client trains "
        "as often as its speed allows; set privacy.noise_multiplier, and "
        "privacy.budget_epsilon to cap each client's ε",
    ),
    rule(
        "fleet",
        "simulated_devices",
        why="selection.device_profiles={device_profiles} simulates slow devices; a fleet's "
        "devices are as fast as they are: use device_profiles=none",
    ),
    rule(
        "fleet",
        "seeded_noise",
        why="privacy secure_noise=false draws DP noise from the run's seed, which anyone "
        "holding the config can redraw and subtract: use secure_noise=true on a fleet",
    ),
    rule(
        "masked",
        "split_learning",
        why="crypto={crypto} masks each client's whole update before a server sums them; "
        "vertical parties exchange embeddings batch by batch, which it does not mask: use "
        "crypto=ckks (the coordinator adds encrypted embeddings it cannot read)",
    ),
    rule(
        "fleet",
        "ckks",
        "generated_keys",
        why="crypto={crypto} with engine=deployment reads the server's key from files: set "
        "crypto.keys_dir=<the directory of `fedpriv keys init`>",
    ),
)


#: What a strategy spec is, as the rules name it (the rest of a rule's names are uses).
TRAITS = frozenset(
    {
        "linear",
        "nonlinear",
        "uniform_mean",
        "not_uniform_mean",
        "asynchronous",
        "synchronous",
        "not_additive",
    }
)


def strategy_traits(strategy: Any) -> set[str]:
    """A strategy spec's traits, each with its negation where a rule needs that."""
    linear = bool(getattr(strategy, "linear", False))
    uniform = bool(getattr(strategy, "uniform_mean", False))
    return {
        "linear" if linear else "nonlinear",
        "uniform_mean" if uniform else "not_uniform_mean",
        "asynchronous" if getattr(strategy, "asynchronous", False) else "synchronous",
        *([] if getattr(strategy, "additive", False) else ["not_additive"]),
    }


def uses(config: ExperimentConfig) -> set[str]:
    """The features and settings a config uses, as the rules name them."""
    out = set()
    local, central = config.privacy.local_dp(), config.privacy.central_dp()
    if local is not None:
        out.add("dp_sgd")
        if local.target_epsilon is not None:
            out.add("target_epsilon")
        if not local.secure_noise:
            out.add("seeded_noise")
    if central is not None:
        out.add("central_dp")
    if config.crypto.name != "none":
        out.add("ckks")
        if getattr(config.crypto, "keys_dir", None) is None:
            out.add("generated_keys")
        if getattr(config.crypto, "masks_updates", False):
            out.add("masked")
            if getattr(config.crypto, "scale_bits", None) is not None:
                out.add("integer_scale")
            if getattr(config.strategy, "staleness", "constant") != "constant":
                out.add("staleness_weights")
        if _rescale_levels(config.crypto) == 0:
            out.add("no_rescale_level")
    if getattr(config.strategy, "delay_compensation", 0):
        out.add("delay_compensation")
    if (getattr(config.strategy, "buffer_size", 0) or config.num_clients) == 1:
        out.add("single_update_steps")
    if config.family == "vertical":
        out.add("split_learning")
    if config.partition.splits_features:
        out.add("feature_partition")
    if config.adversary.name != "none":
        out.add("adversary")
    if config.engine.fleet:
        out.add("fleet")
    if config.train.device.startswith("cuda"):
        out.add("gpu")
    if config.selection.device_profiles != "none":
        out.add("simulated_devices")
    return out


def _rescale_levels(crypto: Any) -> int | None:
    """How many plaintext multiplies a fresh ciphertext of ``crypto`` takes (None: not
    CKKS, or parameters its own checks refuse)."""
    try:
        return int(crypto.params.rescale_levels)
    except (AttributeError, KeyError):
        return None


def problems(config: ExperimentConfig, family: Any) -> list[str]:
    """Every rule and family limit the config breaks, each with what would work."""
    used = uses(config)
    out = []
    for feature in sorted(used & family.unsupported.keys()):
        out.append(
            f"{_setting(feature, config)} is not available with family={config.family}: "
            f"{family.unsupported[feature]}"
        )
        used.discard(feature)  # one reason per setting is enough
    own = _unsupported(config.strategy)
    for feature in sorted(used & own.keys()):
        out.append(
            f"{_setting(feature, config)} is not available with family={config.family} "
            f"strategy={config.strategy.name}: {own[feature]}"
        )
        used.discard(feature)
    properties = used | strategy_traits(config.strategy)
    names = _names(config, family)
    out += [r.why.format(**names) for r in RULES if r.when <= properties]
    return out


def _unsupported(strategy: Any) -> dict[str, str]:
    """The features a strategy spec declares it cannot run, and why."""
    return dict(getattr(strategy, "unsupported", {}))


def _setting(feature: str, config: ExperimentConfig) -> str:
    """The setting that asked for ``feature``, as the user wrote it."""
    return {
        "dp_sgd": f"privacy={config.privacy.name}",
        "central_dp": f"privacy={config.privacy.name}",
        "ckks": f"crypto={config.crypto.name}",
        "adversary": f"adversary={config.adversary.name}",
        "fleet": f"engine={config.engine.name}",
        "feature_partition": f"partition={config.partition.name}",
        "gpu": f"train.device={config.train.device}",
    }[feature]


def _names(config: ExperimentConfig, family: Any) -> dict[str, str]:
    """What a rule's reason names: the config's choices and, per trait, the family's
    strategies that have it (what would work instead)."""
    names = {
        "family": config.family,
        "strategy": config.strategy.name,
        "privacy": config.privacy.name,
        "crypto": config.crypto.name,
        "device_profiles": config.selection.device_profiles,
    }
    specs = family.strategies
    for trait in ("linear", "uniform_mean"):
        having = [n for n in specs.names() if trait in strategy_traits(specs.get(n))]
        names[trait] = ", ".join(having) or f"none of family={config.family}'s strategies"
    return names


@dataclasses.dataclass(frozen=True)
class Row:
    """One family × strategy line of the table: per feature, None where it works, else
    the reason it does not."""

    family: str
    strategy: str
    cells: dict[str, str | None]


#: The table's columns: the family features, then resuming from a checkpoint.
COLUMNS = (*FEATURES, "resume")


def table(families: Any) -> Iterator[Row]:
    """What each family × strategy can run, as the declarations and rules decide it."""
    for name in families:
        family = families.get(name)
        for strategy in family.strategies.names():
            spec = family.strategies.get(strategy)
            traits, own = strategy_traits(spec), _unsupported(spec)
            cells: dict[str, str | None] = {}
            for feature in FEATURES:
                cells[feature] = (
                    family.unsupported.get(feature)
                    or own.get(feature)
                    or next(
                        (
                            r.short or r.why
                            for r in RULES
                            if feature in r.when and r.when <= traits | {feature}
                        ),
                        None,
                    )
                )
            cells["resume"] = _resume_limit(family)
            yield Row(name, strategy, cells)


def _resume_limit(family: Any) -> str | None:
    """Where a family's runs cannot be resumed, and why (None: wherever they run)."""
    if not family.resumable:
        return "no checkpoints for this family yet"
    return DEVICE_MODELS_LIMIT if family.device_models else None


def render(rows: list[Row]) -> str:
    """The table as text: a yes/no grid, then each reason once with the cells it covers,
    then the rules between settings that no grid cell shows."""
    head = ["family", "strategy", *COLUMNS]
    lines = [[r.family, r.strategy, *("yes" if r.cells[c] is None else "no" for c in COLUMNS)]
             for r in rows]  # fmt: skip
    widths = [max(len(x) for x in column) for column in zip(head, *lines, strict=True)]
    out = ["  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
           for line in (head, *lines)]  # fmt: skip
    reasons: dict[str, list[str]] = {}
    for r in rows:
        for column, why in r.cells.items():
            if why is not None:
                reasons.setdefault(why, []).append(f"{r.family}/{r.strategy} {column}")
    out += ["", "Why not:"]
    for why, cells in reasons.items():
        out.append(f"- {', '.join(cells)}: {why}")
    out += ["", "Other combinations refused:"]
    for refused in RULES:
        settings = refused.when - TRAITS
        if not (len(settings) == 1 and settings <= set(FEATURES)):  # not a cell above
            why = refused.why.format_map(_Placeholders())
            out.append(f"- {' + '.join(sorted(refused.when))}: {why}")
    return "\n".join(out)


class _Placeholders(dict[str, str]):
    """Names a rule's reason mentions, shown as placeholders outside any one config."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"
