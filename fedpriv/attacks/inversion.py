"""Gradient inversion of one client's update by an honest-but-curious server.

Threat model: the server follows the protocol but reads what it receives. It knows the
global model it sent, the architecture, the client's learning rate, and that the client
took ONE plain SGD step (no momentum, no weight decay) on ONE labelled example: the
most revealing update a client can send. The update then is that example's gradient,
g = (w_sent − w_returned) / lr, and the server rebuilds the example from it:

- the label first, with iDLG (Zhao et al. 2020): for cross-entropy the last layer's
  bias gradient is softmax(z) − onehot(y), negative only at the true class (without a
  bias, the true class's weight row sums negative when its inputs are ≥ 0);
- then the input, with DLG (Zhu et al. 2019): optimize a dummy input, under that label,
  until its gradient matches g (squared L2, or the cosine distance of Geiping et al.
  2020), with L-BFGS or Adam for a fixed budget, from a seeded start.

On fedpriv's ``logreg`` and ``mlp`` (ReLU) this needs no smooth activation: a first
fully connected layer's gradient is δ·xᵀ, linear in the input, and L-BFGS matches it to
float precision in well under a second. Conv nets and batches of several examples are
much harder (Geiping et al. 2020); this module covers the one-example case only.

What the result measures: how close the rebuilt input is to the true one (MSE per
value), whether the label is right, and how well the gradients were matched. DP-SGD
clips and noises the gradient before the step, so the server's g is no longer one
example's gradient; under ``crypto=ckks`` the server holds only ciphertexts and there is
nothing to invert (:func:`invert_update` returns ``possible=False``, it does not raise:
that outcome is the audit's finding, not an error).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from fedpriv.crypto.records import is_encrypted

__all__ = [
    "DISTANCES",
    "OPTIMIZERS",
    "Dlg",
    "InversionResult",
    "invert_gradient",
    "invert_update",
    "recover_label",
    "update_gradient",
]

ENCRYPTED = (
    "nothing to invert: the server holds only CKKS ciphertexts of this update "
    "(crypto=ckks), and no key to decrypt them"
)

Gradient = Sequence[torch.Tensor]


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(terms).sum()


def _squared_l2(dummy: Gradient, observed: Gradient) -> torch.Tensor:
    """DLG's distance: Σ over layers of ||g_dummy − g||² (Zhu et al. 2019)."""
    return _total([((d - o) ** 2).sum() for d, o in zip(dummy, observed, strict=True)])


def _cosine(dummy: Gradient, observed: Gradient) -> torch.Tensor:
    """1 − cos(g_dummy, g) over all layers at once (Geiping et al. 2020): scale-free."""
    dot = _total([(d * o).sum() for d, o in zip(dummy, observed, strict=True)])
    dummy_norm = _total([(d**2).sum() for d in dummy]).sqrt()
    observed_norm = _total([(o**2).sum() for o in observed]).sqrt()
    return 1 - dot / (dummy_norm * observed_norm + 1e-12)


#: Gradient-matching distances by name.
DISTANCES: dict[str, Callable[[Gradient, Gradient], torch.Tensor]] = {
    "l2": _squared_l2,
    "cosine": _cosine,
}
OPTIMIZERS = ("lbfgs", "adam")


@dataclasses.dataclass(frozen=True)
class Dlg:
    """DLG's settings: the attacker's budget and method."""

    #: L-BFGS: function evaluations (each one a double backward); Adam: steps.
    iterations: int = 200
    #: ``lbfgs`` (DLG's choice, with a strong-Wolfe line search) or ``adam``.
    optimizer: str = "lbfgs"
    #: Adam's step size (L-BFGS uses 1 with its line search).
    lr: float = 0.1
    #: ``l2`` (DLG) or ``cosine`` (Geiping et al. 2020).
    distance: str = "l2"
    #: Seeds the dummy input, drawn uniformly from [0, 1) (inputs scaled like digits').
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.iterations < 1:
            problems.append(f"iterations={self.iterations} must be >= 1, e.g. 200")
        if self.optimizer not in OPTIMIZERS:
            problems.append(
                f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
            )
        if self.distance not in DISTANCES:
            problems.append(
                f"unknown distance {self.distance!r}; choose one of: {', '.join(DISTANCES)}"
            )
        if not self.lr > 0:
            problems.append(f"lr={self.lr} must be > 0, e.g. 0.1")
        if problems:
            raise ValueError("; ".join(problems))


