"""Local, sample-level DP-SGD with Opacus inside each client's training (Abadi et al. 2016).

Each step samples a Poisson batch, clips every per-sample gradient to ``max_grad_norm``
and adds Gaussian noise of std ``noise_multiplier × max_grad_norm``. The noise is set
directly, or calibrated from ``target_epsilon`` over the whole planned training
(rounds × local epochs). Per-sample clipping runs as book-keeping clipping (one
backward pass, :mod:`fedpriv.privacy.bookkeeping`) where every trainable layer is one it
covers, else as Opacus' ghost clipping or its hooks. Opacus is imported inside the
functions that use it, so a run without DP (and each of its Ray workers) skips its
~1.5 s import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedpriv.errors import ConfigError
from fedpriv.privacy.accounting import ACCOUNTANTS, calibrated_noise, sample_rate
from fedpriv.privacy.base import PRIVACY, PrivacySpec
from fedpriv.privacy.secure_random import secure_generator
from fedpriv.registry import Spec
from fedpriv.training import Tally, TrainStats, placed, secret_seed, seed_for

log = logging.getLogger("fedpriv")

#: Mixed into a client's training seed for its noise (secure_noise=false), so the noise
#: and the batch sampling draw from different streams.
NOISE_STREAM = 1

GRAD_SAMPLE_MODES = ("auto", "ghost", "hooks", "functorch", "bookkeeping")
#: The ledger entry a DP-SGD client's train reply must carry (PrivacyLedgerMod adds it).
EVIDENCE = ("dp-noise-multiplier", "dp-sample-rate", "dp-steps", "epsilon", "delta")


@PRIVACY.register("dp_sgd")
@dataclasses.dataclass(frozen=True)
class DpSgd(PrivacySpec):
    """Local DP-SGD settings (``privacy=dp_sgd``)."""

    #: σ, the noise std relative to max_grad_norm. Set this or target_epsilon.
    noise_multiplier: float | None = None
    #: ε to spend over the whole planned training; σ is calibrated to it.
    target_epsilon: float | None = None
    #: C, the per-sample gradient clipping norm.
    max_grad_norm: float = 1.0
    #: δ; None: 1 / (10 × the client's sample count).
    delta: float | None = None
    accountant: str = "prv"
    #: Split each logical (Poisson) batch into physical batches of at most this size.
    max_physical_batch_size: int | None = None
    #: auto: bookkeeping (one backward pass) where every trainable layer is a Linear,
    #: Conv2d, GroupNorm or LayerNorm; else ghost clipping where the layers allow it,
    #: else Opacus' hooks.
    grad_sample_mode: str = "auto"
    #: A client whose next round would pass this ε declines to train.
    budget_epsilon: float | None = None
    #: The run ends when fewer clients than this are still within budget.
    min_clients: int = 1
    #: True: the noise and the Poisson batch sampling draw from OS randomness. False:
    #: both come from the run's seed, so a DP run repeats exactly (and resumes exactly),
    #: but anyone holding the config could redraw and subtract the noise and knows which
    #: steps held each example, so the ε printed does not hold: research in simulation
    #: only; refused with engine=deployment.
    secure_noise: bool = True
    #: Opacus' secure_mode: the noise from a CSPRNG (ChaCha20 keyed from os.urandom; Opacus'
    #: own needs torchcsprng, which has no release for any current torch), each value the
    #: sum of four Gaussians halved against floating-point attacks, as Opacus does. Its
    #: cost is in benchmarks/dp_overhead.py.
    secure_mode: bool = False

    def local_dp(self) -> DpSgd:
        return self

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            out.append(
                ("noise_multiplier", "or privacy.target_epsilon must be set, exactly one of them")
            )
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            out.append(("noise_multiplier", "must be > 0 (e.g. 1.1)"))
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            out.append(("target_epsilon", "must be > 0 (e.g. 3)"))
        if not self.max_grad_norm > 0:
            out.append(("max_grad_norm", "must be > 0 (e.g. 1.0)"))
        if self.delta is not None and not 0 < self.delta < 1:
            out.append(("delta", "must be in (0, 1) and below 1/n for every client, e.g. 1e-5"))
        if self.accountant not in ACCOUNTANTS:
            out.append(("accountant", f"must be one of: {', '.join(ACCOUNTANTS)}"))
        if self.max_physical_batch_size is not None and self.max_physical_batch_size < 1:
            out.append(("max_physical_batch_size", "must be >= 1 or null"))
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            out.append(("grad_sample_mode", f"must be one of: {', '.join(GRAD_SAMPLE_MODES)}"))
        if self.budget_epsilon is not None and not self.budget_epsilon > 0:
            out.append(("budget_epsilon", "must be > 0 or null"))
        if self.min_clients < 1:
            out.append(("min_clients", "must be >= 1"))
        if self.secure_mode and not self.secure_noise:
            out.append(
                ("secure_mode", "needs secure_noise=true (noise from the seed is not secret)")
            )
        return out

    def problems_for(self, *, num_clients: int, strategy: Spec) -> list[tuple[str, str]]:
        return []  # δ against client sizes is checked once the data is loaded

    def delta_for(self, num_examples: int) -> float:
        """δ for a client holding ``num_examples`` samples."""
        return self.delta if self.delta is not None else 1.0 / (10 * num_examples)

    def check_clients(self, sizes: list[int], key: str = "privacy") -> None:
        """δ must be below 1/n for every client (else ε means little); raise ConfigError."""
        if self.accountant == "gdp":
            log.warning(
                "%s.accountant=gdp is Opacus' experimental Gaussian accountant and can "
                "underestimate ε; prefer prv (default) or rdp",
                key,
            )
        smallest = min(sizes)
        if self.delta is not None and self.delta >= 1.0 / smallest:
            raise ConfigError(
                f"{key}.delta={self.delta} must be < 1/n = {1 / smallest:.3g} for the smallest "
                f"client (n={smallest}); try {10 ** math.floor(math.log10(0.1 / smallest)):g}"
            )

    def noise_for(self, num_examples: int, batch_size: int, planned_steps: int) -> float:
        """σ for a client: the configured one, or calibrated to target_epsilon."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        assert self.target_epsilon is not None
        return calibrated_noise(
            self.target_epsilon,
            self.delta_for(num_examples),
            sample_rate(num_examples, batch_size),
            planned_steps,
            self.accountant,
        )

    def evidence_problem(self, metrics: Mapping[str, Any]) -> str | None:
        """A DP-SGD client's reply carries its ledger entry: what its accountant composed
        this round and the ε it reports. A reply without one (a client that trained
        without DP) or with values no DP-SGD run produces is not private evidence."""
        missing = [key for key in EVIDENCE if key not in metrics]
        if missing:
            return (
                f"privacy={self.name} but the reply carries no DP-SGD ledger entry "
                f"(missing {', '.join(missing)}): the client did not train with DP-SGD"
            )
        sigma, rate, steps, eps, delta = (metrics[key] for key in EVIDENCE)
        if not all(
            isinstance(v, int | float) and math.isfinite(v) for v in (sigma, rate, eps, delta)
        ):
            return "the reply's DP-SGD ledger entry holds a value that is not a finite number"
        if not (sigma > 0 and 0 < rate <= 1 and 0 < delta < 1 and eps >= 0):
            return (
                f"the reply's DP-SGD ledger entry is impossible: dp-noise-multiplier={sigma} "
                f"(> 0), dp-sample-rate={rate} (in (0, 1]), delta={delta} (in (0, 1)), "
                f"epsilon={eps} (>= 0)"
            )
        if not isinstance(steps, int) or steps < 0:
            return f"the reply's dp-steps={steps!r} is not a step count"
        return None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return private_model(model)

    def client_mods(self, config: Any) -> list[Callable[..., Any]]:
        from fedpriv.privacy.ledger import PrivacyLedgerMod

        return [PrivacyLedgerMod(config)]

    def train(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        train: Spec,
        *,
        seed: int,
        proximal_mu: float = 0.0,
        planned_steps: int,
        after_step: Callable[[], None] | None = None,
        max_steps: int | None = None,
    ) -> tuple[TrainStats, dict[str, float | int]]:
        return train_dp_sgd(
            model,
            x,
            y,
            train,
            self,
            seed=seed,
            proximal_mu=proximal_mu,
            planned_steps=planned_steps,
            after_step=after_step,
            max_steps=max_steps,
        )