@dataclasses.dataclass(frozen=True)
class InversionResult:
    """What the server got out of one update; ``possible=False`` says why nothing."""

    possible: bool
    #: Why the attack could not run ("" when it did).
    reason: str = ""
    #: The label recovered by iDLG.
    label: int | None = None
    #: Whether it is the true label (None when the true label was not given).
    label_correct: bool | None = None
    #: The rebuilt input, shaped like one example (no batch axis).
    reconstruction: np.ndarray | None = None
    #: Mean squared error per value against the true input (None when not given).
    mse: float | None = None
    #: The final gradient-matching distance (in the chosen distance's units).
    gradient_distance: float | None = None


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def update_gradient(
    model: nn.Module, returned: Mapping[str, torch.Tensor], *, lr: float
) -> list[torch.Tensor]:
    """g = (w_sent − w_returned) / lr for each trainable parameter of ``model``, which
    holds the weights the server sent; ``returned`` is the client's state dict.

    Exact for one plain SGD step (up to float32 rounding of the subtraction).
    """
    if not lr > 0:
        raise ValueError(f"lr={lr} must be > 0: the client's learning rate")
    missing = [name for name, _ in _trainable(model) if name not in returned]
    if missing:
        raise ValueError(
            f"the returned model lacks {', '.join(missing)}; it must come from the same "
            f"architecture (it has: {', '.join(returned) or 'nothing'})"
        )
    return [
        (p.detach() - returned[name].detach().to(p.dtype)) / lr for name, p in _trainable(model)
    ]


def recover_label(model: nn.Module, gradient: Gradient) -> int:
    """iDLG's label (Zhao et al. 2020) from the last ``nn.Linear`` layer's gradient.

    With a bias: its gradient is softmax − onehot, whose only negative entry is the true
    class. Without: the true class's weight row is −(1 − p_y)·h, which sums negative
    when the layer's inputs h are ≥ 0 (after a ReLU, or raw pixels).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("iDLG needs a final nn.Linear layer; this model has none")
    last = linears[-1]
    by_parameter = {id(p): g for (_, p), g in zip(_trainable(model), gradient, strict=True)}
    if last.bias is not None and id(last.bias) in by_parameter:
        return int(torch.argmin(by_parameter[id(last.bias)]))
    return int(torch.argmin(by_parameter[id(last.weight)].sum(dim=1)))


def invert_gradient(
    model: nn.Module,
    gradient: Gradient,
    *,
    input_shape: tuple[int, ...],
    true_input: np.ndarray | None = None,
    true_label: int | None = None,
    dlg: Dlg | None = None,
) -> InversionResult:
    """DLG with iDLG's label: the input whose gradient under ``model`` matches
    ``gradient`` (one tensor per trainable parameter, in ``model.parameters()`` order).

    ``model`` is not changed (a copy in eval mode is attacked). ``true_input`` and
    ``true_label``, when given, only grade the result.
    """
    dlg = dlg or Dlg()
    model = copy.deepcopy(model).eval()
    params = [p for _, p in _trainable(model)]
    if len(gradient) != len(params) or any(
        g.shape != p.shape for g, p in zip(gradient, params, strict=False)
    ):
        raise ValueError(
            "the gradient must hold one tensor per trainable parameter of the model, in "
            f"order: expected shapes {[tuple(p.shape) for p in params]}, got "
            f"{[tuple(g.shape) for g in gradient]}"
        )
    observed = [g.detach().to(p.dtype) for g, p in zip(gradient, params, strict=True)]
    label = recover_label(model, observed)
    target = torch.tensor([label])
    distance = DISTANCES[dlg.distance]
    generator = torch.Generator().manual_seed(dlg.seed)
    dummy = torch.rand((1, *input_shape), generator=generator).requires_grad_(True)

    def mismatch() -> torch.Tensor:
        loss = nn.functional.cross_entropy(model(dummy), target)
        dummy_gradient = torch.autograd.grad(loss, params, create_graph=True)
        return distance(dummy_gradient, observed)

    if dlg.optimizer == "lbfgs":
        optimizer: torch.optim.Optimizer = torch.optim.LBFGS(
            [dummy], lr=1.0, max_iter=dlg.iterations, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            value = mismatch()
            value.backward()
            return value

        optimizer.step(closure)  # type: ignore[arg-type]
    else:
        optimizer = torch.optim.Adam([dummy], lr=dlg.lr)
        for _ in range(dlg.iterations):
            optimizer.zero_grad()
            mismatch().backward()
            optimizer.step()
    final = float(mismatch().detach())
    reconstruction = dummy.detach()[0].numpy().copy()
    mse = None
    if true_input is not None:
        mse = float(np.mean((reconstruction - np.reshape(true_input, input_shape)) ** 2))
    return InversionResult(
        possible=True,
        label=label,
        label_correct=None if true_label is None else label == int(true_label),
        reconstruction=reconstruction,
        mse=mse,
        gradient_distance=final,
    )


def invert_update(
    model: nn.Module,
    reply: ArrayRecord,
    *,
    lr: float,
    input_shape: tuple[int, ...],
    true_input: np.ndarray | None = None,
    true_label: int | None = None,
    dlg: Dlg | None = None,
) -> InversionResult:
    """The server's attack on one client's reply: ``model`` holds the global weights it
    sent, ``reply`` is the ``arrays`` record the client returned (its trained model, as
    ``HorizontalClient.train`` sends it), ``lr`` the client's learning rate.

    An encrypted reply (``crypto=ckks``) gives ``possible=False`` with the reason.
    """
    if is_encrypted(reply):
        return InversionResult(possible=False, reason=ENCRYPTED)
    gradient = update_gradient(model, reply.to_torch_state_dict(), lr=lr)
    return invert_gradient(
        model,
        gradient,
        input_shape=input_shape,
        true_input=true_input,
        true_label=true_label,
        dlg=dlg,
    )