def _noisy_steps(engine: Any) -> int:
    """Noisy (logical) steps taken so far, as the accountant recorded them."""
    return sum(count for _, _, count in engine.accountant.history)


def poisson_loader(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int, secret: bool
) -> DataLoader[Any]:
    """Opacus' Poisson-sampling loader at q = 1/⌈n/B⌉, ⌈n/B⌉ steps an epoch.

    Built here rather than by ``make_private``: Opacus sizes its sampler as ⌊1/q⌋ steps,
    which float rounding makes ⌈n/B⌉ − 1 (92 for n=930, B=10), and then tells the
    accountant q = 1/92 though it samples at 1/93. Amplification by subsampling assumes
    nobody knows which steps held an example, so with ``secret`` the sampler is seeded
    from OS randomness, not from ``seed`` (which the server, holding the config, could
    recompute).
    """
    from opacus.data_loader import DPDataLoader

    steps = math.ceil(len(y) / batch_size)
    loader = DPDataLoader(
        BatchedTensors(x, y),
        sample_rate=sample_rate(len(y), batch_size),
        collate_fn=whole_batch,
        generator=torch.Generator().manual_seed(secret_seed() if secret else seed),
    )
    loader.batch_sampler.steps = steps
    return loader


def use_csprng_noise(optimizer: Any) -> None:
    """Opacus' secure_mode on ``optimizer`` (a DPOptimizer), with ChaCha20 in place of
    torchcsprng: its ``add_noise`` step, as Opacus writes it, with each noise value the
    sum of four standard Gaussians from :func:`secure_generator`, scaled by σC/2 (Opacus'
    defence against floating-point attacks, Holohan et al. 2021). Clipping, accounting
    and the noise's distribution are unchanged."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    rng = secure_generator()

    def add_noise() -> None:
        sigma = getattr(optimizer, "_adjusted_noise_multiplier", optimizer.noise_multiplier)
        std = sigma * optimizer.max_grad_norm
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            draws = rng.standard_normal((4, *p.summed_grad.shape), dtype=np.float32)
            noise = torch.from_numpy(draws.sum(axis=0) * np.float32(std / 2))
            noise = noise.to(device=p.summed_grad.device, dtype=p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise


def _accounted(engine: Any) -> tuple[float, float] | None:
    """The (σ, q) the accountant composed, exactly as it did (None before any step):
    what the reply reports is what ε was computed from, not a value derived again."""
    entries = {(float(sigma), float(rate)) for sigma, rate, _ in engine.accountant.history}
    if not entries:
        return None
    if len(entries) > 1:
        raise RuntimeError(f"one training ran with several (σ, q): {sorted(entries)}")
    return entries.pop()


class BatchedTensors(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """In-memory samples that a DataLoader fetches a whole batch at a time.

    ``__getitems__`` indexes the tensors once per batch instead of once per sample and
    collating, which costs more than the training step itself for small models.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.x[index], self.y[index]


def whole_batch(batch: Any) -> Any:
    """Collate for :class:`BatchedTensors`: the batch is already stacked."""
    return batch


def private_model(model: nn.Module) -> nn.Module:
    """``model`` if Opacus accepts it; a fixed copy (with a warning saying what changed)
    if Opacus can fix it; else a ConfigError naming what is unsupported."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    fixed = ModuleValidator.fix(model)
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise ConfigError(
            "the model cannot be trained with DP-SGD: "
            + "; ".join(str(e) for e in remaining)
            + ". Use a model without BatchNorm (GroupNorm/LayerNorm), e.g. model=cnn"
        )
    log.warning(
        "the model was changed to be valid for DP-SGD: %s", "; ".join(str(e) for e in errors)
    )
    return fixed


def grad_sample_mode(model: nn.Module, requested: str) -> str:
    """Resolve ``auto``: book-keeping clipping when it covers every trainable layer, else
    ghost clipping when every trainable layer has a ghost-norm or a per-sample-gradient
    sampler, else Opacus' hooks (which also cover other layers). ``bookkeeping`` asked
    for a model it cannot train is a ConfigError naming the layers."""
    from fedpriv.privacy.bookkeeping import unsupported

    if requested == "bookkeeping" and (problems := unsupported(model)):
        raise ConfigError(
            "privacy.grad_sample_mode=bookkeeping cannot train this model: "
            + "; ".join(problems)
            + ". Use grad_sample_mode=auto, ghost or hooks"
        )
    if requested != "auto":
        return requested
    if not unsupported(model):
        return "bookkeeping"
    from opacus.grad_sample import GradSampleModule
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
        GradSampleModuleFastGradientClipping,
    )

    supported = set(GradSampleModuleFastGradientClipping.NORM_SAMPLERS) | set(
        GradSampleModule.GRAD_SAMPLERS
    )
    trainable = [
        m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    return "ghost" if all(type(m) in supported for m in trainable) else "hooks"


def train_dp_sgd(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    train: Any,
    dp: DpSgd,
    *,
    seed: int,
    planned_steps: int,
    proximal_mu: float = 0.0,
    after_step: Callable[[], None] | None = None,
    max_steps: int | None = None,
) -> tuple[TrainStats, dict[str, float | int]]:
    """DP-SGD on ``(x, y)`` for ``train.local_epochs`` epochs of Poisson-sampled batches
    (or ``max_steps`` noisy steps if fewer: the accountant counts what ran).

    Returns the training statistics and what the accountant needs: the noise multiplier,
    the sampling rate and the number of noisy steps taken. FedProx's proximal term is
    data-independent, so it is applied as a separate decoupled step after each noisy one
    and costs no privacy.
    """
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    start = time.perf_counter()
    n = len(y)
    sigma = dp.noise_for(n, train.batch_size, planned_steps)
    loader = poisson_loader(x, y, train.batch_size, seed=seed, secret=dp.secure_noise)
    with placed(model, train.device) as device:
        tally = Tally(device)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=train.lr,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
        )
        mode = grad_sample_mode(model, dp.grad_sample_mode)
        bookkeeping = mode == "bookkeeping"
        engine = PrivacyEngine(accountant=dp.accountant)
        # Book-keeping takes ghost clipping's place in Opacus' own set-up: make_private
        # validates the model and builds DPOptimizerFastGradientClipping (which noises and
        # scales an already clipped p.grad) with the accountant's step hook; only its ghost
        # hooks (wrap_model=False: on the model itself) are removed for book-keeping's.
        made = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=False,  # the loader samples Poisson batches already
            grad_sample_mode="ghost" if bookkeeping else mode,
            wrap_model=not bookkeeping,
            # From the run's seed only when asked: whoever holds the config could redraw it.
            noise_generator=torch.Generator(device).manual_seed(
                secret_seed() if dp.secure_noise else seed_for(seed, NOISE_STREAM)
            ),
        )
        clipping = None
        if bookkeeping:
            from fedpriv.privacy.bookkeeping import BookkeepingClipping

            ghost_hooks, optimizer, _, loader = made
            ghost_hooks.remove_hooks()
            private, criterion = model, nn.CrossEntropyLoss(reduction="sum")
            clipping = BookkeepingClipping(model, dp.max_grad_norm)
        elif mode == "ghost":
            private, optimizer, criterion, loader = made
        else:
            private, optimizer, loader = made
            criterion = nn.CrossEntropyLoss()
        if dp.secure_mode:
            use_csprng_noise(optimizer)
        anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
        private.train()
        for _ in range(train.local_epochs):
            batches: Any = (
                BatchMemoryManager(
                    data_loader=loader,
                    max_physical_batch_size=dp.max_physical_batch_size,
                    optimizer=optimizer,
                )
                if dp.max_physical_batch_size
                else contextlib.nullcontext(loader)
            )
            with batches as physical:
                for cpu_inputs, cpu_targets in physical:
                    inputs, targets = cpu_inputs.to(device), cpu_targets.to(device)
                    if max_steps is not None and _noisy_steps(engine) >= max_steps:
                        break
                    optimizer.zero_grad(set_to_none=True)
                    if clipping is not None:
                        with clipping.recording():
                            logits = private(inputs)
                            summed = criterion(logits, targets)
                            summed.backward()
                        loss = summed.detach() / max(len(targets), 1)
                    else:
                        logits = private(inputs)
                        loss = criterion(logits, targets)
                        loss.backward()
                    optimizer.step()
                    if anchor:
                        with torch.no_grad():
                            for p, a in zip(model.parameters(), anchor, strict=True):
                                p.sub_(train.lr * proximal_mu * (p - a))
                    if after_step is not None:
                        after_step()
                    if len(targets):  # an empty Poisson batch's mean loss is NaN
                        tally.add(loss, logits, targets)
    steps = _noisy_steps(engine)
    ran = _accounted(engine)
    stats = tally.stats(n, steps, start)
    return stats, {
        "dp-noise-multiplier": ran[0] if ran else sigma,
        "dp-sample-rate": ran[1] if ran else loader.sample_rate,
        "dp-steps": steps,
    }
